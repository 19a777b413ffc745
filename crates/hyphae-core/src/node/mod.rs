//! The node machine: a router between connections and the services that run protocols over them
//! (identify and ping built in; kad, gossipsub, autonat next), plus the node's policy (connection
//! accounting, the per-peer cap, the peerstore, dials). Sans-IO: both drivers run it — the tokio Host
//! lends it each connection machine by reference when a connection event arrives, the simulator runs it
//! inside a [`ByteNode`], which owns the connection machines and speaks plain bytes.
//!
//! # Driving contract
//!
//! A driver owns sockets, timers and wakers; everything else happens here. It calls, in this order:
//!
//! 1. **Before a connection's machine runs**: [`Node::dial`] admits a dial the application asked for;
//!    [`Node::poll_dial`] yields the dials services asked for (already admitted). When a transport
//!    connection is up, [`Node::on_transport_up`]: it admits an accepted one (refused: drop the socket)
//!    or records a dial's remote address. A dial that fails before its machine exists:
//!    [`Node::on_dial_failed`].
//! 2. **Every event of a connection machine** goes to [`Node::on_conn_event`] with the machine lent as
//!    `&mut dyn Streams`, in the order the machine produced them (`Established` and `Closed` included).
//!    It returns the event back when it belongs to the application (a stream the application opened or
//!    an inbound stream for an application protocol); `None` when the node took it.
//! 3. **Timers**: sleep until [`Node::poll_timeout`]; then call [`Node::handle_timeout`], and for each
//!    connection in [`Node::due`] lend it to [`Node::flush`] (services queued stream operations for it).
//! 4. **After any call**, drain [`Node::poll_event`] and [`Node::poll_dial`], and re-arm the timer.
//!
//! Stream operations of services are applied when their connection is lent: at once inside
//! `on_conn_event`, otherwise in `flush`. The outbox is bounded ([`Limits`]); overflows are counted in
//! [`Stats`].

mod bytes;
pub mod connmgr;
pub mod peerstore;

pub use crate::service::{ConnId, Dial, Event, LocalInfo, Service, ServiceId};
pub use bytes::{ByteNode, Input, Output};
pub use connmgr::ConnManager;
pub use peerstore::{AddrTtl, PeerRecord, Peerstore};

use crate::conn;
use crate::identify::{self, service::IdentifyService};
use crate::identity::{Keypair, PeerId};
use crate::multiaddr::Multiaddr;
use crate::ping::{self, service::PingService};
use crate::rcmgr::{self, ResourceManager};
use crate::rng::{self, RngCore};
use crate::service::{ConnectionEvent, Cx, Op, Outbox, OutboxLimits, StreamEvent};
use crate::stream::{CloseReason, ConnEvent, OpenError, ReadResult, Role, StreamId, Streams};
use crate::time::{Duration, Instant};
use std::collections::BTreeMap;

/// What we send as identify's `protocolVersion` (as go-libp2p does).
pub const PROTOCOL_VERSION: &str = "ipfs/0.1.0";

/// Limits of the node machine. Every one is counted in [`Stats`] when hit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections by scope (system, transient = handshaking or dialing, peer, per source subnet): see
    /// [`rcmgr`]. Default: go-libp2p's base limits (128 connections, 64 inbound, 32 inbound handshakes,
    /// 8 per peer, 8 per IPv4 address); the Host scales them with the machine.
    pub resources: rcmgr::Limits,
    /// Bytes services may have queued for one connection, not yet taken by its machine (beyond: the
    /// write is dropped and its stream reset). Default 1 MiB.
    pub max_queued_bytes_per_conn: usize,
    /// Events not yet drained by the driver (beyond: the newest are dropped). Default 4096.
    pub max_events: usize,
    /// Dials services asked for that the driver has not taken yet (beyond: dropped). Default 256.
    pub max_pending_dials: usize,
    /// Close an established connection that carried no stream for this long (counted in
    /// `Stats::connections_idle_closed`). Default `None`: connections stay until closed (go-libp2p's
    /// default; rust-libp2p closes at once). A DHT node that dials many peers per lookup wants it.
    pub idle_timeout: Option<Duration>,
    pub peerstore: peerstore::Limits,
    /// The connection manager's watermarks ([`connmgr`]); `None`: never trims automatically (tags,
    /// protections and `Node::trim` still work). Default `None`; the Host turns it on.
    pub connmgr: Option<connmgr::Config>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            resources: rcmgr::Limits::default(),
            max_queued_bytes_per_conn: 1024 * 1024,
            max_events: 4096,
            max_pending_dials: 256,
            idle_timeout: None,
            peerstore: peerstore::Limits::default(),
            connmgr: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub keypair: Keypair,
    /// Root of every random choice this node makes (connection seeds, ping payloads).
    pub seed: [u8; 32],
    pub agent_version: String,
    pub listen_addrs: Vec<Multiaddr>,
    /// Protocols the application serves (the Host's stream handlers), announced in identify.
    pub protocols: Vec<String>,
    pub identify: identify::service::Config,
    pub ping: ping::service::Config,
    pub limits: Limits,
    /// Used by [`ByteNode`] for the connections it creates.
    pub conn_limits: conn::Limits,
    pub handshake_timeout: Duration,
    /// [`ByteNode`]: run a QUIC endpoint too (`/udp/../quic-v1` dials, `Input::Datagram`). The value is the
    /// std instant our `Instant(0)` stands for (quinn-proto wants std instants; the driver picks it).
    pub quic_base: Option<std::time::Instant>,
    /// Wall-clock unix seconds, for TLS certificate validity (the driver's clock, or a fixed one).
    pub unix_time: i64,
}

impl Config {
    pub fn new(keypair: Keypair, seed: [u8; 32]) -> Self {
        Config {
            keypair,
            seed,
            agent_version: concat!("hyphae/", env!("CARGO_PKG_VERSION")).into(),
            listen_addrs: Vec::new(),
            protocols: Vec::new(),
            identify: identify::service::Config::default(),
            ping: ping::service::Config::default(),
            limits: Limits::default(),
            conn_limits: conn::Limits::default(),
            handshake_timeout: Duration::from_secs(15),
            quic_base: None,
            unix_time: 1_700_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("connection refused: {0}")]
    ConnectionLimit(rcmgr::Refusal),
    #[error("not connected to {0}")]
    NotConnected(PeerId),
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub connections_established: u64,
    /// Connections refused or closed by a resource-manager limit (by scope in `resources`).
    pub connections_refused: u64,
    pub resources: rcmgr::Stats,
    pub dials_failed: u64,
    pub pings_ok: u64,
    pub pings_failed: u64,
    pub identifies: u64,
    pub identifies_failed: u64,
    pub violations: u64,
    pub events_dropped: u64,
    pub writes_dropped: u64,
    pub dials_dropped: u64,
    pub connections_idle_closed: u64,
    /// Signed peer records (identify's) whose addresses were taken as certified, and ones refused
    /// (bad signature, another peer's, malformed). A stale one (not newer than the last) is neither.
    pub records_certified: u64,
    pub records_invalid: u64,
    /// Connections that closed before their handshake finished, by `CloseReason::kind` (both
    /// directions; refusals at admission are counted in `resources` instead).
    pub handshakes_failed: BTreeMap<&'static str, u64>,
}

/// A connection the node knows: admitted (handshaking or dialing) or established.
struct ConnEntry {
    role: Role,
    /// The dialed address until the transport connects, then the remote transport address (what
    /// identify reports as observed, what the peerstore learns).
    addr: Multiaddr,
    expected: Option<PeerId>,
    peer: Option<PeerId>,
    /// Why we are closing it, when we are (reported instead of the machine's "closed locally").
    closing: Option<CloseReason>,
    /// The last event of this connection (the idle check).
    last_active: Instant,
    /// When its handshake finished (the connection manager's grace period).
    established_at: Instant,
}

/// A stream a service owns, with what it wrote that the connection has not taken yet.
struct Owned {
    service: ServiceId,
    /// The service's token while the stream is being negotiated.
    opening: Option<u64>,
    buf: Vec<u8>,
    /// A static write waiting after `buf` (uncopied; set only while `buf` is empty, so order holds: a
    /// write behind it copies it into `buf` first).
    tail: &'static [u8],
    /// A static write is pending: `Drained` once everything has left.
    notify: bool,
    /// Half-close once `buf` is empty.
    close: bool,
    closed: bool,
    /// The service is done: release once `buf` is empty (and closed, if asked).
    released: bool,
    eof: bool,
}

/// The node-level machine. It never owns a connection: every call that may touch one takes it as
/// `m: &mut dyn Streams`.
pub struct Node {
    config: Config,
    local: LocalInfo,
    rng: rng::Rng,
    services: Vec<Box<dyn Service>>,
    /// Each service's `poll_timeout`, cached until the service is next called (the drivers ask for the
    /// node's deadline after every input; services only change theirs when called).
    deadlines: Vec<std::cell::Cell<Option<Option<Instant>>>>,
    by_protocol: BTreeMap<String, ServiceId>,
    conns: BTreeMap<ConnId, ConnEntry>,
    owners: BTreeMap<(ConnId, StreamId), Owned>,
    out: Outbox,
    peerstore: Peerstore,
    resources: ResourceManager,
    connmgr: ConnManager,
    /// When the peerstore next drops expired addresses (checked as connections come, no timer).
    next_gc: Instant,
    /// Read buffer for services with a large `read_chunk` (empty until one reads).
    bulk: Vec<u8>,
    /// When to look for idle connections next (with `Limits::idle_timeout`).
    idle_check: Option<Instant>,
    next_conn: u64,
    stats: Stats,
    /// Signed peer records made so far (the low part of the next one's sequence number).
    records_made: u64,
}

impl Node {
    pub fn new(config: Config, _now: Instant) -> Self {
        let local = LocalInfo {
            public_key: config.keypair.public(),
            peer_id: config.keypair.peer_id(),
            agent_version: config.agent_version.clone(),
            protocol_version: PROTOCOL_VERSION.into(),
            listen_addrs: config.listen_addrs.clone(),
            protocols: Vec::new(),
            external_addrs: Vec::new(),
            reachability: Default::default(),
            signed_peer_record: None,
        };
        let mut n = Node {
            rng: rng::from_seed(config.seed),
            local,
            services: Vec::new(),
            deadlines: Vec::new(),
            by_protocol: BTreeMap::new(),
            conns: BTreeMap::new(),
            owners: BTreeMap::new(),
            out: Outbox::default(),
            peerstore: Peerstore::new(config.limits.peerstore.clone()),
            resources: ResourceManager::new(config.limits.resources.clone()),
            connmgr: ConnManager::new(config.limits.connmgr.clone()),
            next_gc: Instant(0),
            bulk: Vec::new(),
            idle_check: None,
            next_conn: 1 << 32,
            stats: Stats::default(),
            records_made: 0,
            config,
        };
        n.sign_record();
        n.add_service(Instant(0), Box::new(IdentifyService::new(n.config.identify.clone())));
        n.add_service(Instant(0), Box::new(PingService::new(n.config.ping.clone())));
        n
    }

    /// Registers a service: its inbound protocols are routed to it and announced (connected peers get an
    /// identify push). Returns its id.
    pub fn add_service(&mut self, now: Instant, service: Box<dyn Service>) -> ServiceId {
        let id = ServiceId(u16::try_from(self.services.len()).expect("invariant: fewer than 65536 services"));
        for p in service.protocols() {
            self.by_protocol.insert(p, id);
        }
        self.services.push(service);
        self.deadlines.push(std::cell::Cell::new(None));
        if self.refresh_protocols() && !self.conns.is_empty() {
            self.local_changed(now);
        }
        id
    }

    /// Services' protocol lists changed (a DHT turning server, perf starting to serve): route and
    /// announce them anew (connected peers get an identify push when the announced set changed).
    pub fn update_protocols(&mut self, now: Instant) {
        self.by_protocol.clear();
        for (i, s) in self.services.iter().enumerate() {
            for p in s.protocols() {
                self.by_protocol.insert(p, ServiceId(i as u16));
            }
        }
        if self.refresh_protocols() && !self.conns.is_empty() {
            self.local_changed(now);
        }
    }

    /// The service of type `T`, for typed commands (see also [`Node::with_service`]).
    pub fn service_mut<T: Service>(&mut self) -> Option<&mut T> {
        self.deadlines.iter().for_each(|d| d.set(None));
        self.services.iter_mut().find_map(|s| s.as_any().downcast_mut::<T>())
    }

    /// Runs a command on the service of type `T` with a context (it may open streams, write, dial, emit).
    /// Queued stream operations go out at the next `flush` of their connection (they are `due` now).
    pub fn with_service<T: Service, R>(&mut self, now: Instant, f: impl FnOnce(&mut T, &mut Cx<'_>) -> R) -> Option<R> {
        let i = self.services.iter_mut().position(|s| s.as_any().downcast_mut::<T>().is_some())?;
        let mut r = None;
        self.call(now, ServiceId(i as u16), |s, cx| {
            let t = s.as_any().downcast_mut::<T>().expect("invariant: found above");
            r = Some(f(t, cx));
        });
        r
    }

    pub fn peer_id(&self) -> &PeerId {
        &self.local.peer_id
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn local(&self) -> &LocalInfo {
        &self.local
    }
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.events_dropped = self.out.dropped_events;
        s.writes_dropped = self.out.dropped_writes;
        s.dials_dropped = self.out.dropped_dials;
        s.resources = self.resources.stats().clone();
        s
    }
    /// The resource manager's accounting (what each scope holds, its limits).
    pub fn resources(&self) -> &ResourceManager {
        &self.resources
    }
    /// An inbound stream the application was given is gone (its handle dropped, or never handed out):
    /// it leaves the resource manager's stream budgets.
    pub fn on_app_stream_gone(&mut self, conn: ConnId, s: StreamId) {
        self.resources.close_stream(conn.0, s.0);
    }

    /// The connection manager: tags, protections, its statistics.
    pub fn connmgr(&self) -> &ConnManager {
        &self.connmgr
    }
    pub fn connmgr_mut(&mut self) -> &mut ConnManager {
        &mut self.connmgr
    }

    /// Established connections not being closed.
    fn live_conns(conns: &BTreeMap<ConnId, ConnEntry>) -> Vec<connmgr::ConnInfo<'_>> {
        conns
            .iter()
            .filter(|(_, e)| e.closing.is_none())
            .filter_map(|(id, e)| {
                let peer = e.peer.as_ref()?;
                Some(connmgr::ConnInfo { conn: *id, peer, role: e.role, established_at: e.established_at })
            })
            .collect()
    }

    /// Trims connections down to the connection manager's low watermark now (go's `TrimOpenConns`;
    /// the daemon's CONNMANAGER TRIM). Returns how many are being closed; the drivers close them
    /// through the outbox (`due`/`flush`).
    pub fn trim(&mut self, now: Instant) -> usize {
        let live = Self::live_conns(&self.conns);
        let close = self.connmgr.select(now, &live);
        for &c in &close {
            if let Some(e) = self.conns.get_mut(&c) {
                e.closing = Some(CloseReason::Trimmed);
            }
            self.out.ops.push_back((c, Op::CloseConnection { reason: CloseReason::Trimmed }));
        }
        if !close.is_empty() {
            tracing::debug!(closing = close.len(), "connection manager trimmed connections");
        }
        close.len()
    }
    pub fn peerstore(&self) -> &Peerstore {
        &self.peerstore
    }
    /// The peerstore, to load saved records into or take its journal of changes from.
    pub fn peerstore_mut(&mut self) -> &mut Peerstore {
        &mut self.peerstore
    }
    /// Teaches the peerstore addresses of a peer.
    pub fn add_addrs(&mut self, peer: &PeerId, addrs: &[Multiaddr]) {
        let conns = &self.conns;
        self.peerstore.add_addrs(peer, addrs, AddrTtl::Permanent, Instant(0), &|p| connected(conns, p));
    }

    /// A fresh 32-byte seed from the node's RNG (for a new connection machine).
    pub fn child_seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    /// Every protocol this node serves: its services' and the application's, sorted.
    pub fn protocols(&self) -> Vec<String> {
        self.local.protocols.clone()
    }

    fn refresh_protocols(&mut self) -> bool {
        let mut v: Vec<String> = self.by_protocol.keys().cloned().chain(self.config.protocols.iter().cloned()).collect();
        v.sort();
        v.dedup();
        let changed = v != self.local.protocols;
        self.local.protocols = v;
        changed
    }

    /// The application's protocols changed: remember them and tell every connected peer (identify
    /// push, as go does). `now` times what the services do about it.
    pub fn set_protocols(&mut self, now: Instant, protocols: Vec<String>) {
        self.config.protocols = protocols;
        if self.refresh_protocols() {
            self.local_changed(now);
        }
    }

    pub fn set_listen_addrs(&mut self, now: Instant, addrs: Vec<Multiaddr>) {
        if addrs != self.local.listen_addrs {
            self.local.listen_addrs = addrs;
            self.sign_record();
            self.local_changed(now);
        }
    }

    /// Signs our listen addresses as a peer record. Its sequence number is the wall clock's nanoseconds
    /// at start plus the records made since (go uses the wall clock's nanoseconds): a record made later,
    /// even by a restarted node, has a larger one, so receivers keep the newest.
    fn sign_record(&mut self) {
        let seq = (self.config.unix_time.max(0) as u64).saturating_mul(1_000_000_000) + self.records_made;
        self.records_made += 1;
        let rec = crate::record::PeerRecord { peer: self.local.peer_id.clone(), seq, addrs: self.local.listen_addrs.clone() };
        self.local.signed_peer_record = Some(rec.seal(&self.config.keypair));
    }

    fn local_changed(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            self.call(now, ServiceId(i as u16), |s, cx| s.on_local_changed(cx));
        }
    }

    // ---------- connections: accounting, per-peer cap, dials ----------

    /// A fresh connection id (drivers that make their own connections use these too).
    pub fn next_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    /// Counts a new connection (accepted: `Listener`; our own dial: `Dialer`) in the resource manager's
    /// system and transient scopes (and, accepted, its source subnet's).
    pub fn admit(&mut self, conn: ConnId, role: Role, addr: Multiaddr, expected: Option<PeerId>) -> Result<(), CloseReason> {
        if self.conns.contains_key(&conn) {
            return Err(CloseReason::Limit("connection id in use"));
        }
        let dir = if role == Role::Listener { rcmgr::Direction::Inbound } else { rcmgr::Direction::Outbound };
        // A TCP connection holds a descriptor of its own; QUIC ones share the endpoint's socket.
        let fd = !addr.iter().any(|p| matches!(p, crate::multiaddr::Protocol::QuicV1));
        if let Err(r) = self.resources.open_conn(conn.0, dir, addr.ip(), fd) {
            self.stats.connections_refused += 1;
            tracing::debug!(%conn, %addr, reason = %r, "connection refused");
            return Err(CloseReason::Refused(r));
        }
        self.conns.insert(
            conn,
            ConnEntry { role, addr, expected, peer: None, closing: None, last_active: Instant(0), established_at: Instant(0) },
        );
        Ok(())
    }

    /// A dial the application asked for: admitted under a fresh id, which the caller then dials.
    pub fn dial(&mut self, addr: Multiaddr) -> Result<ConnId, ApiError> {
        let id = self.next_conn_id();
        let peer = addr.peer_id();
        self.admit(id, Role::Dialer, addr, peer).map_err(|r| match r {
            CloseReason::Refused(r) => ApiError::ConnectionLimit(r),
            _ => unreachable!("invariant: a fresh id is never in use"),
        })?;
        Ok(id)
    }

    /// The next dial a service asked for (admitted; a refused one is reported as `DialFailed`).
    #[must_use]
    pub fn poll_dial(&mut self) -> Option<Dial> {
        while let Some((addr, peer)) = self.out.dials.pop_front() {
            let conn = self.next_conn_id();
            match self.admit(conn, Role::Dialer, addr.clone(), peer.clone()) {
                Ok(()) => return Some(Dial { conn, addr, peer }),
                Err(reason) => self.dial_failed(Instant(0), conn, addr, peer, reason),
            }
        }
        None
    }

    /// A transport connection is up, before its machine's first event. `Listener`: an accepted one,
    /// admitted here under `conn` (refused: drop it). `Dialer`: one of our dials (`Node::dial`,
    /// `poll_dial`); `remote` becomes its address (the socket's view: no `/p2p`, a DNS name resolved).
    pub fn on_transport_up(&mut self, conn: ConnId, role: Role, remote: Multiaddr) -> Result<(), CloseReason> {
        match role {
            Role::Listener => self.admit(conn, role, remote, None),
            Role::Dialer => {
                if let Some(e) = self.conns.get_mut(&conn) {
                    e.addr = remote;
                }
                Ok(())
            }
        }
    }

    /// The expected peer of a dial in progress (what the address named).
    pub fn expected_peer(&self, conn: ConnId) -> Option<&PeerId> {
        self.conns.get(&conn).and_then(|e| e.expected.as_ref())
    }

    /// A dial failed before a connection machine existed.
    pub fn on_dial_failed(&mut self, now: Instant, conn: ConnId, reason: CloseReason) {
        if let Some(e) = self.conns.remove(&conn) {
            self.resources.close_conn(conn.0);
            self.dial_failed(now, conn, e.addr, e.expected, reason);
        }
    }

    fn dial_failed(&mut self, now: Instant, conn: ConnId, addr: Multiaddr, peer: Option<PeerId>, reason: CloseReason) {
        self.stats.dials_failed += 1;
        self.tell_services(now, None, ConnectionEvent::DialFailed { conn, peer: peer.as_ref(), addr: &addr, reason: &reason });
        self.push_event(Event::DialFailed { conn, addr, peer, reason });
    }

    pub fn connected_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.conns.values().filter_map(|e| e.peer.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        connected(&self.conns, peer)
    }
    /// The peer's established connections, oldest first.
    pub fn connections_to(&self, peer: &PeerId) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, e)| e.peer.as_ref() == Some(peer)).map(|(id, _)| *id).collect()
    }
    /// Connections admitted and not yet closed (handshaking ones included).
    pub fn num_connections(&self) -> usize {
        self.conns.len()
    }
    /// The peer of an established connection.
    pub fn peer_of(&self, conn: ConnId) -> Option<&PeerId> {
        self.conns.get(&conn).and_then(|e| e.peer.as_ref())
    }

    /// Pings `peer` on its oldest connection; the outcome comes as `Event::Ping`.
    pub fn ping(&mut self, now: Instant, peer: &PeerId) -> Result<ConnId, ApiError> {
        self.with_service::<PingService, _>(now, |p, cx| p.ping(cx.now, peer)).flatten().ok_or_else(|| ApiError::NotConnected(peer.clone()))
    }

    // ---------- events of connection machines ----------

    /// One event of connection `id`'s machine (lent as `m`). Returns it when it is the application's.
    pub fn on_conn_event(&mut self, now: Instant, id: ConnId, ev: ConnEvent, m: &mut dyn Streams) -> Option<ConnEvent> {
        // Only the idle check reads it: without one, the byte path pays no extra lookup.
        if self.config.limits.idle_timeout.is_some() {
            if let Some(e) = self.conns.get_mut(&id) {
                e.last_active = now;
            }
        }
        let back = self.route(now, id, ev, m);
        self.flush(now, id, m);
        back
    }

    fn route(&mut self, now: Instant, id: ConnId, ev: ConnEvent, m: &mut dyn Streams) -> Option<ConnEvent> {
        match ev {
            ConnEvent::Established { ref peer, ref public_key, rtt, .. } => {
                let Some(e) = self.conns.get(&id) else {
                    tracing::debug!(conn = %id, "established connection was never admitted; closing");
                    m.close(now);
                    return None;
                };
                let (role, addr) = (e.role, e.addr.clone());
                if let Err(r) = self.resources.set_peer(id.0, peer) {
                    tracing::debug!(%peer, conn = %id, reason = %r, "connection refused after its handshake; closing it");
                    self.stats.connections_refused += 1;
                    self.conns.get_mut(&id).expect("invariant: present").closing = Some(CloseReason::Refused(r));
                    m.close(now);
                    return None;
                }
                self.conns.get_mut(&id).expect("invariant: present").peer = Some(peer.clone());
                self.stats.connections_established += 1;
                self.conns.get_mut(&id).expect("invariant: present").established_at = now;
                if now >= self.next_gc {
                    self.peerstore.gc(now);
                    self.next_gc = now + Duration::from_secs(600);
                }
                if let Some(idle) = self.config.limits.idle_timeout {
                    let t = now + idle;
                    self.idle_check = Some(self.idle_check.map_or(t, |c| c.min(t)));
                }
                let conns = &self.conns;
                let is_connected = |p: &PeerId| connected(conns, p);
                self.peerstore.set_public_key(peer, (**public_key).clone(), &is_connected);
                if role == Role::Dialer {
                    self.peerstore.add_addrs(peer, std::slice::from_ref(&addr), AddrTtl::Connected, now, &is_connected);
                }
                if self.connmgr.config().is_some()
                    && self.connmgr.wants_trim(now, self.conns.values().filter(|e| e.peer.is_some() && e.closing.is_none()).count())
                {
                    self.trim(now);
                }
                self.push_event(Event::Connected { peer: peer.clone(), conn: id, role, addr: addr.clone() });
                self.tell_services(now, None, ConnectionEvent::Established { conn: id, peer, role, addr: &addr, rtt });
                Some(ev)
            }
            ConnEvent::Closed { reason } => {
                let Some(e) = self.conns.remove(&id) else { return Some(ConnEvent::Closed { reason }) };
                self.resources.close_conn(id.0);
                let reason = e.closing.unwrap_or(reason);
                self.owners.retain(|(c, _), _| *c != id);
                self.out.ops.retain(|(c, _)| *c != id);
                self.out.queued.remove(&id);
                match e.peer {
                    Some(peer) => {
                        if !connected(&self.conns, &peer) {
                            self.connmgr.on_disconnected(&peer);
                            self.peerstore.on_disconnected(&peer, now);
                        }
                        self.tell_services(now, None, ConnectionEvent::Closed { conn: id, peer: &peer, reason: &reason });
                        self.push_event(Event::Disconnected { peer, conn: id, reason: reason.clone() });
                    }
                    None => {
                        *self.stats.handshakes_failed.entry(reason.kind()).or_default() += 1;
                        if e.role == Role::Dialer {
                            self.dial_failed(now, id, e.addr, e.expected, reason.clone());
                        }
                    }
                }
                Some(ConnEvent::Closed { reason })
            }
            ConnEvent::InboundStream { id: s, ref protocol } => {
                // Counted in the peer's and the protocol's stream budgets first (service streams and
                // the application's alike); refused: reset before anyone sees it.
                if self.admit_stream(now, rcmgr::Direction::Inbound, id, s, protocol, m).is_err() {
                    return None;
                }
                let Some(&sid) = self.by_protocol.get(protocol) else { return Some(ev) };
                self.owners.insert((id, s), Owned::new(sid, None));
                let p = protocol.clone();
                self.call(now, sid, |svc, cx| svc.on_inbound(cx, id, s, &p));
                self.read(now, id, s, m);
                None
            }
            ConnEvent::OutboundReady { id: s, ref protocol } => {
                // Counted in the peer's and the protocol's outbound budgets once negotiated; refused:
                // reset, and the opener (a service or the application) gets `OpenError::Limit`.
                if let Err(r) = self.admit_stream(now, rcmgr::Direction::Outbound, id, s, protocol, m) {
                    let reason = OpenError::Limit(r);
                    // `forget` also drops what a lazily opened stream's owner had queued on it.
                    let Some(o) = self.forget(id, s) else { return Some(ConnEvent::OutboundFailed { id: s, reason }) };
                    if let Some(token) = o.opening {
                        self.call(now, o.service, |svc, cx| svc.on_open_failed(cx, id, token, &reason));
                    }
                    return None;
                }
                let Some(o) = self.owners.get_mut(&(id, s)) else { return Some(ev) };
                let (sid, token) = (o.service, o.opening.take());
                if let Some(token) = token {
                    let p = protocol.clone();
                    self.call(now, sid, |svc, cx| svc.on_stream(cx, id, s, StreamEvent::Opened { protocol: &p, token }));
                }
                self.read(now, id, s, m);
                None
            }
            ConnEvent::OutboundFailed { id: s, ref reason } => {
                let Some(o) = self.owners.remove(&(id, s)) else { return Some(ev) };
                if let Some(token) = o.opening {
                    let r = reason.clone();
                    self.call(now, o.service, |svc, cx| svc.on_open_failed(cx, id, token, &r));
                }
                None
            }
            ConnEvent::Readable(s) => {
                if !self.owners.contains_key(&(id, s)) {
                    return Some(ev);
                }
                self.read(now, id, s, m);
                None
            }
            ConnEvent::Writable(s) => {
                let Some(o) = self.owners.get(&(id, s)) else { return Some(ev) };
                let had = !o.is_drained();
                self.write_out(now, id, s, m);
                self.tell_drained(now, id, s, had);
                None
            }
            ConnEvent::Reset(s) => {
                if !self.owners.contains_key(&(id, s)) {
                    return Some(ev);
                }
                self.reset_by_peer(now, id, s, m);
                None
            }
        }
    }

    /// Hands what stream `s` has to its service (applying what the service queued after each chunk, so
    /// a service that released the stream gets no more).
    fn read(&mut self, now: Instant, id: ConnId, s: StreamId, m: &mut dyn Streams) {
        let Some(o) = self.owners.get(&(id, s)) else { return };
        let chunk = self.services[o.service.0 as usize].read_chunk();
        if chunk <= 2048 {
            // On the stack: a buffer kept per node costs more memory at 10,000 simulated nodes than
            // zeroing 2 KiB costs time. Service messages are small (identify, ping, kad, gossipsub).
            let mut buf = [0u8; 2048];
            self.read_into(now, id, s, m, &mut buf);
        } else {
            // A bulk service (perf): one node-wide buffer, grown once, lent out while reading.
            let mut buf = std::mem::take(&mut self.bulk);
            if buf.len() < chunk {
                buf.resize(chunk, 0);
            }
            self.read_into(now, id, s, m, &mut buf[..chunk]);
            self.bulk = buf;
        }
    }

    fn read_into(&mut self, now: Instant, id: ConnId, s: StreamId, m: &mut dyn Streams, buf: &mut [u8]) {
        loop {
            let Some(o) = self.owners.get_mut(&(id, s)) else { return };
            if o.opening.is_some() || o.eof {
                return;
            }
            let (sid, released) = (o.service, o.released);
            // The service sees the bytes where the connection keeps them (no copy into `buf`), one `Data`
            // per slice the connection lends, until the service queues an operation (a release, a reply):
            // the rest of the read waits until `flush` below has applied it.
            let mut deliver = |d: &[u8]| {
                if released {
                    return false;
                }
                let queued = self.out.ops.len();
                self.call(now, sid, |svc, cx| svc.on_stream(cx, id, s, StreamEvent::Data(d)));
                self.out.ops.len() == queued
            };
            match m.stream_read_with(now, s, buf, &mut deliver) {
                ReadResult::Data(_) => {}
                ReadResult::Pending => return,
                ReadResult::Eof => {
                    if let Some(o) = self.owners.get_mut(&(id, s)) {
                        o.eof = true;
                    }
                    if !released {
                        self.call(now, sid, |svc, cx| svc.on_stream(cx, id, s, StreamEvent::Eof));
                    }
                }
                ReadResult::Reset => self.reset_by_peer(now, id, s, m),
            }
            self.flush(now, id, m);
        }
    }

    /// The peer reset a stream a service owns: forget it, release it, tell the service (unless it let go).
    fn reset_by_peer(&mut self, now: Instant, id: ConnId, s: StreamId, m: &mut dyn Streams) {
        let Some(o) = self.forget(id, s) else { return };
        m.stream_release(now, s);
        if !o.released {
            self.call(now, o.service, |svc, cx| svc.on_stream(cx, id, s, StreamEvent::Reset));
        }
    }

    /// We reset a stream a service owns (or gave up while it was being opened).
    fn reset_owned(&mut self, now: Instant, id: ConnId, s: StreamId, m: &mut dyn Streams) {
        if self.forget(id, s).is_some() {
            m.stream_reset(now, s);
            m.stream_release(now, s);
        }
    }

    /// Counts a negotiated stream of connection `id` in the resource manager's scopes of its direction;
    /// refused: the stream is reset and released here (logged at debug) and the refusal returned.
    fn admit_stream(
        &mut self,
        now: Instant,
        dir: rcmgr::Direction,
        id: ConnId,
        s: StreamId,
        protocol: &str,
        m: &mut dyn Streams,
    ) -> Result<(), rcmgr::Refusal> {
        let Some(peer) = self.conns.get(&id).and_then(|e| e.peer.clone()) else { return Ok(()) };
        self.resources.open_stream(dir, id.0, s.0, &peer, protocol).inspect_err(|r| {
            tracing::debug!(%peer, conn = %id, %protocol, ?dir, reason = %r, "stream refused");
            m.stream_reset(now, s);
            m.stream_release(now, s);
        })
    }

    /// Drops a stream from the ownership map, with what was still buffered for it.
    fn forget(&mut self, id: ConnId, s: StreamId) -> Option<Owned> {
        self.resources.close_stream(id.0, s.0);
        let o = self.owners.remove(&(id, s))?;
        self.unqueue(id, o.buf.len() + o.tail.len());
        Some(o)
    }

    fn unqueue(&mut self, id: ConnId, n: usize) {
        if let Some(q) = self.out.queued.get_mut(&id) {
            *q = q.saturating_sub(n);
        }
    }

    /// `Drained` to the owner of `s` if everything it wrote has left and it waits for that (it had bytes
    /// waiting, or a static write is pending).
    fn tell_drained(&mut self, now: Instant, id: ConnId, s: StreamId, had: bool) {
        let Some(o) = self.owners.get_mut(&(id, s)) else { return };
        if o.is_drained() && (had || o.notify) && !o.released {
            o.notify = false;
            let sid = o.service;
            self.call(now, sid, |svc, cx| svc.on_stream(cx, id, s, StreamEvent::Drained));
        }
    }

    /// Moves what a service wrote on `s` into the connection; then the close and release it asked for.
    fn write_out(&mut self, now: Instant, id: ConnId, s: StreamId, m: &mut dyn Streams) {
        let Some(o) = self.owners.get_mut(&(id, s)) else { return };
        let mut sent = 0;
        let mut failed = false;
        while sent < o.buf.len() {
            match m.stream_write(now, s, &o.buf[sent..]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        o.buf.drain(..sent);
        if o.buf.is_empty() && !failed {
            while !o.tail.is_empty() {
                match m.stream_write_static(now, s, o.tail) {
                    Ok(0) => break,
                    Ok(n) => {
                        sent += n;
                        o.tail = &o.tail[n..];
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if failed {
            sent += o.buf.len() + o.tail.len();
            o.buf.clear();
            o.tail = &[];
        }
        if o.is_drained() {
            if o.close && !o.closed {
                o.closed = true;
                m.stream_close(now, s);
            }
            if o.released {
                self.owners.remove(&(id, s));
                self.resources.close_stream(id.0, s.0);
                m.stream_release(now, s);
            }
        }
        self.unqueue(id, sent);
    }

    // ---------- timers and the outbox ----------

    /// The soonest moment the node needs `handle_timeout` (a service's timer, or operations queued for a
    /// connection: then now).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().map(|(t, _)| t)
    }

    /// [`Node::poll_timeout`] for a driver that holds the queued stream operations back for now (a
    /// full uplink): they do not make the node due.
    pub fn poll_timeout_holding_outbox(&self) -> Option<Instant> {
        self.timer(false).map(|(t, _)| t)
    }

    /// [`Node::poll_timeout`] with its reason: the service's name, `"outbox"` (stream operations wait for
    /// `due()`/`flush`) or `"dials"` (dials wait for `poll_dial`).
    pub fn next_timer(&self) -> Option<(Instant, &'static str)> {
        self.timer(true)
    }

    fn timer(&self, outbox: bool) -> Option<(Instant, &'static str)> {
        if outbox && !self.out.ops.is_empty() {
            return Some((Instant(0), "outbox"));
        }
        if !self.out.dials.is_empty() {
            return Some((Instant(0), "dials"));
        }
        let idle = self.idle_check.map(|t| (t, "idle"));
        (0..self.services.len()).filter_map(|i| self.deadline(i).map(|t| (t, self.services[i].name()))).chain(idle).min_by_key(|(t, _)| *t)
    }

    /// Service `i`'s deadline, from the cache when the service was not called since.
    fn deadline(&self, i: usize) -> Option<Instant> {
        let c = &self.deadlines[i];
        c.get().unwrap_or_else(|| {
            let d = self.services[i].poll_timeout();
            c.set(Some(d));
            d
        })
    }

    /// Runs the services' timers that are due, and queues the idle check of connections quiet for
    /// `Limits::idle_timeout` (they are `due()`: the check needs the connection lent).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let (Some(idle), Some(t)) = (self.config.limits.idle_timeout, self.idle_check) {
            if t <= now {
                let mut next: Option<Instant> = None;
                for (id, e) in &self.conns {
                    if e.peer.is_none() || e.closing.is_some() {
                        continue;
                    }
                    let at = e.last_active + idle;
                    if at <= now {
                        self.out.ops.push_back((*id, Op::CloseIfIdle));
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
                self.idle_check = next;
            }
        }
        for i in 0..self.services.len() {
            if self.deadline(i).is_some_and(|t| t <= now) {
                self.call(now, ServiceId(i as u16), |s, cx| s.on_timeout(cx));
            }
        }
    }

    /// Connections with stream operations waiting: lend each to [`Node::flush`].
    pub fn due(&self) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = self.out.ops.iter().map(|(c, _)| *c).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Applies the stream operations services queued for connection `id`, in order.
    pub fn flush(&mut self, now: Instant, id: ConnId, m: &mut dyn Streams) {
        while let Some(op) = self.out.ops.iter().position(|(c, _)| *c == id).and_then(|i| self.out.ops.remove(i)).map(|(_, op)| op) {
            match op {
                Op::Open { service, protocol, token, lazy } => {
                    match if lazy { m.open_stream_lazy(now, protocol) } else { m.open_stream(now, vec![protocol]) } {
                        Ok(s) => {
                            self.owners.insert((id, s), Owned::new(service, Some(token)));
                        }
                        Err(e) => {
                            let r = OpenError::Refused(e);
                            self.call(now, service, |svc, cx| svc.on_open_failed(cx, id, token, &r));
                        }
                    }
                }
                Op::CancelOpen { service, token } => {
                    let s = self
                        .owners
                        .iter()
                        .find(|((c, _), o)| *c == id && o.service == service && o.opening == Some(token))
                        .map(|(k, _)| k.1);
                    if let Some(s) = s {
                        self.reset_owned(now, id, s, m);
                    }
                }
                Op::Write { stream, data, notify } => match self.owners.get_mut(&(id, stream)) {
                    Some(o) if !o.closed => {
                        o.untail();
                        // Usually nothing waits before it: the queued bytes become the buffer (no copy).
                        if o.buf.is_empty() {
                            o.buf = data;
                        } else {
                            o.buf.extend_from_slice(&data);
                        }
                        o.notify |= notify;
                        self.write_out(now, id, stream, m);
                        if notify {
                            self.tell_drained(now, id, stream, false);
                        }
                    }
                    _ => self.unqueue(id, data.len()),
                },
                Op::WriteStatic { stream, data } => match self.owners.get_mut(&(id, stream)) {
                    Some(o) if !o.closed => {
                        if o.is_drained() {
                            o.tail = data;
                        } else {
                            o.untail();
                            o.buf.extend_from_slice(data);
                        }
                        o.notify = true;
                        self.write_out(now, id, stream, m);
                        self.tell_drained(now, id, stream, false);
                    }
                    _ => self.unqueue(id, data.len()),
                },
                Op::Close { stream } => {
                    if let Some(o) = self.owners.get_mut(&(id, stream)) {
                        o.close = true;
                        self.write_out(now, id, stream, m);
                    }
                }
                Op::Release { stream } => {
                    if let Some(o) = self.owners.get_mut(&(id, stream)) {
                        o.released = true;
                        self.write_out(now, id, stream, m);
                    }
                }
                Op::Reset { stream, tell } => {
                    let owner = self.owners.get(&(id, stream)).map(|o| o.service).filter(|_| tell);
                    self.reset_owned(now, id, stream, m);
                    if let Some(sid) = owner {
                        self.call(now, sid, |svc, cx| svc.on_stream(cx, id, stream, StreamEvent::Reset));
                    }
                }
                Op::CloseConnection { reason } => {
                    if let Some(e) = self.conns.get_mut(&id) {
                        e.closing.get_or_insert(reason);
                        m.close(now);
                    }
                }
                Op::CloseIfIdle => {
                    let Some(idle) = self.config.limits.idle_timeout else { continue };
                    let Some(e) = self.conns.get_mut(&id) else { continue };
                    if e.closing.is_none() && e.last_active + idle <= now && m.num_streams() == 0 {
                        tracing::debug!(conn = %id, "idle connection closed");
                        e.closing = Some(CloseReason::Limit("idle"));
                        self.stats.connections_idle_closed += 1;
                        m.close(now);
                    } else {
                        // Streams are open (or it was used since): look again a whole timeout later.
                        e.last_active = now;
                        let t = now + idle;
                        self.idle_check = Some(self.idle_check.map_or(t, |c| c.min(t)));
                    }
                }
            }
        }
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    fn push_event(&mut self, ev: Event) {
        self.out.push_event(ev, self.config.limits.max_events);
    }

    /// Tells every service (but `skip`) about a connection's life.
    fn tell_services(&mut self, now: Instant, skip: Option<ServiceId>, ev: ConnectionEvent<'_>) {
        for i in 0..self.services.len() {
            let sid = ServiceId(i as u16);
            if Some(sid) != skip {
                self.call_dyn(now, sid, &mut |s, cx| s.on_connection(cx, ev));
            }
        }
    }

    /// Calls service `sid` with a context; then takes note of what it reported (identify results go to
    /// the peerstore and to every service; counters).
    fn call(&mut self, now: Instant, sid: ServiceId, f: impl FnOnce(&mut dyn Service, &mut Cx<'_>)) {
        let mut f = Some(f);
        self.call_dyn(now, sid, &mut |s, cx| (f.take().expect("invariant: called once"))(s, cx));
    }

    /// [`Node::call`] without generics: it recurses (identify results reach every service).
    fn call_dyn(&mut self, now: Instant, sid: ServiceId, f: &mut dyn FnMut(&mut dyn Service, &mut Cx<'_>)) {
        let start = self.out.events.len();
        {
            let Node { services, rng, local, conns, out, config, peerstore, .. } = self;
            let limits = OutboxLimits {
                max_events: config.limits.max_events,
                max_queued_bytes: config.limits.max_queued_bytes_per_conn,
                max_dials: config.limits.max_pending_dials,
            };
            let lookup = Lookup { conns, peerstore };
            let mut cx = Cx { now, rng, local, conns: &lookup, out, limits, service: sid };
            f(services[sid.0 as usize].as_mut(), &mut cx);
        }
        self.deadlines[sid.0 as usize].set(None);
        let mut identified = Vec::new();
        let mut latencies = Vec::new();
        let mut reachability = None;
        for ev in self.out.events.range(start..) {
            match ev {
                Event::Autonat(crate::autonat::Event::Reachability { reachability: r, addr }) => reachability = Some((*r, addr.clone())),
                Event::Identify(identify::Event::Received { peer, conn, info, .. }) => {
                    self.stats.identifies += 1;
                    identified.push((*conn, peer.clone(), info.clone()));
                }
                Event::Identify(identify::Event::Failed { .. }) => self.stats.identifies_failed += 1,
                Event::Ping(ping::Event::Ok { peer, rtt, .. }) => {
                    self.stats.pings_ok += 1;
                    latencies.push((peer.clone(), *rtt));
                }
                Event::Ping(ping::Event::Failed { .. }) => self.stats.pings_failed += 1,
                Event::Violation(_) => self.stats.violations += 1,
                _ => {}
            }
        }
        for (peer, rtt) in latencies {
            self.peerstore.record_latency(&peer, rtt);
        }
        for (conn, peer, info) in identified {
            let conns = &self.conns;
            self.peerstore.apply_identify(&peer, &info, now, &|p| connected(conns, p));
            if let Some(env) = &info.signed_peer_record {
                match crate::record::PeerRecord::open(env, &crate::record::Limits::default()) {
                    Ok((rec, _)) if rec.peer == peer => {
                        if self.peerstore.add_certified(&rec, now, &|p| connected(conns, p)) {
                            self.stats.records_certified += 1;
                        }
                    }
                    Ok((rec, _)) => {
                        tracing::debug!(%peer, record = %rec.peer, "identify carried another peer's record; ignored");
                        self.stats.records_invalid += 1;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "invalid signed peer record; ignored");
                        self.stats.records_invalid += 1;
                    }
                }
            }
            self.tell_services(now, Some(sid), ConnectionEvent::Identified { conn, peer: &peer, info: &info });
        }
        if let Some((r, addr)) = reachability {
            // A confirmed address that is not a listen address is announced too (a NAT's forwarded port).
            let mut external = self.local.external_addrs.clone();
            match (r, addr.map(|a| a.without_peer_id())) {
                (crate::autonat::Reachability::Public, Some(a)) if !self.local.listen_addrs.contains(&a) && !external.contains(&a) => {
                    if external.len() >= crate::service::MAX_EXTERNAL_ADDRS {
                        external.remove(0);
                    }
                    external.push(a);
                }
                (crate::autonat::Reachability::Public, _) => {}
                _ => external.clear(),
            }
            if r != self.local.reachability || external != self.local.external_addrs {
                // Every service hears of it (the DHT in auto mode switches), then what they serve is
                // re-read: a change is announced by identify push.
                self.local.reachability = r;
                self.local.external_addrs = external;
                self.local_changed(now);
                self.update_protocols(now);
            }
        }
    }
}

/// Whether `peer` has an established connection in `conns` (a free function: the peerstore's eviction
/// check borrows the table while the peerstore is borrowed mutably).
fn connected(conns: &BTreeMap<ConnId, ConnEntry>, peer: &PeerId) -> bool {
    conns.values().any(|e| e.peer.as_ref() == Some(peer))
}

/// What a service sees of the node's connections and peerstore (`Cx`).
struct Lookup<'a> {
    conns: &'a BTreeMap<ConnId, ConnEntry>,
    peerstore: &'a Peerstore,
}

impl crate::service::ConnLookup for Lookup<'_> {
    fn established(&self, conn: ConnId) -> Option<(&PeerId, &Multiaddr)> {
        self.conns.get(&conn).and_then(|e| e.peer.as_ref().map(|p| (p, &e.addr)))
    }

    fn latency(&self, peer: &PeerId) -> Option<Duration> {
        self.peerstore.latency(peer)
    }

    fn addrs(&self, peer: &PeerId, now: Instant) -> Vec<Multiaddr> {
        self.peerstore.addrs(peer, now)
    }
}

impl Owned {
    fn new(service: ServiceId, opening: Option<u64>) -> Self {
        Owned { service, opening, buf: Vec::new(), tail: &[], notify: false, close: false, closed: false, released: false, eof: false }
    }

    fn is_drained(&self) -> bool {
        self.buf.is_empty() && self.tail.is_empty()
    }

    /// Moves the static tail into `buf`, so bytes queued next come after it.
    fn untail(&mut self) {
        if !self.tail.is_empty() {
            self.buf.extend_from_slice(std::mem::take(&mut self.tail));
        }
    }
}

#[cfg(test)]
mod tests;
