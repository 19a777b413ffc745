//! The DHT in the simulator: what the timeline's `dht` actions do to a node's Kademlia service, and the
//! metrics of its operations (success, latency, hops, requests). The engine (`sim.rs`) only calls in.

use crate::histogram::Histogram;
use hyphae_core::kad::{self, service::KadService, Event as KadEvent, QueryId};
use hyphae_core::node::ByteNode;
use hyphae_core::time::Instant;
use hyphae_core::{Multiaddr, PeerId};
use std::collections::BTreeMap;

/// A DHT operation of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhtOp {
    Bootstrap,
    Provide,
    FindProviders,
    FindPeer,
    /// find-providers of the eclipse attack's target key.
    FindTarget,
}

/// One finished operation, as a node reports it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub op: DhtOp,
    pub ok: bool,
    pub latency_ns: u64,
    pub hops: u32,
    pub answered: u32,
}

/// DHT metrics of one phase.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub provides: u64,
    pub provides_ok: u64,
    pub provide_latency: Histogram,
    /// find-providers and find-peer.
    pub lookups: u64,
    pub lookups_ok: u64,
    pub lookup_latency: Histogram,
    pub hops_sum: u64,
    /// Peers that answered, summed over lookups (the requests a lookup cost, less the failed ones).
    pub answered_sum: u64,
    pub bootstraps: u64,
    pub bootstraps_ok: u64,
    /// find-peer only (also counted in `lookups`).
    pub find_peers: u64,
    pub find_peers_ok: u64,
    /// find-providers of the target key (not in `lookups`).
    pub targets: u64,
    pub targets_ok: u64,
}

impl Metrics {
    pub fn record(&mut self, s: &Sample) {
        match s.op {
            DhtOp::Bootstrap => {
                self.bootstraps += 1;
                self.bootstraps_ok += u64::from(s.ok);
            }
            DhtOp::Provide => {
                self.provides += 1;
                if s.ok {
                    self.provides_ok += 1;
                    self.provide_latency.record(s.latency_ns);
                }
            }
            DhtOp::FindTarget => {
                self.targets += 1;
                self.targets_ok += u64::from(s.ok);
            }
            DhtOp::FindProviders | DhtOp::FindPeer => {
                if s.op == DhtOp::FindPeer {
                    self.find_peers += 1;
                    self.find_peers_ok += u64::from(s.ok);
                }
                self.lookups += 1;
                self.hops_sum += u64::from(s.hops);
                self.answered_sum += u64::from(s.answered);
                if s.ok {
                    self.lookups_ok += 1;
                    self.lookup_latency.record(s.latency_ns);
                }
            }
        }
    }

    pub fn add(&mut self, o: &Metrics) {
        self.provides += o.provides;
        self.provides_ok += o.provides_ok;
        self.provide_latency.merge(&o.provide_latency);
        self.lookups += o.lookups;
        self.lookups_ok += o.lookups_ok;
        self.lookup_latency.merge(&o.lookup_latency);
        self.hops_sum += o.hops_sum;
        self.answered_sum += o.answered_sum;
        self.bootstraps += o.bootstraps;
        self.bootstraps_ok += o.bootstraps_ok;
        self.find_peers += o.find_peers;
        self.find_peers_ok += o.find_peers_ok;
        self.targets += o.targets;
        self.targets_ok += o.targets_ok;
    }

    pub const NAMES: [&'static str; 14] = [
        "dht_provides",
        "dht_provide_success_rate",
        "dht_provide_p50_ms",
        "dht_lookups",
        "dht_lookup_success_rate",
        "dht_find_peer_success_rate",
        "dht_lookup_p50_ms",
        "dht_lookup_p90_ms",
        "dht_lookup_p99_ms",
        "dht_hops_mean",
        "dht_answers_per_lookup",
        "dht_bootstraps_ok",
        "dht_target_lookups",
        "dht_target_success_rate",
    ];

    pub fn metric(&self, name: &str) -> Option<f64> {
        let rate = |ok: u64, n: u64| if n == 0 { 0.0 } else { ok as f64 / n as f64 };
        let ms = |h: &Histogram, q: f64| h.quantile(q) as f64 / 1e6;
        Some(match name {
            "dht_provides" => self.provides as f64,
            "dht_provide_success_rate" => rate(self.provides_ok, self.provides),
            "dht_provide_p50_ms" => ms(&self.provide_latency, 0.5),
            "dht_lookups" => self.lookups as f64,
            "dht_lookup_success_rate" => rate(self.lookups_ok, self.lookups),
            "dht_find_peer_success_rate" => rate(self.find_peers_ok, self.find_peers),
            "dht_lookup_p50_ms" => ms(&self.lookup_latency, 0.5),
            "dht_lookup_p90_ms" => ms(&self.lookup_latency, 0.9),
            "dht_lookup_p99_ms" => ms(&self.lookup_latency, 0.99),
            "dht_hops_mean" => rate(self.hops_sum, self.lookups),
            "dht_answers_per_lookup" => rate(self.answered_sum, self.lookups),
            "dht_bootstraps_ok" => self.bootstraps_ok as f64,
            "dht_target_lookups" => self.targets as f64,
            "dht_target_success_rate" => rate(self.targets_ok, self.targets),
            _ => return None,
        })
    }
}

/// A node's DHT operations in flight: what each query is, when it started, whether it found something.
#[derive(Debug, Default)]
pub struct Pending {
    queries: BTreeMap<QueryId, (DhtOp, Instant, bool)>,
}

impl Pending {
    /// Notes a kad event; a finished operation becomes a sample.
    pub fn on_event(&mut self, now: Instant, ev: &KadEvent) -> Option<Sample> {
        match ev {
            KadEvent::Provider { query, .. } | KadEvent::Value { query, .. } => {
                if let Some(q) = self.queries.get_mut(query) {
                    q.2 = true;
                }
                None
            }
            KadEvent::Finished { query, outcome } => {
                let (op, start, found) = self.queries.remove(query)?;
                let ok = match (op, outcome) {
                    (DhtOp::FindProviders | DhtOp::FindTarget, _) => found,
                    (DhtOp::FindPeer, Ok(o)) => o.found.is_some(),
                    (DhtOp::Provide, Ok(o)) => o.stored > 0,
                    (DhtOp::Bootstrap, Ok(_)) => true,
                    (_, Err(_)) => false,
                };
                let (hops, answered) = outcome.as_ref().map_or((0, 0), |o| (o.hops, o.answered as u32));
                Some(Sample { op, ok, latency_ns: now.as_nanos().saturating_sub(start.as_nanos()), hops, answered })
            }
            _ => None,
        }
    }

    fn started(&mut self, now: Instant, op: DhtOp, r: Result<QueryId, kad::QueryError>) -> Option<Sample> {
        match r {
            Ok(q) => {
                self.queries.insert(q, (op, now, false));
                None
            }
            // Could not even start (an empty table): a failed operation.
            Err(_) => Some(Sample { op, ok: false, latency_ns: 0, hops: 0, answered: 0 }),
        }
    }
}

/// What one `dht` action asks of one node.
#[derive(Debug, Clone)]
pub enum Command {
    Bootstrap(Vec<(PeerId, Multiaddr)>),
    Provide(Vec<u8>),
    FindProviders(Vec<u8>),
    FindPeer(PeerId),
    /// find-providers of the target key.
    FindTarget,
}

/// Runs `cmd` on the node's kad service (if it has one); a sample if it failed to start.
pub fn run(node: &mut ByteNode, pending: &mut Pending, now: Instant, cmd: Command) -> Option<Sample> {
    let (op, r) = node.with_service::<KadService, _>(now, |k, cx| match cmd {
        Command::Bootstrap(peers) => {
            for (p, a) in &peers {
                k.add_peer(cx, p, std::slice::from_ref(a));
            }
            (DhtOp::Bootstrap, k.bootstrap(cx))
        }
        Command::Provide(key) => (DhtOp::Provide, k.provide(cx, key)),
        Command::FindProviders(key) => (DhtOp::FindProviders, k.find_providers(cx, key, 1)),
        Command::FindPeer(p) => (DhtOp::FindPeer, k.find_peer(cx, &p)),
        Command::FindTarget => (DhtOp::FindTarget, k.find_providers(cx, target_key(), 1)),
    })?;
    pending.started(now, op, r)
}

/// `find-providers` picks among keys provided at least this long ago.
pub const PROVIDE_SETTLE: hyphae_core::time::Duration = hyphae_core::time::Duration::from_secs(10);

/// The `n`-th key a simulation provides: a sha2-256 multihash (what a CIDv0 is).
pub fn key(n: u64) -> Vec<u8> {
    let mut k = vec![0x12, 0x20];
    k.extend_from_slice(&kad::Key::from_bytes(&n.to_le_bytes()).0);
    k
}

/// The key `eclipse` sybils attack: a sha2-256 multihash no `key(n)` equals.
pub fn target_key() -> Vec<u8> {
    let mut k = vec![0x12, 0x20];
    k.extend_from_slice(&kad::Key::from_bytes(b"the eclipse target").0);
    k
}

/// A node's kad counters.
/// The DHT metrics of the whole run (the report's, not per phase), by name.
pub const RUN_WIDE: [&str; 6] =
    ["dht_servers", "dht_table_mean", "dht_table_rtt_ms", "dht_replaced_nearer", "dht_widened", "dht_diversity_rejected"];

/// A node's kad service, when it runs one.
pub fn kad(node: &mut ByteNode) -> Option<&mut KadService> {
    node.node_mut().service_mut::<KadService>()
}

/// Routing-table size of a node's kad service, and whether it serves.
pub fn table(node: &mut ByteNode) -> Option<(usize, bool)> {
    kad(node).map(|k| (k.table().len(), k.is_server()))
}
