//! hyphae: a libp2p node. This crate is the tokio driver around the sans-IO machines of `hyphae-core`,
//! the Go-like [`Host`] API, and the `hyphae` binary.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hyphae::Error> {
//! use hyphae::{Host, HostConfig};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! let server = Host::new(HostConfig::ephemeral()).await?;
//! server.set_stream_handler("/echo/1.0.0", |mut s: hyphae::Stream| async move {
//!     let mut buf = Vec::new();
//!     let _ = s.read_to_end(&mut buf).await;
//!     let _ = s.write_all(&buf).await;
//! });
//! let addrs = server.listen("/ip4/127.0.0.1/tcp/0".parse()?).await?;
//! let client = Host::new(HostConfig::ephemeral()).await?;
//! let peer = client.connect(&addrs[0]).await?;
//! let mut s = client.new_stream(&peer, &["/echo/1.0.0"]).await?;
//! s.write_all(b"hi").await?;
//! s.shutdown().await?;
//! # Ok(()) }
//! ```

/// The README's examples, compiled and run as doctests so they cannot rot.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod connmgr;
pub mod daemon;
mod dht;
mod driver;
mod handle;
mod host;
pub mod keyfile;
mod live;
mod metrics;
pub mod peerdb;
mod persist;
mod pubsub;
mod quic_driver;
mod timer;
mod topics;

pub use dht::Dht;
pub use handle::{Direction, Stream};
pub use host::{ConnectionInfo, Error, Host, HostConfig, HostEvent, PeerInfo, PerfResult};
pub use hyphae_core::gossipsub::Acceptance;
pub use hyphae_core::{self as core, identify::Info as IdentifyInfo, KeyType, Keypair, Multiaddr, PeerId, Protocol, PublicKey};
pub use pubsub::{Pubsub, Subscription};
pub use topics::{PubsubMessage, SUBSCRIPTION_BUFFER};
