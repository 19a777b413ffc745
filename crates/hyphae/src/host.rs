//! The Host: Go's `host.Host` shape over hyphae's machines. Listen, connect, open a stream to a peer for a
//! protocol, serve a protocol. Identify and ping are built in.

use crate::driver;
use crate::handle::{self, lock, Action, ConnShared, Direction, HostLink, IdentifyState, QuicHandle, Stream};
use hyphae_core::autonat::{self, service::AutonatService};
use hyphae_core::conn::{self, CloseReason, OpenError, Role, StreamId};
use hyphae_core::gossipsub::{self, service::GossipsubService};
use hyphae_core::identify::{self, Info};
use hyphae_core::kad::{self, service::KadService};
use hyphae_core::multiaddr::MultiaddrError;
use hyphae_core::node::{self, ConnId, Node};
use hyphae_core::perf::service::PerfService;
use hyphae_core::{perf, ping, rcmgr, rng, Keypair, Multiaddr, PeerId, Protocol};
use rand_core::RngCore;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot};

/// A dial the resource manager refused.
fn refused(e: node::ApiError) -> Error {
    match e {
        node::ApiError::ConnectionLimit(r) => Error::Handshake(CloseReason::Refused(r)),
        e => Error::Protocol(e.to_string()),
    }
}

pub const AGENT_VERSION: &str = concat!("hyphae/", env!("CARGO_PKG_VERSION"));

/// What can go wrong in the Host API. Structured, so callers match on causes, not on messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("multiaddr: {0}")]
    Multiaddr(#[from] MultiaddrError),
    #[error("unsupported address {0} (tcp over ip4/ip6/dns4/dns6/dns, or udp/quic-v1)")]
    UnsupportedAddress(Multiaddr),
    /// The connection failed before or during its upgrade (security, muxer, peer id, limits).
    #[error("connection upgrade failed: {0}")]
    Handshake(CloseReason),
    #[error("no connection to {0} and no known address")]
    NoConnection(PeerId),
    /// A stream could not be opened for any of the protocols asked for.
    #[error("protocol negotiation failed: {0}")]
    Negotiation(OpenError),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("limit reached: {0}")]
    Limit(&'static str),
    #[error("identify failed: {0}")]
    Identify(identify::Failure),
    #[error("ping failed: {0}")]
    Ping(ping::Failure),
    #[error("perf failed: {0}")]
    Perf(perf::Failure),
    #[error("dht: {0}")]
    Dht(kad::QueryError),
    #[error("publish: {0}")]
    Publish(hyphae_core::gossipsub::PublishError),
    /// The connection closed while we waited on it.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    #[error("protocol error: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub keypair: Keypair,
    pub limits: conn::Limits,
    /// The resource manager's connection budgets (system, transient = handshaking or dialing, per peer,
    /// per source subnet, allowlist): see `hyphae_core::rcmgr`. Default: go-libp2p's, scaled to this
    /// machine ([`machine_limits`]).
    pub resources: rcmgr::Limits,
    /// The connection manager (`host.tag_peer`, `protect_peer`, `trim_connections`): above
    /// `high_water` established connections it closes the least valuable peers' down to `low_water`.
    /// Default on, with p2pd's 256 / 512 / 2 min grace; `None` never trims on its own.
    pub connmgr: Option<hyphae_core::node::connmgr::Config>,
    /// Peers remembered in the peerstore (oldest unconnected evicted first). Default 10 000.
    pub max_peerstore_entries: usize,
    /// A ping without an answer after this long fails. Default 10 s.
    pub ping_timeout: Duration,
    pub dial_timeout: Duration,
    pub stream_timeout: Duration,
    pub agent_version: String,
    /// Security protocols, in order of preference (`/noise`, `/tls/1.0.0`). Default both, Noise first.
    pub security: Vec<String>,
    /// Stream muxers, in order of preference (`/yamux/1.0.0`, `/mplex/6.7.0`). Default both, Yamux first.
    pub muxers: Vec<String>,
    /// Root seed of the host's RNG; `None` draws one from the OS.
    pub seed: Option<[u8; 32]>,
    /// Ping every connection at this interval (results as `HostEvent::Ping`). Default `None`, as go-libp2p.
    pub ping_interval: Option<Duration>,
    /// Close connections that carried no stream for this long. Default `None` (kept until closed, as
    /// go-libp2p does without a connection manager).
    pub idle_timeout: Option<Duration>,
    /// AutoNAT v1: by default the client runs (the verdict drives the DHT's auto mode) and the server
    /// does not (`autonat.server = true` helps others find theirs); see `hyphae_core::autonat::Config`.
    pub autonat: autonat::Config,
    /// The Kademlia DHT (`host.dht()`). Default: client mode (asks, does not serve nor announce), k = 20,
    /// α = 10; see `hyphae_core::kad::Config` for every default and limit.
    pub dht: kad::Config,
    /// Keep the peerstore in `DIR/peerstore.redb`: loaded at start, what changed written every
    /// `PERSIST_INTERVAL` (5 s) and at `close` (`flush_peerstore` writes at once). Default `None`: the
    /// peerstore lives in memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// Gossipsub (`host.pubsub()`), always on: meshsub 1.2/1.1/1.0 and floodsub are announced. Defaults
    /// are go-libp2p-pubsub's (D = 6, heartbeat 1 s, 1 MiB RPCs, strict signing, `from ‖ seqno` ids);
    /// see `hyphae_core::gossipsub::Config`. The first sequence number is taken from the clock. Its
    /// latency-aware mesh (`d_near`) ranks peers by ping's round trips: set `ping_interval` (the CLI's
    /// pubsub commands ping every 15 s); without round trips the mesh is the spec's random one.
    pub pubsub: gossipsub::Config,
    /// How QUIC connections respond to loss. Default `LossTolerant`: quinn's Cubic, backing off only for
    /// losses the path shows as congestion (a grown round trip, or over 2% of two rounds' bytes lost);
    /// `Cubic` takes every loss for congestion, as RFC 9002 does. See `hyphae_core::quic::congestion`.
    pub quic_congestion: hyphae_core::quic::Congestion,
    /// A shared-uplink gate for TCP: while this many bytes or more taken for the TCP sockets (all of
    /// it, the application's streams included) have not been accepted by them, what the node's services
    /// (gossipsub, identify, kad, ...) write next on TCP connections waits in the node machine, so gossipsub's staggered sending
    /// (`gossipsub::Config::stagger`) hands a large message to one peer at a time as the uplink frees up
    /// and a queued copy can still be taken back by an IDONTWANT. Sockets then get
    /// `TCP_NOTSENT_LOWAT` (16 KiB) so that "taken" means "nearly sent"; a connection whose socket takes
    /// nothing for 100 ms stops counting (one peer that does not read cannot hold the rest). Streams
    /// the application opens itself (`new_stream`, perf) are not gated. Default `None` (off: on a
    /// real path whose queue is downstream it took no copy back; BENCHMARKS.md, "The Host's send gate"). The simulator's counterpart is the `uplink_queue`
    /// node setting.
    pub send_limit: Option<usize>,
}

/// go-libp2p's default budgets for this machine: go's `AutoScale` gives libp2p an eighth of the
/// memory (`/proc/meminfo`) and half the descriptor limit (`/proc/self/limits`); without those files,
/// the base limits (128 MiB, 256 descriptors).
pub fn machine_limits() -> rcmgr::Limits {
    let mem = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let l = t.lines().find(|l| l.starts_with("MemTotal:"))?;
        l.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
    });
    let fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|t| {
        let l = t.lines().find(|l| l.starts_with("Max open files"))?;
        l.split_whitespace().nth(3)?.parse::<u64>().ok()
    });
    match (mem, fds) {
        (Some(m), Some(f)) => rcmgr::Limits::scaled(m / 8, (f / 2).min(u32::MAX as u64) as u32),
        _ => rcmgr::Limits::default(),
    }
}

impl HostConfig {
    pub fn new(keypair: Keypair) -> Self {
        HostConfig {
            keypair,
            limits: conn::Limits::default(),
            resources: machine_limits(),
            connmgr: Some(hyphae_core::node::connmgr::Config::default()),
            max_peerstore_entries: 10_000,
            ping_timeout: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(15),
            stream_timeout: Duration::from_secs(15),
            agent_version: AGENT_VERSION.to_string(),
            security: vec![hyphae_core::noise::PROTOCOL_ID.into(), hyphae_core::tls::PROTOCOL_ID.into()],
            muxers: vec![hyphae_core::yamux::PROTOCOL_ID.into(), hyphae_core::mplex::PROTOCOL_ID.into()],
            seed: None,
            ping_interval: None,
            idle_timeout: None,
            autonat: autonat::Config::default(),
            dht: kad::Config::default(),
            pubsub: gossipsub::Config::default(),
            quic_congestion: Default::default(),
            send_limit: None,
            data_dir: None,
        }
    }
    /// A fresh Ed25519 identity.
    pub fn ephemeral() -> Self {
        Self::new(Keypair::generate_ed25519(&mut rand_core::OsRng))
    }
}

#[derive(Debug, Clone)]
pub enum HostEvent {
    Connected {
        peer: PeerId,
        addr: Multiaddr,
        direction: Direction,
        security: String,
        muxer: String,
    },
    /// The last connection to `peer` closed.
    Disconnected {
        peer: PeerId,
        reason: CloseReason,
    },
    Identified {
        peer: PeerId,
        info: Box<Info>,
    },
    InboundPing {
        peer: PeerId,
    },
    /// The outcome of a periodic ping (`HostConfig::ping_interval`).
    Ping {
        peer: PeerId,
        rtt: Result<Duration, ping::Failure>,
    },
    /// AutoNAT's verdict changed (`addr`: where a peer reached us, when public).
    Reachability {
        reachability: autonat::Reachability,
        addr: Option<Multiaddr>,
    },
}

/// The outcome of [`Host::perf`].
#[derive(Debug, Clone, Copy)]
pub struct PerfResult {
    /// From opening the stream to the last byte received.
    pub elapsed: Duration,
    pub uploaded: u64,
    pub downloaded: u64,
}

/// What the host knows of a peer (the node machine's peerstore record).
pub use hyphae_core::node::PeerRecord as PeerInfo;

#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub id: u64,
    pub peer: PeerId,
    pub local_addr: Multiaddr,
    pub remote_addr: Multiaddr,
    pub direction: Direction,
    pub streams: usize,
    /// Whether the muxer was negotiated inside the security handshake (Noise extensions or TLS ALPN).
    pub early_muxer: bool,
    /// `/noise` or `/tls/1.0.0`.
    pub security: String,
    pub muxer: String,
}

/// A `Host::ping` caller waiting for the node machine's answer.
type PingWaiter = oneshot::Sender<Result<Duration, ping::Failure>>;

/// A `host.dht()` caller: the events of its query (bounded; `try_send`, so a caller that stops reading
/// misses events rather than stalling the node).
pub(crate) type KadWaiter = tokio::sync::mpsc::Sender<kad::Event>;

/// A `Host::perf` caller: its progress reports (bounded; a slow caller misses some) and its outcome.
struct PerfWaiter {
    progress: tokio::sync::mpsc::Sender<(Duration, u64, u64)>,
    done: oneshot::Sender<Result<PerfResult, perf::Failure>>,
}
type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;
type Handler = Arc<dyn Fn(Stream) -> BoxFut + Send + Sync>;

pub(crate) struct Inner {
    /// Ourselves, for tasks spawned from `&self` contexts (an application validator's verdict).
    me: Weak<Inner>,
    keypair: Keypair,
    noise_static: Arc<hyphae_core::noise::StaticKey>,
    tls_cert: Arc<hyphae_core::tls::Certificate>,
    peer_id: PeerId,
    config: HostConfig,
    pub(crate) epoch: std::time::Instant,
    rng: Mutex<rng::Rng>,
    /// The node-level machine (identify, identify push, ping), the one the simulator runs too. Lock order:
    /// a connection's (or the QUIC endpoint's) state first, then this; never the other way round.
    node: Mutex<Node>,
    /// Wakes the node timer task: the node machine's deadline may have changed.
    node_notify: Arc<tokio::sync::Notify>,
    handlers: Mutex<BTreeMap<String, Handler>>,
    /// The sockets' side of each connection (the node machine keeps the accounting, peers, peerstore).
    conns: Mutex<BTreeMap<u64, Arc<ConnShared>>>,
    /// Callers of `Host::ping` waiting for the node machine's answer, by connection.
    ping_waiters: Mutex<BTreeMap<ConnId, Vec<PingWaiter>>>,
    /// Callers of `Host::perf`, by run.
    perf_waiters: Mutex<BTreeMap<perf::RunId, PerfWaiter>>,
    /// Callers of `host.dht()` queries, by query.
    pub(crate) kad_waiters: Mutex<BTreeMap<kad::QueryId, KadWaiter>>,
    /// `host.pubsub()`'s subscriptions and validators by topic.
    pub(crate) topics: crate::topics::Topics,
    listen_addrs: Mutex<Vec<Multiaddr>>,
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The QUIC endpoint (one UDP socket, used to listen and to dial), once made. Read without waiting;
    /// `quic_start` serializes making it.
    quic: Mutex<Option<Arc<crate::quic_driver::QuicShared>>>,
    quic_start: tokio::sync::Mutex<()>,
    events: broadcast::Sender<HostEvent>,
    /// Listeners that refused a lazily proposed security protocol (`conn::Config::lazy_security`):
    /// dialed with the full negotiation from then on. At most `LAZY_REFUSED_MAX`, then started afresh.
    lazy_refused: Mutex<std::collections::BTreeSet<SocketAddr>>,
    /// What the drivers count for the metrics (bytes, ping round trips).
    pub(crate) live: crate::live::Live,
    pub(crate) gate: crate::live::SendGate,
    /// The resource manager's system memory: every muxer reserves its receive buffers from it.
    pub(crate) memory: rcmgr::Memory,
    /// The persistent peerstore (`HostConfig::data_dir`), and the lock that keeps its batches in order.
    pub(crate) peerdb: Option<Arc<crate::peerdb::PeerDb>>,
    pub(crate) persist: tokio::sync::Mutex<()>,
}

const LAZY_REFUSED_MAX: usize = 1024;

impl Inner {
    pub(crate) fn child_seed(&self) -> [u8; 32] {
        let mut s = [0u8; 32];
        lock(&self.rng).fill_bytes(&mut s);
        s
    }

    /// Inbound QUIC handshakes the endpoint refused (0 without one).
    pub(crate) fn quic_handshakes_refused(&self) -> u64 {
        lock(&self.quic).clone().map_or(0, |q| q.handshakes_refused())
    }

    /// Our QUIC stream opens that met a peer's stream limit (all 0 without an endpoint).
    pub(crate) fn quic_open_stats(&self) -> hyphae_core::quic::OpenStats {
        lock(&self.quic).clone().map(|q| q.open_stats()).unwrap_or_default()
    }

    /// The QUIC endpoint's congestion decisions and receive-window doublings (all 0 without one).
    pub(crate) fn quic_flow_stats(&self) -> (hyphae_core::quic::LossStats, hyphae_core::quic::WindowStats) {
        lock(&self.quic).clone().map(|q| q.flow_stats()).unwrap_or_default()
    }

    fn poll_node_events(&self) -> Vec<node::Event> {
        let mut n = self.node();
        std::iter::from_fn(|| n.poll_event()).collect()
    }

    pub(crate) fn now(&self) -> hyphae_core::Instant {
        handle::since(self.epoch)
    }

    /// Every protocol we serve: the node machine's own and the application's handlers.
    fn protocols(&self) -> Vec<String> {
        self.node().protocols()
    }

    /// Lends connection `id` to the node machine to apply what its services queued for it. Behind a
    /// closed send gate a TCP connection's operations wait (they stay due).
    fn node_flush(&self, now: hyphae_core::Instant, id: ConnId) {
        let shared = lock(&self.conns).get(&id.0).cloned();
        let Some(shared) = shared else { return };
        match &shared.quic {
            Some((ep, qc)) => ep.with_streams(*qc, &mut |m| self.node().flush(now, id, m)),
            None if self.gate.is_closed() => {}
            None => {
                let mut st = shared.lock();
                let mut actions = Vec::new();
                if let Some(m) = st.conn.as_mut() {
                    let before = m.buffered_output();
                    self.node().flush(now, id, m);
                    // Counted now, not when the writer takes them: the next due connection's check must
                    // see these bytes.
                    let grown = m.buffered_output().saturating_sub(before);
                    if self.gate.is_on() && !st.gate_stalled && grown > 0 {
                        self.gate.add(grown);
                        st.gate_counted += grown;
                    }
                    // What the operations made the machine report at once (a lazily opened stream is
                    // ready without waiting for the peer) goes to the node now, not at the next input.
                    actions = crate::driver::dispatch(&shared, &mut st, self);
                }
                drop(st);
                self.handle_actions(&shared, actions);
                shared.wake_writer();
            }
        }
    }

    fn quic_config(&self) -> hyphae_core::quic::Config {
        hyphae_core::quic::Config {
            keypair: self.keypair.clone(),
            cert: self.tls_cert.clone(),
            protocols: self.protocols(),
            unix_time: unix_now(),
            seed: self.child_seed(),
            base: self.epoch,
            max_streams: hyphae_core::quic::DEFAULT_MAX_STREAMS,
            max_connections: self.config.resources.system.conns as usize,
            max_inbound_handshakes: self.config.resources.transient.conns_inbound as usize,
            ip_limits: self.config.resources.ip.clone(),
            max_datagrams: 1,
            stream_window: hyphae_core::quic::DEFAULT_STREAM_WINDOW,
            connection_window: hyphae_core::quic::DEFAULT_CONNECTION_WINDOW,
            congestion: self.config.quic_congestion,
            memory: Some(self.memory.clone()),
        }
    }

    /// Makes the QUIC endpoint (the caller holds `quic_start`), publishes it, then gives it the protocols
    /// served now (handlers may have changed while it started).
    async fn start_quic(self: &Arc<Self>, sa: SocketAddr) -> Result<Arc<crate::quic_driver::QuicShared>, Error> {
        let link: Arc<dyn HostLink> = self.clone();
        let ep = crate::quic_driver::QuicShared::start(&link, sa, self.quic_config()).await?;
        *lock(&self.quic) = Some(ep.clone());
        ep.set_protocols(self.protocols());
        Ok(ep)
    }

    /// The QUIC endpoint, made (on an ephemeral port of `sa`'s family) if there is none yet.
    async fn quic_endpoint(self: &Arc<Self>, sa: SocketAddr) -> Result<Arc<crate::quic_driver::QuicShared>, Error> {
        if let Some(ep) = lock(&self.quic).clone() {
            return Ok(ep);
        }
        let _start = self.quic_start.lock().await;
        if let Some(ep) = lock(&self.quic).clone() {
            return Ok(ep);
        }
        let any: SocketAddr =
            if sa.is_ipv4() { "0.0.0.0:0".parse().expect("invariant: literal") } else { "[::]:0".parse().expect("invariant: literal") };
        self.start_quic(any).await
    }

    /// Runs a QUIC dial the node admitted as `id`; the outcome reaches the node machine either way.
    async fn dial_quic(
        self: &Arc<Self>,
        ep: &crate::quic_driver::QuicShared,
        id: ConnId,
        addr: &Multiaddr,
        sa: SocketAddr,
    ) -> Result<PeerId, Error> {
        let rx = match ep.dial(id, sa, addr.peer_id()) {
            Ok(rx) => rx,
            Err(reason) => {
                self.dial_failed(id, reason.clone());
                return Err(Error::Handshake(reason));
            }
        };
        match tokio::time::timeout(self.config.dial_timeout, rx).await {
            Ok(Ok(Ok(peer))) => Ok(peer),
            Ok(Ok(Err(e))) => Err(Error::Handshake(e)),
            // The endpoint's handshake timeout ends the attempt and reports it to the node machine.
            _ => Err(Error::Timeout("quic handshake")),
        }
    }

    /// Connects a TCP dial the node admitted as `id`; the outcome reaches the node machine either way.
    pub(crate) async fn dial_tcp(self: &Arc<Self>, id: ConnId, sa: SocketAddr) -> Result<PeerId, Error> {
        let sock = match tokio::time::timeout(self.config.dial_timeout, TcpStream::connect(sa)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.dial_failed(id, CloseReason::Lost(e.to_string()));
                return Err(Error::Io(e));
            }
            Err(_) => {
                self.dial_failed(id, CloseReason::Lost("tcp connect timed out".into()));
                return Err(Error::Timeout("tcp connect"));
            }
        };
        let (tx, rx) = oneshot::channel();
        let lazy = !lock(&self.lazy_refused).contains(&sa);
        driver::spawn_connection(self.clone(), id, sock, Direction::Outbound, Some(tx), lazy);
        match rx.await {
            Ok(Ok(peer)) => Ok(peer),
            Ok(Err(e)) => {
                if conn::lazy_security_refused(&e) {
                    let mut r = lock(&self.lazy_refused);
                    if r.len() >= LAZY_REFUSED_MAX {
                        r.clear();
                    }
                    r.insert(sa);
                }
                Err(Error::Handshake(e))
            }
            Err(_) => Err(Error::Handshake(CloseReason::Lost("connection task ended".into()))),
        }
    }

    /// A dial the node admitted as `id` failed before a connection existed.
    fn dial_failed(self: &Arc<Self>, id: ConnId, reason: CloseReason) {
        self.node().on_dial_failed(self.now(), id, reason);
        self.drain_node();
    }

    /// Hands a kad event to the caller waiting for its query.
    fn kad_event(&self, ev: kad::Event) {
        let query = match &ev {
            kad::Event::Provider { query, .. } | kad::Event::Value { query, .. } | kad::Event::Finished { query, .. } => *query,
            kad::Event::RoutingUpdated { peer } => return tracing::debug!(%peer, "kad routing table: added"),
            kad::Event::ModeChanged { server } => return tracing::info!(server, "kad mode changed"),
        };
        let mut w = lock(&self.kad_waiters);
        let finished = matches!(ev, kad::Event::Finished { .. });
        if let Some(tx) = w.get(&query) {
            if tx.try_send(ev).is_err() {
                tracing::debug!(?query, "kad caller not reading: event dropped");
            }
        }
        if finished {
            w.remove(&query);
        }
    }

    /// Starts a kad query through `f` and returns its events. The waiter is in place before anything
    /// the query does is drained; the dials it asks for start at once.
    pub(crate) fn kad_query(
        self: &Arc<Self>,
        f: impl FnOnce(&mut KadService, &mut hyphae_core::service::Cx<'_>) -> Result<kad::QueryId, kad::QueryError>,
    ) -> Result<tokio::sync::mpsc::Receiver<kad::Event>, Error> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        {
            let now = self.now();
            let mut n = self.node();
            let id = n.with_service::<KadService, _>(now, f).expect("invariant: the Host registers kad").map_err(Error::Dht)?;
            lock(&self.kad_waiters).insert(id, tx);
        }
        self.drain_node();
        Ok(rx)
    }

    /// Services' protocol lists changed: route and announce them anew.
    pub(crate) fn update_protocols(&self) {
        let now = self.now();
        self.node().update_protocols(now);
    }

    /// Runs `f` on the Host's service of type `T`, then starts what it asked for (dials, writes).
    fn with_service<T: hyphae_core::service::Service, R>(&self, f: impl FnOnce(&mut T, &mut hyphae_core::service::Cx<'_>) -> R) -> R {
        let r = {
            let now = self.now();
            self.node().with_service::<T, _>(now, f).expect("invariant: the Host registers each service it asks for")
        };
        if let Some(me) = self.me.upgrade() {
            me.drain_node();
        }
        r
    }

    /// Runs `f` on the gossipsub service.
    pub(crate) fn with_gossipsub<R>(&self, f: impl FnOnce(&mut GossipsubService, &mut hyphae_core::service::Cx<'_>) -> R) -> R {
        self.with_service(f)
    }

    /// Hands gossipsub's events to the application: messages to subscriptions, messages to validate to
    /// the topic's validator (a task each; its verdict goes back to the router).
    fn pubsub_event(&self, ev: gossipsub::Event) {
        use crate::topics::PubsubMessage;
        match ev {
            gossipsub::Event::Validate { id, source, author, message } => {
                let Some(v) = self.topics.validator(&message.topic) else {
                    // The validator was removed meanwhile: dropped without blame.
                    self.with_gossipsub(|g, cx| g.report_validation(cx, &id, gossipsub::Acceptance::Ignore));
                    return;
                };
                let m = PubsubMessage::new(&id, source, author, &message);
                let me = self.me.clone();
                tokio::spawn(async move {
                    let verdict = v(m).await;
                    if let Some(inner) = me.upgrade() {
                        inner.with_gossipsub(|g, cx| g.report_validation(cx, &id, verdict));
                    }
                });
            }
            gossipsub::Event::Message { id, source, author, message } => {
                self.topics.deliver(PubsubMessage::new(&id, source, author, &message))
            }
            gossipsub::Event::Subscribed { peer, topic } => tracing::debug!(%peer, %topic, "peer subscribed"),
            gossipsub::Event::Unsubscribed { peer, topic } => tracing::debug!(%peer, %topic, "peer unsubscribed"),
        }
    }

    /// Runs `f` on the kad service (no query).
    pub(crate) fn with_kad<R>(&self, f: impl FnOnce(&mut KadService, &mut hyphae_core::service::Cx<'_>) -> R) -> R {
        self.with_service(f)
    }

    /// Answers the `Host::ping` callers waiting on connection `conn`.
    fn answer_pings(&self, conn: ConnId, r: &Result<Duration, ping::Failure>) {
        for tx in lock(&self.ping_waiters).remove(&conn).unwrap_or_default() {
            let _ = tx.send(r.clone());
        }
    }

    /// Handles what the node machine reported and starts the dials its services asked for.
    pub(crate) fn drain_node(self: &Arc<Self>) {
        self.drain_node_quiet();
        self.node_notify.notify_one();
    }

    /// [`Inner::drain_node`] without waking the node timer (the timer task itself re-arms after it).
    fn drain_node_quiet(self: &Arc<Self>) {
        let dials: Vec<node::Dial> = {
            let mut n = self.node();
            std::iter::from_fn(|| n.poll_dial()).collect()
        };
        for d in dials {
            let inner = self.clone();
            tokio::spawn(async move {
                let r: Result<(), Error> = match d.addr.quic_socket_addr() {
                    Some(sa) => match inner.quic_endpoint(sa).await {
                        Ok(ep) => return drop(inner.dial_quic(&ep, d.conn, &d.addr, sa).await),
                        Err(e) => Err(e),
                    },
                    None => match resolve_tcp(&d.addr).await {
                        Ok(sa) => return drop(inner.dial_tcp(d.conn, sa).await),
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = r {
                    inner.dial_failed(d.conn, CloseReason::Lost(e.to_string()));
                }
            });
        }
        let events = self.poll_node_events();
        self.handle_node_events(events);
    }

    /// The node machine accepted the connection (its per-peer cap, peerstore and accounting ran).
    fn on_established(&self, shared: &Arc<ConnShared>, peer: PeerId) {
        tracing::info!(%peer, addr = %shared.remote_addr, direction = ?shared.direction, "connected");
        let (security, muxer) = {
            let st = shared.lock();
            (st.security.clone(), st.muxer.clone())
        };
        let _ = self.events.send(HostEvent::Connected {
            peer: peer.clone(),
            addr: shared.remote_addr.clone(),
            direction: shared.direction,
            security,
            muxer,
        });
        // The node machine identifies every new peer (as go-libp2p and js-libp2p do).
    }

    fn on_inbound(&self, shared: &Arc<ConnShared>, id: StreamId, protocol: String) {
        let handler = lock(&self.handlers).get(&protocol).cloned();
        let peer = shared.lock().peer.clone();
        match (handler, peer) {
            (Some(h), Some(peer)) => {
                let counted: Weak<dyn HostLink> = self.me.clone();
                let s = Stream { id, shared: shared.clone(), protocol, peer, counted: Some(counted) };
                tokio::spawn(h(s));
            }
            _ => {
                shared.reset_stream(id);
                self.node().on_app_stream_gone(ConnId(shared.id), id);
            }
        }
    }

    fn on_closed(&self, shared: &Arc<ConnShared>, reason: CloseReason) {
        if shared.quic.is_some() {
            // QUIC connections have no writer task to do this when they end.
            self.conn_finished(shared);
        }
        let peer = shared.lock().peer.clone();
        let Some(peer) = peer else {
            tracing::debug!(addr = %shared.remote_addr, %reason, "connection failed before upgrade");
            return;
        };
        tracing::info!(%peer, %reason, "connection closed");
        if !self.node().is_connected(&peer) {
            let _ = self.events.send(HostEvent::Disconnected { peer, reason });
        }
    }
}

impl HostLink for Inner {
    fn node(&self) -> MutexGuard<'_, Node> {
        lock(&self.node)
    }

    /// What the node machine reported since the last call; its timer is re-armed (the node's deadline
    /// may have changed).
    fn take_node_events(&self) -> Vec<node::Event> {
        let v = self.poll_node_events();
        self.node_notify.notify_one();
        v
    }

    fn handle_node_events(&self, events: Vec<node::Event>) {
        for e in events {
            match e {
                node::Event::Identify(identify::Event::Received { peer, conn, info, push }) => {
                    tracing::info!(%peer, agent = ?info.agent_version, protocols = info.protocols.len(), push, "identified");
                    if !push {
                        if let Some(c) = lock(&self.conns).get(&conn.0) {
                            c.identify.send_replace(IdentifyState::Done(Arc::new((*info).clone())));
                        }
                    }
                    let _ = self.events.send(HostEvent::Identified { peer, info });
                }
                node::Event::Identify(identify::Event::Failed { peer, conn, error }) => {
                    tracing::debug!(%peer, %error, "identify failed");
                    if let Some(c) = lock(&self.conns).get(&conn.0) {
                        c.identify.send_replace(IdentifyState::Failed(error));
                    }
                }
                node::Event::Ping(ping::Event::Inbound { peer, .. }) => {
                    let _ = self.events.send(HostEvent::InboundPing { peer });
                }
                node::Event::Ping(ping::Event::Ok { peer, conn, rtt }) => {
                    self.live.ping_rtt.observe(rtt.as_secs_f64());
                    self.answer_pings(conn, &Ok(rtt));
                    let _ = self.events.send(HostEvent::Ping { peer, rtt: Ok(rtt) });
                }
                node::Event::Ping(ping::Event::Failed { peer, conn, error }) => {
                    let rtt = Err(error);
                    self.answer_pings(conn, &rtt);
                    let _ = self.events.send(HostEvent::Ping { peer, rtt });
                }
                node::Event::Perf(perf::Event::Progress { run, elapsed, uploaded, downloaded }) => {
                    if let Some(w) = lock(&self.perf_waiters).get(&run) {
                        let _ = w.progress.try_send((elapsed, uploaded, downloaded));
                    }
                }
                node::Event::Perf(perf::Event::Done { run, elapsed, uploaded, downloaded, .. }) => {
                    if let Some(w) = lock(&self.perf_waiters).remove(&run) {
                        let _ = w.done.send(Ok(PerfResult { elapsed, uploaded, downloaded }));
                    }
                }
                node::Event::Perf(perf::Event::Failed { run, error, .. }) => {
                    if let Some(w) = lock(&self.perf_waiters).remove(&run) {
                        let _ = w.done.send(Err(error));
                    }
                }
                node::Event::Perf(perf::Event::Served { peer, uploaded, downloaded, .. }) => {
                    tracing::info!(%peer, uploaded, downloaded, "served a perf run");
                }
                node::Event::Kad(ev) => self.kad_event(ev),
                node::Event::Gossipsub(ev) => self.pubsub_event(ev),
                node::Event::Autonat(autonat::Event::Reachability { reachability, addr }) => {
                    let _ = self.events.send(HostEvent::Reachability { reachability, addr });
                }
                node::Event::Violation(v) => {
                    tracing::debug!(peer = ?v.peer, protocol = v.protocol, kind = %v.kind, "peer broke a protocol")
                }
                node::Event::Disconnected { conn, .. } => self.answer_pings(conn, &Err(ping::Failure::Closed)),
                // Connection events reach the Host from its connection tasks, with their socket details.
                _ => {}
            }
        }
    }

    fn conn_config(&self) -> conn::Config {
        let mut c = conn::Config::new(self.keypair.clone());
        c.protocols = self.protocols();
        c.limits = self.config.limits.clone();
        c.handshake_timeout = self.config.dial_timeout;
        c.noise_static = Some(self.noise_static.clone());
        c.tls_cert = Some(self.tls_cert.clone());
        c.memory = Some(self.memory.clone());
        c.security = self.config.security.clone();
        c.muxers = self.config.muxers.clone();
        c.unix_time = unix_now();
        c
    }

    fn conn_started(&self, shared: &Arc<ConnShared>) {
        lock(&self.conns).insert(shared.id, shared.clone());
    }

    fn conn_finished(&self, shared: &Arc<ConnShared>) {
        lock(&self.conns).remove(&shared.id);
    }

    fn handle_actions(&self, shared: &Arc<ConnShared>, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Established(peer, waiter) => {
                    self.on_established(shared, peer.clone());
                    if let Some(tx) = waiter {
                        let _ = tx.send(Ok(peer));
                    }
                }
                Action::Inbound(id, protocol) => self.on_inbound(shared, id, protocol),
                Action::Gone(id) => self.node().on_app_stream_gone(ConnId(shared.id), id),
                Action::Closed(reason) => self.on_closed(shared, reason),
                Action::Node(events) => self.handle_node_events(events),
            }
        }
    }
    fn epoch(&self) -> std::time::Instant {
        self.epoch
    }
    fn live(&self) -> &crate::live::Live {
        &self.live
    }
    fn send_gate(&self) -> &crate::live::SendGate {
        &self.gate
    }
    fn stream_gone(&self, conn: u64, stream: StreamId) {
        self.node().on_app_stream_gone(ConnId(conn), stream);
    }
}

/// A libp2p host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<Inner>,
}

impl Host {
    pub async fn new(config: HostConfig) -> Result<Host, Error> {
        let seed = config.seed.unwrap_or_else(|| {
            let mut s = [0u8; 32];
            rand_core::OsRng.fill_bytes(&mut s);
            s
        });
        let (events, _) = broadcast::channel(1024);
        let keypair = config.keypair.clone();
        let mut root = rng::from_seed(seed);
        let mut ns = [0u8; 32];
        root.fill_bytes(&mut ns);
        let noise_static = Arc::new(
            hyphae_core::noise::StaticKey::generate(&keypair, ns)
                .map_err(|e| Error::Handshake(CloseReason::Handshake { stage: "noise", detail: e.to_string() }))?,
        );
        let tls_cert = Arc::new(hyphae_core::tls::Certificate::generate(&keypair, unix_now(), &mut root));
        let mut node_seed = [0u8; 32];
        root.fill_bytes(&mut node_seed);
        let mut nc = node::Config::new(keypair.clone(), node_seed);
        nc.agent_version = config.agent_version.clone();
        nc.identify.timeout = config.stream_timeout;
        nc.ping.interval = config.ping_interval;
        nc.ping.timeout = config.ping_timeout;
        nc.limits.resources = config.resources.clone();
        nc.limits.peerstore.max_peers = config.max_peerstore_entries;
        nc.limits.idle_timeout = config.idle_timeout;
        nc.limits.connmgr = config.connmgr.clone();
        let mut node = Node::new(nc, hyphae_core::Instant::ZERO);
        // Perf runs on command; it serves only after `enable_perf_server`.
        node.add_service(hyphae_core::Instant::ZERO, Box::new(PerfService::new(false)));
        let mut dht = config.dht.clone();
        dht.unix_time = unix_now();
        node.add_service(hyphae_core::Instant::ZERO, Box::new(KadService::new(keypair.peer_id(), dht)));
        node.add_service(hyphae_core::Instant::ZERO, Box::new(AutonatService::new(config.autonat.clone())));
        let mut ps = config.pubsub.clone();
        if ps.first_seqno == gossipsub::Config::default().first_seqno {
            // As go: start at the clock's nanoseconds, so a restarted node does not repeat message ids.
            ps.first_seqno = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        }
        node.add_service(hyphae_core::Instant::ZERO, Box::new(GossipsubService::new(ps, &keypair, hyphae_core::Instant::ZERO)));
        let node_notify = Arc::new(tokio::sync::Notify::new());
        let memory = config.resources.memory_budget();
        let peerdb = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let db = crate::peerdb::PeerDb::open(&dir.join("peerstore.redb")).map_err(|e| Error::Protocol(e.to_string()))?;
                Some(Arc::new(db))
            }
            None => None,
        };
        let gate = crate::live::SendGate::new(config.send_limit, node_notify.clone());
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            noise_static,
            tls_cert,
            peer_id: keypair.peer_id(),
            keypair,
            config,
            epoch: std::time::Instant::now(),
            rng: Mutex::new(root),
            node: Mutex::new(node),
            node_notify: node_notify.clone(),
            handlers: Mutex::new(BTreeMap::new()),
            conns: Mutex::new(BTreeMap::new()),
            ping_waiters: Mutex::new(BTreeMap::new()),
            perf_waiters: Mutex::new(BTreeMap::new()),
            kad_waiters: Mutex::new(BTreeMap::new()),
            topics: Default::default(),
            live: Default::default(),
            gate,
            memory,
            listen_addrs: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
            quic: Mutex::new(None),
            quic_start: tokio::sync::Mutex::new(()),
            events,
            lazy_refused: Mutex::new(Default::default()),
            peerdb,
            persist: tokio::sync::Mutex::new(()),
        });
        let timer = tokio::spawn(node_timer(Arc::downgrade(&inner), node_notify));
        lock(&inner.listeners).push(timer);
        if inner.peerdb.is_some() {
            inner.load_peerstore();
            let t = inner.spawn_persist();
            lock(&inner.listeners).push(t);
        }
        Ok(Host { inner })
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id.clone()
    }
    pub fn keypair(&self) -> &Keypair {
        &self.inner.keypair
    }

    /// Host events (connections, identify results). A slow receiver misses events beyond 1024 queued.
    pub fn events(&self) -> broadcast::Receiver<HostEvent> {
        self.inner.events.subscribe()
    }

    /// The addresses we listen on (unspecified addresses expanded to the interfaces' addresses).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.inner.listen_addrs).clone()
    }

    /// Serves `protocol` on inbound streams with `handler`.
    pub fn set_stream_handler<F, Fut>(&self, protocol: &str, handler: F)
    where
        F: Fn(Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let h: Handler = Arc::new(move |s| Box::pin(handler(s)));
        lock(&self.inner.handlers).insert(protocol.to_string(), h);
        self.protocols_changed();
    }

    pub fn remove_stream_handler(&self, protocol: &str) {
        lock(&self.inner.handlers).remove(protocol);
        self.protocols_changed();
    }

    pub(crate) fn protocols_changed(&self) {
        let user: Vec<String> = lock(&self.inner.handlers).keys().cloned().collect();
        // The node machine announces them and pushes identify to connected peers, as go-libp2p does.
        let now = self.inner.now();
        self.inner.node().set_protocols(now, user);
        self.inner.node_notify.notify_one();
        let protos = self.inner.protocols();
        let conns: Vec<_> = lock(&self.inner.conns).values().cloned().collect();
        for c in &conns {
            if c.quic.is_none() {
                c.set_protocols(protos.clone());
            }
        }
        // Never skipped: the endpoint's slot is only held for a moment (making the endpoint holds
        // `quic_start`, and it reads the protocols after it is published).
        if let Some(q) = lock(&self.inner.quic).as_ref() {
            q.set_protocols(protos);
        }
    }

    fn listen_addrs_changed(&self) {
        let addrs = lock(&self.inner.listen_addrs).clone();
        let now = self.inner.now();
        self.inner.node().set_listen_addrs(now, addrs);
        self.inner.node_notify.notify_one();
    }

    /// Listens on a TCP multiaddr (`/ip4|ip6/<ip>/tcp/<port>`, port 0 = any). Returns the addresses now
    /// listened on, each ending in `/p2p/<our id>`.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Vec<Multiaddr>, Error> {
        if let Some(sa) = addr.quic_socket_addr() {
            return self.listen_quic(sa).await;
        }
        let (sa, tcp) = addr.socket_addr().ok_or_else(|| Error::UnsupportedAddress(addr.clone()))?;
        if !tcp || addr.len() != 2 {
            return Err(Error::UnsupportedAddress(addr));
        }
        let listener = bind_tcp(sa)?;
        let local = listener.local_addr()?;
        let mut addrs = Vec::new();
        if local.ip().is_unspecified() {
            for ip in interface_ips(local.is_ipv4()) {
                addrs.push(Multiaddr::from_tcp(SocketAddr::new(ip, local.port())));
            }
        } else {
            addrs.push(Multiaddr::from_tcp(local));
        }
        lock(&self.inner.listen_addrs).extend(addrs.iter().cloned());
        self.listen_addrs_changed();
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            loop {
                let (sock, from) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(inner) = weak.upgrade() else { return };
                let admitted = {
                    let mut n = inner.node();
                    let id = n.next_conn_id();
                    n.on_transport_up(id, Role::Listener, Multiaddr::from_tcp(from)).map(|()| id)
                };
                match admitted {
                    Ok(id) => driver::spawn_connection(inner, id, sock, Direction::Inbound, None, false),
                    Err(reason) => tracing::debug!(%from, %reason, "refusing inbound connection"),
                }
            }
        });
        lock(&self.inner.listeners).push(task);
        tracing::info!(addrs = ?addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(), "listening");
        Ok(addrs.into_iter().map(|a| a.with_peer_id(&self.inner.peer_id)).collect())
    }

    async fn listen_quic(&self, sa: SocketAddr) -> Result<Vec<Multiaddr>, Error> {
        let start = self.inner.quic_start.lock().await;
        if lock(&self.inner.quic).is_some() {
            return Err(Error::Limit("one QUIC socket per host (listen on QUIC before dialing over it)"));
        }
        let ep = self.inner.start_quic(sa).await?;
        drop(start);
        let local = ep.local;
        let ips: Vec<IpAddr> = if local.ip().is_unspecified() { interface_ips(local.is_ipv4()) } else { vec![local.ip()] };
        let addrs: Vec<Multiaddr> = ips.into_iter().map(|ip| Multiaddr::from_quic(SocketAddr::new(ip, local.port()))).collect();
        lock(&self.inner.listen_addrs).extend(addrs.iter().cloned());
        self.listen_addrs_changed();
        tracing::info!(addrs = ?addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(), "listening");
        Ok(addrs.into_iter().map(|a| a.with_peer_id(&self.inner.peer_id)).collect())
    }

    async fn dial_quic(&self, addr: &Multiaddr, sa: SocketAddr) -> Result<PeerId, Error> {
        let ep = self.inner.quic_endpoint(sa).await?;
        let id = self.inner.node().dial(addr.clone()).map_err(refused)?;
        self.inner.dial_quic(&ep, id, addr, sa).await
    }

    /// Connects to the peer at `addr` (TCP; `/p2p/<id>` is verified if present) and returns its ID.
    /// Reuses an existing connection when `addr` names a peer we are connected to.
    pub async fn connect(&self, addr: &Multiaddr) -> Result<PeerId, Error> {
        let expected = addr.peer_id();
        if let Some(p) = &expected {
            if self.is_connected(p) {
                return Ok(p.clone());
            }
        }
        self.dial(addr).await
    }

    /// Always opens a new connection.
    pub async fn dial(&self, addr: &Multiaddr) -> Result<PeerId, Error> {
        if let Some(sa) = addr.quic_socket_addr() {
            return self.dial_quic(addr, sa).await;
        }
        let sa = resolve_tcp(addr).await?;
        let admit = || self.inner.node().dial(addr.clone()).map_err(refused);
        match self.inner.dial_tcp(admit()?, sa).await {
            // The listener lacks our first security protocol: once more, negotiating it in full.
            Err(Error::Handshake(e)) if conn::lazy_security_refused(&e) => {
                tracing::debug!(%addr, "dialing again without the lazy security proposal");
                self.inner.dial_tcp(admit()?, sa).await
            }
            r => r,
        }
    }

    fn conn_to(&self, peer: &PeerId) -> Option<Arc<ConnShared>> {
        let ids = self.inner.node().connections_to(peer);
        let conns = lock(&self.inner.conns);
        ids.iter().rev().filter_map(|id| conns.get(&id.0)).find(|c| c.lock().closed.is_none()).cloned()
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.conn_to(peer).is_some()
    }

    /// Opens a stream to `peer` for the first of `protocols` it supports, dialing a known address if
    /// there is no connection yet.
    pub async fn new_stream(&self, peer: &PeerId, protocols: &[&str]) -> Result<Stream, Error> {
        let shared = match self.conn_to(peer) {
            Some(c) => c,
            None => {
                self.connect_known(peer).await?;
                self.conn_to(peer).ok_or_else(|| Error::NoConnection(peer.clone()))?
            }
        };
        self.open_on(&shared, peer, protocols).await
    }

    /// Dials the peer's known addresses (peerstore) in turn until one connects.
    pub(crate) async fn connect_known(&self, peer: &PeerId) -> Result<(), Error> {
        let addrs = self.peer_info(peer).map(|i| i.addrs).unwrap_or_default();
        let mut last = Error::NoConnection(peer.clone());
        for a in addrs {
            match self.dial(&a.with_peer_id(peer)).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn open_on(&self, shared: &Arc<ConnShared>, peer: &PeerId, protocols: &[&str]) -> Result<Stream, Error> {
        let (id, rx) = shared.open_stream(protocols.iter().map(|s| s.to_string()).collect()).map_err(Error::Negotiation)?;
        match tokio::time::timeout(self.inner.config.stream_timeout, rx).await {
            Ok(Ok(Ok(protocol))) => {
                // Counted in the resource manager's outbound stream scopes until dropped.
                let counted: Weak<dyn HostLink> = self.inner.me.clone();
                Ok(Stream { id, shared: shared.clone(), protocol, peer: peer.clone(), counted: Some(counted) })
            }
            Ok(Ok(Err(e))) => Err(Error::Negotiation(e)),
            Ok(Err(_)) => Err(Error::Negotiation(OpenError::ConnectionClosed)),
            Err(_) => {
                shared.reset_stream(id);
                self.inner.node().on_app_stream_gone(ConnId(shared.id), id);
                Err(Error::Timeout("stream negotiation"))
            }
        }
    }

    /// What a connected peer said in the identify exchange that runs on every new connection (waits for
    /// it if still running). Peers limit concurrent identify streams (js-libp2p allows one), so this
    /// reuses that exchange instead of opening another.
    pub async fn identify(&self, peer: &PeerId) -> Result<Info, Error> {
        let shared = self.conn_to(peer).ok_or_else(|| Error::NoConnection(peer.clone()))?;
        let mut rx = shared.identify.subscribe();
        let wait = rx.wait_for(|s| !matches!(s, IdentifyState::Pending));
        let st = tokio::time::timeout(self.inner.config.stream_timeout, wait)
            .await
            .map_err(|_| Error::Timeout("identify"))?
            .map_err(|_| Error::Closed(CloseReason::Local))?
            .clone();
        match st {
            IdentifyState::Done(info) => Ok((*info).clone()),
            IdentifyState::Failed(e) => Err(Error::Identify(e)),
            IdentifyState::Pending => Err(Error::Timeout("identify")),
        }
    }

    /// One ping, by the node machine's ping service (on its reused ping stream; dials a known address
    /// if not connected). Fails after `HostConfig::ping_timeout`.
    pub async fn ping(&self, peer: &PeerId) -> Result<Duration, Error> {
        if self.conn_to(peer).is_none() {
            self.connect_known(peer).await?;
        }
        let (tx, rx) = oneshot::channel();
        {
            let now = self.inner.now();
            let mut n = self.inner.node();
            let conn = n.ping(now, peer).map_err(|_| Error::NoConnection(peer.clone()))?;
            lock(&self.inner.ping_waiters).entry(conn).or_default().push(tx);
        }
        self.inner.node_notify.notify_one();
        match rx.await {
            Ok(r) => r.map_err(Error::Ping),
            Err(_) => Err(Error::Ping(ping::Failure::Closed)),
        }
    }

    /// One ping on an open ping stream (pings may repeat on one stream).
    pub async fn ping_on(&self, s: &mut Stream) -> Result<Duration, Error> {
        let mut payload = [0u8; ping::PING_SIZE];
        lock(&self.inner.rng).fill_bytes(&mut payload);
        let mut pinger = ping::Pinger::new();
        let now = || self.inner.now();
        let bytes = pinger.start(now(), payload);
        let fut = async {
            s.write_all(&bytes).await?;
            let mut buf = [0u8; ping::PING_SIZE];
            let mut got = 0;
            loop {
                let n = s.read(&mut buf[got..]).await?;
                if n == 0 {
                    return Err(Error::Ping(ping::Failure::Closed));
                }
                let r = pinger.handle_input(now(), &buf[got..got + n]).map_err(|e| Error::Ping(ping::Failure::Answer(e)))?;
                got += n;
                if let Some(rtt) = r {
                    return Ok(rtt);
                }
            }
        };
        tokio::time::timeout(self.inner.config.ping_timeout, fut).await.map_err(|_| Error::Timeout("ping"))?
    }

    /// Serves `/perf/1.0.0` (libp2p/specs perf/perf.md) from now on, and announces it.
    pub fn enable_perf_server(&self) {
        {
            let now = self.inner.now();
            let mut n = self.inner.node();
            n.with_service::<PerfService, _>(now, |p, _| p.set_serve(true));
            n.update_protocols(now);
        }
        self.protocols_changed();
    }

    /// Runs one perf exchange with the node's perf service: uploads `upload` bytes, downloads
    /// `download`. `progress` is called about once a second with (elapsed, uploaded, downloaded) since
    /// the last call. The elapsed time of the result includes dialing when there was no connection.
    pub async fn perf(
        &self,
        peer: &PeerId,
        upload: u64,
        download: u64,
        mut progress: impl FnMut(Duration, u64, u64),
    ) -> Result<PerfResult, Error> {
        let t0 = std::time::Instant::now();
        let shared = match self.conn_to(peer) {
            Some(c) => c,
            None => {
                self.connect_known(peer).await?;
                self.conn_to(peer).ok_or_else(|| Error::NoConnection(peer.clone()))?
            }
        };
        let (ptx, mut prx) = tokio::sync::mpsc::channel(16);
        let (dtx, mut drx) = oneshot::channel();
        {
            let now = self.inner.now();
            let mut n = self.inner.node();
            let run = n
                .with_service::<PerfService, _>(now, |p, cx| p.start(cx, ConnId(shared.id), upload, download))
                .flatten()
                .ok_or_else(|| Error::NoConnection(peer.clone()))?;
            // Under the node lock: the outcome cannot be drained before the waiter is in place.
            lock(&self.inner.perf_waiters).insert(run, PerfWaiter { progress: ptx, done: dtx });
        }
        self.inner.node_notify.notify_one();
        let r = loop {
            tokio::select! {
                Some((d, up, down)) = prx.recv() => progress(d, up, down),
                r = &mut drx => break r,
            }
        };
        match r {
            Ok(Ok(mut r)) => {
                r.elapsed = t0.elapsed();
                Ok(r)
            }
            Ok(Err(e)) => Err(Error::Perf(e)),
            Err(_) => Err(Error::Perf(perf::Failure::Closed)),
        }
    }

    /// AutoNAT's current verdict.
    pub fn reachability(&self) -> autonat::Reachability {
        self.inner.node().local().reachability
    }

    /// Peers with at least one established connection.
    pub fn peers(&self) -> Vec<PeerId> {
        self.inner.node().connected_peers()
    }

    pub fn peer_info(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.inner.node().peerstore().get(peer)
    }

    /// Teaches the peerstore addresses of a peer (used by `new_stream` to dial).
    pub fn add_addrs(&self, peer: &PeerId, addrs: &[Multiaddr]) {
        self.inner.node().add_addrs(peer, addrs);
    }

    /// The node machine's counters (connections, refusals, pings, identifies, dropped outputs).
    pub fn stats(&self) -> node::Stats {
        self.inner.node().stats()
    }

    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let conns: Vec<_> = lock(&self.inner.conns).values().cloned().collect();
        conns
            .iter()
            .filter_map(|c| {
                let st = c.lock();
                let peer = st.peer.clone()?;
                if st.closed.is_some() {
                    return None;
                }
                Some(ConnectionInfo {
                    id: c.id,
                    peer,
                    local_addr: c.local_addr.clone(),
                    remote_addr: c.remote_addr.clone(),
                    direction: c.direction,
                    streams: st.conn.as_ref().map(|c| c.num_streams()).unwrap_or(0),
                    early_muxer: st.early_muxer,
                    security: st.security.clone(),
                    muxer: st.muxer.clone(),
                })
            })
            .collect()
    }

    /// Closes every connection to `peer`.
    pub fn disconnect(&self, peer: &PeerId) {
        let ids = self.inner.node().connections_to(peer);
        let conns: Vec<_> = {
            let c = lock(&self.inner.conns);
            ids.iter().filter_map(|i| c.get(&i.0).cloned()).collect()
        };
        for c in conns {
            c.close();
        }
    }

    /// Stops listening and closes all connections (GoAway first).
    pub async fn close(&self) {
        for t in lock(&self.inner.listeners).drain(..) {
            t.abort();
        }
        if let Err(e) = self.flush_peerstore().await {
            tracing::warn!(error = %e, "peerstore not saved at close");
        }
        let conns: Vec<_> = lock(&self.inner.conns).values().cloned().collect();
        for c in &conns {
            c.close();
        }
        for _ in 0..100 {
            if lock(&self.inner.conns).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The machine's addresses of one family (loopback if none), for expanding unspecified listen addresses.
fn interface_ips(v4: bool) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> =
        if_addrs::get_if_addrs().map(|l| l.into_iter().map(|i| i.ip()).filter(|ip| ip.is_ipv4() == v4).collect()).unwrap_or_default();
    if ips.is_empty() {
        ips.push(if v4 { IpAddr::from([127, 0, 0, 1]) } else { IpAddr::from(std::net::Ipv6Addr::LOCALHOST) });
    }
    ips.sort();
    ips.dedup();
    ips
}

/// A listening socket.
fn bind_tcp(sa: SocketAddr) -> std::io::Result<TcpListener> {
    let s = crate::handle::new_socket(sa, socket2::Type::STREAM, socket2::Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.bind(&sa.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Wall-clock seconds: the driver's job (TLS certificates need it), never the core's.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn resolve_tcp(addr: &Multiaddr) -> Result<SocketAddr, Error> {
    let ps = addr.without_peer_id();
    let ps = ps.protocols();
    let port = match ps {
        [_, Protocol::Tcp(p)] => *p,
        _ => return Err(Error::UnsupportedAddress(addr.clone())),
    };
    match &ps[0] {
        Protocol::Ip4(ip) => Ok(SocketAddr::new((*ip).into(), port)),
        Protocol::Ip6(ip) => Ok(SocketAddr::new((*ip).into(), port)),
        Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name) => {
            let want_v4 = matches!(ps[0], Protocol::Dns4(_));
            let want_v6 = matches!(ps[0], Protocol::Dns6(_));
            let found = tokio::net::lookup_host((name.as_str(), port)).await?;
            found
                .into_iter()
                .find(|a| (!want_v4 || a.is_ipv4()) && (!want_v6 || a.is_ipv6()))
                .ok_or_else(|| Error::Io(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{name}: no address"))))
        }
        _ => Err(Error::UnsupportedAddress(addr.clone())),
    }
}

/// Fires the node machine's timers (pings, identify timeouts), lends it the connections its services queued
/// stream operations for, and starts the dials they asked for. Holds the host only weakly, so it ends
/// with it.
async fn node_timer(inner: Weak<Inner>, notify: Arc<tokio::sync::Notify>) {
    loop {
        let (deadline, epoch) = {
            let Some(inner) = inner.upgrade() else { return };
            // Behind a closed send gate, queued operations wait for the gate, not for a timer.
            let d = if inner.gate.is_closed() { inner.node().poll_timeout_holding_outbox() } else { inner.node().poll_timeout() };
            (d, inner.epoch)
        };
        handle::wait_for_wake_or_deadline(&notify, epoch, deadline).await;
        let Some(inner) = inner.upgrade() else { return };
        let now = inner.now();
        let due = {
            let mut n = inner.node();
            n.handle_timeout(now);
            n.due()
        };
        for id in due {
            inner.node_flush(now, id);
        }
        inner.drain_node_quiet();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler registered while another task holds the QUIC endpoint's start lock (a dial or listen in
    /// progress) must still reach the endpoint: the old code skipped the update when the lock was busy.
    #[tokio::test]
    async fn host_handler_set_during_quic_start_reaches_the_endpoint() {
        let server = Host::new(HostConfig::ephemeral()).await.unwrap();
        let addr = server.listen("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()).await.unwrap()[0].clone();
        let busy = server.inner.quic_start.lock().await;
        server.set_stream_handler("/late/1.0.0", |mut s: Stream| async move {
            let _ = s.write_all(b"ok").await;
            let _ = s.shutdown().await;
        });
        drop(busy);
        let client = Host::new(HostConfig::ephemeral()).await.unwrap();
        let peer = client.connect(&addr).await.unwrap();
        let mut s = client.new_stream(&peer, &["/late/1.0.0"]).await.expect("the QUIC endpoint serves the new protocol");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok");
    }
}
