//! The Kademlia DHT (`/ipfs/kad/1.0.0`, libp2p/specs kad-dht/README.md) as a node service.
//!
//! - `wire.rs`: the spec's `Message` protobuf (`dht.proto`), validated under [`wire::Limits`].
//! - `table.rs`: the routing table: XOR distance over sha256 of the key, k-buckets, go's diversity filter.
//! - `query.rs`: one iterative lookup as a machine (α in flight, done when the k closest answered), with
//!   the defenses against an eclipse of a key: disjoint paths, a per-IP-group limit on candidates and a
//!   density check (`scenarios/dht-eclipse.hyp` measures them).
//! - `store.rs`: records (validated per namespace) and provider records, bounded.
//! - `service.rs`: the service: serves requests when in server mode, runs queries, dials through the
//!   node's outbox.
//!
//! A node is a DHT **client by default**: in [`Mode::Auto`] (the default) it asks but neither announces
//! the protocol nor answers until AutoNAT confirms a public address, and stops serving when AutoNAT
//! says it lost it (with AutoNAT's hysteresis). [`Mode::Client`] and [`Mode::Server`] pin it.

use crate::identity::PeerId;
use crate::multiaddr::Multiaddr;
use crate::time::Duration;
use sha2::{Digest, Sha256};

pub mod ipns;
pub mod keys;
pub mod query;
pub mod service;
pub mod store;
pub mod table;
pub mod wire;

pub use wire::{KadPeer, Msg, MsgType, Record};

pub const PROTOCOL_ID: &str = "/ipfs/kad/1.0.0";

/// A point in the keyspace: sha256 of a key's bytes (a peer's key is its peer id's bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn from_bytes(b: &[u8]) -> Key {
        Key(Sha256::digest(b).into())
    }
    pub fn from_peer(p: &PeerId) -> Key {
        Key::from_bytes(p.as_bytes())
    }
    /// XOR distance, compared as a 256-bit big-endian number.
    pub fn distance(&self, other: &Key) -> Distance {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Distance(pub [u8; 32]);

impl Distance {
    /// Leading zero bits: the common prefix length of the two keys (256 for equal keys).
    pub fn leading_zeros(&self) -> usize {
        for (i, b) in self.0.iter().enumerate() {
            if *b != 0 {
                return i * 8 + b.leading_zeros() as usize;
            }
        }
        256
    }

    /// The distance as a fraction of the keyspace (its top 64 bits are plenty).
    pub fn fraction(&self) -> f64 {
        let mut top = [0u8; 8];
        top.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(top) as f64 / 18_446_744_073_709_551_616.0
    }
}

/// Whether the node answers DHT requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Ask, never answer; the protocol is not announced.
    Client,
    /// Announce the protocol and answer.
    Server,
    /// The default: a client until AutoNAT confirms a public address, a server while it does.
    #[default]
    Auto,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "client" => Ok(Mode::Client),
            "server" => Ok(Mode::Server),
            "auto" => Ok(Mode::Auto),
            _ => Err(format!("unknown DHT mode {s:?} (auto, client or server)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// Bucket size and the number of closest peers a lookup wants. Default 20 (the spec's k).
    pub k: usize,
    /// Requests in flight per lookup. Default 10 (go Amino's).
    pub alpha: usize,
    /// Lookups on this many disjoint paths (S/Kademlia; α/paths requests in flight on each), so sybils
    /// answering on one path cannot steer the others. Default 1 (off, as go and rust ship).
    pub disjoint_paths: usize,
    /// One request's timeout. Default 10 s.
    pub request_timeout: Duration,
    /// A whole lookup's timeout. Default 60 s.
    pub query_timeout: Duration,
    /// Refresh the routing table this often. Default 10 min (go's).
    pub refresh_interval: Duration,
    /// After a bootstrap's self-lookup, refresh the far buckets too (go's bootstrap). Default on.
    pub refresh_on_bootstrap: bool,
    /// A bootstrap nobody answered is tried again (through the bootstrap peers) after this, plus up to
    /// 25% jitter. Default 30 s.
    pub rebootstrap_after: Duration,
    /// A node whose routing table holds this many peers or fewer bootstraps again (the seeds, a
    /// self-lookup, the bucket refresh), checked every `low_table_interval` once it has bootstrapped:
    /// go's `fixLowPeers` (minRTRefreshThreshold 10, every 2 min): a node that lost its peers, or joined
    /// before the network did, meets the peers around it again before its first refresh (10 min).
    /// Default 10; 0 turns it off.
    pub low_table: usize,
    /// Default 2 min.
    pub low_table_interval: Duration,
    /// Provider records expire after this. Default 48 h (the spec's).
    pub provider_ttl: Duration,
    /// Keys we provide are announced again this often. Default 22 h (go's).
    pub reprovide_interval: Duration,
    /// Stored records expire after this. Default 48 h.
    pub record_ttl: Duration,
    /// Peers in the table per IP group (/16 for IPv4, /32 for IPv6), and per group in one bucket.
    /// Defaults 3 and 2 (go's). Loopback and private ranges are exempt unless `diversity_private`.
    pub max_per_group: usize,
    pub max_per_group_per_bucket: usize,
    pub diversity_private: bool,
    /// Candidates of one IP group a lookup keeps (the same filter over the peers that answers bring;
    /// 0 = no limit). Default 3, the table's `max_per_group`: sybils from one address block cannot fill
    /// a lookup's k closest (the eclipse scenario measures it). go and rust apply no such limit.
    pub lookup_max_per_group: usize,
    /// Lookups notice peers packed around a key far tighter than the network's size allows (sybils
    /// ground close to it) and then want k peers beyond them (`query` module doc). Default on; costs
    /// requests only in lookups where it fires (under 1% of honest ones by design).
    pub density_check: bool,
    /// Optimistic provide (ProbeLab's, go's `EnableOptimisticProvide`): a provide judges the peers its
    /// lookup meets against the network's estimated size, stores the record at once on any peer that
    /// is among the k closest with 90% certainty, ends the lookup when the k closest it knows are as
    /// close on average as the k closest of the network would be (strictness 10%), and reports done
    /// when 75% of its ADD_PROVIDER messages are out (the rest go on). Without a size estimate (tables
    /// of networks under ~160 servers) a provide runs the classic way. Default on.
    pub optimistic_provide: bool,
    /// Proximity neighbour selection: a full bucket makes room for a peer whose measured round trip
    /// (handshake, or request → answer) is under 2/3 of (and 10 ms below) its slowest peer's, so tables, and the
    /// lookup rounds that start from them, lean to near peers (`table` module doc). Default off (go and
    /// rust keep a full bucket's old peers whatever their latency); the simulator's `proximity=on`.
    pub proximity: bool,
    /// Lookups in flight at once (beyond: refused). Default 64.
    pub max_queries: usize,
    /// Inbound streams served at once (beyond: reset). Default 256.
    pub max_inbound_streams: usize,
    pub limits: wire::Limits,
    pub store: store::Limits,
    /// Wall-clock unix seconds at the driver's `Instant(0)`: IPNS records expire on the calendar, so
    /// validation needs the date (the Host passes its clock's; the simulator a fixed one).
    pub unix_time: i64,
    /// Record namespaces of the application's, beside the built-in `/pk/` and `/ipns/` (none by
    /// default).
    pub validators: store::Validators,
    /// Simulations only: this node is a sybil of an eclipse attack (see [`Eclipse`]). Default `None`.
    pub adversary: Option<Eclipse>,
}

/// An eclipse of one key (the content-censorship attack of CVE-2023-26248): sybils whose IDs were
/// ground close to the key answer every request for it with the sybils closest to it only, never with
/// its providers or record, and drop what is stored under it. Everything else they serve honestly, so
/// they stay in routing tables. For the simulator's attack scenarios.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eclipse {
    /// The key under attack (as on the wire: a multihash for providers).
    pub key: Vec<u8>,
    /// Every sybil (itself included), with an address.
    pub sybils: Vec<PeerInfo>,
}

impl Config {
    /// Wall-clock unix nanoseconds at `now`.
    pub fn unix_nanos(&self, now: crate::time::Instant) -> i128 {
        i128::from(self.unix_time) * 1_000_000_000 + i128::from(now.as_nanos())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Auto,
            k: 20,
            disjoint_paths: 1,
            alpha: 10,
            request_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(600),
            refresh_on_bootstrap: true,
            rebootstrap_after: Duration::from_secs(30),
            low_table: 10,
            low_table_interval: Duration::from_secs(120),
            provider_ttl: Duration::from_secs(48 * 3600),
            reprovide_interval: Duration::from_secs(22 * 3600),
            record_ttl: Duration::from_secs(48 * 3600),
            max_per_group: 3,
            max_per_group_per_bucket: 2,
            diversity_private: false,
            lookup_max_per_group: 3,
            density_check: true,
            optimistic_provide: true,
            proximity: false,
            max_queries: 64,
            max_inbound_streams: 256,
            limits: wire::Limits::default(),
            store: store::Limits::default(),
            unix_time: 1_700_000_000,
            validators: store::Validators::default(),
            adversary: None,
        }
    }
}

/// One lookup or publish asked for through the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryId(pub u64);

/// A peer as a query found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
}

/// What the kad service reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A provider found by `find_providers`, as it comes.
    Provider { query: QueryId, provider: PeerInfo },
    /// A valid record found by `get_value`, as it comes.
    Value { query: QueryId, record: Record, from: PeerId },
    /// A query ended. `closest`: the closest peers that answered (for `find_peer`, the peer itself
    /// when found). `stored`: peers that took a PUT or ADD_PROVIDER.
    Finished { query: QueryId, outcome: Result<Outcome, QueryError> },
    /// A peer entered the routing table.
    RoutingUpdated { peer: PeerId },
    /// The node started or stopped serving.
    ModeChanged { server: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub closest: Vec<PeerInfo>,
    pub found: Option<PeerInfo>,
    pub stored: usize,
    /// Peers that answered, and how many request rounds (hops) the query took.
    pub answered: usize,
    pub hops: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    #[error("no peers in the routing table")]
    NoPeers,
    #[error("timed out")]
    Timeout,
    #[error("not found")]
    NotFound,
    #[error("no peer answered")]
    NoAnswer,
    #[error("too many queries in flight")]
    TooMany,
    #[error("record rejected: {0}")]
    InvalidRecord(String),
    #[error("no peer took the record")]
    NotStored,
}

/// Counters, each bumped when its event happens.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub requests_sent: u64,
    pub requests_failed: u64,
    pub requests_served: u64,
    pub inbound_refused: u64,
    pub malformed: u64,
    pub table_rejected_diversity: u64,
    pub table_rejected_full: u64,
    /// Peers that took a full bucket's place of a clearly slower one (`Config::proximity`).
    pub table_replaced_nearer: u64,
    /// Peers a lookup left out by `lookup_max_per_group`.
    pub lookup_rejected_diversity: u64,
    /// Lookups the density check widened (each also seeded again from the routing table).
    pub lookups_widened: u64,
    /// Lookup requests given up as stragglers before `request_timeout` (`query::STRAGGLER_FACTOR`).
    pub lookup_stragglers: u64,
    pub queries_started: u64,
    pub queries_refused: u64,
    /// Bootstraps started because the routing table held `Config::low_table` peers or fewer.
    pub low_table_bootstraps: u64,
    /// Provides run optimistically (`Config::optimistic_provide`), and of those, the ones whose lookup
    /// the optimistic rule ended before the classic rule would have.
    pub optimistic_provides: u64,
    pub optimistic_early_ends: u64,
    /// ADD_PROVIDER messages sent during a provide's lookup, to peers judged among the k closest.
    pub optimistic_early_stores: u64,
}

#[cfg(test)]
mod tests;
