//! The node-level machine: many [`Connection`]s plus the node's own protocols (identify, ping), all
//! sans-IO. The simulator drives it directly; its inputs are transport-level facts (a connection is up,
//! bytes arrived, it went away) and time; its outputs are bytes to send, dials to make, connections to
//! close, and events.
//!
//! Drain `poll_output` after every `handle_*` call and re-arm the timer from `poll_timeout`.

use crate::conn::{self, Connection, ReadResult, Role, StreamId};
use crate::identify::{self, Info};
use crate::identity::{Keypair, PeerId};
use crate::multiaddr::Multiaddr;
use crate::ping;
use crate::rng::{self, RngCore};
use crate::time::{Duration, Instant};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

#[derive(Debug, Clone)]
pub struct Config {
    pub keypair: Keypair,
    /// Root of every random choice this node makes (connection seeds, ping payloads).
    pub seed: [u8; 32],
    pub conn_limits: conn::Limits,
    pub handshake_timeout: Duration,
    pub agent_version: String,
    pub listen_addrs: Vec<Multiaddr>,
    /// Ping every connection at this interval; `None`: only on command.
    pub ping_interval: Option<Duration>,
    /// A ping without an answer after this long fails. Default 10 s.
    pub ping_timeout: Duration,
    pub identify_on_connect: bool,
    /// Connections at once, including dials in progress. Default 1024.
    pub max_connections: usize,
}

impl Config {
    pub fn new(keypair: Keypair, seed: [u8; 32]) -> Self {
        Config {
            keypair,
            seed,
            conn_limits: conn::Limits::default(),
            handshake_timeout: Duration::from_secs(15),
            agent_version: concat!("hyphae/", env!("CARGO_PKG_VERSION")).into(),
            listen_addrs: Vec::new(),
            ping_interval: None,
            ping_timeout: Duration::from_secs(10),
            identify_on_connect: true,
            max_connections: 1024,
        }
    }
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
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected { peer: PeerId, conn: ConnId, role: Role },
    Disconnected { peer: PeerId, conn: ConnId, reason: String },
    DialFailed { addr: Multiaddr, reason: String },
    PingOk { peer: PeerId, rtt: Duration },
    PingFailed { peer: PeerId, reason: String },
    Identified { peer: PeerId, agent_version: Option<String>, protocols: Vec<String>, listen_addrs: Vec<Multiaddr> },
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
}

enum Task {
    IdentifyOut(Vec<u8>),
    IdentifyPushIn(Vec<u8>),
    PingIn(ping::Echo),
    PingOut,
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

struct Entry {
    machine: Option<Connection>,
    role: Role,
    expected: Option<PeerId>,
    addr: Multiaddr,
    peer: Option<PeerId>,
    tasks: BTreeMap<StreamId, Task>,
    ping: PingState,
}

pub struct Node {
    config: Config,
    noise_static: std::sync::Arc<crate::noise::StaticKey>,
    peer_id: PeerId,
    rng: rng::Rng,
    conns: BTreeMap<ConnId, Entry>,
    next_conn: u64,
    out: VecDeque<Output>,
    stats: Stats,
}

const PROTOCOLS: [&str; 3] = [identify::PROTOCOL_ID, identify::PUSH_PROTOCOL_ID, ping::PROTOCOL_ID];

impl Node {
    pub fn new(config: Config, _now: Instant) -> Self {
        let mut rng = rng::from_seed(config.seed);
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        let noise_static = std::sync::Arc::new(
            crate::noise::StaticKey::generate(&config.keypair, s).expect("invariant: x25519 key generation cannot fail"),
        );
        Node {
            peer_id: config.keypair.peer_id(),
            noise_static,
            config,
            rng,
            conns: BTreeMap::new(),
            next_conn: 1 << 32,
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn peer_id(&self) -> &PeerId {
        &self.peer_id
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn num_connections(&self) -> usize {
        self.conns.len()
    }
    pub fn connected_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> =
            self.conns.values().filter(|e| e.machine.as_ref().is_some_and(|m| m.is_open())).filter_map(|e| e.peer.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.conns.values().any(|e| e.peer.as_ref() == Some(peer) && e.machine.as_ref().is_some_and(|m| m.is_open()))
    }

    fn conn_config(&self) -> conn::Config {
        let mut c = conn::Config::new(self.config.keypair.clone());
        c.protocols = PROTOCOLS.iter().map(|s| s.to_string()).collect();
        c.limits = self.config.conn_limits.clone();
        c.handshake_timeout = self.config.handshake_timeout;
        c.noise_static = Some(self.noise_static.clone());
        c
    }

    /// Dials `addr` (its `/p2p/<id>` is verified). Outcome: `Event::Connected` or `Event::DialFailed`.
    pub fn dial(&mut self, _now: Instant, addr: Multiaddr) -> Result<ConnId, ApiError> {
        if self.conns.len() >= self.config.max_connections {
            return Err(ApiError::ConnectionLimit);
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Entry {
                machine: None,
                role: Role::Dialer,
                expected: addr.peer_id(),
                addr: addr.clone(),
                peer: None,
                tasks: BTreeMap::new(),
                ping: PingState::default(),
            },
        );
        self.out.push_back(Output::Dial { conn: id, addr });
        Ok(id)
    }

    /// Pings `peer` now on one of its connections.
    pub fn ping(&mut self, now: Instant, peer: &PeerId) -> Result<(), ApiError> {
        let id = self
            .conns
            .iter()
            .find(|(_, e)| e.peer.as_ref() == Some(peer) && e.machine.as_ref().is_some_and(|m| m.is_open()))
            .map(|(id, _)| *id);
        let id = id.ok_or_else(|| ApiError::NotConnected(peer.clone()))?;
        self.conns.get_mut(&id).expect("invariant: found above").ping.next_at = Some(now);
        self.handle_timeout(now);
        Ok(())
    }

    /// Closes every connection to `peer`.
    pub fn disconnect(&mut self, now: Instant, peer: &PeerId) {
        let ids: Vec<ConnId> = self.conns.iter().filter(|(_, e)| e.peer.as_ref() == Some(peer)).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(m) = self.conns.get_mut(&id).and_then(|e| e.machine.as_mut()) {
                m.close();
            }
            self.pump(now, id);
        }
    }

    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Connected { conn, role, remote_addr } => {
                if role == Role::Listener && (self.conns.len() >= self.config.max_connections || self.conns.contains_key(&conn)) {
                    self.out.push_back(Output::Close { conn });
                    return;
                }
                let seed = {
                    let mut s = [0u8; 32];
                    self.rng.fill_bytes(&mut s);
                    s
                };
                let cfg = self.conn_config();
                let entry = self.conns.entry(conn).or_insert_with(|| Entry {
                    machine: None,
                    role,
                    expected: None,
                    addr: remote_addr.clone(),
                    peer: None,
                    tasks: BTreeMap::new(),
                    ping: PingState::default(),
                });
                if entry.machine.is_some() {
                    return;
                }
                entry.machine = Some(Connection::new(role, cfg, entry.expected.clone(), now, seed));
                self.pump(now, conn);
            }
            Input::Data { conn, data } => {
                if let Some(m) = self.conns.get_mut(&conn).and_then(|e| e.machine.as_mut()) {
                    m.handle_input(now, data);
                    self.pump(now, conn);
                }
            }
            Input::Disconnected { conn, reason } => {
                let Some(e) = self.conns.get_mut(&conn) else { return };
                match &mut e.machine {
                    Some(m) => {
                        m.handle_eof();
                        self.pump(now, conn);
                    }
                    None => {
                        let e = self.conns.remove(&conn).expect("invariant: present");
                        self.stats.dials_failed += 1;
                        self.out.push_back(Output::Event(Event::DialFailed { addr: e.addr, reason: reason.to_string() }));
                    }
                }
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(e) = self.conns.get_mut(&id) else { continue };
            let Some(m) = e.machine.as_mut() else { continue };
            if m.poll_timeout().is_some_and(|t| t <= now) {
                m.handle_timeout(now);
            }
            if e.ping.deadline.is_some_and(|t| t <= now) {
                e.ping.deadline = None;
                // Drop the stream in use or still being opened: a late answer on it must not be taken
                // for the answer to the next ping.
                for s in [e.ping.stream.take(), e.ping.opening.take()].into_iter().flatten() {
                    e.tasks.remove(&s);
                    m.stream_reset(s);
                }
                e.ping.pinger = ping::Pinger::new();
                self.stats.pings_failed += 1;
                if let Some(p) = e.peer.clone() {
                    self.out.push_back(Output::Event(Event::PingFailed { peer: p, reason: "timeout".into() }));
                }
                e.ping.next_at = self.config.ping_interval.map(|i| now + i);
            }
            if e.ping.next_at.is_some_and(|t| t <= now) && e.ping.deadline.is_none() && m.is_open() {
                e.ping.next_at = None;
                e.ping.deadline = Some(now + self.config.ping_timeout);
                match e.ping.stream {
                    Some(s) => {
                        let mut payload = [0u8; ping::PING_SIZE];
                        self.rng.fill_bytes(&mut payload);
                        let b = e.ping.pinger.start(now, payload);
                        let _ = m.stream_write(s, &b);
                    }
                    None if e.ping.opening.is_none() => {
                        if let Ok(s) = m.open_stream(vec![ping::PROTOCOL_ID.into()]) {
                            e.ping.opening = Some(s);
                            e.tasks.insert(s, Task::PingOut);
                        }
                    }
                    None => {}
                }
            }
            self.pump(now, id);
        }
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .flat_map(|e| [e.machine.as_ref().and_then(|m| m.poll_timeout()), e.ping.next_at, e.ping.deadline])
            .flatten()
            .min()
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Drains one connection's machine: events first (they may write), then its bytes.
    fn pump(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(e) = self.conns.get_mut(&id) else { return };
            let Some(m) = e.machine.as_mut() else { return };
            let Some(ev) = m.poll_event() else { break };
            self.on_conn_event(now, id, ev);
        }
        let Some(e) = self.conns.get_mut(&id) else { return };
        let Some(m) = e.machine.as_mut() else { return };
        if let Some(data) = m.poll_transmit() {
            self.out.push_back(Output::Transmit { conn: id, data });
        }
        if m.is_closed() {
            self.conns.remove(&id);
            self.out.push_back(Output::Close { conn: id });
        }
    }

    fn on_conn_event(&mut self, now: Instant, id: ConnId, ev: conn::Event) {
        let info = if matches!(ev, conn::Event::InboundStream { ref protocol, .. } if protocol == identify::PROTOCOL_ID) {
            Some(self.local_info(self.conns.get(&id).map(|e| e.addr.clone())))
        } else {
            None
        };
        let ping_interval = self.config.ping_interval;
        let identify_on_connect = self.config.identify_on_connect;
        let e = self.conns.get_mut(&id).expect("invariant: event of a live connection");
        let m = e.machine.as_mut().expect("invariant: event of a live machine");
        match ev {
            conn::Event::Established { peer, .. } => {
                e.peer = Some(peer.clone());
                self.stats.connections_established += 1;
                if identify_on_connect {
                    if let Ok(s) = m.open_stream(vec![identify::PROTOCOL_ID.into()]) {
                        e.tasks.insert(s, Task::IdentifyOut(Vec::new()));
                    }
                }
                e.ping.next_at = ping_interval.map(|_| now);
                let role = e.role;
                self.out.push_back(Output::Event(Event::Connected { peer, conn: id, role }));
            }
            conn::Event::InboundStream { id: s, protocol } => match protocol.as_str() {
                identify::PROTOCOL_ID => {
                    if let Some(info) = info {
                        let _ = m.stream_write(s, &info.encode());
                    }
                    m.stream_close(s);
                    m.stream_release(s);
                }
                identify::PUSH_PROTOCOL_ID => {
                    e.tasks.insert(s, Task::IdentifyPushIn(Vec::new()));
                    self.read_stream(now, id, s);
                }
                ping::PROTOCOL_ID => {
                    e.tasks.insert(s, Task::PingIn(ping::Echo::default()));
                    self.read_stream(now, id, s);
                }
                _ => m.stream_reset(s),
            },
            conn::Event::OutboundReady { id: s, .. } => {
                if matches!(e.tasks.get(&s), Some(Task::PingOut)) && e.ping.opening == Some(s) {
                    e.ping.opening = None;
                    e.ping.stream = Some(s);
                    let mut payload = [0u8; ping::PING_SIZE];
                    self.rng.fill_bytes(&mut payload);
                    let b = e.ping.pinger.start(now, payload);
                    let _ = m.stream_write(s, &b);
                }
                self.read_stream(now, id, s);
            }
            conn::Event::OutboundFailed { id: s, reason } => {
                if let Some(Task::PingOut) = e.tasks.remove(&s) {
                    if e.ping.opening != Some(s) {
                        return;
                    }
                    e.ping.opening = None;
                    e.ping.deadline = None;
                    e.ping.next_at = ping_interval.map(|i| now + i);
                    self.stats.pings_failed += 1;
                    if let Some(p) = e.peer.clone() {
                        self.out.push_back(Output::Event(Event::PingFailed { peer: p, reason }));
                    }
                }
            }
            conn::Event::Readable(s) => self.read_stream(now, id, s),
            conn::Event::Writable(_) => {}
            conn::Event::Reset(s) => {
                e.tasks.remove(&s);
                m.stream_release(s);
                if e.ping.stream == Some(s) {
                    e.ping.stream = None;
                }
            }
            conn::Event::Closed { reason } => {
                if let Some(peer) = e.peer.clone() {
                    self.out.push_back(Output::Event(Event::Disconnected { peer, conn: id, reason }));
                } else {
                    self.stats.dials_failed += u64::from(e.role == Role::Dialer);
                    if e.role == Role::Dialer {
                        let addr = e.addr.clone();
                        self.out.push_back(Output::Event(Event::DialFailed { addr, reason }));
                    }
                }
            }
        }
    }

    fn read_stream(&mut self, now: Instant, id: ConnId, s: StreamId) {
        let Some(e) = self.conns.get_mut(&id) else { return };
        let Some(m) = e.machine.as_mut() else { return };
        let mut buf = [0u8; 2048];
        let mut done = false;
        let mut echo_out = Vec::new();
        loop {
            let n = match m.stream_read(s, &mut buf) {
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
                Some(Task::PingIn(echo)) => echo.handle_input(&buf[..n], &mut echo_out),
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
                        if let Some(p) = e.peer.clone() {
                            self.out.push_back(Output::Event(Event::PingOk { peer: p, rtt }));
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::debug!(error = %err, "bad ping answer");
                        done = true;
                        break;
                    }
                },
                None => {}
            }
            if !echo_out.is_empty() {
                let _ = m.stream_write(s, &echo_out);
                echo_out.clear();
            }
        }
        if done {
            match e.tasks.remove(&s) {
                Some(Task::IdentifyOut(acc)) | Some(Task::IdentifyPushIn(acc)) => {
                    m.stream_release(s);
                    match Info::decode_all(&acc) {
                        Ok(info) => {
                            self.stats.identifies += 1;
                            if let Some(p) = e.peer.clone() {
                                self.out.push_back(Output::Event(Event::Identified {
                                    peer: p,
                                    agent_version: info.agent_version,
                                    protocols: info.protocols,
                                    listen_addrs: info.listen_addrs,
                                }));
                            }
                        }
                        Err(err) => tracing::debug!(error = %err, "bad identify message"),
                    }
                }
                Some(Task::PingOut) => {
                    m.stream_reset(s);
                    if e.ping.stream == Some(s) {
                        e.ping.stream = None;
                    }
                }
                Some(Task::PingIn(_)) => {
                    m.stream_close(s);
                    m.stream_release(s);
                }
                None => m.stream_release(s),
            }
        }
    }

    fn local_info(&self, observed: Option<Multiaddr>) -> Info {
        Info {
            protocol_version: Some("ipfs/0.1.0".into()),
            agent_version: Some(self.config.agent_version.clone()),
            public_key: Some(self.config.keypair.public()),
            listen_addrs: self.config.listen_addrs.clone(),
            observed_addr: observed,
            protocols: PROTOCOLS.iter().map(|s| s.to_string()).collect(),
            signed_peer_record: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes over an in-memory link with a fixed one-way latency, driven by explicit time.
    struct Pair {
        n: [Node; 2],
        now: Instant,
        inflight: Vec<(Instant, usize, ConnId, Vec<u8>)>,
        events: [Vec<Event>; 2],
        latency: Duration,
    }

    impl Pair {
        fn new(ping: Option<Duration>) -> Pair {
            let mut r = rng::from_seed([5; 32]);
            let mk = |r: &mut rng::Rng, s: u8| {
                let mut c = Config::new(Keypair::generate_ed25519(r), [s; 32]);
                c.ping_interval = ping;
                Node::new(c, Instant(0))
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
                    Output::Transmit { conn, data } => self.inflight.push((self.now + self.latency, 1 - i, conn, data)),
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
                    self.n[to].handle_input(self.now, Input::Data { conn, data: &data });
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
        assert!(p.events[0].iter().any(|e| matches!(e, Event::Identified { agent_version: Some(a), .. } if a.starts_with("hyphae/"))));
        assert!(p.events[1].iter().any(|e| matches!(e, Event::Identified { .. })));
        assert_eq!(p.n[1].stats().pings_ok, 4, "both sides ping");
    }
}
