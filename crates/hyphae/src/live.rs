//! Counters the drivers keep as things happen (bytes on the wire, ping round trips), for the metrics.
//! Below both the drivers and `metrics`, so neither imports the other.

use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The host's counterpart of the simulator's uplink gate (`ByteNode::set_send_limit`, `HostConfig::send_limit`):
/// while `limit` bytes or more taken for TCP sockets (all of them: services' and the application's)
/// have not been accepted by the sockets, the node machine's queued stream operations for TCP
/// connections wait, so a service's
/// `Drained` means "on its way out" and its own queue (gossipsub's, with its priorities and IDONTWANT
/// cancellations) holds the backlog instead of the sockets.
///
/// What counts as sent: bytes a socket accepted. With the gate on, each TCP socket gets
/// `TCP_NOTSENT_LOWAT` = [`SendGate::NOTSENT_LOWAT`]: Linux then accepts a write only while the
/// socket holds less than that (plus one segment batch) not yet sent — measured here: a non-blocking
/// write of 1 MiB to a peer that does not read took 3.9 MB without it, 146 KB with 16 KiB (of which
/// 47 KB unsent) — so "accepted" is within ~64 KiB of "on the wire".
///
/// A connection whose socket takes nothing for [`SendGate::STALL`] (its peer does not read, or its
/// path is far slower than the rest) stops counting until it moves again (`stalls`): one stuck peer
/// must not hold every other connection's writes.
pub(crate) struct SendGate {
    limit: Option<usize>,
    unsent: std::sync::atomic::AtomicUsize,
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// Times the gate closed (bytes taken for sockets pushed the count to the limit or beyond).
    pub closed: AtomicU64,
    /// Connections that stopped counting after taking nothing for `STALL`.
    pub stalls: AtomicU64,
}

impl SendGate {
    /// `TCP_NOTSENT_LOWAT` set on every TCP socket while the gate is on.
    pub const NOTSENT_LOWAT: u32 = 16 * 1024;
    /// How long a socket may take nothing before its connection stops counting.
    pub const STALL: std::time::Duration = std::time::Duration::from_millis(100);

    pub fn new(limit: Option<usize>, wake: std::sync::Arc<tokio::sync::Notify>) -> SendGate {
        SendGate { limit, unsent: Default::default(), wake, closed: AtomicU64::new(0), stalls: AtomicU64::new(0) }
    }

    pub fn is_on(&self) -> bool {
        self.limit.is_some()
    }

    /// Writes on TCP connections wait.
    pub fn is_closed(&self) -> bool {
        self.limit.is_some_and(|l| self.unsent.load(Ordering::Acquire) >= l)
    }

    pub fn add(&self, n: usize) {
        let Some(l) = self.limit else { return };
        let before = self.unsent.fetch_add(n, Ordering::AcqRel);
        if before < l && before + n >= l {
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `n` counted bytes were sent (or stopped counting): the node's timer is woken when that opens
    /// the gate.
    pub fn sub(&self, n: usize) {
        let Some(l) = self.limit else { return };
        if n == 0 {
            return;
        }
        let before = self.unsent.fetch_sub(n, Ordering::AcqRel);
        if before >= l && before - n < l {
            self.wake.notify_one();
        }
    }

    pub fn unsent(&self) -> usize {
        self.unsent.load(Ordering::Acquire)
    }
}
