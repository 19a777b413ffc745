//! AutoNAT v1 (`/libp2p/autonat/1.0.0`, libp2p/specs autonat/autonat-v1.md) and v2
//! (`/libp2p/autonat/2/dial-request` + `/dial-back`, autonat-v2.md): is this node reachable from
//! outside? The client asks peers to dial it back; the server dials back a requester's addresses
//! (v1: only on the IP it was observed at; v2: one address of the requester's list, another IP only
//! after the requester paid `dial_data_bytes` — the amplification guard — and proves the dial with a
//! nonce the requester checks; both rate-limited). A client asks a server over v2 when it offers v2. The verdict ([`Reachability`]) reaches every
//! service through `LocalInfo` (the DHT serves only while it is `Public`), with hysteresis: it changes
//! only after `confirmations` consecutive contrary answers from distinct peers, so one odd answer never
//! flips it (go's ModeAuto oscillated on exactly that).

use crate::identity::PeerId;
use crate::multiaddr::Multiaddr;
use crate::time::Duration;

pub mod service;
pub mod wire;
pub mod wire_v2;

pub const PROTOCOL_ID: &str = "/libp2p/autonat/1.0.0";
/// AutoNAT v2: the request stream (client → server).
pub const V2_DIAL_REQUEST: &str = "/libp2p/autonat/2/dial-request";
/// AutoNAT v2: the dial-back stream (server → client, on the connection the server dialed).
pub const V2_DIAL_BACK: &str = "/libp2p/autonat/2/dial-back";

/// Whether peers can dial this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reachability {
    #[default]
    Unknown,
    Public,
    Private,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Ask peers to dial us back. Default on.
    pub client: bool,
    /// Dial back peers that ask (announces the protocol). Default off (go's default).
    pub server: bool,
    /// Consecutive answers from distinct peers that set or change the verdict. Default 3.
    pub confirmations: usize,
    /// First probe this long after the first peer that serves AutoNAT. Default 15 s (go's boot delay).
    pub boot_delay: Duration,
    /// Probe again this often while the verdict is not settled. Default 90 s (go's).
    pub retry_interval: Duration,
    /// Re-check a settled verdict this often. Default 15 min (go's).
    pub refresh_interval: Duration,
    /// A request without an answer fails after this. Default 30 s.
    pub request_timeout: Duration,
    /// The server gives up a dial-back after this. Default 15 s.
    pub dial_timeout: Duration,
    /// Requests served per minute, in total and per peer (beyond: E_DIAL_REFUSED). Defaults 60, 12.
    pub max_requests_per_minute: usize,
    pub max_requests_per_peer_per_minute: usize,
    /// Dial-backs in flight at once (beyond: E_DIAL_REFUSED). Default 16.
    pub max_dialbacks: usize,
    /// Serve requests observed from loopback or private addresses (test networks, the simulator).
    /// Default off: such a dial-back says nothing about reachability from the internet.
    pub allow_private: bool,
    /// Speak v2 (ask v2 servers over v2; serve v2 beside v1). Default on.
    pub v2: bool,
    /// v2 server: bytes a requester pays before we dial an IP other than the one it came from (the
    /// spec says 30–100 kB). Default 30,000.
    pub dial_data_bytes: u64,
    /// v2 client: the most we pay a server for dialing us. Default 100,000.
    pub max_dial_data_bytes: u64,
    pub limits: wire::Limits,
    pub limits_v2: wire_v2::Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            client: true,
            server: false,
            confirmations: 3,
            boot_delay: Duration::from_secs(15),
            retry_interval: Duration::from_secs(90),
            refresh_interval: Duration::from_secs(15 * 60),
            request_timeout: Duration::from_secs(30),
            dial_timeout: Duration::from_secs(15),
            max_requests_per_minute: 60,
            max_requests_per_peer_per_minute: 12,
            max_dialbacks: 16,
            allow_private: false,
            v2: true,
            dial_data_bytes: 30_000,
            max_dial_data_bytes: 100_000,
            limits: wire::Limits::default(),
            limits_v2: wire_v2::Limits::default(),
        }
    }
}

/// What the AutoNAT service reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The verdict changed; `addr`: the address a peer reached us at (when public).
    Reachability { reachability: Reachability, addr: Option<Multiaddr> },
    /// A peer answered a probe.
    Answer { peer: PeerId, status: wire::Status },
    /// We answered a peer's request.
    Served { peer: PeerId, status: wire::Status },
    /// We answered a peer's v2 request (`dial`: how the dial-back went).
    ServedV2 { peer: PeerId, status: wire_v2::ResponseStatus, dial: wire_v2::DialStatus },
}
