//! The Host: Go's `host.Host` shape over hyphae's machines. Listen, connect, open a stream to a peer for a
//! protocol, serve a protocol. Identify and ping are built in.

pub use crate::driver::Stream;
use crate::driver::{self, Action, ConnShared, IdentifyState};
use hyphae_core::conn::{self, StreamId};
use hyphae_core::identify::Info;
use hyphae_core::multiaddr::MultiaddrError;
use hyphae_core::node::{self, Node};
use hyphae_core::{perf, ping, rng, Keypair, Multiaddr, PeerId, Protocol, PublicKey};
use rand_core::RngCore;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot};

pub const AGENT_VERSION: &str = concat!("hyphae/", env!("CARGO_PKG_VERSION"));

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    Io(std::io::Error),
    Multiaddr(MultiaddrError),
    UnsupportedAddress(Multiaddr),
    Handshake(String),
    NoConnection(PeerId),
    Negotiation(String),
    Timeout(&'static str),
    Limit(&'static str),
    Protocol(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o: {e}"),
            Error::Multiaddr(e) => write!(f, "multiaddr: {e}"),
            Error::UnsupportedAddress(a) => write!(f, "unsupported address {a} (tcp over ip4/ip6/dns4/dns6/dns)"),
            Error::Handshake(e) => write!(f, "connection upgrade failed: {e}"),
            Error::NoConnection(p) => write!(f, "no connection to {p} and no known address"),
            Error::Negotiation(e) => write!(f, "protocol negotiation failed: {e}"),
            Error::Timeout(what) => write!(f, "timed out: {what}"),
            Error::Limit(what) => write!(f, "limit reached: {what}"),
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}
impl std::error::Error for Error {}
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}
impl From<MultiaddrError> for Error {
    fn from(e: MultiaddrError) -> Self {
        Error::Multiaddr(e)
    }
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub keypair: Keypair,
    pub limits: conn::Limits,
    /// Connections open or opening at once, both directions. Default 1024.
    pub max_connections: usize,
    /// Established connections per peer. Default 8.
    pub max_connections_per_peer: usize,
    /// Peers remembered in the peerstore (oldest unconnected evicted first). Default 10 000.
    pub max_peerstore_entries: usize,
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
}

impl HostConfig {
    pub fn new(keypair: Keypair) -> Self {
        HostConfig {
            keypair,
            limits: conn::Limits::default(),
            max_connections: 1024,
            max_connections_per_peer: 8,
            max_peerstore_entries: 10_000,
            dial_timeout: Duration::from_secs(15),
            stream_timeout: Duration::from_secs(15),
            agent_version: AGENT_VERSION.to_string(),
            security: vec![hyphae_core::noise::PROTOCOL_ID.into(), hyphae_core::tls::PROTOCOL_ID.into()],
            muxers: vec![hyphae_core::yamux::PROTOCOL_ID.into(), hyphae_core::mplex::PROTOCOL_ID.into()],
            seed: None,
            ping_interval: None,
        }
    }
    /// A fresh Ed25519 identity.
    pub fn ephemeral() -> Self {
        Self::new(Keypair::generate_ed25519(&mut rand_core::OsRng))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
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
    Disconnected {
        peer: PeerId,
        reason: String,
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
        rtt: Result<Duration, String>,
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

/// What the host knows of a peer.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub addrs: Vec<Multiaddr>,
    pub protocols: Vec<String>,
    pub agent_version: Option<String>,
    pub protocol_version: Option<String>,
    pub public_key: Option<PublicKey>,
    /// Our address as this peer saw it.
    pub observed_addr: Option<Multiaddr>,
}

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

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;
type Handler = Arc<dyn Fn(Stream) -> BoxFut + Send + Sync>;

const MAX_ADDRS_PER_PEER: usize = 32;

pub(crate) struct Inner {
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
    conns: Mutex<BTreeMap<u64, Arc<ConnShared>>>,
    by_peer: Mutex<BTreeMap<PeerId, Vec<u64>>>,
    peerstore: Mutex<BTreeMap<PeerId, PeerInfo>>,
    listen_addrs: Mutex<Vec<Multiaddr>>,
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    next_conn: AtomicU64,
    live_conns: AtomicUsize,
    /// The QUIC endpoint (one UDP socket, used to listen and to dial), made on first use.
    quic: tokio::sync::Mutex<Option<Arc<crate::quic_driver::QuicShared>>>,
    events: broadcast::Sender<HostEvent>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn child_seed(&self) -> [u8; 32] {
        let mut s = [0u8; 32];
        lock(&self.rng).fill_bytes(&mut s);
        s
    }

    pub(crate) fn node(&self) -> MutexGuard<'_, Node> {
        lock(&self.node)
    }

    /// What the node machine reported since the last call; its timer is re-armed.
    pub(crate) fn take_node_events(&self) -> Vec<node::Event> {
        let mut n = self.node();
        let mut v = Vec::new();
        while let Some(e) = n.poll_event() {
            v.push(e);
        }
        drop(n);
        self.node_notify.notify_one();
        v
    }

    fn now(&self) -> hyphae_core::Instant {
        driver::since(self.epoch)
    }

    /// Every protocol we serve: the node machine's own and the application's handlers.
    fn protocols(&self) -> Vec<String> {
        self.node().protocols()
    }

    /// Runs the node machine's timers for connection `id` (its machine borrowed under its own lock).
    fn node_timeout(&self, now: hyphae_core::Instant, id: node::ConnId) {
        let shared = lock(&self.conns).get(&id.0).cloned();
        let Some(shared) = shared else {
            self.node().on_closed(id, "connection gone");
            return;
        };
        match &shared.quic {
            Some((ep, qc)) => ep.with_streams(*qc, |m| self.node().handle_timeout(now, id, m)),
            None => {
                let mut st = shared.lock();
                if let Some(m) = st.conn.as_mut() {
                    self.node().handle_timeout(now, id, m);
                }
                drop(st);
                shared.wake_writer();
            }
        }
        let events = self.take_node_events();
        self.handle_node_events(events);
    }

    fn handle_node_events(&self, events: Vec<node::Event>) {
        for e in events {
            match e {
                node::Event::Identified { peer, conn, info, push } => {
                    self.store_identify(&peer, &info);
                    tracing::info!(%peer, agent = ?info.agent_version, protocols = info.protocols.len(), push, "identified");
                    if !push {
                        if let Some(c) = lock(&self.conns).get(&conn.0) {
                            c.identify.send_replace(IdentifyState::Done(Arc::new((*info).clone())));
                        }
                    }
                    let _ = self.events.send(HostEvent::Identified { peer, info });
                }
                node::Event::IdentifyFailed { peer, conn, reason } => {
                    tracing::debug!(%peer, %reason, "identify failed");
                    if let Some(c) = lock(&self.conns).get(&conn.0) {
                        c.identify.send_replace(IdentifyState::Failed(reason));
                    }
                }
                node::Event::InboundPing { peer, .. } => {
                    let _ = self.events.send(HostEvent::InboundPing { peer });
                }
                node::Event::PingOk { peer, rtt, .. } => {
                    let _ = self.events.send(HostEvent::Ping { peer, rtt: Ok(rtt) });
                }
                node::Event::PingFailed { peer, reason, .. } => {
                    let _ = self.events.send(HostEvent::Ping { peer, rtt: Err(reason) });
                }
                // The host tracks connections itself (per-peer limits, peerstore, its own events).
                node::Event::Connected { .. } | node::Event::Disconnected { .. } | node::Event::DialFailed { .. } => {}
            }
        }
    }

    pub(crate) fn conn_config(&self) -> conn::Config {
        let mut c = conn::Config::new(self.keypair.clone());
        c.protocols = self.protocols();
        c.limits = self.config.limits.clone();
        c.handshake_timeout = self.config.dial_timeout;
        c.noise_static = Some(self.noise_static.clone());
        c.tls_cert = Some(self.tls_cert.clone());
        c.security = self.config.security.clone();
        c.muxers = self.config.muxers.clone();
        c.unix_time = unix_now();
        c
    }

    /// Counts an inbound connection against `max_connections`; false when full.
    pub(crate) fn try_reserve_connection(&self) -> bool {
        if self.live_conns.fetch_add(1, Ordering::Relaxed) >= self.config.max_connections {
            self.live_conns.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn conn_registered(&self, shared: &Arc<ConnShared>) {
        self.conn_started(shared);
    }

    fn quic_config(&self) -> hyphae_core::quic::Config {
        hyphae_core::quic::Config {
            keypair: self.keypair.clone(),
            cert: self.tls_cert.clone(),
            protocols: self.protocols(),
            unix_time: unix_now(),
            seed: self.child_seed(),
            base: self.epoch,
            max_streams: 256,
            max_connections: self.config.max_connections,
            max_datagrams: 1,
        }
    }

    pub(crate) fn conn_started(&self, shared: &Arc<ConnShared>) {
        lock(&self.conns).insert(shared.id, shared.clone());
    }

    pub(crate) fn conn_finished(&self, shared: &Arc<ConnShared>) {
        lock(&self.conns).remove(&shared.id);
        self.live_conns.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn handle_actions(&self, shared: &Arc<ConnShared>, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Established(peer, key, waiter) => {
                    self.on_established(shared, peer.clone(), key);
                    if let Some(tx) = waiter {
                        let _ = tx.send(Ok(peer));
                    }
                }
                Action::Inbound(id, protocol) => self.on_inbound(shared, id, protocol),
                Action::Closed(reason) => self.on_closed(shared, reason),
                Action::Node(events) => self.handle_node_events(events),
            }
        }
    }

    fn on_established(&self, shared: &Arc<ConnShared>, peer: PeerId, key: PublicKey) {
        {
            let mut bp = lock(&self.by_peer);
            let list = bp.entry(peer.clone()).or_default();
            if list.len() >= self.config.max_connections_per_peer {
                drop(bp);
                tracing::debug!(%peer, "too many connections to peer; closing the new one");
                shared.close();
                return;
            }
            list.push(shared.id);
        }
        {
            let mut ps = lock(&self.peerstore);
            if !ps.contains_key(&peer) && ps.len() >= self.config.max_peerstore_entries {
                let bp = lock(&self.by_peer);
                if let Some(victim) = ps.keys().find(|p| !bp.contains_key(*p)).cloned() {
                    ps.remove(&victim);
                }
            }
            let e = ps.entry(peer.clone()).or_default();
            e.public_key = Some(key);
            if shared.direction == Direction::Outbound && !e.addrs.contains(&shared.remote_addr) && e.addrs.len() < MAX_ADDRS_PER_PEER {
                e.addrs.push(shared.remote_addr.clone());
            }
        }
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
                let s = Stream { id, shared: shared.clone(), protocol, peer };
                tokio::spawn(h(s));
            }
            _ => {
                shared.reset_stream(id);
            }
        }
    }

    fn on_closed(&self, shared: &Arc<ConnShared>, reason: String) {
        let peer = shared.lock().peer.clone();
        let Some(peer) = peer else {
            tracing::debug!(addr = %shared.remote_addr, %reason, "connection failed before upgrade");
            return;
        };
        let last = {
            let mut bp = lock(&self.by_peer);
            match bp.get_mut(&peer) {
                Some(list) => {
                    list.retain(|c| *c != shared.id);
                    if list.is_empty() {
                        bp.remove(&peer);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        tracing::info!(%peer, %reason, "connection closed");
        if shared.quic.is_some() {
            // QUIC connections have no writer task to do this when they end.
            self.conn_finished(shared);
        }
        if last {
            let _ = self.events.send(HostEvent::Disconnected { peer, reason });
        }
    }

    fn store_identify(&self, peer: &PeerId, info: &Info) {
        let mut ps = lock(&self.peerstore);
        let e = ps.entry(peer.clone()).or_default();
        e.protocols = info.protocols.clone();
        e.agent_version = info.agent_version.clone();
        e.protocol_version = info.protocol_version.clone();
        e.observed_addr = info.observed_addr.clone();
        if let Some(k) = &info.public_key {
            e.public_key = Some(k.clone());
        }
        for a in &info.listen_addrs {
            let a = a.without_peer_id();
            if !e.addrs.contains(&a) && e.addrs.len() < MAX_ADDRS_PER_PEER {
                e.addrs.push(a);
            }
        }
    }
}

/// A libp2p host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
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
        let noise_static = Arc::new(hyphae_core::noise::StaticKey::generate(&keypair, ns).map_err(|e| Error::Handshake(e.to_string()))?);
        let tls_cert = Arc::new(hyphae_core::tls::Certificate::generate(&keypair, unix_now(), &mut root));
        let mut node_seed = [0u8; 32];
        root.fill_bytes(&mut node_seed);
        let mut nc = node::Config::new(keypair.clone(), node_seed);
        nc.agent_version = config.agent_version.clone();
        nc.identify_timeout = config.stream_timeout;
        nc.ping_interval = config.ping_interval;
        let node = Node::new(nc, hyphae_core::Instant::ZERO);
        let node_notify = Arc::new(tokio::sync::Notify::new());
        let inner = Arc::new(Inner {
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
            by_peer: Mutex::new(BTreeMap::new()),
            peerstore: Mutex::new(BTreeMap::new()),
            listen_addrs: Mutex::new(Vec::new()),
            listeners: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            live_conns: AtomicUsize::new(0),
            quic: tokio::sync::Mutex::new(None),
            events,
        });
        let timer = tokio::spawn(node_timer(Arc::downgrade(&inner), node_notify));
        lock(&inner.listeners).push(timer);
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

    fn protocols_changed(&self) {
        let user: Vec<String> = lock(&self.inner.handlers).keys().cloned().collect();
        // The node machine announces them and pushes identify to connected peers, as go-libp2p does.
        self.inner.node().set_protocols(user);
        self.inner.node_notify.notify_one();
        let protos = self.inner.protocols();
        let conns: Vec<_> = lock(&self.inner.conns).values().cloned().collect();
        for c in &conns {
            if c.quic.is_none() {
                c.set_protocols(protos.clone());
            }
        }
        if let Ok(q) = self.inner.quic.try_lock() {
            if let Some(q) = q.as_ref() {
                q.set_protocols(protos.clone());
            }
        }
    }

    fn listen_addrs_changed(&self) {
        let addrs = lock(&self.inner.listen_addrs).clone();
        self.inner.node().set_listen_addrs(addrs);
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
                if inner.live_conns.load(Ordering::Relaxed) >= inner.config.max_connections {
                    tracing::debug!(%from, "connection limit reached; refusing inbound connection");
                    continue;
                }
                inner.live_conns.fetch_add(1, Ordering::Relaxed);
                driver::spawn_connection(inner, sock, Direction::Inbound, None, None);
            }
        });
        lock(&self.inner.listeners).push(task);
        tracing::info!(addrs = ?addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(), "listening");
        Ok(addrs.into_iter().map(|a| a.with_peer_id(&self.inner.peer_id)).collect())
    }

    async fn listen_quic(&self, sa: SocketAddr) -> Result<Vec<Multiaddr>, Error> {
        let mut q = self.inner.quic.lock().await;
        if q.is_some() {
            return Err(Error::Limit("one QUIC socket per host (listen on QUIC before dialing over it)"));
        }
        let ep = crate::quic_driver::QuicShared::start(&self.inner, sa, self.inner.quic_config()).await?;
        let local = ep.local;
        *q = Some(ep);
        drop(q);
        let ips: Vec<IpAddr> = if local.ip().is_unspecified() { interface_ips(local.is_ipv4()) } else { vec![local.ip()] };
        let addrs: Vec<Multiaddr> = ips.into_iter().map(|ip| Multiaddr::from_quic(SocketAddr::new(ip, local.port()))).collect();
        lock(&self.inner.listen_addrs).extend(addrs.iter().cloned());
        self.listen_addrs_changed();
        tracing::info!(addrs = ?addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(), "listening");
        Ok(addrs.into_iter().map(|a| a.with_peer_id(&self.inner.peer_id)).collect())
    }

    async fn dial_quic(&self, addr: &Multiaddr, sa: SocketAddr) -> Result<PeerId, Error> {
        let ep = {
            let mut q = self.inner.quic.lock().await;
            match q.as_ref() {
                Some(ep) => ep.clone(),
                None => {
                    let any: SocketAddr = if sa.is_ipv4() {
                        "0.0.0.0:0".parse().expect("invariant: literal")
                    } else {
                        "[::]:0".parse().expect("invariant: literal")
                    };
                    let ep = crate::quic_driver::QuicShared::start(&self.inner, any, self.inner.quic_config()).await?;
                    *q = Some(ep.clone());
                    ep
                }
            }
        };
        if !self.inner.try_reserve_connection() {
            return Err(Error::Limit("max_connections"));
        }
        let rx = match ep.dial(sa, addr.peer_id()) {
            Ok(rx) => rx,
            Err(e) => {
                self.inner.live_conns.fetch_sub(1, Ordering::Relaxed);
                return Err(Error::Handshake(e));
            }
        };
        match tokio::time::timeout(self.inner.config.dial_timeout, rx).await {
            Ok(Ok(Ok(peer))) => Ok(peer),
            Ok(Ok(Err(e))) => {
                self.inner.live_conns.fetch_sub(1, Ordering::Relaxed);
                Err(Error::Handshake(e))
            }
            _ => {
                self.inner.live_conns.fetch_sub(1, Ordering::Relaxed);
                Err(Error::Timeout("quic handshake"))
            }
        }
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
        let expected = addr.peer_id();
        let sa = resolve_tcp(addr).await?;
        if self.inner.live_conns.fetch_add(1, Ordering::Relaxed) >= self.inner.config.max_connections {
            self.inner.live_conns.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::Limit("max_connections"));
        }
        let sock = match tokio::time::timeout(self.inner.config.dial_timeout, TcpStream::connect(sa)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.inner.live_conns.fetch_sub(1, Ordering::Relaxed);
                return Err(Error::Io(e));
            }
            Err(_) => {
                self.inner.live_conns.fetch_sub(1, Ordering::Relaxed);
                return Err(Error::Timeout("tcp connect"));
            }
        };
        let (tx, rx) = oneshot::channel();
        driver::spawn_connection(self.inner.clone(), sock, Direction::Outbound, expected, Some(tx));
        match rx.await {
            Ok(Ok(peer)) => Ok(peer),
            Ok(Err(e)) => Err(Error::Handshake(e)),
            Err(_) => Err(Error::Handshake("connection task ended".into())),
        }
    }

    fn conn_to(&self, peer: &PeerId) -> Option<Arc<ConnShared>> {
        let ids = lock(&self.inner.by_peer).get(peer).cloned()?;
        let conns = lock(&self.inner.conns);
        ids.iter().rev().filter_map(|id| conns.get(id)).find(|c| c.lock().closed.is_none()).cloned()
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
                let addrs = self.peer_info(peer).map(|i| i.addrs).unwrap_or_default();
                let mut last = Error::NoConnection(peer.clone());
                let mut ok = false;
                for a in addrs {
                    match self.dial(&a.with_peer_id(peer)).await {
                        Ok(_) => {
                            ok = true;
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                if !ok {
                    return Err(last);
                }
                self.conn_to(peer).ok_or_else(|| Error::NoConnection(peer.clone()))?
            }
        };
        self.open_on(&shared, peer, protocols).await
    }

    async fn open_on(&self, shared: &Arc<ConnShared>, peer: &PeerId, protocols: &[&str]) -> Result<Stream, Error> {
        let (id, rx) = shared.open_stream(protocols.iter().map(|s| s.to_string()).collect()).map_err(Error::Negotiation)?;
        match tokio::time::timeout(self.inner.config.stream_timeout, rx).await {
            Ok(Ok(Ok(protocol))) => Ok(Stream { id, shared: shared.clone(), protocol, peer: peer.clone() }),
            Ok(Ok(Err(e))) => Err(Error::Negotiation(e)),
            Ok(Err(_)) => Err(Error::Negotiation("connection ended".into())),
            Err(_) => {
                shared.reset_stream(id);
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
            .map_err(|_| Error::Protocol("connection ended".into()))?
            .clone();
        match st {
            IdentifyState::Done(info) => Ok((*info).clone()),
            IdentifyState::Failed(e) => Err(Error::Protocol(format!("identify: {e}"))),
            IdentifyState::Pending => Err(Error::Timeout("identify")),
        }
    }

    /// One ping on a new stream.
    pub async fn ping(&self, peer: &PeerId) -> Result<Duration, Error> {
        let mut s = self.new_stream(peer, &[ping::PROTOCOL_ID]).await?;
        let rtt = self.ping_on(&mut s).await;
        let _ = s.shutdown().await;
        rtt
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
                    return Err(Error::Protocol("ping stream closed".into()));
                }
                let r = pinger.handle_input(now(), &buf[got..got + n]).map_err(|e| Error::Protocol(e.to_string()))?;
                got += n;
                if let Some(rtt) = r {
                    return Ok(rtt);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut).await.map_err(|_| Error::Timeout("ping"))?
    }

    /// Serves `/perf/1.0.0` (libp2p/specs perf/perf.md).
    pub fn enable_perf_server(&self) {
        self.set_stream_handler(perf::PROTOCOL_ID, |mut s: Stream| async move {
            let mut server = perf::Server::default();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => server.handle_input(&buf[..n]),
                    Err(_) => return,
                }
            }
            let Ok(perf::ServerState::Send(mut left)) = server.handle_eof() else {
                s.reset();
                return;
            };
            while left > 0 {
                let k = left.min(perf::BLOCK.len() as u64) as usize;
                if s.write_all(&perf::BLOCK[..k]).await.is_err() {
                    return;
                }
                left -= k as u64;
            }
            let _ = s.shutdown().await;
        });
    }

    /// Runs one perf exchange: uploads `upload` bytes, downloads `download`. `progress` is called about
    /// once a second with (elapsed, uploaded, downloaded) since the last call.
    pub async fn perf(
        &self,
        peer: &PeerId,
        upload: u64,
        download: u64,
        mut progress: impl FnMut(Duration, u64, u64),
    ) -> Result<PerfResult, Error> {
        let t0 = std::time::Instant::now();
        let mut s = self.new_stream(peer, &[perf::PROTOCOL_ID]).await?;
        s.write_all(&download.to_be_bytes()).await?;
        let mut last = std::time::Instant::now();
        let (mut up_since, mut down_since) = (0u64, 0u64);
        let mut left = upload;
        while left > 0 {
            let k = left.min(perf::BLOCK.len() as u64) as usize;
            s.write_all(&perf::BLOCK[..k]).await?;
            left -= k as u64;
            up_since += k as u64;
            if last.elapsed() >= Duration::from_secs(1) {
                progress(last.elapsed(), up_since, 0);
                last = std::time::Instant::now();
                up_since = 0;
            }
        }
        s.shutdown().await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
            down_since += n as u64;
            if last.elapsed() >= Duration::from_secs(1) {
                progress(last.elapsed(), up_since, down_since);
                last = std::time::Instant::now();
                up_since = 0;
                down_since = 0;
            }
        }
        if got != download {
            return Err(Error::Protocol(format!("perf: received {got} bytes, asked for {download}")));
        }
        Ok(PerfResult { elapsed: t0.elapsed(), uploaded: upload, downloaded: got })
    }

    pub fn peers(&self) -> Vec<PeerId> {
        lock(&self.inner.by_peer).keys().cloned().collect()
    }

    pub fn peer_info(&self, peer: &PeerId) -> Option<PeerInfo> {
        lock(&self.inner.peerstore).get(peer).cloned()
    }

    /// Teaches the peerstore addresses of a peer (used by `new_stream` to dial).
    pub fn add_addrs(&self, peer: &PeerId, addrs: &[Multiaddr]) {
        let mut ps = lock(&self.inner.peerstore);
        let e = ps.entry(peer.clone()).or_default();
        for a in addrs {
            let a = a.without_peer_id();
            if !e.addrs.contains(&a) && e.addrs.len() < MAX_ADDRS_PER_PEER {
                e.addrs.push(a);
            }
        }
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
        let ids = lock(&self.inner.by_peer).get(peer).cloned().unwrap_or_default();
        let conns: Vec<_> = {
            let c = lock(&self.inner.conns);
            ids.iter().filter_map(|i| c.get(i).cloned()).collect()
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

/// A listening socket. IPv6 sockets are v6-only, so `/ip4/0.0.0.0/tcp/P` and `/ip6/::/tcp/P` can both be
/// bound (Linux otherwise lets the IPv6 socket claim the IPv4 port too).
fn bind_tcp(sa: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if sa.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if sa.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&sa.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Wall-clock seconds: the driver's job (TLS certificates need it), never the core's.
fn unix_now() -> i64 {
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

/// Fires the node machine's timers (pings, identify timeouts and pushes). Holds the host only weakly, so it
/// ends with it.
async fn node_timer(inner: Weak<Inner>, notify: Arc<tokio::sync::Notify>) {
    loop {
        let (deadline, epoch) = {
            let Some(inner) = inner.upgrade() else { return };
            let d = inner.node().poll_timeout();
            (d, inner.epoch)
        };
        driver::wait_for_wake_or_deadline(&notify, epoch, deadline).await;
        let Some(inner) = inner.upgrade() else { return };
        let now = inner.now();
        let due = inner.node().due(now);
        for id in due {
            inner.node_timeout(now, id);
        }
    }
}
