//! Publish/subscribe: gossipsub v1.0–v1.3 and floodsub (libp2p/specs `pubsub/`), as a node service, with
//! v1.4's large-message handling (PREAMBLE and IMRECEIVING) as a v1.3 extension.
//!
//! - `rpc.proto` / `wire.rs`: the RPC, decoded under [`wire::Limits`] (counted while reading).
//! - `router.rs`: the router machine, per peer and per topic: mesh kept on a heartbeat (go's D=6,
//!   Dlo=5, Dhi=12, Dout=2, Dlazy=6), fanout with TTL, message cache and IHAVE/IWANT gossip, seen cache,
//!   flood publishing, GRAFT/PRUNE with backoff and peer exchange, IDONTWANT (v1.2), the extensions
//!   control message (v1.3: sent first on every stream to a v1.3 peer, taken once per peer), PREAMBLE
//!   and IMRECEIVING (v1.4 large-message handling, with peers that advertise it), bounded per-peer
//!   send queues where control and messages go before gossip. Beyond the spec, a latency-aware mesh
//!   (`Config::d_near`): of the places a graft or prune fills, the first go to the peers nearest by
//!   round trip (`Router::set_rtt`; the service passes ping's average from the peerstore). Time and
//!   randomness are passed in.
//! - `service.rs`: the node service: one long-lived outbound stream per peer for sending (the
//!   protocol picked from the peer's identify list), the peer's inbound streams for reading.
//!
//! Application validation: on a topic marked validated, a message is handed out as `Event::Validate`
//! and delivered and forwarded only once the application accepts it (bounded, with a timeout).
//!
//! - `score.rs`: peer scoring (v1.1's P1–P7, decay, thresholds), used by the router for mesh choice,
//!   gossip, publishing and graylisting.
//!
//! Peer exchange: a PRUNE from a peer scoring at least `thresholds.accept_px` offers peers to connect to
//! (`Router::take_px`); the service dials each at an address from its signed peer record (verified
//! for that peer), or else from the peerstore. Our own PRUNEs offer up to `prune_peers` other
//! subscribers of non-negative score, chosen at random (go's rule), each with the signed record its
//! latest identify brought (`Router::set_record`), or its id alone when it sent none.
//!
//! Not yet: direct peers, v1.4's fragments and the partial-messages extension (neither advertised).

use crate::identity::PeerId;
use crate::time::Duration;
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub mod router;
pub mod score;
pub mod service;
pub mod wire;

pub use router::{PeerStats, PublishError, PxOutcome, Router, Stats};

pub use wire::{Extensions, Message, MessageId, PxPeer};

pub const MESHSUB_V13: &str = "/meshsub/1.3.0";
pub const MESHSUB_V12: &str = "/meshsub/1.2.0";
pub const MESHSUB_V11: &str = "/meshsub/1.1.0";
pub const MESHSUB_V10: &str = "/meshsub/1.0.0";
pub const FLOODSUB: &str = "/floodsub/1.0.0";
/// Every protocol served, in the order we prefer them.
pub const PROTOCOLS: [&str; 5] = [MESHSUB_V13, MESHSUB_V12, MESHSUB_V11, MESHSUB_V10, FLOODSUB];

/// What a peer speaks (the protocol of the stream it reads from us).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerKind {
    Floodsub,
    Meshsub10,
    Meshsub11,
    Meshsub12,
    Meshsub13,
}

impl PeerKind {
    pub fn from_protocol(p: &str) -> Option<PeerKind> {
        Some(match p {
            MESHSUB_V13 => PeerKind::Meshsub13,
            MESHSUB_V12 => PeerKind::Meshsub12,
            MESHSUB_V11 => PeerKind::Meshsub11,
            MESHSUB_V10 => PeerKind::Meshsub10,
            FLOODSUB => PeerKind::Floodsub,
            _ => return None,
        })
    }
    pub fn protocol(self) -> &'static str {
        match self {
            PeerKind::Meshsub13 => MESHSUB_V13,
            PeerKind::Meshsub12 => MESHSUB_V12,
            PeerKind::Meshsub11 => MESHSUB_V11,
            PeerKind::Meshsub10 => MESHSUB_V10,
            PeerKind::Floodsub => FLOODSUB,
        }
    }
    /// Takes part in meshes and gossip.
    pub fn is_meshsub(self) -> bool {
        self != PeerKind::Floodsub
    }
    /// Understands PRUNE's backoff and peer exchange (v1.1).
    pub fn has_px(self) -> bool {
        self >= PeerKind::Meshsub11
    }
    /// Understands IDONTWANT (v1.2).
    pub fn has_idontwant(self) -> bool {
        self >= PeerKind::Meshsub12
    }
    /// Sends and takes the extensions control message (v1.3).
    pub fn has_extensions(self) -> bool {
        self >= PeerKind::Meshsub13
    }
}

/// Signing policy (go's names). Both refuse a message that does not follow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signing {
    /// The default of go, js and rust: every message carries `from`, `seqno` and a signature by
    /// `from`'s key; unsigned or badly signed messages are rejected.
    #[default]
    StrictSign,
    /// Messages carry only data and topic (content-addressed ids needed); any author field is rejected.
    StrictNoSign,
}

/// How a message's id is computed. The three implementations differ (PEERS.md): gossip (IHAVE, IWANT,
/// IDONTWANT) only matches between peers that agree.
#[derive(Debug, Clone, Copy, Default)]
pub enum MessageIdFn {
    /// go-libp2p-pubsub's default: `from ‖ seqno` bytes.
    #[default]
    FromSeqno,
    /// sha256 of the data (for [`Signing::StrictNoSign`] topics).
    ContentSha256,
    Custom(fn(&Message) -> Vec<u8>),
}

impl MessageIdFn {
    pub fn id(&self, m: &Message) -> MessageId {
        match self {
            MessageIdFn::FromSeqno => {
                let mut v = m.from.clone().unwrap_or_default();
                v.extend_from_slice(m.seqno.as_deref().unwrap_or_default());
                Arc::from(v)
            }
            MessageIdFn::ContentSha256 => Arc::from(&Sha256::digest(m.data())[..]),
            MessageIdFn::Custom(f) => Arc::from(f(m)),
        }
    }
}

/// The router's parameters. Defaults are go-libp2p-pubsub's unless stated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Mesh degree: target, low and high watermarks, outbound quota.
    pub d: usize,
    pub d_lo: usize,
    pub d_hi: usize,
    pub d_out: usize,
    /// Mesh peers kept by score when the mesh is pruned (the rest at random). Default 4.
    pub d_score: usize,
    /// Latency-aware mesh (a hyphae addition; 0 turns it off, as in the spec): of the peers a mesh
    /// grafts or keeps when it prunes, up to `d_near` are the nearest by round trip (ping's average,
    /// see `Router::set_rtt`), the rest at random as the spec says. Paths through a mesh of near
    /// peers follow the short links, so a message is not carried across a region and back; the
    /// random rest keeps the mesh one connected graph and lets no cluster close itself off. Peers
    /// with no measured round trip are never near. Default 4 (of `d` = 6).
    pub d_near: usize,
    /// Peers gossiped to per topic per heartbeat: at least `d_lazy`, or `gossip_factor` of the eligible.
    pub d_lazy: usize,
    pub gossip_factor: f64,
    pub heartbeat_interval: Duration,
    pub heartbeat_initial_delay: Duration,
    /// A topic we publish to without subscribing keeps its fanout peers this long after the last publish.
    pub fanout_ttl: Duration,
    /// Heartbeats a message stays in the cache, and of those, how many recent ones are gossiped.
    pub history_length: usize,
    pub history_gossip: usize,
    /// Bytes of messages the cache holds at most (beyond: a message is delivered and forwarded but not
    /// offered in gossip, counted in `cache_full`). Default 64 MiB.
    pub max_cache_bytes: usize,
    /// How long a message id is remembered as seen. Default 2 min.
    pub seen_ttl: Duration,
    /// Seen ids remembered at most (beyond: the oldest are forgotten early, counted). Default 1,000,000.
    pub max_seen: usize,
    /// Backoff after a PRUNE (sent or received without its own), and after leaving a topic.
    pub prune_backoff: Duration,
    pub unsubscribe_backoff: Duration,
    /// A remote PRUNE's backoff is capped here (rust-libp2p's advisories: an unbounded one overflowed).
    /// Default 1 h.
    pub max_prune_backoff: Duration,
    /// Peers offered in our PRUNEs (v1.1 peer exchange). Default 16.
    pub prune_peers: usize,
    /// Publish to every subscribed peer, not just the mesh (v1.1). Default on.
    pub flood_publish: bool,
    /// A message of at most this many bytes of data that arrives straight from its author (the first
    /// hop of a flood publish) is forwarded to the subscribed peers scoring at least
    /// `thresholds.publish` beyond the mesh too (at most `flood_first_hop_peers` of them): the
    /// publisher's flood reaches two hops. A receiver
    /// two connections from the publisher then gets it over two hops rather than over whatever the
    /// meshes offer (1,000 nodes in three regions: per-delivery stretch p99 1.75 → 1.43, for 2.4% more
    /// copies sent). Large messages (blocks) keep to the mesh: each extra copy costs the first hop's
    /// uplink. Default 16 KiB; 0: off. hyphae's own rule, not the spec's (which forwards to the mesh
    /// only); every receiver takes a message from any peer, so other stacks need nothing for it.
    pub flood_first_hop: usize,
    /// At most this many peers beyond the mesh (and floodsub peers) get such a message from us, the
    /// nearest by round trip first (beyond: counted in `Stats::first_hop_capped`). Default 12 (Dhi).
    pub flood_first_hop_peers: usize,
    /// IHAVE messages taken from one peer per heartbeat, and ids asked for from one peer per heartbeat.
    /// Defaults 10 and 5,000.
    pub max_ihave_messages: usize,
    pub max_ihave_length: usize,
    /// A message id is served to one peer through IWANT at most this often. Default 3.
    pub gossip_retransmission: u8,
    /// Send IDONTWANT to v1.2 mesh peers for received messages of at least this many data bytes.
    /// Default 1 KiB (go's; js uses 512 B, rust 1000 B). `usize::MAX` turns it off.
    pub idontwant_threshold: usize,
    /// Staggered sending of large messages (`stagger_threshold` data bytes or more): at most `stagger`
    /// peers are sent one at a time; the others' copies wait in their queues, where an IDONTWANT that
    /// arrives meanwhile takes them back (`Stats::idontwant_cancelled`). Behind one uplink the copies
    /// leave one after another anyway, so the first peers get the message sooner and the last often
    /// never need it. `stagger` 0 turns it off (every copy is written at once, as go and rust do).
    /// Default 1 (measured against 2 and 0 in BENCHMARKS.md, "Gossipsub"). A peer's turn ends when its
    /// copy has left the node (`StreamEvent::Drained`) or after `stagger_hold` (default 100 ms), so a
    /// peer that does not read holds the others up once, for that long at most. `stagger_threshold`
    /// defaults to 32 KiB: a smaller copy leaves (2.6 ms at 100 Mbit/s) before an IDONTWANT could
    /// arrive, and small messages are worth more batched than staggered.
    pub stagger: usize,
    /// Which peer takes a free turn: the nearest by round trip (as `d_near` ranks them; peers without
    /// one last) when true, else turns go round in peer-id order. Near peers pass a message on within
    /// their region while the far copies still wait, and a far peer that got it meanwhile answers with
    /// IDONTWANT, which takes its copy back. Default true (BENCHMARKS.md, "Gossipsub").
    pub stagger_nearest: bool,
    pub stagger_threshold: usize,
    pub stagger_hold: Duration,
    /// v1.4's large-message handling, advertised in the v1.3 extensions message: a copy of a message of
    /// at least `preamble_threshold` data bytes sent to a peer that advertised it goes right behind a
    /// PREAMBLE (its id, size and topic), so the peer learns of it when its first bytes arrive rather
    /// than its last; a mesh peer receiving a PREAMBLE for a message it has not seen tells its other
    /// such mesh peers IMRECEIVING, which they honour as an IDONTWANT (queued copies taken back, later
    /// forwards left out), and it defers IWANTs for that message for `preamble_wait` (then it asks
    /// like before, so a peer that announces and never sends costs one wait). Default on, 32 KiB
    /// (the staggering threshold: a smaller copy arrives before an IMRECEIVING could help), 1 s.
    pub large_messages: bool,
    pub preamble_threshold: usize,
    pub preamble_wait: Duration,
    /// Messages announced by PREAMBLE that one peer may have outstanding (beyond: its PREAMBLEs are
    /// ignored, counted in `Stats::preambles_ignored`). Default 16 (v1.4's `max_pending_fragments`).
    pub max_preambles_per_peer: usize,
    /// v1.3's experimental test extension, for interop tests: advertised, and the test message sent to
    /// peers that advertise it too. Default off.
    pub test_extension: bool,
    /// IDONTWANT (and IMRECEIVING) ids taken from one peer per heartbeat (beyond: ignored, counted).
    /// Default 1,000.
    pub max_idontwant_per_heartbeat: usize,
    /// Heartbeats an IDONTWANT is honoured. Default 3.
    pub idontwant_heartbeats: u64,
    /// Topics one peer may be subscribed to (beyond: its subscriptions are ignored, counted). Default 500.
    pub max_topics_per_peer: usize,
    /// Bytes of messages and control queued for one peer, not yet taken by its stream (beyond: what
    /// comes next for that peer is dropped, counted in `dropped_messages` / `dropped_control`). A peer
    /// this far behind is not reading. Default 8 MiB.
    pub max_queue_bytes: usize,
    /// Bytes of gossip (IHAVE, IWANT answers) queued for one peer; it is dropped first. Default 1 MiB.
    pub max_gossip_queue_bytes: usize,
    /// Messages waiting for the application's verdict on validated topics (beyond: new ones are dropped,
    /// counted in `validation_dropped`), and how long a verdict may take (then: ignored, counted in
    /// `validation_timeouts`). Defaults 1,024 and 10 s.
    pub max_pending_validation: usize,
    pub validation_timeout: Duration,
    pub signing: Signing,
    pub message_id: MessageIdFn,
    /// The first sequence number we publish with (then +1 per message). The driver sets it from the
    /// clock (go starts at unix nanoseconds) so a restarted node does not repeat ids.
    pub first_seqno: u64,
    pub limits: wire::Limits,
    /// Peer scoring (v1.1); `None` turns it off (every peer scores 0). Default: on, with generic
    /// weights (`score::Params::default`): mesh time and first deliveries earn a little, invalid
    /// messages, GRAFTs during a backoff, broken IWANT promises, malformed RPCs and crowds on one public
    /// IP cost a lot. Set per-topic parameters (P3 needs the topic's message rate) for more.
    pub score: Option<score::Params>,
    pub thresholds: score::Thresholds,
    /// A peer answering our IWANT must deliver within this long, or pays a behaviour penalty. Default 3 s.
    pub iwant_followup: Duration,
    /// Simulations only: this node attacks (see [`Adversary`]). Default `Honest`.
    pub adversary: Adversary,
    /// Every this many heartbeats, a mesh whose median score is below `thresholds.opportunistic_graft`
    /// grafts up to 2 better-scoring peers. Default 60.
    pub opportunistic_graft_ticks: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            d: 6,
            d_lo: 5,
            d_hi: 12,
            d_out: 2,
            d_score: 4,
            d_near: 4,
            d_lazy: 6,
            gossip_factor: 0.25,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_initial_delay: Duration::from_millis(100),
            fanout_ttl: Duration::from_secs(60),
            history_length: 5,
            history_gossip: 3,
            max_cache_bytes: 64 << 20,
            seen_ttl: Duration::from_secs(120),
            max_seen: 1_000_000,
            prune_backoff: Duration::from_secs(60),
            unsubscribe_backoff: Duration::from_secs(10),
            max_prune_backoff: Duration::from_secs(3600),
            prune_peers: 16,
            flood_publish: true,
            flood_first_hop: 16 * 1024,
            flood_first_hop_peers: 12,
            max_ihave_messages: 10,
            max_ihave_length: 5000,
            gossip_retransmission: 3,
            idontwant_threshold: 1024,
            stagger: 1,
            stagger_nearest: true,
            stagger_threshold: 32 * 1024,
            stagger_hold: Duration::from_millis(100),
            large_messages: true,
            preamble_threshold: 32 * 1024,
            preamble_wait: Duration::from_secs(1),
            max_preambles_per_peer: 16,
            test_extension: false,
            max_idontwant_per_heartbeat: 1000,
            idontwant_heartbeats: 3,
            max_topics_per_peer: 500,
            max_queue_bytes: 8 << 20,
            max_gossip_queue_bytes: 1 << 20,
            max_pending_validation: 1024,
            validation_timeout: Duration::from_secs(10),
            signing: Signing::StrictSign,
            message_id: MessageIdFn::FromSeqno,
            first_seqno: 1,
            limits: wire::Limits::default(),
            score: Some(score::Params::default()),
            thresholds: score::Thresholds::default(),
            iwant_followup: Duration::from_secs(3),
            opportunistic_graft_ticks: 60,
            adversary: Adversary::Honest,
        }
    }
}

/// How a node misbehaves on purpose: for attack scenarios in the simulator (and tests), never set by
/// the Host. Every mode but `Honest` forwards nothing, answers no IWANT and gossips nothing, while it
/// keeps its subscriptions and accepts GRAFTs (to sit in meshes and starve them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Adversary {
    #[default]
    Honest,
    /// Drops everything (a covert flash when switched on after behaving).
    Drop,
    /// Drops, and sends each peer `n` invalid (badly signed) messages per heartbeat.
    Spam(u32),
    /// Drops, and floods each peer every heartbeat: IHAVE with 1,000 unknown ids per topic, GRAFT for
    /// every topic it knows (during backoffs too), IWANT for unknown ids.
    FloodControl,
}

/// The application's verdict on a message of a validated topic (go's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Deliver it and forward it.
    Accept,
    /// Invalid: dropped (and, with scoring, held against the peer that sent it).
    Reject,
    /// Dropped without blame (e.g. too old to matter).
    Ignore,
}

/// What gossipsub reports to the application.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message on a validated topic waits for `Router::report_validation` before it is delivered or
    /// forwarded (its IDONTWANT already went out).
    Validate {
        id: MessageId,
        source: PeerId,
        author: Option<PeerId>,
        message: Arc<Message>,
    },
    /// A valid message on a topic we are subscribed to (each message once).
    Message {
        id: MessageId,
        /// The peer we received it from.
        source: PeerId,
        /// Its author (`from`), when signed.
        author: Option<PeerId>,
        message: Arc<Message>,
    },
    Subscribed {
        peer: PeerId,
        topic: String,
    },
    Unsubscribed {
        peer: PeerId,
        topic: String,
    },
}
