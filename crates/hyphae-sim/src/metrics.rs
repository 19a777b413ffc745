//! Metrics the simulator collects: counters per phase, RTT histograms (log-linear buckets, so memory does
//! not grow with the number of samples) overall and per time bucket.

use std::collections::BTreeMap;

/// Log-linear histogram of durations in nanoseconds: 8 buckets per power of two, ~9% resolution.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: BTreeMap<u32, u64>,
    pub count: u64,
    pub sum_ns: u128,
    pub min_ns: u64,
    pub max_ns: u64,
}

const SUB: u32 = 8;

fn bucket_of(ns: u64) -> u32 {
    let v = ns.max(1);
    let exp = 63 - v.leading_zeros();
    let frac = if exp >= 3 { ((v >> (exp - 3)) & 7) as u32 } else { ((v << (3 - exp)) & 7) as u32 };
    exp * SUB + frac
}

fn bucket_mid(b: u32) -> u64 {
    let exp = b / SUB;
    let frac = u64::from(b % SUB);
    let base = 1u64 << exp;
    base + (base * frac + base / 2) / u64::from(SUB)
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        if self.count == 0 || ns < self.min_ns {
            self.min_ns = ns;
        }
        self.max_ns = self.max_ns.max(ns);
        self.count += 1;
        self.sum_ns += u128::from(ns);
        *self.buckets.entry(bucket_of(ns)).or_default() += 1;
    }

    /// The `q` quantile (0..=1) in nanoseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= target {
                return bucket_mid(*b).clamp(self.min_ns, self.max_ns);
            }
        }
        self.max_ns
    }

    pub fn mean_ns(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum_ns / u128::from(self.count)) as u64
        }
    }

    pub fn merge(&mut self, o: &Histogram) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 || o.min_ns < self.min_ns {
            self.min_ns = o.min_ns;
        }
        self.max_ns = self.max_ns.max(o.max_ns);
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        for (b, n) in &o.buckets {
            *self.buckets.entry(*b).or_default() += n;
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_within_resolution() {
        let mut h = Histogram::default();
        for i in 1..=1000u64 {
            h.record(i * 1_000_000);
        }
        let p50 = h.quantile(0.5) as f64 / 1e6;
        let p99 = h.quantile(0.99) as f64 / 1e6;
        assert!((p50 - 500.0).abs() / 500.0 < 0.1, "{p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.1, "{p99}");
        assert_eq!(h.min_ns, 1_000_000);
        assert_eq!(h.max_ns, 1_000_000_000);
    }
}
