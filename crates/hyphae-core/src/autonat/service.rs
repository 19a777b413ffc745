//! AutoNAT v1 and v2, client and server, as one node service: both versions' answers feed one verdict.

use super::wire::{self, Msg, Status};
use super::wire_v2::{self, DialStatus, ResponseStatus};
use super::{Config, Event, Reachability, PROTOCOL_ID, V2_DIAL_BACK, V2_DIAL_REQUEST};
use crate::identity::PeerId;
use crate::multiaddr::{is_local_ip, Multiaddr, Protocol};
use crate::service::{ConnId, ConnectionEvent, Cx, Event as NodeEvent, Service, StreamEvent};
use crate::stream::{CloseReason, OpenError, Role, StreamId, Violation, ViolationKind};
use crate::time::Instant;
use rand_core::RngCore;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Observed addresses kept (identify's view of us from different peers).
const MAX_OBSERVED: usize = 8;

/// One of our probes.
struct Probe {
    peer: PeerId,
    conn: ConnId,
    stream: Option<StreamId>,
    deadline: Instant,
    buf: Vec<u8>,
    /// Asked over v2: what we asked and whether the dial-back brought our nonce.
    v2: Option<V2Probe>,
}

struct V2Probe {
    nonce: u64,
    addrs: Vec<Multiaddr>,
    nonce_seen: bool,
}

/// A v2 request being served: waiting for the request, or for the dial data it must pay.
enum V2Stage {
    Request,
    Paying { idx: u32, addr: Multiaddr, nonce: u64, left: u64 },
}

struct V2Request {
    peer: PeerId,
    buf: Vec<u8>,
    stage: V2Stage,
}

/// A v2 dial-back in progress: dialing `addr`, then the nonce on a dial-back stream.
struct V2DialBack {
    peer: PeerId,
    addr: Multiaddr,
    idx: u32,
    nonce: u64,
    /// The request's stream, for the answer.
    conn: ConnId,
    stream: StreamId,
    deadline: Instant,
    /// The connection we dialed, the dial-back stream's token and stream once open, its answer bytes.
    back: Option<(ConnId, u64, Option<StreamId>)>,
    buf: Vec<u8>,
}

/// A peer's request we are dialing back for.
struct DialBack {
    peer: PeerId,
    addr: Multiaddr,
    /// The request's stream, for the answer.
    conn: ConnId,
    stream: StreamId,
    deadline: Instant,
}

pub struct AutonatService {
    config: Config,
    // client
    /// Connected peers that serve AutoNAT.
    /// (Every connection to each: a v2 dial-back opens a second one for a while, and its close must
    /// not make us forget the server.)
    servers: BTreeMap<PeerId, BTreeSet<ConnId>>,
    asked: BTreeMap<PeerId, Instant>,
    probes: BTreeMap<u64, Probe>,
    next_token: u64,
    next_probe: Option<Instant>,
    reach: Reachability,
    /// Consecutive answers the same way (positive: reachable) and from whom.
    streak: i64,
    streak_peers: BTreeSet<PeerId>,
    reached_at: Option<Multiaddr>,
    /// Addresses peers saw us at (identify), newest last: sent with our listen addresses, so a node
    /// behind a NAT is asked to be dialed where the NAT maps it (and found unreachable there).
    observed: VecDeque<Multiaddr>,
    /// Servers that offer v2.
    v2_servers: BTreeSet<PeerId>,
    /// Dial-back streams servers opened to us (v2), with their bytes so far.
    dialback_in: BTreeMap<(ConnId, StreamId), Vec<u8>>,
    // server
    requests: BTreeMap<(ConnId, StreamId), (PeerId, Vec<u8>)>,
    dialbacks: Vec<DialBack>,
    requests_v2: BTreeMap<(ConnId, StreamId), V2Request>,
    dialbacks_v2: Vec<V2DialBack>,
    recent: VecDeque<Instant>,
    recent_per_peer: BTreeMap<PeerId, VecDeque<Instant>>,
}

impl AutonatService {
    pub fn new(config: Config) -> Self {
        AutonatService {
            config,
            servers: BTreeMap::new(),
            asked: BTreeMap::new(),
            probes: BTreeMap::new(),
            next_token: 0,
            next_probe: None,
            reach: Reachability::Unknown,
            streak: 0,
            streak_peers: BTreeSet::new(),
            reached_at: None,
            observed: VecDeque::new(),
            v2_servers: BTreeSet::new(),
            dialback_in: BTreeMap::new(),
            requests: BTreeMap::new(),
            dialbacks: Vec::new(),
            requests_v2: BTreeMap::new(),
            dialbacks_v2: Vec::new(),
            recent: VecDeque::new(),
            recent_per_peer: BTreeMap::new(),
        }
    }

    pub fn reachability(&self) -> Reachability {
        self.reach
    }

    pub fn set_server(&mut self, on: bool) {
        self.config.server = on;
    }

    // ---------- client ----------

    /// Asks peers that were not asked within the refresh interval: up to `confirmations` at once while
    /// the verdict is unknown, one when re-checking.
    fn probe(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let refresh = self.config.refresh_interval;
        self.asked.retain(|_, t| *t + refresh > now);
        let busy: BTreeSet<&PeerId> = self.probes.values().map(|p| &p.peer).collect();
        let mut pool: Vec<(PeerId, ConnId)> = self
            .servers
            .iter()
            .filter(|(p, _)| !self.asked.contains_key(*p) && !busy.contains(p))
            .filter_map(|(p, c)| Some((p.clone(), *c.first()?)))
            .collect();
        let want = if self.reach == Reachability::Unknown { self.config.confirmations } else { 1 };
        let want = want.saturating_sub(self.probes.len());
        for _ in 0..want {
            if pool.is_empty() {
                break;
            }
            let (peer, conn) = pool.swap_remove((cx.rng.next_u64() % pool.len() as u64) as usize);
            self.next_token += 1;
            let v2 = (self.config.v2 && self.v2_servers.contains(&peer)).then(|| V2Probe {
                nonce: cx.rng.next_u64(),
                addrs: Vec::new(),
                nonce_seen: false,
            });
            cx.open_stream(conn, if v2.is_some() { V2_DIAL_REQUEST } else { PROTOCOL_ID }, self.next_token);
            self.asked.insert(peer.clone(), now);
            let deadline = now + self.config.request_timeout;
            self.probes.insert(self.next_token, Probe { peer, conn, stream: None, deadline, buf: Vec::new(), v2 });
        }
        let settled = self.reach != Reachability::Unknown && self.streak == 0;
        self.next_probe = Some(now + if settled { refresh } else { self.config.retry_interval });
    }

    fn answered(&mut self, cx: &mut Cx<'_>, peer: PeerId, status: Status, addr: Option<Multiaddr>) {
        cx.emit(NodeEvent::Autonat(Event::Answer { peer: peer.clone(), status }));
        let reachable = match status {
            Status::Ok => true,
            Status::DialError => false,
            // Refusals and errors say nothing about us.
            _ => return,
        };
        let agrees = (self.reach == Reachability::Public) == reachable && self.reach != Reachability::Unknown;
        if agrees {
            self.streak = 0;
            self.streak_peers.clear();
            return;
        }
        if (self.streak > 0) != reachable {
            self.streak = 0;
            self.streak_peers.clear();
        }
        if self.streak_peers.insert(peer) {
            self.streak += if reachable { 1 } else { -1 };
        }
        if reachable {
            self.reached_at = addr.or(self.reached_at.take());
        }
        if self.streak.unsigned_abs() as usize >= self.config.confirmations {
            self.reach = if reachable { Reachability::Public } else { Reachability::Private };
            self.streak = 0;
            self.streak_peers.clear();
            let addr = if reachable { self.reached_at.clone() } else { None };
            tracing::info!(reachability = ?self.reach, ?addr, "AutoNAT verdict");
            cx.emit(NodeEvent::Autonat(Event::Reachability { reachability: self.reach, addr }));
        } else {
            // A verdict is forming: ask again soon.
            self.next_probe = Some(cx.now + self.config.retry_interval.min(self.config.boot_delay));
        }
    }

    fn end_probe(&mut self, cx: &mut Cx<'_>, token: u64, reset: bool) -> Option<Probe> {
        let p = self.probes.remove(&token)?;
        if let Some(s) = p.stream {
            if reset {
                cx.reset_stream(p.conn, s);
            } else {
                cx.finish(p.conn, s);
            }
        }
        Some(p)
    }

    // ---------- server ----------

    fn respond(cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, peer: &PeerId, status: Status, text: &str, addr: Option<Multiaddr>) {
        tracing::info!(%peer, ?status, text, "AutoNAT request served");
        let mut out = Vec::new();
        wire::encode(&Msg::DialResponse { status, text: (!text.is_empty()).then(|| text.to_string()), addr }, &mut out);
        cx.write(conn, stream, &out);
        cx.finish(conn, stream);
        cx.emit(NodeEvent::Autonat(Event::Served { peer: peer.clone(), status }));
    }

    fn rate_ok(&mut self, now: Instant, peer: &PeerId) -> bool {
        let minute = crate::time::Duration::from_secs(60);
        while self.recent.front().is_some_and(|t| *t + minute <= now) {
            self.recent.pop_front();
        }
        self.recent_per_peer.retain(|_, q| {
            while q.front().is_some_and(|t| *t + minute <= now) {
                q.pop_front();
            }
            !q.is_empty()
        });
        let per = self.recent_per_peer.get(peer).map_or(0, VecDeque::len);
        if self.recent.len() >= self.config.max_requests_per_minute || per >= self.config.max_requests_per_peer_per_minute {
            return false;
        }
        self.recent.push_back(now);
        self.recent_per_peer.entry(peer.clone()).or_default().push_back(now);
        true
    }

    fn serve(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, from: PeerId, msg: Msg) {
        let Msg::Dial { peer, addrs } = msg else {
            return Self::respond(cx, conn, stream, &from, Status::BadRequest, "expected DIAL", None);
        };
        if peer != from {
            return Self::respond(cx, conn, stream, &from, Status::BadRequest, "peer id mismatch", None);
        }
        let Some((_, observed)) = cx.connection(conn) else { return };
        let Some(ip) = observed.ip().filter(|_| !observed.protocols().contains(&Protocol::P2pCircuit)) else {
            return Self::respond(cx, conn, stream, &from, Status::DialRefused, "no observed IP", None);
        };
        if is_local_ip(ip) && !self.config.allow_private {
            return Self::respond(cx, conn, stream, &from, Status::DialRefused, "refusing to dial back a private address", None);
        }
        // spec(autonat-v1): "implementations MUST NOT dial any multiaddress unless it is based on the IP
        // address the requesting node is observed as".
        let Some(addr) = addrs.into_iter().find(|a| a.ip() == Some(ip) && !a.protocols().contains(&Protocol::P2pCircuit)) else {
            return Self::respond(cx, conn, stream, &from, Status::DialRefused, "no address on the observed IP", None);
        };
        if self.dialbacks.len() >= self.config.max_dialbacks || !self.rate_ok(cx.now, &from) {
            return Self::respond(cx, conn, stream, &from, Status::DialRefused, "too many dials", None);
        }
        let addr = addr.without_peer_id();
        cx.dial(addr.with_peer_id(&from), Some(from.clone()));
        self.dialbacks.push(DialBack { peer: from, addr, conn, stream, deadline: cx.now + self.config.dial_timeout });
    }

    fn dialback_done(&mut self, cx: &mut Cx<'_>, peer: &PeerId, addr: &Multiaddr, ok: bool) -> bool {
        let Some(i) = self.dialbacks.iter().position(|d| &d.peer == peer && same_addr(&d.addr, addr)) else { return false };
        let d = self.dialbacks.remove(i);
        if ok {
            Self::respond(cx, d.conn, d.stream, &d.peer, Status::Ok, "", Some(d.addr));
        } else {
            Self::respond(cx, d.conn, d.stream, &d.peer, Status::DialError, "dial failed", None);
        }
        true
    }
}

/// The address a dial-back went to, however the connection reports it.
fn same_addr(a: &Multiaddr, b: &Multiaddr) -> bool {
    a.without_peer_id() == b.without_peer_id() || (a.socket_addr().is_some() && a.socket_addr() == b.socket_addr())
}

// ---------- v2 ----------

/// Whether a v2 server would dial `a`: an IP address over plain TCP or QUIC v1, not unspecified, and
/// public unless `allow_private`.
fn dialable_v2(a: &Multiaddr, allow_private: bool) -> bool {
    let Some(ip) = a.ip() else { return false };
    let rest: Vec<&Protocol> = a.protocols().iter().skip(1).filter(|x| !matches!(x, Protocol::P2p(_))).collect();
    matches!(rest.as_slice(), [Protocol::Tcp(_)] | [Protocol::Udp(_), Protocol::QuicV1])
        && !ip.is_unspecified()
        && (allow_private || !is_local_ip(ip))
}

impl AutonatService {
    /// The address a v2 probe asks about: our first listen address a server would dial, else the newest
    /// address a peer observed us at (behind a NAT that is all there is). One per request: the spec has
    /// the server dial the first address it will, rust-libp2p 0.57's server dials the *last*; with one
    /// address both test the same one.
    fn v2_candidates(&self, cx: &Cx<'_>) -> Vec<Multiaddr> {
        let first = cx.local.listen_addrs.iter().chain(self.observed.iter().rev()).map(Multiaddr::without_peer_id);
        first.into_iter().find(|a| dialable_v2(a, self.config.allow_private)).into_iter().collect()
    }

    fn respond_v2(cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, peer: &PeerId, status: ResponseStatus, idx: u32, dial: DialStatus) {
        tracing::info!(%peer, ?status, ?dial, "AutoNAT v2 request served");
        let mut out = Vec::new();
        wire_v2::encode(&wire_v2::Msg::DialResponse { status, addr_idx: idx, dial_status: dial }, &mut out);
        cx.write(conn, stream, &out);
        cx.finish(conn, stream);
        cx.emit(NodeEvent::Autonat(Event::ServedV2 { peer: peer.clone(), status, dial }));
    }

    /// A v2 request's stream got bytes (or ended).
    fn on_request_v2(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>) {
        let key = (conn, stream);
        match ev {
            StreamEvent::Data(d) => {
                let Some(r) = self.requests_v2.get_mut(&key) else { return };
                r.buf.extend_from_slice(d);
            }
            StreamEvent::Eof | StreamEvent::Reset => {
                if self.requests_v2.remove(&key).is_some() && matches!(ev, StreamEvent::Eof) {
                    cx.reset_stream(conn, stream);
                }
                return;
            }
            StreamEvent::Opened { .. } | StreamEvent::Drained => return,
        }
        loop {
            let Some(r) = self.requests_v2.get_mut(&key) else { return };
            let m = match wire_v2::take(&mut r.buf, &self.config.limits_v2) {
                Ok(None) => return,
                Ok(Some(m)) => m,
                Err(e) => {
                    let peer = r.peer.clone();
                    self.requests_v2.remove(&key);
                    cx.reset_stream(conn, stream);
                    cx.violation(Violation { peer: Some(peer), protocol: V2_DIAL_REQUEST, kind: ViolationKind::Malformed(e) });
                    return;
                }
            };
            let peer = r.peer.clone();
            match (&mut r.stage, m) {
                (V2Stage::Request, wire_v2::Msg::DialRequest { addrs, nonce }) => self.serve_v2(cx, conn, stream, peer, addrs, nonce),
                (V2Stage::Paying { left, .. }, wire_v2::Msg::DialDataResponse { len }) => {
                    *left = left.saturating_sub(len as u64);
                    if *left == 0 {
                        let Some(V2Request { stage: V2Stage::Paying { idx, addr, nonce, .. }, .. }) = self.requests_v2.remove(&key) else {
                            return;
                        };
                        self.dial_back_v2(cx, conn, stream, peer, idx, addr, nonce);
                    }
                }
                _ => {
                    self.requests_v2.remove(&key);
                    cx.reset_stream(conn, stream);
                    let kind = ViolationKind::Protocol("unexpected autonat v2 message".into());
                    cx.violation(Violation { peer: Some(peer), protocol: V2_DIAL_REQUEST, kind });
                    return;
                }
            }
        }
    }

    fn serve_v2(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, peer: PeerId, addrs: Vec<(u32, Multiaddr)>, nonce: u64) {
        let key = (conn, stream);
        if !self.rate_ok(cx.now, &peer) {
            self.requests_v2.remove(&key);
            return Self::respond_v2(cx, conn, stream, &peer, ResponseStatus::RequestRejected, 0, DialStatus::Unused);
        }
        let Some((_, observed)) = cx.connection(conn) else { return };
        let observed_ip = observed.ip().filter(|_| !observed.protocols().contains(&Protocol::P2pCircuit));
        let Some((idx, addr)) = addrs.into_iter().find(|(_, a)| dialable_v2(a, self.config.allow_private)) else {
            self.requests_v2.remove(&key);
            return Self::respond_v2(cx, conn, stream, &peer, ResponseStatus::DialRefused, 0, DialStatus::Unused);
        };
        let addr = addr.without_peer_id();
        if observed_ip.is_some() && addr.ip() == observed_ip {
            self.requests_v2.remove(&key);
            return self.dial_back_v2(cx, conn, stream, peer, idx, addr, nonce);
        }
        // Another IP: the requester pays first (spec: amplification attack prevention).
        let left = self.config.dial_data_bytes.max(1);
        let mut out = Vec::new();
        wire_v2::encode(&wire_v2::Msg::DialDataRequest { addr_idx: idx, num_bytes: left }, &mut out);
        cx.write(conn, stream, &out);
        if let Some(r) = self.requests_v2.get_mut(&key) {
            r.stage = V2Stage::Paying { idx, addr, nonce, left };
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dial_back_v2(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, peer: PeerId, idx: u32, addr: Multiaddr, nonce: u64) {
        if self.dialbacks.len() + self.dialbacks_v2.len() >= self.config.max_dialbacks {
            return Self::respond_v2(cx, conn, stream, &peer, ResponseStatus::RequestRejected, idx, DialStatus::Unused);
        }
        cx.dial(addr.with_peer_id(&peer), Some(peer.clone()));
        let deadline = cx.now + self.config.dial_timeout;
        self.dialbacks_v2.push(V2DialBack { peer, addr, idx, nonce, conn, stream, deadline, back: None, buf: Vec::new() });
    }

    /// A v2 dial-back ended: answer the request, close the connection we dialed.
    fn finish_v2(&mut self, cx: &mut Cx<'_>, i: usize, dial: DialStatus, why: &str) {
        let d = self.dialbacks_v2.remove(i);
        tracing::debug!(peer = %d.peer, addr = %d.addr, ?dial, why, "AutoNAT v2 dial-back ended");
        if let Some((c, _, _)) = d.back {
            cx.close_connection(c, CloseReason::Local);
        }
        Self::respond_v2(cx, d.conn, d.stream, &d.peer, ResponseStatus::Ok, d.idx, dial);
    }

    // ---------- v2 client ----------

    /// A server's dial-back stream to us: check the nonce, answer OK.
    fn on_dial_back_in(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>) {
        let key = (conn, stream);
        match ev {
            StreamEvent::Data(d) => {
                let Some(buf) = self.dialback_in.get_mut(&key) else { return };
                buf.extend_from_slice(d);
                match wire_v2::decode_dial_back(buf) {
                    Ok(None) => {}
                    Ok(Some((nonce, _))) => {
                        self.dialback_in.remove(&key);
                        let mine = self.probes.values_mut().filter_map(|p| p.v2.as_mut()).find(|v| v.nonce == nonce);
                        match mine {
                            Some(v) => v.nonce_seen = true,
                            None => tracing::debug!(nonce, "AutoNAT v2 dial-back with a nonce we did not send"),
                        }
                        let mut out = Vec::new();
                        wire_v2::encode_dial_back_response(&mut out);
                        cx.write(conn, stream, &out);
                        cx.finish(conn, stream);
                    }
                    Err(e) => {
                        self.dialback_in.remove(&key);
                        cx.reset_stream(conn, stream);
                        let peer = cx.connection(conn).map(|(p, _)| p);
                        cx.violation(Violation { peer, protocol: V2_DIAL_BACK, kind: ViolationKind::Malformed(e) });
                    }
                }
            }
            StreamEvent::Eof | StreamEvent::Reset => {
                if self.dialback_in.remove(&key).is_some() && matches!(ev, StreamEvent::Eof) {
                    cx.reset_stream(conn, stream);
                }
            }
            StreamEvent::Opened { .. } | StreamEvent::Drained => {}
        }
    }

    /// A v2 probe's stream got bytes: pay for the dial when asked (up to `max_dial_data_bytes`), take
    /// the answer.
    fn on_probe_v2(&mut self, cx: &mut Cx<'_>, token: u64) {
        loop {
            let Some(p) = self.probes.get_mut(&token) else { return };
            let m = match wire_v2::take(&mut p.buf, &self.config.limits_v2) {
                Ok(None) => return,
                Ok(Some(m)) => m,
                Err(_) => wire_v2::Msg::DialDataResponse { len: 0 },
            };
            match m {
                wire_v2::Msg::DialDataRequest { num_bytes, addr_idx } if num_bytes <= self.config.max_dial_data_bytes => {
                    tracing::debug!(peer = %p.peer, num_bytes, addr_idx, "AutoNAT v2: paying for a dial-back");
                    let (conn, stream) = (p.conn, p.stream.expect("invariant: data came on it"));
                    let mut left = num_bytes as usize;
                    let mut out = Vec::new();
                    while left > 0 {
                        let len = left.min(wire_v2::MAX_DATA_CHUNK);
                        wire_v2::encode(&wire_v2::Msg::DialDataResponse { len }, &mut out);
                        left -= len;
                    }
                    cx.write(conn, stream, &out);
                }
                wire_v2::Msg::DialResponse { status, addr_idx, dial_status } => {
                    let p = self.end_probe(cx, token, false).expect("invariant: present");
                    let v = p.v2.expect("invariant: a v2 probe");
                    let addr = v.addrs.get(addr_idx as usize).cloned();
                    // spec: a dial reported OK counts only when its dial-back brought our nonce.
                    let verdict = match (status, dial_status) {
                        (ResponseStatus::Ok, DialStatus::Ok) if v.nonce_seen => Status::Ok,
                        (ResponseStatus::Ok, DialStatus::DialError) => Status::DialError,
                        _ => Status::DialRefused,
                    };
                    tracing::info!(peer = %p.peer, ?status, ?dial_status, nonce_seen = v.nonce_seen, ?addr, "AutoNAT v2 answer");
                    self.answered(cx, p.peer, verdict, addr);
                    return;
                }
                _ => {
                    // Too expensive, malformed or out of turn: give up on this server.
                    let p = self.end_probe(cx, token, true).expect("invariant: present");
                    cx.violation(Violation {
                        peer: Some(p.peer),
                        protocol: V2_DIAL_REQUEST,
                        kind: ViolationKind::Protocol("autonat v2: bad or too costly answer".into()),
                    });
                    return;
                }
            }
        }
    }
}

impl Service for AutonatService {
    fn name(&self) -> &'static str {
        "autonat"
    }

    fn protocols(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.config.server {
            v.push(PROTOCOL_ID.into());
            if self.config.v2 {
                v.push(V2_DIAL_REQUEST.into());
            }
        }
        if self.config.client && self.config.v2 {
            v.push(V2_DIAL_BACK.into());
        }
        v
    }

    fn on_connection(&mut self, cx: &mut Cx<'_>, ev: ConnectionEvent<'_>) {
        match ev {
            ConnectionEvent::Identified { conn, peer, info } => {
                if let Some(o) = info.observed_addr.as_ref().filter(|o| !self.observed.contains(o)) {
                    if self.observed.len() >= MAX_OBSERVED {
                        self.observed.pop_front();
                    }
                    self.observed.push_back(o.clone());
                }
                let v2 = info.protocols.iter().any(|p| p == V2_DIAL_REQUEST);
                if v2 {
                    self.v2_servers.insert(peer.clone());
                } else {
                    self.v2_servers.remove(peer);
                }
                if v2 || info.protocols.iter().any(|p| p == PROTOCOL_ID) {
                    self.servers.entry(peer.clone()).or_default().insert(conn);
                    if self.config.client && self.next_probe.is_none() {
                        self.next_probe = Some(cx.now + self.config.boot_delay);
                    }
                } else {
                    self.servers.remove(peer);
                }
            }
            ConnectionEvent::Established { conn, peer, role: Role::Dialer, addr, .. } => {
                // A dial-back of ours got through: answer, and close that connection (it only proved a point).
                let addr = addr.clone();
                if self.dialback_done(cx, peer, &addr, true) {
                    cx.close_connection(conn, CloseReason::Local);
                } else if let Some(d) =
                    self.dialbacks_v2.iter_mut().find(|d| &d.peer == peer && d.back.is_none() && same_addr(&d.addr, &addr))
                {
                    // Our v2 dial-back connected: the nonce goes on a dial-back stream over it.
                    self.next_token += 1;
                    d.back = Some((conn, self.next_token, None));
                    cx.open_stream(conn, V2_DIAL_BACK, self.next_token);
                }
            }
            ConnectionEvent::Established { .. } => {}
            ConnectionEvent::DialFailed { peer: Some(peer), addr, .. } => {
                if !self.dialback_done(cx, peer, addr, false) {
                    if let Some(i) = self.dialbacks_v2.iter().position(|d| &d.peer == peer && d.back.is_none() && same_addr(&d.addr, addr))
                    {
                        self.finish_v2(cx, i, DialStatus::DialError, "dial failed");
                    }
                }
            }
            ConnectionEvent::DialFailed { peer: None, .. } => {}
            ConnectionEvent::Closed { conn, peer, .. } => {
                if let Some(conns) = self.servers.get_mut(peer) {
                    conns.remove(&conn);
                    if conns.is_empty() {
                        self.servers.remove(peer);
                    }
                }
                self.requests.retain(|(c, _), _| *c != conn);
                self.requests_v2.retain(|(c, _), _| *c != conn);
                self.dialback_in.retain(|(c, _), _| *c != conn);
                // A v2 dial-back whose connection closed before the nonce's answer came.
                while let Some(i) = self.dialbacks_v2.iter().position(|d| d.back.is_some_and(|(c, _, _)| c == conn)) {
                    self.dialbacks_v2[i].back = None;
                    self.finish_v2(cx, i, DialStatus::DialBackError, "connection closed");
                }
                let lost: Vec<u64> = self.probes.iter().filter(|(_, p)| p.conn == conn).map(|(t, _)| *t).collect();
                for t in lost {
                    self.probes.remove(&t);
                }
                self.dialbacks.retain(|d| d.conn != conn);
                self.dialbacks_v2.retain(|d| d.conn != conn);
            }
        }
    }

    fn on_inbound(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, protocol: &str) {
        let (server, client, v2) = (self.config.server, self.config.client, self.config.v2);
        match (cx.connection(conn), protocol) {
            (Some((peer, _)), PROTOCOL_ID) if server => {
                self.requests.insert((conn, stream), (peer, Vec::new()));
            }
            (Some((peer, _)), V2_DIAL_REQUEST) if server && v2 => {
                self.requests_v2.insert((conn, stream), V2Request { peer, buf: Vec::new(), stage: V2Stage::Request });
            }
            (Some(_), V2_DIAL_BACK) if client && v2 => {
                self.dialback_in.insert((conn, stream), Vec::new());
            }
            _ => cx.reset_stream(conn, stream),
        }
    }

    fn on_stream(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>) {
        if let Some((peer, buf)) = self.requests.get_mut(&(conn, stream)) {
            let peer = peer.clone();
            match ev {
                StreamEvent::Data(d) => {
                    buf.extend_from_slice(d);
                    match wire::decode(buf, &self.config.limits) {
                        Ok(None) => {}
                        Ok(Some((m, _))) => {
                            self.requests.remove(&(conn, stream));
                            self.serve(cx, conn, stream, peer, m);
                        }
                        Err(e) => {
                            self.requests.remove(&(conn, stream));
                            cx.reset_stream(conn, stream);
                            cx.violation(Violation { peer: Some(peer), protocol: PROTOCOL_ID, kind: ViolationKind::Malformed(e) });
                        }
                    }
                }
                StreamEvent::Eof | StreamEvent::Reset => {
                    self.requests.remove(&(conn, stream));
                    if matches!(ev, StreamEvent::Eof) {
                        cx.reset_stream(conn, stream);
                    }
                }
                StreamEvent::Opened { .. } | StreamEvent::Drained => {}
            }
            return;
        }
        if self.requests_v2.contains_key(&(conn, stream)) {
            return self.on_request_v2(cx, conn, stream, ev);
        }
        if self.dialback_in.contains_key(&(conn, stream)) {
            return self.on_dial_back_in(cx, conn, stream, ev);
        }
        if let Some(i) = self.dialbacks_v2.iter().position(|d| {
            d.back
                .is_some_and(|(c, t, s)| c == conn && (s == Some(stream) || matches!(ev, StreamEvent::Opened { token, .. } if token == t)))
        }) {
            match ev {
                StreamEvent::Opened { .. } => {
                    let d = &mut self.dialbacks_v2[i];
                    if let Some(b) = d.back.as_mut() {
                        b.2 = Some(stream);
                    }
                    let mut out = Vec::new();
                    wire_v2::encode_dial_back(d.nonce, &mut out);
                    cx.write(conn, stream, &out);
                }
                StreamEvent::Data(data) => {
                    let d = &mut self.dialbacks_v2[i];
                    d.buf.extend_from_slice(data);
                    match wire_v2::decode_dial_back_response(&d.buf) {
                        Ok(None) => {}
                        Ok(Some(_)) => self.finish_v2(cx, i, DialStatus::Ok, "answered"),
                        Err(_) => self.finish_v2(cx, i, DialStatus::DialBackError, "malformed answer"),
                    }
                }
                // The nonce went out on an open stream. rust-libp2p 0.57's client writes its answer and
                // drops the stream, whose reset can overtake the answer's bytes here; the client trusts
                // only the nonce it received, so counting this as delivered cannot fool it.
                StreamEvent::Eof | StreamEvent::Reset => self.finish_v2(cx, i, DialStatus::Ok, "stream ended after the nonce"),
                StreamEvent::Drained => {}
            }
            return;
        }
        if let StreamEvent::Opened { token, .. } = ev {
            let Some(p) = self.probes.get_mut(&token) else {
                cx.reset_stream(conn, stream);
                return;
            };
            p.stream = Some(stream);
            if p.v2.is_some() {
                let addrs = self.v2_candidates(cx);
                let p = self.probes.get_mut(&token).expect("invariant: found above");
                let v = p.v2.as_mut().expect("invariant: checked");
                v.addrs = addrs.clone();
                let nonce = v.nonce;
                let mut out = Vec::new();
                let addrs = addrs.into_iter().enumerate().map(|(i, a)| (i as u32, a)).collect();
                wire_v2::encode(&wire_v2::Msg::DialRequest { addrs, nonce }, &mut out);
                cx.write(conn, stream, &out);
                return;
            }
            let mut addrs = cx.local.listen_addrs.clone();
            for o in &self.observed {
                if !addrs.contains(o) && addrs.len() < self.config.limits.max_addrs {
                    addrs.push(o.clone());
                }
            }
            let mut out = Vec::new();
            wire::encode(&Msg::Dial { peer: cx.local.peer_id.clone(), addrs }, &mut out);
            cx.write(conn, stream, &out);
            return;
        }
        let Some((&token, _)) = self.probes.iter().find(|(_, p)| p.conn == conn && p.stream == Some(stream)) else { return };
        match ev {
            StreamEvent::Data(d) if self.probes.get(&token).is_some_and(|p| p.v2.is_some()) => {
                let p = self.probes.get_mut(&token).expect("invariant: found above");
                p.buf.extend_from_slice(d);
                self.on_probe_v2(cx, token);
            }
            StreamEvent::Data(d) => {
                let p = self.probes.get_mut(&token).expect("invariant: found above");
                p.buf.extend_from_slice(d);
                match wire::decode(&p.buf, &self.config.limits) {
                    Ok(None) => {}
                    Ok(Some((Msg::DialResponse { status, addr, .. }, _))) => {
                        let p = self.end_probe(cx, token, false).expect("invariant: present");
                        self.answered(cx, p.peer, status, addr);
                    }
                    Ok(Some((Msg::Dial { .. }, _))) | Err(_) => {
                        let p = self.end_probe(cx, token, true).expect("invariant: present");
                        cx.violation(Violation {
                            peer: Some(p.peer),
                            protocol: PROTOCOL_ID,
                            kind: ViolationKind::Protocol("bad autonat answer".into()),
                        });
                    }
                }
            }
            StreamEvent::Eof | StreamEvent::Reset => {
                self.end_probe(cx, token, matches!(ev, StreamEvent::Eof));
            }
            StreamEvent::Opened { .. } | StreamEvent::Drained => {}
        }
    }

    fn on_open_failed(&mut self, cx: &mut Cx<'_>, _conn: ConnId, token: u64, _reason: &OpenError) {
        self.probes.remove(&token);
        if let Some(i) = self.dialbacks_v2.iter().position(|d| d.back.is_some_and(|(_, t, _)| t == token)) {
            self.finish_v2(cx, i, DialStatus::DialBackError, "stream refused");
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let probes = self.probes.values().map(|p| p.deadline).min();
        let dials = self.dialbacks.iter().map(|d| d.deadline).min();
        let dials_v2 = self.dialbacks_v2.iter().map(|d| d.deadline).min();
        let next = self.next_probe.filter(|_| self.config.client && !self.servers.is_empty());
        [probes, dials, dials_v2, next].into_iter().flatten().min()
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let late: Vec<u64> = self.probes.iter().filter(|(_, p)| p.deadline <= now).map(|(t, _)| *t).collect();
        for t in late {
            self.end_probe(cx, t, true);
        }
        let late: Vec<(PeerId, Multiaddr)> =
            self.dialbacks.iter().filter(|d| d.deadline <= now).map(|d| (d.peer.clone(), d.addr.clone())).collect();
        for (p, a) in late {
            self.dialback_done(cx, &p, &a, false);
        }
        while let Some(i) = self.dialbacks_v2.iter().position(|d| d.deadline <= now) {
            let status = if self.dialbacks_v2[i].back.is_some() { DialStatus::DialBackError } else { DialStatus::DialError };
            self.finish_v2(cx, i, status, "timed out");
        }
        if self.config.client && self.next_probe.is_some_and(|t| t <= now) && !self.servers.is_empty() {
            self.probe(cx);
        }
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kad::{self, service::KadService};
    use crate::service::Event as NodeEvent;
    use crate::testing::Net;
    use crate::time::Duration;

    fn config(server: bool, v2: bool) -> Config {
        Config {
            server,
            v2,
            allow_private: true,
            boot_delay: Duration::from_secs(1),
            retry_interval: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(20),
            ..Config::default()
        }
    }

    fn verdicts(events: &[NodeEvent]) -> Vec<Reachability> {
        events
            .iter()
            .filter_map(|e| match e {
                NodeEvent::Autonat(Event::Reachability { reachability, .. }) => Some(*reachability),
                _ => None,
            })
            .collect()
    }

    /// Nodes 0..4 serve AutoNAT (v1 and, with `v2`, v2); node 4 is reachable, node 5 is not (inbound
    /// refused). Both run the DHT in auto mode.
    fn net(v2: bool) -> Net {
        let mut p = Net::new(6, |_, _| {});
        for i in 0..6 {
            let me = p.peer_id(i);
            p.nodes[i].add_service(Instant(0), Box::new(AutonatService::new(config(i < 4, v2))));
            let kc = kad::Config { mode: kad::Mode::Auto, ..kad::Config::default() };
            p.nodes[i].add_service(Instant(0), Box::new(KadService::new(me, kc)));
        }
        p.undialable.insert(5);
        for c in [4, 5] {
            for s in 0..4 {
                let a = p.addr(s);
                p.dial(c, a);
            }
        }
        p
    }

    fn served(events: &[NodeEvent]) -> usize {
        events.iter().filter(|e| matches!(e, NodeEvent::Autonat(Event::Served { .. } | Event::ServedV2 { .. }))).count()
    }

    #[test]
    fn autonat_finds_the_reachable_node_public_and_the_other_private_and_the_dht_follows() {
        for v2 in [false, true] {
            finds_public_and_private(v2);
        }
    }

    fn finds_public_and_private(v2: bool) {
        let mut p = net(v2);
        p.run_for(Duration::from_secs(30));
        assert_eq!(verdicts(&p.events[4]), vec![Reachability::Public]);
        assert_eq!(verdicts(&p.events[5]), vec![Reachability::Private]);
        // The DHT in auto mode serves on the public node only, and says so to its peers (identify push).
        assert!(p.nodes[4].node().protocols().iter().any(|x| x == kad::PROTOCOL_ID));
        assert!(!p.nodes[5].node().protocols().iter().any(|x| x == kad::PROTOCOL_ID));
        let b4 = p.peer_id(4);
        assert!(p.nodes[0].node().peerstore().get(&b4).unwrap().protocols.iter().any(|x| x == kad::PROTOCOL_ID));
        // Servers answered from the IP they saw, and rate limits were not hit.
        let served = served(&p.events[0]);
        assert!(served >= 2, "{served}");
        // Over v2, the servers' answers say the dial-back brought the nonce.
        let ok_v2 = p.events[0].iter().any(|e| matches!(e, NodeEvent::Autonat(Event::ServedV2 { dial: DialStatus::Ok, .. })));
        assert_eq!(ok_v2, v2);
    }

    #[test]
    fn autonat_one_contrary_answer_does_not_flip_the_verdict_three_do() {
        for v2 in [false, true] {
            one_contrary_answer(v2);
        }
    }

    fn one_contrary_answer(v2: bool) {
        let mut p = net(v2);
        p.run_for(Duration::from_secs(30));
        assert_eq!(verdicts(&p.events[4]), vec![Reachability::Public]);
        // Node 4 becomes unreachable: the next re-check fails, but one failure does not flip it.
        p.undialable.insert(4);
        let first_fail = loop {
            p.run_for(Duration::from_secs(1));
            let fails = p.events[4]
                .iter()
                .filter(|e| matches!(e, NodeEvent::Autonat(Event::Answer { status: wire::Status::DialError, .. })))
                .count();
            if fails >= 1 {
                break fails;
            }
            assert!(p.now < Instant(0) + Duration::from_secs(120), "no re-check (v2: {v2})");
        };
        assert_eq!(first_fail, 1);
        assert_eq!(verdicts(&p.events[4]), vec![Reachability::Public], "one failure keeps the verdict");
        // Three consecutive failures from distinct peers do.
        p.run_for(Duration::from_secs(90));
        assert_eq!(verdicts(&p.events[4]), vec![Reachability::Public, Reachability::Private]);
        assert!(!p.nodes[4].node().protocols().iter().any(|x| x == kad::PROTOCOL_ID), "the DHT stopped serving");
    }

    #[test]
    fn autonat_server_refuses_private_observed_addresses_by_default_and_bad_requests() {
        let mut p = Net::new(2, |_, _| {});
        p.nodes[0].add_service(Instant(0), Box::new(AutonatService::new(Config { server: true, ..Config::default() })));
        p.nodes[1]
            .add_service(Instant(0), Box::new(AutonatService::new(Config { boot_delay: Duration::from_secs(1), ..Config::default() })));
        let a = p.addr(0);
        p.dial(1, a);
        p.run_for(Duration::from_secs(5));
        let served: Vec<_> = p.events[0]
            .iter()
            .filter_map(|e| match e {
                NodeEvent::Autonat(Event::Served { status, .. }) => Some(format!("v1 {status:?}")),
                NodeEvent::Autonat(Event::ServedV2 { status, .. }) => Some(format!("v2 {status:?}")),
                _ => None,
            })
            .collect();
        // Over v2 the client does not even send its 10.x addresses (the spec: no private addresses).
        assert_eq!(served, vec!["v2 DialRefused"], "10.x is private: refused unless allow_private");
        assert!(verdicts(&p.events[1]).is_empty(), "a refusal says nothing");
    }

    /// A node behind a NAT with a forwarded port: its listen address is private (not asked about), the
    /// address peers see it at is public and forwarded. v2 confirms that address, and identify then
    /// announces it beside the listen address.
    #[test]
    fn autonat_v2_confirms_a_forwarded_address_and_identify_announces_it() {
        let mut p = Net::new(4, |_, _| {});
        for i in 0..4 {
            let c = if i < 3 { config(true, true) } else { Config { allow_private: false, ..config(false, true) } };
            p.nodes[i].add_service(Instant(0), Box::new(AutonatService::new(c)));
        }
        let public: Multiaddr = "/ip4/5.6.7.8/tcp/4001".parse().unwrap();
        p.observed_as.insert(3, public.clone());
        for s in 0..3 {
            let a = p.addr(s);
            p.dial(3, a);
        }
        p.run_for(Duration::from_secs(30));
        assert_eq!(verdicts(&p.events[3]), vec![Reachability::Public]);
        assert_eq!(p.nodes[3].node().local().external_addrs, vec![public.clone()]);
        let me = p.peer_id(3);
        let seen = &p.nodes[0].node().peerstore().get(&me).unwrap().addrs;
        assert!(seen.contains(&public), "identify (push) announced the confirmed address: {seen:?}");
    }

    /// v2 with another IP than the one the server sees: the server asks for dial data first, the client
    /// pays, the dial-back carries the nonce. A server asking more than the client pays gets no answer
    /// counted (the client resets), and a client asking to dial a third party's IP cannot make the
    /// server dial without paying.
    #[test]
    fn autonat_v2_asks_for_dial_data_before_dialing_another_ip_and_the_client_pays_up_to_its_limit() {
        for (asked, paid) in [(30_000, true), (200_000, false)] {
            let mut p = Net::new(5, |_, _| {});
            for i in 0..5 {
                let mut c = config(i < 3, true);
                c.dial_data_bytes = asked;
                p.nodes[i].add_service(Instant(0), Box::new(AutonatService::new(c)));
            }
            // Node 4 is seen at another IP than the one it asks to be dialed at: its listen address.
            p.observed_as.insert(4, "/ip4/10.77.0.1/tcp/4001".parse().unwrap());
            for s in 0..3 {
                let a = p.addr(s);
                p.dial(4, a);
            }
            p.run_for(Duration::from_secs(30));
            let dial_data_asked = p.events[0]
                .iter()
                .chain(&p.events[1])
                .chain(&p.events[2])
                .filter(|e| matches!(e, NodeEvent::Autonat(Event::ServedV2 { dial: DialStatus::Ok, .. })))
                .count();
            if paid {
                assert!(dial_data_asked >= 3, "paid and dialed back: {dial_data_asked}");
                assert_eq!(verdicts(&p.events[4]), vec![Reachability::Public]);
            } else {
                assert_eq!(dial_data_asked, 0, "200 kB is more than the client pays: no dial");
                assert!(verdicts(&p.events[4]).is_empty());
            }
        }
    }
}
