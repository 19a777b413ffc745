//! Gossipsub in the simulator: what the timeline's `pubsub` actions do to a node's gossipsub service,
//! and the metrics of delivery: the share of subscribers reached, latency, and latency against the
//! shortest path from the publisher (over the connections that existed when it published). The engine
//! (`sim.rs`) only calls in.

use crate::histogram::Histogram;
use hyphae_core::gossipsub::{self, service::GossipsubService};
use hyphae_core::node::ByteNode;
use hyphae_core::time::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

/// Delivery metrics of one phase (messages are counted in the phase they were published in).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub published: u64,
    /// Publishes the router refused (no subscribed peer yet).
    pub publish_failed: u64,
    /// Live subscribers (other than the publisher) when each message was published, summed.
    pub expected: u64,
    pub delivered: u64,
    pub latency: Histogram,
    /// Latency over the shortest-path latency, ×1000 (a histogram of integers).
    pub stretch: Histogram,
    pub shortest: Histogram,
}

impl Metrics {
    pub fn add(&mut self, o: &Metrics) {
        self.published += o.published;
        self.publish_failed += o.publish_failed;
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.latency.merge(&o.latency);
        self.stretch.merge(&o.stretch);
        self.shortest.merge(&o.shortest);
    }

    pub fn delivery(&mut self, latency_ns: u64, shortest_ns: u64) {
        self.delivered += 1;
        self.latency.record(latency_ns);
        if shortest_ns > 0 && shortest_ns != u64::MAX {
            self.shortest.record(shortest_ns);
            self.stretch.record(latency_ns.saturating_mul(1000) / shortest_ns);
        }
    }

    pub const NAMES: [&'static str; 12] = [
        "pubsub_published",
        "pubsub_publish_failed",
        "pubsub_delivery_rate",
        "pubsub_latency_mean_ms",
        "pubsub_latency_p50_ms",
        "pubsub_latency_p99_ms",
        "pubsub_latency_max_ms",
        "pubsub_shortest_p50_ms",
        "pubsub_shortest_p99_ms",
        "pubsub_stretch_p50",
        "pubsub_stretch_p99",
        "pubsub_stretch_max",
    ];

    pub fn metric(&self, name: &str) -> Option<f64> {
        let ms = |h: &Histogram, q: f64| h.quantile(q) as f64 / 1e6;
        Some(match name {
            "pubsub_published" => self.published as f64,
            "pubsub_publish_failed" => self.publish_failed as f64,
            "pubsub_delivery_rate" => {
                if self.expected == 0 {
                    0.0
                } else {
                    self.delivered as f64 / self.expected as f64
                }
            }
            // Exact (the percentiles are bucket midpoints, within 0.8%).
            "pubsub_latency_mean_ms" => self.latency.mean_ns() as f64 / 1e6,
            "pubsub_latency_p50_ms" => ms(&self.latency, 0.5),
            "pubsub_latency_p99_ms" => ms(&self.latency, 0.99),
            "pubsub_latency_max_ms" => self.latency.max_ns as f64 / 1e6,
            "pubsub_shortest_p50_ms" => ms(&self.shortest, 0.5),
            "pubsub_shortest_p99_ms" => ms(&self.shortest, 0.99),
            "pubsub_stretch_p50" => self.stretch.quantile(0.5) as f64 / 1e3,
            "pubsub_stretch_p99" => self.stretch.quantile(0.99) as f64 / 1e3,
            "pubsub_stretch_max" => self.stretch.max_ns as f64 / 1e3,
            _ => return None,
        })
    }
}

/// A published message, until the run ends.
pub struct Record {
    pub at: Instant,
    /// The phase it counts in.
    pub phase: usize,
    /// Shortest-path latency from the publisher to each node (ns; `u64::MAX`: unreachable).
    pub dist: Arc<Vec<u64>>,
    /// Nodes it reached (a node that restarts may fetch it again through gossip: counted once).
    pub reached: Vec<bool>,
}

/// Single-source shortest paths over `adj` (node → (neighbour, one-way latency ns)).
pub fn shortest_paths(adj: &[Vec<(usize, u64)>], src: usize) -> Vec<u64> {
    let mut dist = vec![u64::MAX; adj.len()];
    let mut heap = BinaryHeap::new();
    dist[src] = 0;
    heap.push(Reverse((0u64, src)));
    while let Some(Reverse((d, u))) = heap.pop() {
        if d > dist[u] {
            continue;
        }
        for &(v, w) in &adj[u] {
            let nd = d + w;
            if nd < dist[v] {
                dist[v] = nd;
                heap.push(Reverse((nd, v)));
            }
        }
    }
    dist
}

/// Joins `topic`; `validated`: its messages wait for the application's verdict.
pub fn subscribe(node: &mut ByteNode, now: Instant, topic: &str, validated: bool) {
    node.with_service::<GossipsubService, _>(now, |g, cx| {
        g.set_validated(topic, validated);
        g.subscribe(cx, topic)
    });
}

/// Publishes; the message id, or `None` when the router refused.
pub fn publish(node: &mut ByteNode, now: Instant, topic: &str, data: Vec<u8>) -> Option<Vec<u8>> {
    node.with_service::<GossipsubService, _>(now, |g, cx| g.publish(cx, topic, data).ok().map(|id| id.to_vec())).flatten()
}

/// The node's router counters, and its mean mesh size over its topics.
pub fn stats(node: &mut ByteNode) -> Option<(gossipsub::Stats, f64)> {
    node.node_mut().service_mut::<GossipsubService>().map(|g| {
        let r = g.router();
        let topics = r.topics();
        let degree =
            if topics.is_empty() { 0.0 } else { topics.iter().map(|t| r.mesh_peers(t).len()).sum::<usize>() as f64 / topics.len() as f64 };
        (r.stats().clone(), degree)
    })
}

/// Run-wide traffic of the honest gossipsub nodes alive at the end.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    pub nodes: usize,
    pub delivered: u64,
    pub duplicates: u64,
    pub messages_sent: u64,
    pub message_bytes_sent: u64,
    pub idontwant_sent: u64,
    pub idontwant_saved: u64,
    pub idontwant_cancelled: u64,
    pub preambles_sent: u64,
    pub imreceiving_sent: u64,
    pub imreceiving_cancelled: u64,
    pub preamble_bytes: u64,
    pub gossip_bytes: u64,
    pub idontwant_bytes: u64,
    pub graft_prune_bytes: u64,
    pub degree_sum: f64,
    pub graylisted: u64,
    pub invalid: u64,
    /// Peer exchange: offers taken, and peers dialed from them.
    pub px_taken: u64,
    pub px_dialed: u64,
}

impl Traffic {
    pub fn add(&mut self, s: &gossipsub::Stats, degree: f64) {
        self.nodes += 1;
        self.gossip_bytes += s.ihave_bytes_sent + s.iwant_bytes_sent;
        self.idontwant_bytes += s.idontwant_bytes_sent;
        self.graft_prune_bytes += s.graft_prune_bytes_sent;
        self.degree_sum += degree;
        self.graylisted += s.graylisted_rpcs;
        self.invalid += s.invalid_messages;
        self.delivered += s.delivered;
        self.duplicates += s.duplicates;
        self.messages_sent += s.messages_sent;
        self.message_bytes_sent += s.message_bytes_sent;
        self.idontwant_sent += s.idontwant_sent;
        self.idontwant_saved += s.idontwant_saved;
        self.idontwant_cancelled += s.idontwant_cancelled;
        self.preambles_sent += s.preambles_sent;
        self.imreceiving_sent += s.imreceiving_sent;
        self.imreceiving_cancelled += s.imreceiving_cancelled;
        self.preamble_bytes += s.preamble_bytes_sent;
        self.px_taken += s.px_taken;
        self.px_dialed += s.px_dialed;
    }

    pub const NAMES: [&'static str; 18] = [
        "pubsub_duplicates_per_delivery",
        "pubsub_copies_per_node",
        "pubsub_mib_sent_per_node",
        "pubsub_kib_gossip_per_node",
        "pubsub_kib_idontwant_per_node",
        "pubsub_kib_graft_prune_per_node",
        "pubsub_idontwant_sent_per_node",
        "pubsub_idontwant_saved_per_node",
        "pubsub_idontwant_cancelled_per_node",
        "pubsub_preambles_per_node",
        "pubsub_imreceiving_sent_per_node",
        "pubsub_imreceiving_cancelled_per_node",
        "pubsub_kib_preamble_per_node",
        "pubsub_mesh_degree",
        "pubsub_graylisted_rpcs_per_node",
        "pubsub_invalid_per_node",
        "pubsub_px_taken_per_node",
        "pubsub_px_dialed_per_node",
    ];

    pub fn metric(&self, name: &str) -> Option<f64> {
        let per = |x: u64, n: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        let n = self.nodes as u64;
        Some(match name {
            "pubsub_duplicates_per_delivery" => per(self.duplicates, self.delivered),
            "pubsub_copies_per_node" => per(self.messages_sent, n),
            "pubsub_mib_sent_per_node" => per(self.message_bytes_sent, n) / (1 << 20) as f64,
            "pubsub_kib_gossip_per_node" => per(self.gossip_bytes, n) / 1024.0,
            "pubsub_kib_idontwant_per_node" => per(self.idontwant_bytes, n) / 1024.0,
            "pubsub_kib_graft_prune_per_node" => per(self.graft_prune_bytes, n) / 1024.0,
            "pubsub_mesh_degree" => {
                if n == 0 {
                    0.0
                } else {
                    self.degree_sum / n as f64
                }
            }
            "pubsub_graylisted_rpcs_per_node" => per(self.graylisted, n),
            "pubsub_invalid_per_node" => per(self.invalid, n),
            "pubsub_idontwant_sent_per_node" => per(self.idontwant_sent, n),
            "pubsub_idontwant_saved_per_node" => per(self.idontwant_saved, n),
            "pubsub_idontwant_cancelled_per_node" => per(self.idontwant_cancelled, n),
            "pubsub_preambles_per_node" => per(self.preambles_sent, n),
            "pubsub_imreceiving_sent_per_node" => per(self.imreceiving_sent, n),
            "pubsub_imreceiving_cancelled_per_node" => per(self.imreceiving_cancelled, n),
            "pubsub_kib_preamble_per_node" => per(self.preamble_bytes, n) / 1024.0,
            "pubsub_px_taken_per_node" => per(self.px_taken, n),
            "pubsub_px_dialed_per_node" => per(self.px_dialed, n),
            _ => return None,
        })
    }
}
