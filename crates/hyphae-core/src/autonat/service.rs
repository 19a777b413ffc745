//! AutoNAT v1 client and server as one node service.

use super::wire::{self, Msg, Status};
use super::{Config, Event, Reachability, PROTOCOL_ID};
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
    servers: BTreeMap<PeerId, ConnId>,
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
    // server
    requests: BTreeMap<(ConnId, StreamId), (PeerId, Vec<u8>)>,
    dialbacks: Vec<DialBack>,
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
            requests: BTreeMap::new(),
            dialbacks: Vec::new(),
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
        let mut pool: Vec<(PeerId, ConnId)> =
            self.servers.iter().filter(|(p, _)| !self.asked.contains_key(*p) && !busy.contains(p)).map(|(p, c)| (p.clone(), *c)).collect();
        let want = if self.reach == Reachability::Unknown { self.config.confirmations } else { 1 };
        let want = want.saturating_sub(self.probes.len());
        for _ in 0..want {
            if pool.is_empty() {
                break;
            }
            let (peer, conn) = pool.swap_remove((cx.rng.next_u64() % pool.len() as u64) as usize);
            self.next_token += 1;
            cx.open_stream(conn, PROTOCOL_ID, self.next_token);
            self.asked.insert(peer.clone(), now);
            self.probes
                .insert(self.next_token, Probe { peer, conn, stream: None, deadline: now + self.config.request_timeout, buf: Vec::new() });
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
        let same = |a: &Multiaddr, b: &Multiaddr| {
            a.without_peer_id() == b.without_peer_id() || (a.socket_addr().is_some() && a.socket_addr() == b.socket_addr())
        };
        let Some(i) = self.dialbacks.iter().position(|d| &d.peer == peer && same(&d.addr, addr)) else { return false };
        let d = self.dialbacks.remove(i);
        if ok {
            Self::respond(cx, d.conn, d.stream, &d.peer, Status::Ok, "", Some(d.addr));
        } else {
            Self::respond(cx, d.conn, d.stream, &d.peer, Status::DialError, "dial failed", None);
        }
        true
    }
}

impl Service for AutonatService {
    fn name(&self) -> &'static str {
        "autonat"
    }

    fn protocols(&self) -> Vec<String> {
        if self.config.server {
            vec![PROTOCOL_ID.into()]
        } else {
            Vec::new()
        }
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
                if info.protocols.iter().any(|p| p == PROTOCOL_ID) {
                    self.servers.insert(peer.clone(), conn);
                    if self.config.client && self.next_probe.is_none() {
                        self.next_probe = Some(cx.now + self.config.boot_delay);
                    }
                } else {
                    self.servers.remove(peer);
                }
            }
            ConnectionEvent::Established { conn, peer, role: Role::Dialer, addr } => {
                // A dial-back of ours got through: answer, and close that connection (it only proved a point).
                let addr = addr.clone();
                if self.dialback_done(cx, peer, &addr, true) {
                    cx.close_connection(conn, CloseReason::Local);
                }
            }
            ConnectionEvent::Established { .. } => {}
            ConnectionEvent::DialFailed { peer: Some(peer), addr, .. } => {
                self.dialback_done(cx, peer, addr, false);
            }
            ConnectionEvent::DialFailed { peer: None, .. } => {}
            ConnectionEvent::Closed { conn, peer, .. } => {
                if self.servers.get(peer) == Some(&conn) {
                    self.servers.remove(peer);
                }
                self.requests.retain(|(c, _), _| *c != conn);
                let lost: Vec<u64> = self.probes.iter().filter(|(_, p)| p.conn == conn).map(|(t, _)| *t).collect();
                for t in lost {
                    self.probes.remove(&t);
                }
                self.dialbacks.retain(|d| d.conn != conn);
            }
        }
    }

    fn on_inbound(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, _protocol: &str) {
        match cx.connection(conn) {
            Some((peer, _)) if self.config.server => {
                self.requests.insert((conn, stream), (peer, Vec::new()));
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
        if let StreamEvent::Opened { token, .. } = ev {
            let Some(p) = self.probes.get_mut(&token) else {
                cx.reset_stream(conn, stream);
                return;
            };
            p.stream = Some(stream);
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

    fn on_open_failed(&mut self, _cx: &mut Cx<'_>, _conn: ConnId, token: u64, _reason: &OpenError) {
        self.probes.remove(&token);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let probes = self.probes.values().map(|p| p.deadline).min();
        let dials = self.dialbacks.iter().map(|d| d.deadline).min();
        let next = self.next_probe.filter(|_| self.config.client && !self.servers.is_empty());
        [probes, dials, next].into_iter().flatten().min()
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

    fn config(server: bool) -> Config {
        Config {
            server,
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

    /// Nodes 0..4 serve AutoNAT; node 4 is reachable, node 5 is not (inbound refused). Both run the DHT
    /// in auto mode.
    fn net() -> Net {
        let mut p = Net::new(6, |_, _| {});
        for i in 0..6 {
            let me = p.peer_id(i);
            p.nodes[i].add_service(Instant(0), Box::new(AutonatService::new(config(i < 4))));
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

    #[test]
    fn autonat_finds_the_reachable_node_public_and_the_other_private_and_the_dht_follows() {
        let mut p = net();
        p.run_for(Duration::from_secs(30));
        assert_eq!(verdicts(&p.events[4]), vec![Reachability::Public]);
        assert_eq!(verdicts(&p.events[5]), vec![Reachability::Private]);
        // The DHT in auto mode serves on the public node only, and says so to its peers (identify push).
        assert!(p.nodes[4].node().protocols().iter().any(|x| x == kad::PROTOCOL_ID));
        assert!(!p.nodes[5].node().protocols().iter().any(|x| x == kad::PROTOCOL_ID));
        let b4 = p.peer_id(4);
        assert!(p.nodes[0].node().peerstore().get(&b4).unwrap().protocols.iter().any(|x| x == kad::PROTOCOL_ID));
        // Servers answered from the IP they saw, and rate limits were not hit.
        let served = p.events[0].iter().filter(|e| matches!(e, NodeEvent::Autonat(Event::Served { .. }))).count();
        assert!(served >= 2, "{served}");
    }

    #[test]
    fn autonat_one_contrary_answer_does_not_flip_the_verdict_three_do() {
        let mut p = net();
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
            assert!(p.now < Instant(0) + Duration::from_secs(120), "no re-check");
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
            .filter_map(|e| if let NodeEvent::Autonat(Event::Served { status, .. }) = e { Some(*status) } else { None })
            .collect();
        assert_eq!(served, vec![wire::Status::DialRefused], "10.x is private: refused unless allow_private");
        assert!(verdicts(&p.events[1]).is_empty(), "a refusal says nothing");
    }
}
