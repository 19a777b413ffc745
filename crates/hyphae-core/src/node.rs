//! The node-level machine: the node's own protocols (identify, identify push, ping) over any number of
//! connections, sans-IO. Both drivers run it: the tokio [`Host`](../../hyphae) keeps each connection
//! machine in its connection task and hands it in by reference (`&mut dyn Streams`) when a connection
//! event concerns the node; the simulator runs it inside a [`ByteNode`], which owns the connection
//! machines itself and speaks plain bytes. This is the Endpoint/Connection split of quinn: per-connection
//! machines keep the byte path, the node machine gets their events.
//!
//! Drain `poll_event` after every call and re-arm the timer from `poll_timeout`; when it fires, call
//! `handle_timeout` for each connection in `due(now)`.

use crate::conn::{self, Connection, ReadResult, Role, StreamError, StreamId};
use crate::identify::{self, Info};
use crate::identity::{Keypair, PeerId};
use crate::multiaddr::Multiaddr;
use crate::ping;
use crate::rng::{self, RngCore};
use crate::time::{Duration, Instant};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// An inbound ping stream without a ping for this long is closed (go-libp2p's ping service does the same).
pub const PING_IDLE: Duration = Duration::from_secs(60);

/// Idle ping streams are swept on a coarse grid of times, so all connections of a node sweep together
/// (one timer firing, not one per connection; a stream closes 60–90 s after its last ping).
fn sweep_after(t: Instant) -> Instant {
    let grid = PING_IDLE.as_nanos() as u64 / 2;
    Instant((t.0 / grid + 1).saturating_mul(grid))
}

/// What we send as identify's `protocolVersion` (as go-libp2p does).
pub const PROTOCOL_VERSION: &str = "ipfs/0.1.0";

/// The protocols the node machine serves itself.
pub const PROTOCOLS: [&str; 3] = [identify::PROTOCOL_ID, identify::PUSH_PROTOCOL_ID, ping::PROTOCOL_ID];

/// Whether the node machine may take a connection event: an inbound stream for one of [`PROTOCOLS`], or
/// any event of a stream the application does not hold (`app_holds`). Drivers hand only these to
/// [`Node::on_event`], so the application's stream events never wait for the node machine.
pub fn may_take(ev: &conn::Event, app_holds: impl Fn(StreamId) -> bool) -> bool {
    match ev {
        conn::Event::InboundStream { protocol, .. } => PROTOCOLS.contains(&protocol.as_str()),
        ev => ev.stream().is_some_and(|s| !app_holds(s)),
    }
}

/// The stream surface of one secured, muxed connection: all [`Node`] needs of it. Implemented by the
/// TCP [`Connection`] and by one connection of a QUIC endpoint (`quic::ConnStreams`).
pub trait Streams {
    fn open_stream(&mut self, now: Instant, protocols: Vec<String>) -> Result<StreamId, StreamError>;
    fn stream_read(&mut self, now: Instant, s: StreamId, buf: &mut [u8]) -> ReadResult;
    fn stream_write(&mut self, now: Instant, s: StreamId, data: &[u8]) -> Result<usize, StreamError>;
    /// Half-close: we send no more.
    fn stream_close(&mut self, now: Instant, s: StreamId);
    fn stream_reset(&mut self, now: Instant, s: StreamId);
    /// We are done with the stream (the handle is dropped).
    fn stream_release(&mut self, now: Instant, s: StreamId);
}

impl Streams for Connection {
    fn open_stream(&mut self, _now: Instant, protocols: Vec<String>) -> Result<StreamId, StreamError> {
        Connection::open_stream(self, protocols)
    }
    fn stream_read(&mut self, _now: Instant, s: StreamId, buf: &mut [u8]) -> ReadResult {
        Connection::stream_read(self, s, buf)
    }
    fn stream_write(&mut self, _now: Instant, s: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        Connection::stream_write(self, s, data)
    }
    fn stream_close(&mut self, _now: Instant, s: StreamId) {
        Connection::stream_close(self, s)
    }
    fn stream_reset(&mut self, _now: Instant, s: StreamId) {
        Connection::stream_reset(self, s)
    }
    fn stream_release(&mut self, _now: Instant, s: StreamId) {
        Connection::stream_release(self, s)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub keypair: Keypair,
    /// Root of every random choice this node makes (connection seeds, ping payloads).
    pub seed: [u8; 32],
    pub agent_version: String,
    pub listen_addrs: Vec<Multiaddr>,
    /// Protocols served besides [`PROTOCOLS`] (the host's stream handlers), announced in identify.
    pub protocols: Vec<String>,
    /// Ping every connection at this interval; `None`: only on command.
    pub ping_interval: Option<Duration>,
    /// A ping without an answer after this long fails. Default 10 s.
    pub ping_timeout: Duration,
    pub identify_on_connect: bool,
    /// An identify exchange not finished after this long fails. Default 15 s.
    pub identify_timeout: Duration,
    /// Used by [`ByteNode`] for the connections it creates.
    pub conn_limits: conn::Limits,
    pub handshake_timeout: Duration,
    /// [`ByteNode`]: connections at once, including dials in progress. Default 1024.
    pub max_connections: usize,
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
            ping_interval: None,
            ping_timeout: Duration::from_secs(10),
            identify_on_connect: true,
            identify_timeout: Duration::from_secs(15),
            conn_limits: conn::Limits::default(),
            handshake_timeout: Duration::from_secs(15),
            max_connections: 1024,
            quic_base: None,
            unix_time: 1_700_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected {
        peer: PeerId,
        conn: ConnId,
        role: Role,
    },
    Disconnected {
        peer: PeerId,
        conn: ConnId,
        reason: String,
    },
    DialFailed {
        addr: Multiaddr,
        reason: String,
    },
    PingOk {
        peer: PeerId,
        conn: ConnId,
        rtt: Duration,
    },
    PingFailed {
        peer: PeerId,
        conn: ConnId,
        reason: String,
    },
    /// The identify exchange on `conn` finished (or a push arrived: `push`).
    Identified {
        peer: PeerId,
        conn: ConnId,
        info: Box<Info>,
        push: bool,
    },
    IdentifyFailed {
        peer: PeerId,
        conn: ConnId,
        reason: String,
    },
    /// The peer opened a ping stream.
    InboundPing {
        peer: PeerId,
        conn: ConnId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("connection limit reached")]
    ConnectionLimit,
    #[error("not connected to {0}")]
    NotConnected(PeerId),
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub connections_established: u64,
    pub dials_failed: u64,
    pub pings_ok: u64,
    pub pings_failed: u64,
    pub identifies: u64,
    pub identifies_failed: u64,
}

enum Task {
    IdentifyOut(Vec<u8>),
    IdentifyPushIn(Vec<u8>),
    /// An inbound ping stream and when it last carried a ping.
    PingIn(ping::Echo, Instant),
    PingOut,
    /// An identify push we send once the stream is agreed.
    PushOut,
}

#[derive(Default)]
struct PingState {
    stream: Option<StreamId>,
    /// The ping stream being negotiated, if any.
    opening: Option<StreamId>,
    pinger: ping::Pinger,
    /// When the next ping is due.
    next_at: Option<Instant>,
    /// When the ping in flight fails.
    deadline: Option<Instant>,
}

impl PingState {
    /// Starts a ping with a fresh random payload on the ping stream `s`.
    fn send(&mut self, now: Instant, s: StreamId, rng: &mut rng::Rng, m: &mut dyn Streams) {
        let mut payload = [0u8; ping::PING_SIZE];
        rng.fill_bytes(&mut payload);
        let b = self.pinger.start(now, payload);
        let _ = m.stream_write(now, s, &b);
    }
}

struct Entry {
    addr: Multiaddr,
    peer: PeerId,
    tasks: BTreeMap<StreamId, Task>,
    ping: PingState,
    /// The outbound identify stream and when it fails.
    identify: Option<(StreamId, Instant)>,
    /// Our protocols or addresses changed: push identify on this connection at the next chance.
    push_pending: bool,
    /// When to close inbound ping streams idle for [`PING_IDLE`] (set while there are any).
    ping_in_sweep: Option<Instant>,
}

impl Entry {
    fn next_deadline(&self) -> Option<Instant> {
        // Called for every connection whenever a driver re-arms its timer: keep it branch-light.
        if self.push_pending {
            return Some(Instant(0));
        }
        let mut m = u64::MAX;
        for t in [self.ping.next_at, self.ping.deadline, self.identify.map(|(_, t)| t), self.ping_in_sweep].into_iter().flatten() {
            m = m.min(t.0);
        }
        (m != u64::MAX).then_some(Instant(m))
    }
}

/// The node-level machine. It never owns a connection: every call that may touch one takes it as
/// `m: &mut dyn Streams`.
pub struct Node {
    config: Config,
    peer_id: PeerId,
    rng: rng::Rng,
    conns: BTreeMap<ConnId, Entry>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Node {
    pub fn new(config: Config, _now: Instant) -> Self {
        Node {
            peer_id: config.keypair.peer_id(),
            rng: rng::from_seed(config.seed),
            config,
            conns: BTreeMap::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn peer_id(&self) -> &PeerId {
        &self.peer_id
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// A fresh 32-byte seed from the node's RNG (for a new connection machine).
    pub fn child_seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    /// Every protocol this node serves: its own and the configured ones, sorted.
    pub fn protocols(&self) -> Vec<String> {
        all_protocols(&self.config)
    }

    /// The handler set changed: remember it and tell every connected peer (identify push, as go does).
    pub fn set_protocols(&mut self, protocols: Vec<String>) {
        if protocols != self.config.protocols {
            self.config.protocols = protocols;
            self.conns.values_mut().for_each(|e| e.push_pending = true);
        }
    }

    pub fn set_listen_addrs(&mut self, addrs: Vec<Multiaddr>) {
        if addrs != self.config.listen_addrs {
            self.config.listen_addrs = addrs;
            self.conns.values_mut().for_each(|e| e.push_pending = true);
        }
    }

    pub fn connected_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.conns.values().map(|e| e.peer.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.conns.values().any(|e| &e.peer == peer)
    }
    /// The peer's connections, oldest first.
    pub fn connections_to(&self, peer: &PeerId) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, e)| &e.peer == peer).map(|(id, _)| *id).collect()
    }

    /// Pings `peer` on one of its connections at the next `handle_timeout` (it is `due` now).
    pub fn ping(&mut self, now: Instant, peer: &PeerId) -> Result<ConnId, ApiError> {
        let (id, e) = self.conns.iter_mut().find(|(_, e)| &e.peer == peer).ok_or_else(|| ApiError::NotConnected(peer.clone()))?;
        e.ping.next_at = Some(now);
        Ok(*id)
    }

    /// A dial failed before a connection existed (counted and reported like every other outcome).
    pub fn on_dial_failed(&mut self, addr: Multiaddr, reason: String) {
        self.stats.dials_failed += 1;
        self.events.push_back(Event::DialFailed { addr, reason });
    }

    /// The connection `id` finished its upgrade: identify the peer and start pinging (as configured).
    pub fn on_established(&mut self, now: Instant, id: ConnId, peer: PeerId, role: Role, addr: Multiaddr, m: &mut dyn Streams) {
        let mut e = Entry {
            addr,
            peer: peer.clone(),
            tasks: BTreeMap::new(),
            ping: PingState::default(),
            identify: None,
            push_pending: false,
            ping_in_sweep: None,
        };
        self.stats.connections_established += 1;
        if self.config.identify_on_connect {
            if let Ok(s) = m.open_stream(now, vec![identify::PROTOCOL_ID.into()]) {
                e.tasks.insert(s, Task::IdentifyOut(Vec::new()));
                e.identify = Some((s, now + self.config.identify_timeout));
            }
        }
        e.ping.next_at = self.config.ping_interval.map(|_| now);
        self.conns.insert(id, e);
        self.events.push_back(Event::Connected { peer, conn: id, role });
    }

    /// The connection ended (after `on_established`).
    pub fn on_closed(&mut self, id: ConnId, reason: &str) {
        if let Some(e) = self.conns.remove(&id) {
            self.events.push_back(Event::Disconnected { peer: e.peer, conn: id, reason: reason.to_string() });
        }
    }

    /// A stream event of connection `id`. Returns whether the node took it (a stream of its own, or an
    /// inbound stream for one of [`PROTOCOLS`]); the driver handles the rest. `Established` and `Closed`
    /// go to `on_established` / `on_closed` instead.
    pub fn on_event(&mut self, now: Instant, id: ConnId, ev: &conn::Event, m: &mut dyn Streams) -> bool {
        let Some(e) = self.conns.get_mut(&id) else { return false };
        match ev {
            conn::Event::Established { .. } | conn::Event::Closed { .. } => false,
            conn::Event::InboundStream { id: s, protocol } => {
                let s = *s;
                match protocol.as_str() {
                    identify::PROTOCOL_ID => {
                        let info = local_info(&self.config, Some(e.addr.clone()));
                        let _ = m.stream_write(now, s, &info.encode());
                        m.stream_close(now, s);
                        m.stream_release(now, s);
                    }
                    identify::PUSH_PROTOCOL_ID => {
                        e.tasks.insert(s, Task::IdentifyPushIn(Vec::new()));
                        self.read_stream(now, id, s, m);
                    }
                    ping::PROTOCOL_ID => {
                        e.tasks.insert(s, Task::PingIn(ping::Echo::default(), now));
                        e.ping_in_sweep.get_or_insert(sweep_after(now + PING_IDLE));
                        self.events.push_back(Event::InboundPing { peer: e.peer.clone(), conn: id });
                        self.read_stream(now, id, s, m);
                    }
                    _ => return false,
                }
                true
            }
            conn::Event::OutboundReady { id: s, .. } => {
                let s = *s;
                if !e.tasks.contains_key(&s) {
                    return false;
                }
                if matches!(e.tasks.get(&s), Some(Task::PushOut)) {
                    e.tasks.remove(&s);
                    let _ = m.stream_write(now, s, &local_info(&self.config, None).encode());
                    m.stream_close(now, s);
                    m.stream_release(now, s);
                    return true;
                }
                if matches!(e.tasks.get(&s), Some(Task::PingOut)) && e.ping.opening == Some(s) {
                    e.ping.opening = None;
                    e.ping.stream = Some(s);
                    e.ping.send(now, s, &mut self.rng, m);
                }
                self.read_stream(now, id, s, m);
                true
            }
            conn::Event::OutboundFailed { id: s, reason } => {
                match e.tasks.remove(s) {
                    None => return false,
                    Some(Task::PingOut) if e.ping.opening == Some(*s) => {
                        e.ping.opening = None;
                        e.ping.deadline = None;
                        e.ping.next_at = self.config.ping_interval.map(|i| now + i);
                        self.stats.pings_failed += 1;
                        self.events.push_back(Event::PingFailed { peer: e.peer.clone(), conn: id, reason: reason.clone() });
                    }
                    Some(Task::IdentifyOut(_)) => {
                        e.identify = None;
                        self.stats.identifies_failed += 1;
                        self.events.push_back(Event::IdentifyFailed { peer: e.peer.clone(), conn: id, reason: reason.clone() });
                    }
                    Some(_) => {}
                }
                true
            }
            conn::Event::Readable(s) => {
                if !e.tasks.contains_key(s) {
                    return false;
                }
                self.read_stream(now, id, *s, m);
                true
            }
            conn::Event::Writable(s) => e.tasks.contains_key(s),
            conn::Event::Reset(s) => {
                let Some(task) = e.tasks.remove(s) else { return false };
                m.stream_release(now, *s);
                if e.ping.stream == Some(*s) {
                    e.ping.stream = None;
                }
                if let Task::IdentifyOut(_) = task {
                    e.identify = None;
                    self.stats.identifies_failed += 1;
                    self.events.push_back(Event::IdentifyFailed { peer: e.peer.clone(), conn: id, reason: "stream reset".into() });
                }
                true
            }
        }
    }

    /// The earliest moment some connection needs `handle_timeout`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns.values().filter_map(Entry::next_deadline).min()
    }

    /// The connections that need `handle_timeout` at `now`.
    pub fn due(&self, now: Instant) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, e)| e.next_deadline().is_some_and(|t| t <= now)).map(|(id, _)| *id).collect()
    }

    /// Timers of connection `id`: pings due or overdue, identify timeouts, pending identify pushes.
    pub fn handle_timeout(&mut self, now: Instant, id: ConnId, m: &mut dyn Streams) {
        let Some(e) = self.conns.get_mut(&id) else { return };
        if let Some((s, t)) = e.identify {
            if t <= now {
                e.identify = None;
                e.tasks.remove(&s);
                m.stream_reset(now, s);
                self.stats.identifies_failed += 1;
                self.events.push_back(Event::IdentifyFailed { peer: e.peer.clone(), conn: id, reason: "timeout".into() });
            }
        }
        if e.ping_in_sweep.is_some_and(|t| t <= now) {
            let idle: Vec<StreamId> =
                e.tasks.iter().filter(|(_, t)| matches!(t, Task::PingIn(_, last) if *last + PING_IDLE <= now)).map(|(s, _)| *s).collect();
            for s in idle {
                e.tasks.remove(&s);
                m.stream_close(now, s);
                m.stream_release(now, s);
            }
            e.ping_in_sweep = e
                .tasks
                .values()
                .filter_map(|t| if let Task::PingIn(_, last) = t { Some(sweep_after(*last + PING_IDLE)) } else { None })
                .min();
        }
        if e.push_pending {
            e.push_pending = false;
            if let Ok(s) = m.open_stream(now, vec![identify::PUSH_PROTOCOL_ID.into()]) {
                e.tasks.insert(s, Task::PushOut);
            }
        }
        if e.ping.deadline.is_some_and(|t| t <= now) {
            e.ping.deadline = None;
            // Drop the stream in use or still being opened: a late answer on it must not be taken for the
            // answer to the next ping.
            for s in [e.ping.stream.take(), e.ping.opening.take()].into_iter().flatten() {
                e.tasks.remove(&s);
                m.stream_reset(now, s);
            }
            e.ping.pinger = ping::Pinger::new();
            self.stats.pings_failed += 1;
            self.events.push_back(Event::PingFailed { peer: e.peer.clone(), conn: id, reason: "timeout".into() });
            e.ping.next_at = self.config.ping_interval.map(|i| now + i);
        }
        if e.ping.next_at.is_some_and(|t| t <= now) && e.ping.deadline.is_none() {
            e.ping.next_at = None;
            e.ping.deadline = Some(now + self.config.ping_timeout);
            match e.ping.stream {
                Some(s) => {
                    e.ping.send(now, s, &mut self.rng, m);
                }
                None if e.ping.opening.is_none() => {
                    if let Ok(s) = m.open_stream(now, vec![ping::PROTOCOL_ID.into()]) {
                        e.ping.opening = Some(s);
                        e.tasks.insert(s, Task::PingOut);
                    }
                }
                None => {}
            }
        }
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn read_stream(&mut self, now: Instant, id: ConnId, s: StreamId, m: &mut dyn Streams) {
        let Some(e) = self.conns.get_mut(&id) else { return };
        let mut buf = [0u8; 2048];
        let mut done = false;
        let mut echo_out = Vec::new();
        loop {
            let n = match m.stream_read(now, s, &mut buf) {
                ReadResult::Data(n) => n,
                ReadResult::Pending => break,
                ReadResult::Eof | ReadResult::Reset => {
                    done = true;
                    break;
                }
            };
            match e.tasks.get_mut(&s) {
                Some(Task::IdentifyOut(acc)) | Some(Task::IdentifyPushIn(acc)) => {
                    if acc.len() + n > Info::max_total_len() {
                        done = true;
                        acc.clear();
                        break;
                    }
                    acc.extend_from_slice(&buf[..n]);
                }
                Some(Task::PingIn(echo, last)) => {
                    *last = now;
                    echo.handle_input(&buf[..n], &mut echo_out)
                }
                Some(Task::PingOut) if e.ping.stream != Some(s) => {
                    // A stale ping stream (its ping timed out): its answers are not ours to count.
                    done = true;
                    break;
                }
                Some(Task::PingOut) => match e.ping.pinger.handle_input(now, &buf[..n]) {
                    Ok(Some(rtt)) => {
                        e.ping.deadline = None;
                        e.ping.next_at = self.config.ping_interval.map(|i| now + i);
                        self.stats.pings_ok += 1;
                        self.events.push_back(Event::PingOk { peer: e.peer.clone(), conn: id, rtt });
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::debug!(error = %err, "bad ping answer");
                        done = true;
                        break;
                    }
                },
                Some(Task::PushOut) | None => {}
            }
            if !echo_out.is_empty() {
                let _ = m.stream_write(now, s, &echo_out);
                echo_out.clear();
            }
        }
        if !done {
            return;
        }
        let (acc, push) = match e.tasks.remove(&s) {
            Some(Task::IdentifyOut(acc)) => {
                e.identify = None;
                (acc, false)
            }
            Some(Task::IdentifyPushIn(acc)) => (acc, true),
            Some(Task::PingOut) => {
                m.stream_reset(now, s);
                if e.ping.stream == Some(s) {
                    e.ping.stream = None;
                }
                return;
            }
            Some(Task::PingIn(..)) => {
                m.stream_close(now, s);
                m.stream_release(now, s);
                return;
            }
            Some(Task::PushOut) | None => {
                m.stream_release(now, s);
                return;
            }
        };
        m.stream_release(now, s);
        let peer = e.peer.clone();
        let outcome = Info::decode_all(&acc).map_err(|err| err.to_string()).and_then(|info| match &info.public_key {
            Some(k) if !peer.matches(k) => Err("public key does not match the peer id".to_string()),
            _ => Ok(info),
        });
        match outcome {
            Ok(info) => {
                self.stats.identifies += 1;
                self.events.push_back(Event::Identified { peer, conn: id, info: Box::new(info), push });
            }
            Err(reason) => {
                tracing::debug!(%peer, %reason, "bad identify message");
                if !push {
                    self.stats.identifies_failed += 1;
                    self.events.push_back(Event::IdentifyFailed { peer, conn: id, reason });
                }
            }
        }
    }
}

/// What we tell peers in identify.
fn local_info(config: &Config, observed: Option<Multiaddr>) -> Info {
    Info {
        protocol_version: Some(PROTOCOL_VERSION.into()),
        agent_version: Some(config.agent_version.clone()),
        public_key: Some(config.keypair.public()),
        listen_addrs: config.listen_addrs.clone(),
        observed_addr: observed,
        protocols: all_protocols(config),
        signed_peer_record: None,
    }
}

fn all_protocols(config: &Config) -> Vec<String> {
    let mut v: Vec<String> = PROTOCOLS.iter().map(|s| s.to_string()).chain(config.protocols.iter().cloned()).collect();
    v.sort();
    v.dedup();
    v
}

#[derive(Debug)]
pub enum Input<'a> {
    /// A transport connection is up: one the node asked for with `Output::Dial` (role Dialer), or an
    /// accepted one under a fresh id chosen by the driver (role Listener).
    Connected {
        conn: ConnId,
        role: Role,
        remote_addr: Multiaddr,
    },
    Data {
        conn: ConnId,
        data: &'a [u8],
    },
    /// The transport connection ended, or a dial failed.
    Disconnected {
        conn: ConnId,
        reason: &'a str,
    },
    /// A UDP datagram for the QUIC endpoint.
    Datagram {
        from: core::net::SocketAddr,
        data: &'a [u8],
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit {
        conn: ConnId,
        data: Vec<u8>,
    },
    /// Open a transport connection; answer with `Input::Connected` or `Input::Disconnected`.
    Dial {
        conn: ConnId,
        addr: Multiaddr,
    },
    /// Close the transport connection after sending what was transmitted before.
    Close {
        conn: ConnId,
    },
    /// A UDP datagram from the QUIC endpoint.
    SendDatagram {
        to: core::net::SocketAddr,
        data: Vec<u8>,
    },
    Event(Event),
}

/// The QUIC side of a [`ByteNode`]: one endpoint (one UDP socket) and the ids of its connections.
struct QuicSide {
    ep: crate::quic::Endpoint,
    /// Endpoint connection → node connection id, and the dial address while dialing.
    ids: BTreeMap<crate::quic::QuicConnId, (ConnId, Option<Multiaddr>, bool /* established */)>,
    rev: BTreeMap<ConnId, crate::quic::QuicConnId>,
}

struct ByteConn {
    /// `None` while our dial is in progress.
    machine: Option<Connection>,
    role: Role,
    expected: Option<PeerId>,
    addr: Multiaddr,
    peer: Option<PeerId>,
}

/// A [`Node`] together with its TCP-like connection machines behind one bytes-in/bytes-out API: what a
/// single-threaded driver (the simulator, tests) runs. The node machine is the very one the tokio Host
/// runs; only the ownership of the connections differs.
pub struct ByteNode {
    node: Node,
    noise_static: std::sync::Arc<crate::noise::StaticKey>,
    conns: BTreeMap<ConnId, ByteConn>,
    quic: Option<QuicSide>,
    next_conn: u64,
    out: VecDeque<Output>,
}

impl ByteNode {
    pub fn new(config: Config, now: Instant) -> Self {
        let mut node = Node::new(config, now);
        let seed = node.child_seed();
        let noise_static = std::sync::Arc::new(
            crate::noise::StaticKey::generate(&node.config.keypair, seed).expect("invariant: x25519 key generation cannot fail"),
        );
        let quic = node.config.quic_base.map(|base| {
            let mut r = rng::from_seed(node.child_seed());
            let cfg = &node.config;
            let cert = std::sync::Arc::new(crate::tls::Certificate::generate(&cfg.keypair, cfg.unix_time, &mut r));
            let mut seed = [0u8; 32];
            r.fill_bytes(&mut seed);
            let qc = crate::quic::Config {
                keypair: cfg.keypair.clone(),
                cert,
                protocols: node.protocols(),
                unix_time: cfg.unix_time,
                seed,
                base,
                max_streams: 256,
                max_connections: cfg.max_connections,
                max_datagrams: 1,
            };
            let ep = crate::quic::Endpoint::new(qc).expect("invariant: our own TLS configuration is valid");
            QuicSide { ep, ids: BTreeMap::new(), rev: BTreeMap::new() }
        });
        ByteNode { node, noise_static, conns: BTreeMap::new(), quic, next_conn: 1 << 32, out: VecDeque::new() }
    }

    pub fn node(&self) -> &Node {
        &self.node
    }
    pub fn peer_id(&self) -> &PeerId {
        self.node.peer_id()
    }
    pub fn stats(&self) -> &Stats {
        self.node.stats()
    }
    pub fn num_connections(&self) -> usize {
        self.conns.len() + self.quic.as_ref().map_or(0, |q| q.ids.len())
    }
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.node.connected_peers()
    }
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.node.is_connected(peer)
    }

    fn conn_config(&self) -> conn::Config {
        let cfg = &self.node.config;
        let mut c = conn::Config::new(cfg.keypair.clone());
        c.protocols = self.node.protocols();
        c.limits = cfg.conn_limits.clone();
        c.handshake_timeout = cfg.handshake_timeout;
        c.noise_static = Some(self.noise_static.clone());
        c
    }

    /// Serves (and announces) `protocols` besides the node's own; connected peers get an identify push.
    pub fn set_protocols(&mut self, now: Instant, protocols: Vec<String>) {
        self.node.set_protocols(protocols);
        let all = self.node.protocols();
        for c in self.conns.values_mut() {
            if let Some(m) = c.machine.as_mut() {
                m.set_protocols(all.clone());
            }
        }
        if let Some(q) = self.quic.as_mut() {
            q.ep.set_protocols(all);
        }
        self.handle_timeout(now);
    }

    /// Dials `addr` (its `/p2p/<id>` is verified). Outcome: `Event::Connected` or `Event::DialFailed`.
    pub fn dial(&mut self, now: Instant, addr: Multiaddr) -> Result<ConnId, ApiError> {
        if self.num_connections() >= self.node.config.max_connections {
            return Err(ApiError::ConnectionLimit);
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        if let Some(sa) = addr.quic_socket_addr() {
            let Some(q) = self.quic.as_mut() else {
                self.node.on_dial_failed(addr, "no QUIC endpoint".into());
                self.take_events();
                return Ok(id);
            };
            match q.ep.dial(now, sa, addr.peer_id()) {
                Ok(qc) => {
                    q.ids.insert(qc, (id, Some(addr), false));
                    q.rev.insert(id, qc);
                }
                Err(e) => self.node.on_dial_failed(addr, e.to_string()),
            }
            self.pump_quic(now);
            return Ok(id);
        }
        self.conns.insert(id, ByteConn { machine: None, role: Role::Dialer, expected: addr.peer_id(), addr: addr.clone(), peer: None });
        self.out.push_back(Output::Dial { conn: id, addr });
        Ok(id)
    }

    /// Pings `peer` now on one of its connections.
    pub fn ping(&mut self, now: Instant, peer: &PeerId) -> Result<(), ApiError> {
        self.node.ping(now, peer)?;
        self.handle_timeout(now);
        Ok(())
    }

    /// Closes every connection to `peer`.
    pub fn disconnect(&mut self, now: Instant, peer: &PeerId) {
        let ids: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.peer.as_ref() == Some(peer)).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(m) = self.conns.get_mut(&id).and_then(|c| c.machine.as_mut()) {
                m.close();
            }
            self.pump(now, id);
        }
        if let Some(q) = self.quic.as_mut() {
            for id in self.node.connections_to(peer) {
                if let Some(qc) = q.rev.get(&id) {
                    q.ep.close(now, *qc);
                }
            }
            self.pump_quic(now);
        }
    }

    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Connected { conn, role, remote_addr } => {
                if role == Role::Listener && (self.conns.len() >= self.node.config.max_connections || self.conns.contains_key(&conn)) {
                    self.out.push_back(Output::Close { conn });
                    return;
                }
                let seed = self.node.child_seed();
                let cfg = self.conn_config();
                let c = self.conns.entry(conn).or_insert_with(|| ByteConn {
                    machine: None,
                    role,
                    expected: None,
                    addr: remote_addr,
                    peer: None,
                });
                if c.machine.is_some() {
                    return;
                }
                c.machine = Some(Connection::new(role, cfg, c.expected.clone(), now, seed));
                self.pump(now, conn);
            }
            Input::Data { conn, data } => {
                if let Some(m) = self.conns.get_mut(&conn).and_then(|c| c.machine.as_mut()) {
                    m.handle_input(now, data);
                    self.pump(now, conn);
                }
            }
            Input::Disconnected { conn, reason } => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                match &mut c.machine {
                    Some(m) => {
                        m.handle_eof();
                        self.pump(now, conn);
                    }
                    None => {
                        let c = self.conns.remove(&conn).expect("invariant: present");
                        self.node.on_dial_failed(c.addr, reason.to_string());
                        self.take_events();
                    }
                }
            }
            Input::Datagram { from, data } => {
                if let Some(q) = self.quic.as_mut() {
                    q.ep.handle_datagram(now, from, data);
                    self.pump_quic(now);
                }
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.machine.as_ref().and_then(|m| m.poll_timeout()).is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(m) = self.conns.get_mut(&id).and_then(|c| c.machine.as_mut()) {
                m.handle_timeout(now);
            }
            self.pump(now, id);
        }
        if let Some(q) = self.quic.as_mut() {
            if q.ep.poll_timeout().is_some_and(|t| t <= now) {
                q.ep.handle_timeout(now);
            }
        }
        for id in self.node.due(now) {
            let quic = self.quic.as_mut().and_then(|q| q.rev.get(&id).copied().map(|qc| (q, qc)));
            match (quic, self.conns.get_mut(&id).and_then(|c| c.machine.as_mut())) {
                (Some((q, qc)), _) => self.node.handle_timeout(now, id, &mut crate::quic::ConnStreams { ep: &mut q.ep, conn: qc }),
                (None, Some(m)) => self.node.handle_timeout(now, id, m),
                (None, None) => self.node.on_closed(id, "connection gone"),
            }
            self.pump(now, id);
        }
        self.pump_quic(now);
    }

    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| c.machine.as_ref().and_then(|m| m.poll_timeout())).min();
        let quic = self.quic.as_mut().and_then(|q| q.ep.poll_timeout());
        [conns, quic, self.node.poll_timeout()].into_iter().flatten().min()
    }

    /// Runs the QUIC endpoint after any input: its events go to the node machine (which may write on its
    /// streams, so the endpoint runs again), then its datagrams go out.
    fn pump_quic(&mut self, now: Instant) {
        use crate::quic::{ConnStreams, Event as Q};
        let Some(q) = self.quic.as_mut() else { return };
        loop {
            q.ep.flush(now);
            let Some(ev) = q.ep.poll_event() else { break };
            let (qc, cev) = match ev {
                Q::Established { conn, peer, remote, outbound, .. } => {
                    let id = match q.ids.get_mut(&conn) {
                        Some(e) => {
                            e.2 = true;
                            e.0
                        }
                        None => {
                            let id = ConnId(self.next_conn);
                            self.next_conn += 1;
                            q.ids.insert(conn, (id, None, true));
                            q.rev.insert(id, conn);
                            id
                        }
                    };
                    let role = if outbound { Role::Dialer } else { Role::Listener };
                    let addr = Multiaddr::from_quic(remote);
                    self.node.on_established(now, id, peer, role, addr, &mut ConnStreams { ep: &mut q.ep, conn });
                    continue;
                }
                Q::Closed { conn, reason } => {
                    if let Some((id, dial, established)) = q.ids.remove(&conn) {
                        q.rev.remove(&id);
                        match (established, dial) {
                            (true, _) => self.node.on_closed(id, &reason),
                            (false, Some(addr)) => self.node.on_dial_failed(addr, reason),
                            (false, None) => {}
                        }
                    }
                    continue;
                }
                ev => ev.stream_event().expect("invariant: every other event is a stream event"),
            };
            let Some(&(id, _, _)) = q.ids.get(&qc) else { continue };
            let mut m = ConnStreams { ep: &mut q.ep, conn: qc };
            if !self.node.on_event(now, id, &cev, &mut m) {
                if let conn::Event::InboundStream { id: s, .. } = cev {
                    crate::node::Streams::stream_reset(&mut m, now, s);
                }
            }
        }
        while let Some(t) = q.ep.poll_transmit() {
            self.out.push_back(Output::SendDatagram { to: t.to, data: t.data });
        }
        self.take_events();
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn take_events(&mut self) {
        while let Some(e) = self.node.poll_event() {
            self.out.push_back(Output::Event(e));
        }
    }

    /// Drains one connection's machine: its events go to the node machine (which may write), then its
    /// bytes go out.
    fn pump(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else { return };
            let Some(m) = c.machine.as_mut() else { return };
            let Some(ev) = m.poll_event() else { break };
            match ev {
                conn::Event::Established { peer, .. } => {
                    c.peer = Some(peer.clone());
                    self.node.on_established(now, id, peer, c.role, c.addr.clone(), m);
                }
                conn::Event::Closed { reason } => {
                    if c.peer.is_some() {
                        self.node.on_closed(id, &reason);
                    } else if c.role == Role::Dialer {
                        self.node.on_dial_failed(c.addr.clone(), reason);
                    }
                }
                ev => {
                    if !self.node.on_event(now, id, &ev, m) {
                        // Nobody serves it here: refuse.
                        if let conn::Event::InboundStream { id: s, .. } = ev {
                            m.stream_reset(s);
                        }
                    }
                }
            }
        }
        self.take_events();
        let Some(c) = self.conns.get_mut(&id) else { return };
        let Some(m) = c.machine.as_mut() else { return };
        if let Some(data) = m.poll_transmit() {
            self.out.push_back(Output::Transmit { conn: id, data });
        }
        if m.is_closed() {
            self.conns.remove(&id);
            self.out.push_back(Output::Close { conn: id });
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes over an in-memory link with a fixed one-way latency, driven by explicit time.
    struct Pair {
        n: [ByteNode; 2],
        now: Instant,
        /// (arrival, to, conn — `None` for a datagram, data)
        inflight: Vec<(Instant, usize, Option<ConnId>, Vec<u8>)>,
        events: [Vec<Event>; 2],
        latency: Duration,
    }

    impl Pair {
        fn new(ping: Option<Duration>) -> Pair {
            Self::with_quic(ping, false)
        }

        fn addr(i: usize) -> core::net::SocketAddr {
            core::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 4001))
        }

        fn with_quic(ping: Option<Duration>, quic: bool) -> Pair {
            let mut r = rng::from_seed([5; 32]);
            let base = std::time::Instant::now();
            let mk = |r: &mut rng::Rng, s: u8| {
                let mut c = Config::new(Keypair::generate_ed25519(r), [s; 32]);
                c.ping_interval = ping;
                c.quic_base = quic.then_some(base);
                ByteNode::new(c, Instant(0))
            };
            Pair {
                n: [mk(&mut r, 1), mk(&mut r, 2)],
                now: Instant(0),
                inflight: vec![],
                events: [vec![], vec![]],
                latency: Duration::from_millis(10),
            }
        }

        fn drain(&mut self, i: usize) {
            while let Some(o) = self.n[i].poll_output() {
                match o {
                    Output::Transmit { conn, data } => self.inflight.push((self.now + self.latency, 1 - i, Some(conn), data)),
                    Output::SendDatagram { to, data } => {
                        assert_eq!(to, Self::addr(1 - i));
                        self.inflight.push((self.now + self.latency, 1 - i, None, data));
                    }
                    Output::Dial { conn, .. } => {
                        // Same ConnId on both sides keeps the test simple.
                        self.n[i].handle_input(self.now, Input::Connected { conn, role: Role::Dialer, remote_addr: Multiaddr::empty() });
                        self.n[1 - i]
                            .handle_input(self.now, Input::Connected { conn, role: Role::Listener, remote_addr: Multiaddr::empty() });
                        self.drain(1 - i);
                    }
                    Output::Close { .. } => {}
                    Output::Event(e) => self.events[i].push(e),
                }
            }
        }

        fn run_until(&mut self, end: Instant) {
            loop {
                self.drain(0);
                self.drain(1);
                let next_msg = self.inflight.iter().map(|m| m.0).min();
                let next_timer = [self.n[0].poll_timeout(), self.n[1].poll_timeout()].into_iter().flatten().min();
                let Some(t) = [next_msg, next_timer].into_iter().flatten().min() else { return };
                if t > end {
                    self.now = end;
                    return;
                }
                self.now = self.now.max(t);
                if next_msg == Some(t) {
                    let pos = self.inflight.iter().position(|m| m.0 == t).unwrap();
                    let (_, to, conn, data) = self.inflight.remove(pos);
                    match conn {
                        Some(conn) => self.n[to].handle_input(self.now, Input::Data { conn, data: &data }),
                        None => self.n[to].handle_input(self.now, Input::Datagram { from: Self::addr(1 - to), data: &data }),
                    }
                } else {
                    self.n[0].handle_timeout(self.now);
                    self.n[1].handle_timeout(self.now);
                }
            }
        }
    }

    #[test]
    fn node_connects_identifies_and_pings_on_virtual_time() {
        let mut p = Pair::new(Some(Duration::from_secs(10)));
        let b = p.n[1].peer_id().clone();
        p.n[0].dial(Instant(0), Multiaddr::empty().with(crate::Protocol::P2p(b.clone()))).unwrap();
        p.run_until(Instant(0) + Duration::from_secs(35));
        assert!(p.n[0].is_connected(&b));
        let rtts: Vec<Duration> =
            p.events[0].iter().filter_map(|e| if let Event::PingOk { rtt, .. } = e { Some(*rtt) } else { None }).collect();
        // Pings at 0 (after the handshake), 10, 20, 30 s; each RTT is exactly two one-way latencies.
        assert_eq!(rtts.len(), 4, "{:?}", p.events[0]);
        assert!(rtts.iter().all(|r| *r == Duration::from_millis(20)), "{rtts:?}");
        assert!(p.events[0].iter().any(|e| matches!(e, Event::Identified { info, push: false, .. } if info.agent_version.as_deref().is_some_and(|a| a.starts_with("hyphae/")))));
        assert!(p.events[1].iter().any(|e| matches!(e, Event::Identified { .. })));
        assert_eq!(p.n[1].stats().pings_ok, 4, "both sides ping");
    }

    #[test]
    fn node_runs_over_quic_with_the_same_protocol_code() {
        let mut p = Pair::with_quic(Some(Duration::from_secs(10)), true);
        let b = p.n[1].peer_id().clone();
        let addr = Multiaddr::from_quic(Pair::addr(1)).with(crate::Protocol::P2p(b.clone()));
        p.n[0].dial(Instant(0), addr).unwrap();
        p.run_until(Instant(0) + Duration::from_secs(25));
        assert!(p.n[0].is_connected(&b));
        let rtts: Vec<Duration> =
            p.events[0].iter().filter_map(|e| if let Event::PingOk { rtt, .. } = e { Some(*rtt) } else { None }).collect();
        assert_eq!(rtts.len(), 3, "{:?}", p.events[0]);
        assert!(rtts.iter().all(|r| *r == Duration::from_millis(20)), "{rtts:?}");
        assert_eq!(p.n[0].stats().identifies, 1);
        assert_eq!(p.n[1].stats().identifies, 1);
        assert_eq!(p.n[0].num_connections(), 1);
    }

    #[test]
    fn node_idle_inbound_ping_stream_is_closed_and_the_next_ping_opens_another() {
        let mut p = Pair::new(None);
        let b = p.n[1].peer_id().clone();
        p.n[0].dial(Instant(0), Multiaddr::empty().with(crate::Protocol::P2p(b.clone()))).unwrap();
        p.run_until(Instant(0) + Duration::from_secs(1));
        let now = p.now;
        p.n[0].ping(now, &b).unwrap();
        p.run_until(now + Duration::from_secs(30));
        let now = p.now;
        p.n[0].ping(now, &b).unwrap();
        // 30 s later the stream is still in use; 60–90 s after this ping the listener closes it as idle.
        p.run_until(now + PING_IDLE + PING_IDLE / 2 + Duration::from_secs(5));
        let now = p.now;
        p.n[0].ping(now, &b).unwrap();
        p.run_until(now + Duration::from_secs(1));
        let inbound = p.events[1].iter().filter(|e| matches!(e, Event::InboundPing { .. })).count();
        assert_eq!(p.n[0].stats().pings_ok, 3, "{:?}", p.events[0]);
        assert_eq!(p.n[0].stats().pings_failed, 0);
        assert_eq!(inbound, 2, "one stream for the first two pings, a new one after the idle close");
    }

    #[test]
    fn node_new_protocol_reaches_peer_by_identify_push() {
        let mut p = Pair::new(None);
        let b = p.n[1].peer_id().clone();
        p.n[0].dial(Instant(0), Multiaddr::empty().with(crate::Protocol::P2p(b.clone()))).unwrap();
        p.run_until(Instant(0) + Duration::from_secs(1));
        let now = p.now;
        p.n[1].set_protocols(now, vec!["/x/1.0.0".into()]);
        p.run_until(now + Duration::from_secs(1));
        let pushed: Vec<&Info> = p.events[0]
            .iter()
            .filter_map(|e| if let Event::Identified { info, push: true, .. } = e { Some(&**info) } else { None })
            .collect();
        assert_eq!(pushed.len(), 1, "{:?}", p.events[0]);
        assert!(pushed[0].protocols.iter().any(|x| x == "/x/1.0.0"), "{:?}", pushed[0].protocols);
        assert!(pushed[0].protocols.iter().any(|x| x == ping::PROTOCOL_ID));
        assert_eq!(p.n[1].stats().identifies_failed, 0);
    }
}
