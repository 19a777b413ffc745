//! hyphae-core: the sans-IO heart of hyphae.
//!
//! Everything in this crate is a plain state machine or codec: bytes, events and the current time go in;
//! bytes, events and the next deadline come out. Nothing here reads a clock, draws from an ambient RNG,
//! spawns, locks, sleeps or performs I/O. The tokio driver (crate `hyphae`) and the simulator run the same
//! machines. See `shared/DESIGN.md`.

pub mod autonat;
pub mod conn;
pub mod daemon;
pub mod gossipsub;
pub mod identify;
pub mod identity;
pub mod kad;
pub mod mplex;
pub mod mss;
pub mod multiaddr;
pub mod node;
pub mod noise;
pub mod pb;
pub mod perf;
pub mod ping;
pub mod quic;
pub mod rcmgr;
pub mod record;
pub mod rng;
pub mod service;
pub mod slab;
pub mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod tls;
pub mod varint;
pub mod yamux;

pub use identity::{KeyType, Keypair, PeerId, PublicKey};
pub use multiaddr::{Multiaddr, Protocol};
pub use time::{Duration, Instant};

/// Hands out a machine's pending output buffer, or `None` when there is nothing to send.
pub(crate) fn take_output(out: &mut Vec<u8>) -> Option<Vec<u8>> {
    if out.is_empty() {
        None
    } else {
        Some(std::mem::take(out))
    }
}

/// Errors produced by decoders of peer-supplied bytes. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("truncated input")]
    Truncated,
    #[error("length {len} exceeds limit {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("invalid: {0}")]
    Invalid(&'static str),
    #[error("trailing data")]
    TrailingData,
}
