//! The hook between the node machine (the router, `node`) and the protocols it runs (identify, ping, and
//! kad, gossipsub, autonat next). One small trait, no associated types, no handler trees: a service is
//! told about connections, its inbound streams, events on its streams, its own timer and local changes;
//! it acts only through [`Cx`], whose outputs go to the node's bounded, counted outbox:
//!
//! - `open_stream` / `write` / `close_stream` / `reset_stream` / `release`: stream operations, applied in
//!   order when the node has the connection lent (at once inside a connection event; otherwise the
//!   driver lends it from `Node::due`). Writes are buffered per stream, so a service never sees a
//!   partial write; the buffer is capped (`node::Limits::max_stream_out_buffer`, overflow resets the
//!   stream and is counted).
//! - `dial`: ask the driver for a connection (both drivers execute dials the node asks for).
//! - `emit`: an event for the application.
//!
//! Timers are node-level: a service reports its soonest deadline in `poll_timeout` and gets
//! `on_timeout` once it passed, whatever the connection. Stream ownership is kept by the router as a
//! map `(ConnId, StreamId) → service`; a service never touches a connection directly.

use crate::autonat::{self, Reachability};
use crate::gossipsub;
use crate::identify::{self, Info};
use crate::identity::{PeerId, PublicKey};
use crate::kad;
use crate::multiaddr::Multiaddr;
use crate::perf;
use crate::ping;
use crate::rng::Rng;
pub use crate::stream::ConnId;
use crate::stream::{CloseReason, OpenError, Role, StreamId, Violation};
use crate::time::{Duration, Instant};
use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Index of a registered service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId(pub(crate) u16);

/// What the node tells peers about itself (identify's answer), kept by the router.
#[derive(Debug, Clone)]
pub struct LocalInfo {
    pub public_key: PublicKey,
    pub peer_id: PeerId,
    pub agent_version: String,
    pub protocol_version: String,
    pub listen_addrs: Vec<Multiaddr>,
    /// Every protocol served: the services' and the application's, sorted.
    pub protocols: Vec<String>,
    /// AutoNAT's verdict (services hear of changes in `on_local_changed`).
    pub reachability: Reachability,
    /// Addresses AutoNAT confirmed that are not listen addresses (a NAT's forwarded port, say): identify
    /// announces them too. At most [`MAX_EXTERNAL_ADDRS`]; cleared when AutoNAT says private.
    pub external_addrs: Vec<Multiaddr>,
    /// Our listen addresses as a signed peer record (RFC 0002 envelope of an RFC 0003 record), re-signed
    /// when they change; identify sends it as `signedPeerRecord`.
    pub signed_peer_record: Option<Vec<u8>>,
}

/// Confirmed external addresses kept (the newest replace the oldest).
pub const MAX_EXTERNAL_ADDRS: usize = 4;

/// What the node machine reports to the application. Each protocol's events live in its own module.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    Connected {
        peer: PeerId,
        conn: ConnId,
        role: Role,
        addr: Multiaddr,
    },
    Disconnected {
        peer: PeerId,
        conn: ConnId,
        reason: CloseReason,
    },
    /// A dial (the application's or a service's) failed before a connection existed.
    DialFailed {
        conn: ConnId,
        addr: Multiaddr,
        peer: Option<PeerId>,
        reason: CloseReason,
    },
    Identify(identify::Event),
    Ping(ping::Event),
    Perf(perf::Event),
    Kad(kad::Event),
    Autonat(autonat::Event),
    Gossipsub(gossipsub::Event),
    /// A peer broke a protocol's rules (logged and counted too).
    Violation(Violation),
    /// An event of a service the node does not know by type (added with `Node::add_service`).
    Custom {
        service: &'static str,
        event: Arc<dyn Any + Send + Sync>,
    },
}

/// A connection's life, as services see it.
#[derive(Debug, Clone, Copy)]
pub enum ConnectionEvent<'a> {
    Established {
        conn: ConnId,
        peer: &'a PeerId,
        role: Role,
        addr: &'a Multiaddr,
        /// The handshake's last round trip (`stream::ConnEvent::Established`): a first RTT estimate.
        rtt: Duration,
    },
    /// Identify finished (or a push arrived) on `conn`: the peer's protocols and addresses are known.
    Identified {
        conn: ConnId,
        peer: &'a PeerId,
        info: &'a Info,
    },
    Closed {
        conn: ConnId,
        peer: &'a PeerId,
        reason: &'a CloseReason,
    },
    /// A dial (anyone's) failed.
    DialFailed {
        conn: ConnId,
        peer: Option<&'a PeerId>,
        addr: &'a Multiaddr,
        reason: &'a CloseReason,
    },
}

/// An event on a stream a service owns.
#[derive(Debug, Clone, Copy)]
pub enum StreamEvent<'a> {
    /// A stream the service asked for with `Cx::open_stream(.., token)` is negotiated.
    Opened { protocol: &'a str, token: u64 },
    /// Bytes from the peer, in order.
    Data(&'a [u8]),
    /// The peer finished sending.
    Eof,
    /// The peer reset the stream, or the node did because the service overflowed its outbox
    /// (`node::Limits::max_queued_bytes_per_conn`); the router forgets it after this.
    Reset,
    /// Everything the service wrote has left the stream's buffer (after a write that had to wait; after
    /// every [`Cx::write_static`] and [`Cx::write_notify`], even one taken at once).
    Drained,
}

/// A protocol run by the node machine. See the module docs.
pub trait Service: Send + 'static {
    /// For logs, metrics and `Event::Custom`.
    fn name(&self) -> &'static str;
    /// Protocol ids whose inbound streams go to this service (announced in identify).
    fn protocols(&self) -> Vec<String>;
    fn on_connection(&mut self, _cx: &mut Cx<'_>, _ev: ConnectionEvent<'_>) {}
    /// A peer opened a stream for one of [`Service::protocols`]; the service owns it from now on.
    fn on_inbound(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, protocol: &str);
    fn on_stream(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>);
    /// A stream asked for with `token` could not be opened.
    fn on_open_failed(&mut self, _cx: &mut Cx<'_>, _conn: ConnId, _token: u64, _reason: &OpenError) {}
    /// The soonest moment this service needs `on_timeout`.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn on_timeout(&mut self, _cx: &mut Cx<'_>) {}
    /// Our addresses, protocols or reachability changed (identify pushes them; the DHT in auto mode
    /// starts or stops serving).
    fn on_local_changed(&mut self, _cx: &mut Cx<'_>) {}
    /// How many bytes the router reads from one of this service's streams per `Data` event. Default
    /// 2 KiB (on the stack); a service moving bulk data asks for more (one node-wide buffer, allocated
    /// the first time a service asks).
    fn read_chunk(&self) -> usize {
        2048
    }
    /// For typed commands through `Node::service_mut`.
    fn as_any(&mut self) -> &mut dyn Any;
}

/// A stream operation waiting for its connection.
#[derive(Debug)]
pub(crate) enum Op {
    Open {
        service: ServiceId,
        protocol: String,
        token: u64,
        /// Multistream-select's lazy mode (see `Cx::open_stream_lazy`).
        lazy: bool,
    },
    CancelOpen {
        service: ServiceId,
        token: u64,
    },
    Write {
        stream: StreamId,
        data: Vec<u8>,
        /// `Drained` follows once everything written has left (see `Cx::write_notify`).
        notify: bool,
    },
    WriteStatic {
        stream: StreamId,
        data: &'static [u8],
    },
    Close {
        stream: StreamId,
    },
    Reset {
        stream: StreamId,
        /// The node resets it on the service's behalf (its outbox overflowed): the service gets
        /// `StreamEvent::Reset`, as it would from the peer, so that nothing waits on the stream forever.
        tell: bool,
    },
    Release {
        stream: StreamId,
    },
    CloseConnection {
        reason: CloseReason,
    },
    /// The router's idle check (`node::Limits::idle_timeout`).
    CloseIfIdle,
}

/// A connection the node wants: the driver dials it and reports the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    pub conn: ConnId,
    pub addr: Multiaddr,
    pub peer: Option<PeerId>,
}

/// Everything services and the router produce, until the driver drains it. Bounded and counted.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Operations waiting for their connection, in the order services queued them (one queue for the
    /// node: it keeps its capacity, and holds only a handful between flushes).
    pub ops: VecDeque<(ConnId, Op)>,
    /// Bytes of `Op::Write` queued per connection.
    pub queued: BTreeMap<ConnId, usize>,
    pub events: VecDeque<Event>,
    pub dials: VecDeque<(Multiaddr, Option<PeerId>)>,
    pub dropped_events: u64,
    pub dropped_writes: u64,
    pub dropped_dials: u64,
}

impl Outbox {
    /// An event for the application; beyond `max` undrained events the newest are dropped and counted.
    pub fn push_event(&mut self, ev: Event, max: usize) {
        if self.events.len() >= max {
            self.dropped_events += 1;
            return;
        }
        self.events.push_back(ev);
    }
}

/// Limits of the outbox (part of `node::Limits`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxLimits {
    pub max_events: usize,
    pub max_queued_bytes: usize,
    pub max_dials: usize,
}

/// The router's connection table and peerstore as services may see them.
pub(crate) trait ConnLookup {
    /// The peer and remote address of an established connection.
    fn established(&self, conn: ConnId) -> Option<(&PeerId, &Multiaddr)>;
    /// The peer's round trip as the peerstore keeps it (ping's moving average), if measured.
    fn latency(&self, peer: &PeerId) -> Option<std::time::Duration>;
    /// The peer's addresses in the peerstore at `now`.
    fn addrs(&self, peer: &PeerId, now: Instant) -> Vec<Multiaddr>;
}

/// A service's view of the node during one call: the time, the node's RNG, what we announce, who is
/// connected, and the outbox.
pub struct Cx<'a> {
    pub now: Instant,
    pub rng: &'a mut Rng,
    pub local: &'a LocalInfo,
    pub(crate) conns: &'a dyn ConnLookup,
    pub(crate) out: &'a mut Outbox,
    pub(crate) limits: OutboxLimits,
    pub(crate) service: ServiceId,
}

impl Cx<'_> {
    /// The peer and remote address of an established connection.
    pub fn connection(&self, conn: ConnId) -> Option<(PeerId, Multiaddr)> {
        self.conns.established(conn).map(|(p, a)| (p.clone(), a.clone()))
    }

    /// `peer`'s round trip as the peerstore keeps it: the moving average of ping's answers (go's
    /// `LatencyEWMA`), so only known where pings run (`ping::Config::interval`, or pings on command).
    pub fn latency(&self, peer: &PeerId) -> Option<std::time::Duration> {
        self.conns.latency(peer)
    }

    /// `peer`'s addresses as the peerstore knows them now (identify, signed records, the application).
    pub fn addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.conns.addrs(peer, self.now)
    }

    fn op(&mut self, conn: ConnId, op: Op) {
        // Only established connections take operations: one that closed (or never was) would hold them
        // forever, with no driver to lend it.
        if !self.takes_ops(conn) {
            tracing::trace!(%conn, ?op, "operation for a connection that is gone: dropped");
            return;
        }
        self.out.ops.push_back((conn, op));
    }

    /// Whether `conn` takes operations (see `op`).
    fn takes_ops(&self, conn: ConnId) -> bool {
        self.conns.established(conn).is_some()
    }

    /// Opens a stream for `protocol`; `on_stream(.., Opened { token })` or `on_open_failed(.., token)`
    /// follows. `token` is the service's own tag (unique per connection while pending).
    pub fn open_stream(&mut self, conn: ConnId, protocol: &str, token: u64) {
        let service = self.service;
        self.op(conn, Op::Open { service, protocol: protocol.to_string(), token, lazy: false });
    }

    /// Like [`Cx::open_stream`], but optimistic (multistream-select's lazy mode, over TCP): `Opened`
    /// comes without waiting for the peer to confirm the protocol, so a request goes out one round trip
    /// sooner; a peer that does not serve it resets the stream (`StreamEvent::Reset`). For requests.
    pub fn open_stream_lazy(&mut self, conn: ConnId, protocol: &str, token: u64) {
        let service = self.service;
        self.op(conn, Op::Open { service, protocol: protocol.to_string(), token, lazy: true });
    }

    /// Gives up a stream still being opened (no `on_open_failed` follows).
    pub fn cancel_open(&mut self, conn: ConnId, token: u64) {
        let service = self.service;
        self.op(conn, Op::CancelOpen { service, token });
    }

    /// Queues `data` on a stream the service owns. Over the per-connection limit the write is dropped,
    /// the stream reset, and the drop counted.
    pub fn write(&mut self, conn: ConnId, stream: StreamId, data: &[u8]) {
        self.queue_write(conn, stream, data.len(), || Op::Write { stream, data: data.to_vec(), notify: false });
    }

    /// Like [`Cx::write`], and `StreamEvent::Drained` follows once everything written on the stream has
    /// left its buffer, even when the connection took it at once: a service that keeps its own send
    /// queue (gossipsub) writes its next batch then.
    pub fn write_notify(&mut self, conn: ConnId, stream: StreamId, data: Vec<u8>) {
        self.queue_write(conn, stream, data.len(), || Op::Write { stream, data, notify: true });
    }

    /// Queues a write of `len` bytes, or (over the per-connection limit) a reset, counted.
    fn queue_write(&mut self, conn: ConnId, stream: StreamId, len: usize, op: impl FnOnce() -> Op) {
        if !self.takes_ops(conn) {
            return;
        }
        let q = self.out.queued.entry(conn).or_default();
        let op = if *q + len > self.limits.max_queued_bytes {
            self.out.dropped_writes += 1;
            tracing::debug!(%conn, %stream, len, "outbox full: stream reset");
            Op::Reset { stream, tell: true }
        } else {
            *q += len;
            op()
        };
        self.out.ops.push_back((conn, op));
    }

    /// Queues bytes that live for the whole program (a constant block: perf's payload) without copying
    /// them: the connection takes them straight from `data`. `StreamEvent::Drained` follows once they
    /// have all left, so a bulk sender writes its next block then. Counted against the same
    /// per-connection limit as [`Cx::write`].
    pub fn write_static(&mut self, conn: ConnId, stream: StreamId, data: &'static [u8]) {
        self.queue_write(conn, stream, data.len(), || Op::WriteStatic { stream, data });
    }

    /// Half-closes the stream once what was written before has been sent.
    pub fn close_stream(&mut self, conn: ConnId, stream: StreamId) {
        self.op(conn, Op::Close { stream });
    }

    /// The usual end of a request or an answer: half-close once what was written has gone, and let go
    /// of the stream ([`Cx::close_stream`] then [`Cx::release`]).
    pub fn finish(&mut self, conn: ConnId, stream: StreamId) {
        self.close_stream(conn, stream);
        self.release(conn, stream);
    }

    /// Resets the stream and releases it (no `release` needed after it).
    pub fn reset_stream(&mut self, conn: ConnId, stream: StreamId) {
        self.op(conn, Op::Reset { stream, tell: false });
    }

    /// The service is done with the stream: it gets no more events of it; queued writes and a queued
    /// close still go out.
    pub fn release(&mut self, conn: ConnId, stream: StreamId) {
        self.op(conn, Op::Release { stream });
    }

    /// Closes the whole connection (a peer that broke the rules).
    pub fn close_connection(&mut self, conn: ConnId, reason: CloseReason) {
        self.op(conn, Op::CloseConnection { reason });
    }

    /// Asks the driver to dial `addr` (with `/p2p/<peer>` verified when `peer` is set).
    pub fn dial(&mut self, addr: Multiaddr, peer: Option<PeerId>) {
        if self.out.dials.len() >= self.limits.max_dials {
            self.out.dropped_dials += 1;
            return;
        }
        self.out.dials.push_back((addr, peer));
    }

    /// An event for the application. Beyond `max_events` undrained events the newest are dropped and
    /// counted (drivers drain after every call, so this only bites a driver that stopped draining).
    pub fn emit(&mut self, ev: Event) {
        self.out.push_event(ev, self.limits.max_events);
    }

    /// A peer broke the rules of this service's protocol: logged, counted, reported.
    pub fn violation(&mut self, v: Violation) {
        tracing::debug!(peer = ?v.peer, protocol = v.protocol, kind = %v.kind, "protocol violation");
        self.emit(Event::Violation(v));
    }
}
