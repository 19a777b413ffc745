//! Metrics the simulator collects: counters per phase, RTT histograms (log-linear buckets, so memory does
//! not grow with the number of samples) overall and per time bucket.

pub use crate::histogram::Histogram;

#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub dials: u64,
    pub dial_failures: u64,
    pub connections: u64,
    pub disconnections: u64,
    pub pings_ok: u64,
    pub pings_failed: u64,
    pub identifies: u64,
    pub identify_failures: u64,
    pub messages: u64,
    /// UDP datagrams sent, and those lost (random loss, partitions, dead receivers).
    pub datagrams: u64,
    pub datagrams_lost: u64,
    pub bytes: u64,
    pub crashes: u64,
    pub restarts: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.dials += o.dials;
        self.dial_failures += o.dial_failures;
        self.connections += o.connections;
        self.disconnections += o.disconnections;
        self.pings_ok += o.pings_ok;
        self.pings_failed += o.pings_failed;
        self.identifies += o.identifies;
        self.identify_failures += o.identify_failures;
        self.messages += o.messages;
        self.datagrams += o.datagrams;
        self.datagrams_lost += o.datagrams_lost;
        self.bytes += o.bytes;
        self.crashes += o.crashes;
        self.restarts += o.restarts;
    }
}

/// One phase of a scenario (metrics between two `phase` marks).
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub counters: Counters,
    pub rtt: Histogram,
    pub dht: crate::dht::Metrics,
    pub pubsub: crate::pubsub::Metrics,
}

impl Phase {
    pub fn metric(&self, name: &str) -> Option<f64> {
        let c = &self.counters;
        Some(match name {
            "dials" => c.dials as f64,
            "dial_failures" => c.dial_failures as f64,
            "connections" => c.connections as f64,
            "disconnections" => c.disconnections as f64,
            "pings_ok" => c.pings_ok as f64,
            "pings_failed" => c.pings_failed as f64,
            "ping_success_rate" => {
                let t = c.pings_ok + c.pings_failed;
                if t == 0 {
                    0.0
                } else {
                    c.pings_ok as f64 / t as f64
                }
            }
            "identifies" => c.identifies as f64,
            "identify_failures" => c.identify_failures as f64,
            "messages" => c.messages as f64,
            "datagrams" => c.datagrams as f64,
            "datagrams_lost" => c.datagrams_lost as f64,
            "bytes" => c.bytes as f64,
            "crashes" => c.crashes as f64,
            "restarts" => c.restarts as f64,
            "rtt_p50_ms" => self.rtt.quantile(0.5) as f64 / 1e6,
            "rtt_p90_ms" => self.rtt.quantile(0.9) as f64 / 1e6,
            "rtt_p99_ms" => self.rtt.quantile(0.99) as f64 / 1e6,
            "rtt_max_ms" => self.rtt.max_ns as f64 / 1e6,
            d if d.starts_with("dht_") => return self.dht.metric(d),
            d if d.starts_with("pubsub_") => return self.pubsub.metric(d),
            _ => return None,
        })
    }

    pub const METRICS: [&'static str; 21] = [
        "dials",
        "dial_failures",
        "connections",
        "disconnections",
        "pings_ok",
        "pings_failed",
        "ping_success_rate",
        "identifies",
        "identify_failures",
        "messages",
        "datagrams",
        "datagrams_lost",
        "bytes",
        "crashes",
        "restarts",
        "rtt_p50_ms",
        "rtt_p90_ms",
        "rtt_p99_ms",
        "rtt_max_ms",
        "connected_fraction",
        "events",
    ];
}
