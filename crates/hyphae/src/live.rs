//! Counters the drivers keep as things happen (bytes on the wire, ping round trips), for the metrics.
//! Below both the drivers and `metrics`, so neither imports the other.

use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::AtomicU64;

/// What the drivers count as it happens.
pub(crate) struct Live {
    pub tcp_in: AtomicU64,
    pub tcp_out: AtomicU64,
    pub udp_in: AtomicU64,
    pub udp_out: AtomicU64,
    /// Ping round trips (periodic and `host.ping`), in seconds.
    pub ping_rtt: Histogram,
}

impl Default for Live {
    fn default() -> Self {
        // 0.5 ms to ~4 s.
        let buckets = prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14);
        Live {
            tcp_in: AtomicU64::new(0),
            tcp_out: AtomicU64::new(0),
            udp_in: AtomicU64::new(0),
            udp_out: AtomicU64::new(0),
            ping_rtt: Histogram::new(buckets),
        }
    }
}
