//! Gossipsub as a node service: streams in, [`Router`] calls, frames out.
//!
//! Per peer: one long-lived outbound stream we send on, opened once identify has told us the peer's
//! protocols (the best one both speak, so no round trip is spent on refusals), or at once with the
//! protocol of the peer's own stream if that comes first; and the peer's inbound streams, which we read
//! RPCs from. A peer is in the router while its outbound stream is open or opening; it leaves with its
//! last connection or when that stream fails. Sending is paced by the stream: at most one batch
//! ([`SEND_BATCH`]) is written at a time, the next when it has drained, so the router's per-peer
//! queues (with their priorities and caps) stay where the backlog is.
//!
//! A malformed or oversized RPC resets that inbound stream, with a logged, reported violation.

use super::router::{PublishError, PxOutcome, Router};
use super::{wire, Acceptance, Config, MessageId, PeerKind, PROTOCOLS};
use crate::identity::{Keypair, PeerId};
use crate::service::{ConnId, ConnectionEvent, Cx, Event as NodeEvent, Service, StreamEvent};
use crate::stream::{OpenError, Role, StreamId, Violation, ViolationKind};
use crate::time::{Duration, Instant};
use std::any::Any;
use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

/// Bytes written to one peer's stream at a time.
pub const SEND_BATCH: usize = 64 * 1024;

const NAME: &str = "gossipsub";

struct Outbound {
    conn: ConnId,
    kind: PeerKind,
    token: u64,
    stream: Option<StreamId>,
    /// A batch is on its way (`Drained` ends it).
    busy: bool,
    /// The batch on its way is a large message, holding one of the node's `Config::stagger` turns
    /// until `Drained` or this time.
    large_until: Option<Instant>,
}

pub struct GossipsubService {
    router: Router,
    /// Each connected peer's connections, with who dialed.
    conns: BTreeMap<PeerId, Vec<(ConnId, Role)>>,
    outbound: BTreeMap<PeerId, Outbound>,
    inbound: BTreeMap<(ConnId, StreamId), (PeerId, Vec<u8>)>,
    next_token: u64,
    /// The peer that got the last large-message turn (the next turn starts after it).
    last_large: Option<PeerId>,
}

impl GossipsubService {
    pub fn new(cfg: Config, keypair: &Keypair, now: Instant) -> Self {
        GossipsubService {
            router: Router::new(cfg, keypair.peer_id(), Some(keypair.clone()), now),
            conns: BTreeMap::new(),
            outbound: BTreeMap::new(),
            inbound: BTreeMap::new(),
            next_token: 1,
            last_large: None,
        }
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn subscribe(&mut self, cx: &mut Cx<'_>, topic: &str) -> bool {
        let r = self.router.subscribe(cx.rng, cx.now, topic);
        self.pump(cx);
        r
    }

    pub fn unsubscribe(&mut self, cx: &mut Cx<'_>, topic: &str) -> bool {
        let r = self.router.unsubscribe(cx.now, topic);
        self.pump(cx);
        r
    }

    pub fn publish(&mut self, cx: &mut Cx<'_>, topic: &str, data: Vec<u8>) -> Result<MessageId, PublishError> {
        let r = self.router.publish(cx.rng, cx.now, topic, data);
        self.pump(cx);
        r
    }

    /// Simulations only: switches this node's behaviour (see `gossipsub::Adversary`).
    pub fn set_adversary(&mut self, a: super::Adversary) {
        self.router.set_adversary(a);
    }

    /// P5: the application's score for `peer`.
    pub fn set_app_score(&mut self, peer: &PeerId, score: f64) {
        self.router.set_app_score(peer, score);
    }

    /// Marks `topic` validated: its messages wait for [`GossipsubService::report_validation`].
    pub fn set_validated(&mut self, topic: &str, on: bool) {
        self.router.set_validated(topic, on);
    }

    /// The application's verdict on a message it got as `Event::Validate`.
    pub fn report_validation(&mut self, cx: &mut Cx<'_>, id: &MessageId, verdict: Acceptance) -> bool {
        let r = self.router.report_validation(cx.now, id, verdict);
        self.pump(cx);
        r
    }

    /// Opens our stream to `peer` on `conn` with `kind`'s protocol and adds the peer to the router.
    fn open(&mut self, cx: &mut Cx<'_>, peer: &PeerId, conn: ConnId, kind: PeerKind) {
        let token = self.next_token;
        self.next_token += 1;
        cx.open_stream(conn, kind.protocol(), token);
        self.outbound.insert(peer.clone(), Outbound { conn, kind, token, stream: None, busy: false, large_until: None });
        let dialer = self.conns.get(peer).and_then(|v| v.iter().find(|(c, _)| *c == conn)).is_some_and(|(_, r)| *r == Role::Dialer);
        let ip = cx.connection(conn).and_then(|(_, a)| a.ip());
        self.router.add_peer(peer.clone(), kind, dialer, ip, cx.now);
    }

    /// The peer's stream failed or its connection went: reopen on another connection, or let it go.
    fn lost(&mut self, cx: &mut Cx<'_>, peer: &PeerId) {
        let Some(o) = self.outbound.remove(peer) else { return };
        self.router.remove_peer(peer, cx.now);
        if let Some(&(conn, _)) = self.conns.get(peer).and_then(|v| v.iter().find(|(c, _)| *c != o.conn)) {
            self.open(cx, peer, conn, o.kind);
        }
    }

    /// Writes what the router queued to every peer whose stream is free (large messages to at most
    /// `Config::stagger` peers at a time, taking turns from where the last one went); then hands out
    /// events.
    fn pump(&mut self, cx: &mut Cx<'_>) {
        let (stagger, hold) = (self.router.config().stagger, self.router.config().stagger_hold);
        let now = cx.now;
        let mut turns = if stagger == 0 {
            usize::MAX
        } else {
            let taken = self.outbound.values().filter(|o| o.large_until.is_some_and(|t| t > now)).count();
            stagger.saturating_sub(taken)
        };
        // Nearest first: free turns go to the nearest free peers a large message waits for.
        if self.router.config().stagger_nearest && turns != usize::MAX {
            while turns > 0 {
                let router = &self.router;
                let next = self
                    .outbound
                    .iter()
                    .filter(|(p, o)| o.stream.is_some() && !o.busy && router.waits_large(p))
                    .min_by_key(|(p, _)| router.rtt(p).unwrap_or(Duration::MAX))
                    .map(|(p, _)| p.clone());
                let Some(peer) = next else { break };
                let o = self.outbound.get_mut(&peer).expect("listed");
                Self::serve(&mut self.router, cx, &peer, o, &mut turns, now + hold);
                if !o.busy {
                    break; // nothing was written (no stream after all): do not pick it again
                }
            }
        }
        // Peers after the last one served first, then the rest (two passes, no allocation).
        let after = self.last_large.take();
        let tail = match &after {
            Some(a) => self.outbound.range_mut::<PeerId, _>((Excluded(a), Unbounded)),
            None => self.outbound.range_mut::<PeerId, _>(..),
        };
        let mut last = after.clone();
        for (peer, o) in tail {
            if Self::serve(&mut self.router, cx, peer, o, &mut turns, now + hold) {
                last = Some(peer.clone());
            }
        }
        if let Some(a) = &after {
            for (peer, o) in self.outbound.range_mut::<PeerId, _>((Unbounded, Included(a))) {
                if Self::serve(&mut self.router, cx, peer, o, &mut turns, now + hold) {
                    last = Some(peer.clone());
                }
            }
        }
        self.last_large = last;
        while let Some(ev) = self.router.poll_event() {
            cx.emit(NodeEvent::Gossipsub(ev));
        }
        self.connect_px(cx);
    }

    /// Dials the peers peer exchange offered: at the first address of a signed peer record that
    /// verifies for that peer, or else the first the peerstore knows. Dials go through the node's
    /// pending-dial limit like any other.
    fn connect_px(&mut self, cx: &mut Cx<'_>) {
        for (peer, record) in self.router.take_px() {
            let addrs = match record {
                Some(env) => match crate::record::PeerRecord::open(&env, &crate::record::Limits::default()) {
                    Ok((rec, _)) if rec.peer == peer => rec.addrs,
                    _ => {
                        tracing::debug!(%peer, "gossipsub: a peer-exchange record did not verify for its peer");
                        self.router.px_outcome(PxOutcome::BadRecord);
                        continue;
                    }
                },
                None => cx.addrs(&peer),
            };
            match addrs.into_iter().next() {
                Some(a) => {
                    cx.dial(a, Some(peer));
                    self.router.px_outcome(PxOutcome::Dialed);
                }
                None => self.router.px_outcome(PxOutcome::NoAddress),
            }
        }
    }

    /// Writes one batch to `peer` if its stream is free; whether the batch took a large-message turn.
    fn serve(router: &mut Router, cx: &mut Cx<'_>, peer: &PeerId, o: &mut Outbound, turns: &mut usize, until: Instant) -> bool {
        let Some(s) = o.stream else { return false };
        if o.busy {
            return false;
        }
        let Some((batch, large)) = router.take_frames(peer, SEND_BATCH, *turns > 0) else { return false };
        o.busy = true;
        if large {
            *turns -= 1;
            o.large_until = Some(until);
        }
        cx.write_notify(o.conn, s, batch);
        large
    }

    fn read(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, data: &[u8]) {
        let limits = &self.router.config().limits;
        let Some((peer, buf)) = self.inbound.get_mut(&(conn, stream)) else { return };
        let peer = peer.clone();
        buf.extend_from_slice(data);
        let mut at = 0;
        let mut failure = None;
        let mut rpcs = Vec::new();
        loop {
            match wire::decode(&buf[at..], limits) {
                Ok(Some((rpc, used))) => {
                    at += used;
                    rpcs.push(rpc);
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        buf.drain(..at);
        for rpc in rpcs {
            self.router.handle_rpc(cx.rng, cx.now, &peer, rpc);
        }
        if let Some(e) = failure {
            self.inbound.remove(&(conn, stream));
            cx.reset_stream(conn, stream);
            self.router.penalize(&peer);
            cx.violation(Violation { peer: Some(peer), protocol: NAME, kind: ViolationKind::Malformed(e) });
        }
        self.pump(cx);
    }
}

impl Service for GossipsubService {
    fn name(&self) -> &'static str {
        NAME
    }

    fn protocols(&self) -> Vec<String> {
        PROTOCOLS.iter().map(|p| p.to_string()).collect()
    }

    fn on_connection(&mut self, cx: &mut Cx<'_>, ev: ConnectionEvent<'_>) {
        match ev {
            ConnectionEvent::Established { conn, peer, role, .. } => {
                self.conns.entry(peer.clone()).or_default().push((conn, role));
            }
            ConnectionEvent::Identified { conn, peer, info } => {
                if !self.outbound.contains_key(peer) {
                    let best = PROTOCOLS.iter().find(|p| info.protocols.iter().any(|q| q == *p)).and_then(|p| PeerKind::from_protocol(p));
                    if let Some(kind) = best {
                        self.open(cx, peer, conn, kind);
                    }
                }
                // Its record (the latest identify's) goes with its id when we offer it by peer exchange.
                self.router.set_record(peer, info.signed_peer_record.clone());
                self.pump(cx);
            }
            ConnectionEvent::Closed { conn, peer, .. } => {
                if let Some(v) = self.conns.get_mut(peer) {
                    v.retain(|(c, _)| *c != conn);
                    if v.is_empty() {
                        self.conns.remove(peer);
                    }
                }
                self.inbound.retain(|(c, _), _| *c != conn);
                if self.outbound.get(peer).is_some_and(|o| o.conn == conn) {
                    self.lost(cx, peer);
                }
                self.pump(cx);
            }
            ConnectionEvent::DialFailed { .. } => {}
        }
    }

    fn on_inbound(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, protocol: &str) {
        let Some((peer, _)) = cx.connection(conn) else { return };
        self.inbound.insert((conn, stream), (peer.clone(), Vec::new()));
        if !self.outbound.contains_key(&peer) {
            if let Some(kind) = PeerKind::from_protocol(protocol) {
                self.open(cx, &peer, conn, kind);
                self.pump(cx);
            }
        }
    }

    fn on_stream(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>) {
        if self.inbound.contains_key(&(conn, stream)) {
            match ev {
                StreamEvent::Data(d) => self.read(cx, conn, stream, d),
                StreamEvent::Eof => {
                    self.inbound.remove(&(conn, stream));
                    cx.finish(conn, stream);
                }
                StreamEvent::Reset => {
                    self.inbound.remove(&(conn, stream));
                }
                _ => {}
            }
            return;
        }
        let Some(peer) =
            self.outbound.iter().find(|(_, o)| o.conn == conn && (o.stream == Some(stream) || o.stream.is_none())).map(|(p, _)| p.clone())
        else {
            return;
        };
        match ev {
            StreamEvent::Opened { token, .. } => {
                let o = self.outbound.get_mut(&peer).expect("found above");
                if o.token == token && o.stream.is_none() {
                    o.stream = Some(stream);
                }
            }
            StreamEvent::Drained => {
                if let Some(o) = self.outbound.get_mut(&peer) {
                    o.busy = false;
                    o.large_until = None;
                }
            }
            // Nothing is read from our own stream; the peer closing its side of it is normal.
            StreamEvent::Data(_) | StreamEvent::Eof => {}
            StreamEvent::Reset => self.lost(cx, &peer),
        }
        self.pump(cx);
    }

    fn on_open_failed(&mut self, cx: &mut Cx<'_>, conn: ConnId, token: u64, reason: &OpenError) {
        let Some(peer) = self.outbound.iter().find(|(_, o)| o.conn == conn && o.token == token).map(|(p, _)| p.clone()) else { return };
        tracing::debug!(%peer, %reason, "gossipsub stream refused");
        self.outbound.remove(&peer);
        self.router.remove_peer(&peer, cx.now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // A large-message turn that runs out lets the next peer go.
        let turn = self.outbound.values().filter_map(|o| o.large_until).min();
        Some(turn.map_or(self.router.poll_timeout(), |t| t.min(self.router.poll_timeout())))
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        for o in self.outbound.values_mut() {
            if o.large_until.is_some_and(|t| t <= now) {
                o.large_until = None;
            }
        }
        if self.router.poll_timeout() <= now {
            // Round trips for the latency-aware mesh (`Config::d_near`), fresh for the heartbeat.
            if self.router.config().d_near > 0 {
                for peer in self.conns.keys() {
                    self.router.set_rtt(peer, cx.latency(peer));
                }
            }
            self.router.on_timeout(cx.rng, now);
        }
        self.pump(cx);
    }

    fn read_chunk(&self) -> usize {
        64 * 1024
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}
