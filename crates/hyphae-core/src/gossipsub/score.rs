//! Peer scoring, gossipsub v1.1 (libp2p/specs pubsub/gossipsub/gossipsub-v1.1.md, "Peer Scoring"):
//!
//! ```text
//! score(p) = min(Σ_t weight_t · (w1·P1 + w2·P2 + w3·P3 + w3b·P3b + w4·P4), topic_cap) + w5·P5 + w6·P6 + w7·P7
//! ```
//! P1 time in mesh, P2 first message deliveries, P3 mesh message delivery deficit (squared), P3b mesh
//! failure penalty, P4 invalid messages (squared), P5 the application's score, P6 IP colocation (peers
//! beyond a threshold on one IP, squared), P7 behaviour penalty (beyond a threshold, squared: GRAFTs
//! during a backoff, broken IWANT promises, malformed RPCs). Counters decay every `decay_interval`.
//! Time is passed in; the router asks for scores and reports what peers did.

use super::wire::MessageId;
use crate::identity::PeerId;
use crate::time::{Duration, Instant};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

/// Per-topic parameters (go's `TopicScoreParams`). Weights of penalties are negative.
#[derive(Debug, Clone)]
pub struct TopicParams {
    pub topic_weight: f64,
    /// P1: mesh time counted in quanta, up to a cap.
    pub time_in_mesh_weight: f64,
    pub time_in_mesh_quantum: Duration,
    pub time_in_mesh_cap: f64,
    /// P2: first deliveries of valid messages.
    pub first_message_deliveries_weight: f64,
    pub first_message_deliveries_decay: f64,
    pub first_message_deliveries_cap: f64,
    /// P3: once a peer has been in the mesh `activation`, fewer than `threshold` (decaying) deliveries
    /// cost `(threshold − deliveries)²`. A delivery counts if first, or within `window` of the first.
    /// Weight 0 (the default) turns it off: it needs the topic's expected message rate.
    pub mesh_message_deliveries_weight: f64,
    pub mesh_message_deliveries_decay: f64,
    pub mesh_message_deliveries_threshold: f64,
    pub mesh_message_deliveries_cap: f64,
    pub mesh_message_deliveries_activation: Duration,
    pub mesh_message_deliveries_window: Duration,
    /// P3b: the deficit a peer had when it left the mesh, kept (decaying).
    pub mesh_failure_penalty_weight: f64,
    pub mesh_failure_penalty_decay: f64,
    /// P4: messages that failed validation (signature, the application's `Reject`).
    pub invalid_message_deliveries_weight: f64,
    pub invalid_message_deliveries_decay: f64,
}

impl Default for TopicParams {
    /// A generic topic: a little credit for mesh time and first deliveries, a heavy penalty for invalid
    /// messages, no delivery-rate expectation (P3/P3b off).
    fn default() -> Self {
        TopicParams {
            topic_weight: 1.0,
            time_in_mesh_weight: 0.01,
            time_in_mesh_quantum: Duration::from_secs(1),
            time_in_mesh_cap: 3600.0,
            first_message_deliveries_weight: 1.0,
            first_message_deliveries_decay: 0.5,
            first_message_deliveries_cap: 50.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_message_deliveries_decay: 0.5,
            mesh_message_deliveries_threshold: 1.0,
            mesh_message_deliveries_cap: 20.0,
            mesh_message_deliveries_activation: Duration::from_secs(5),
            mesh_message_deliveries_window: Duration::from_millis(10),
            mesh_failure_penalty_weight: 0.0,
            mesh_failure_penalty_decay: 0.5,
            invalid_message_deliveries_weight: -100.0,
            // Halves in ~6.6 s: a spammer that sent 5 invalid messages stays graylisted ~16 s.
            invalid_message_deliveries_decay: 0.9,
        }
    }
}

impl TopicParams {
    /// This topic's mesh peers should each deliver at least `threshold` messages (first, or within
    /// 2 s of the first) per ~10 s (counters decay by 0.9 a second): P3 and P3b on, weight −1, active
    /// after 10 s in the mesh. A peer that sits in the mesh and forwards nothing goes negative and is
    /// pruned. Set `threshold` well below what an honest peer delivers at the topic's message rate.
    pub fn with_mesh_deliveries(threshold: f64) -> TopicParams {
        TopicParams {
            mesh_message_deliveries_weight: -1.0,
            mesh_message_deliveries_decay: 0.9,
            mesh_message_deliveries_threshold: threshold,
            mesh_message_deliveries_cap: 100.0,
            mesh_message_deliveries_activation: Duration::from_secs(10),
            // Ethereum's clients use 2 s: across regions a mesh peer's copy often comes 100 ms or more
            // after the first, and a short window prunes honest peers of a sparse mesh.
            mesh_message_deliveries_window: Duration::from_secs(2),
            mesh_failure_penalty_weight: -1.0,
            mesh_failure_penalty_decay: 0.9,
            ..TopicParams::default()
        }
    }
}

/// Peer-wide parameters (go's `PeerScoreParams`).
#[derive(Debug, Clone)]
pub struct Params {
    /// Topics with their own parameters; others use `default_topic` (if set) or count nothing.
    pub topics: BTreeMap<String, TopicParams>,
    pub default_topic: Option<TopicParams>,
    /// The topic part of a score is capped here (positive side only). Default 100.
    pub topic_score_cap: f64,
    /// P5.
    pub app_specific_weight: f64,
    /// P6: more than `threshold` peers on one IP cost `(count − threshold)²` each. Loopback and private
    /// addresses are exempt unless `colocation_local` (tests on one machine need it off).
    pub ip_colocation_factor_weight: f64,
    pub ip_colocation_factor_threshold: f64,
    pub colocation_local: bool,
    /// P7.
    pub behaviour_penalty_weight: f64,
    pub behaviour_penalty_threshold: f64,
    pub behaviour_penalty_decay: f64,
    pub decay_interval: Duration,
    /// A decayed counter below this becomes 0.
    pub decay_to_zero: f64,
    /// A disconnected peer's counters are kept this long (a reconnect does not wash a bad score).
    pub retain_score: Duration,
    /// Peers remembered (connected or retained) at most; beyond, retained ones are forgotten first.
    pub max_peers: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            topics: BTreeMap::new(),
            default_topic: Some(TopicParams::default()),
            topic_score_cap: 100.0,
            app_specific_weight: 1.0,
            ip_colocation_factor_weight: -10.0,
            ip_colocation_factor_threshold: 5.0,
            colocation_local: false,
            behaviour_penalty_weight: -10.0,
            behaviour_penalty_threshold: 1.0,
            behaviour_penalty_decay: 0.99,
            decay_interval: Duration::from_secs(1),
            decay_to_zero: 0.01,
            retain_score: Duration::from_secs(3600),
            max_peers: 10_000,
        }
    }
}

/// What a score means for the router (go's `PeerScoreThresholds`). With the default weights one invalid
/// message (−100) graylists a peer for about a second and keeps it below the publish threshold for about
/// four (P4 decays by 0.9 a second), a second GRAFT during a backoff (P7 = 2: −10) stops gossip with it.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Below: no gossip to or from the peer.
    pub gossip: f64,
    /// Below: not published to (flood publishing).
    pub publish: f64,
    /// Below: every RPC from the peer is ignored.
    pub graylist: f64,
    /// At or above: its PRUNE peer exchange is taken.
    pub accept_px: f64,
    /// Mesh median below this: opportunistic grafting of better peers.
    pub opportunistic_graft: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { gossip: -10.0, publish: -50.0, graylist: -80.0, accept_px: 10.0, opportunistic_graft: 1.0 }
    }
}

#[derive(Debug, Clone, Default)]
struct TopicStats {
    in_mesh: bool,
    grafted_at: Instant,
    mesh_time: Duration,
    first_deliveries: f64,
    mesh_deliveries: f64,
    mesh_active: bool,
    mesh_failure: f64,
    invalid: f64,
}

#[derive(Debug, Clone)]
struct PeerState {
    connected: bool,
    /// When a disconnected peer's counters are forgotten.
    expires: Instant,
    topics: BTreeMap<String, TopicStats>,
    ip: Option<IpAddr>,
    behaviour_penalty: f64,
    app_score: f64,
}

/// What became of a message, for the deliveries that follow the first.
#[derive(Debug, Clone)]
struct Delivery {
    at: Instant,
    valid: bool,
    topic: String,
    /// Peers that delivered it (counted once each).
    from: BTreeSet<PeerId>,
}

/// The scores of every peer the router knows.
pub struct PeerScore {
    params: Params,
    peers: BTreeMap<PeerId, PeerState>,
    by_ip: BTreeMap<IpAddr, BTreeSet<PeerId>>,
    deliveries: BTreeMap<MessageId, Delivery>,
    delivery_order: VecDeque<(Instant, MessageId)>,
    /// IWANTs we sent: the message, who promised it, by when.
    promises: BTreeMap<MessageId, (PeerId, Instant)>,
    next_decay: Instant,
}

/// Delivery records and promises are kept this long, and at most this many.
const DELIVERY_TTL: Duration = Duration::from_secs(120);
const MAX_RECORDS: usize = 100_000;

fn sq(x: f64) -> f64 {
    x * x
}

impl PeerScore {
    pub fn new(params: Params, now: Instant) -> PeerScore {
        let next_decay = now + params.decay_interval;
        PeerScore {
            params,
            peers: BTreeMap::new(),
            by_ip: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            delivery_order: VecDeque::new(),
            promises: BTreeMap::new(),
            next_decay,
        }
    }

    fn topic_params(&self, topic: &str) -> Option<&TopicParams> {
        self.params.topics.get(topic).or(self.params.default_topic.as_ref())
    }

    /// The peer's score now (0 for a peer never seen).
    pub fn score(&self, peer: &PeerId, now: Instant) -> f64 {
        let Some(p) = self.peers.get(peer) else { return 0.0 };
        let mut topics = 0.0;
        for (t, s) in &p.topics {
            let Some(tp) = self.topic_params(t) else { continue };
            let mesh_time = if s.in_mesh { now.saturating_duration_since(s.grafted_at) } else { s.mesh_time };
            let mut x = 0.0;
            if s.in_mesh {
                let p1 = (mesh_time.as_secs_f64() / tp.time_in_mesh_quantum.as_secs_f64().max(1e-9)).min(tp.time_in_mesh_cap);
                x += p1 * tp.time_in_mesh_weight;
            }
            x += s.first_deliveries * tp.first_message_deliveries_weight;
            if s.mesh_active && s.mesh_deliveries < tp.mesh_message_deliveries_threshold {
                x += sq(tp.mesh_message_deliveries_threshold - s.mesh_deliveries) * tp.mesh_message_deliveries_weight;
            }
            x += s.mesh_failure * tp.mesh_failure_penalty_weight;
            x += sq(s.invalid) * tp.invalid_message_deliveries_weight;
            topics += x * tp.topic_weight;
        }
        let mut score = topics.min(self.params.topic_score_cap);
        score += p.app_score * self.params.app_specific_weight;
        if let Some(ip) = p.ip.filter(|ip| self.params.colocation_local || !crate::multiaddr::is_local_ip(*ip)) {
            let n = self.by_ip.get(&ip).map_or(0, BTreeSet::len) as f64;
            if n > self.params.ip_colocation_factor_threshold {
                score += sq(n - self.params.ip_colocation_factor_threshold) * self.params.ip_colocation_factor_weight;
            }
        }
        if p.behaviour_penalty > self.params.behaviour_penalty_threshold {
            score += sq(p.behaviour_penalty - self.params.behaviour_penalty_threshold) * self.params.behaviour_penalty_weight;
        }
        score
    }

    /// A peer connected (its counters come back if it was retained).
    pub fn add_peer(&mut self, peer: &PeerId, ip: Option<IpAddr>, now: Instant) {
        if !self.peers.contains_key(peer) && self.peers.len() >= self.params.max_peers {
            // Forget the retained peer that expires first; if all are connected, do not track this one.
            let Some(old) = self.peers.iter().filter(|(_, s)| !s.connected).min_by_key(|(_, s)| s.expires).map(|(p, _)| p.clone()) else {
                return;
            };
            self.forget(&old);
        }
        let p = self.peers.entry(peer.clone()).or_insert_with(|| PeerState {
            connected: true,
            expires: now,
            topics: BTreeMap::new(),
            ip: None,
            behaviour_penalty: 0.0,
            app_score: 0.0,
        });
        p.connected = true;
        if let Some(old) = p.ip.take() {
            if let Some(s) = self.by_ip.get_mut(&old) {
                s.remove(peer);
            }
        }
        p.ip = ip;
        if let Some(ip) = ip {
            self.by_ip.entry(ip).or_default().insert(peer.clone());
        }
    }

    fn forget(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.remove(peer) {
            if let Some(ip) = p.ip {
                if let Some(s) = self.by_ip.get_mut(&ip) {
                    s.remove(peer);
                    if s.is_empty() {
                        self.by_ip.remove(&ip);
                    }
                }
            }
        }
    }

    /// The peer disconnected: a non-negative score is forgotten, a negative one retained.
    pub fn remove_peer(&mut self, peer: &PeerId, now: Instant) {
        let score = self.score(peer, now);
        if score >= 0.0 {
            return self.forget(peer);
        }
        let retain = self.params.retain_score;
        let Some(p) = self.peers.get_mut(peer) else { return };
        p.connected = false;
        p.expires = now + retain;
        // Leaving the mesh by disconnecting is a failure too.
        let topics: Vec<String> = p.topics.iter().filter(|(_, s)| s.in_mesh).map(|(t, _)| t.clone()).collect();
        for t in topics {
            self.prune(peer, &t, now);
        }
    }

    fn topic_stats(&mut self, peer: &PeerId, topic: &str) -> Option<&mut TopicStats> {
        self.topic_params(topic)?;
        Some(self.peers.get_mut(peer)?.topics.entry(topic.to_string()).or_default())
    }

    pub fn graft(&mut self, peer: &PeerId, topic: &str, now: Instant) {
        if let Some(s) = self.topic_stats(peer, topic) {
            s.in_mesh = true;
            s.grafted_at = now;
            s.mesh_time = Duration::ZERO;
            s.mesh_active = false;
        }
    }

    pub fn prune(&mut self, peer: &PeerId, topic: &str, now: Instant) {
        let Some(tp) = self.topic_params(topic).cloned() else { return };
        let Some(s) = self.topic_stats(peer, topic) else { return };
        if !s.in_mesh {
            return;
        }
        if s.mesh_active && s.mesh_deliveries < tp.mesh_message_deliveries_threshold {
            s.mesh_failure += sq(tp.mesh_message_deliveries_threshold - s.mesh_deliveries);
        }
        s.mesh_time = now.saturating_duration_since(s.grafted_at);
        s.in_mesh = false;
    }

    fn record(&mut self, id: &MessageId, now: Instant) -> &mut Delivery {
        if !self.deliveries.contains_key(id) {
            while self.deliveries.len() >= MAX_RECORDS {
                let Some((_, old)) = self.delivery_order.pop_front() else { break };
                self.deliveries.remove(&old);
            }
            self.delivery_order.push_back((now, id.clone()));
        }
        self.deliveries.entry(id.clone()).or_insert_with(|| Delivery { at: now, valid: false, topic: String::new(), from: BTreeSet::new() })
    }

    /// A message was validated and delivered for the first time; `from` sent it.
    pub fn deliver(&mut self, from: &PeerId, id: &MessageId, topic: &str, now: Instant) {
        self.promises.remove(id);
        let d = self.record(id, now);
        d.valid = true;
        d.at = now;
        d.topic = topic.to_string();
        d.from.insert(from.clone());
        let Some(tp) = self.topic_params(topic).cloned() else { return };
        if let Some(s) = self.topic_stats(from, topic) {
            s.first_deliveries = (s.first_deliveries + 1.0).min(tp.first_message_deliveries_cap);
            if s.in_mesh {
                s.mesh_deliveries = (s.mesh_deliveries + 1.0).min(tp.mesh_message_deliveries_cap);
            }
        }
    }

    /// A message failed validation; `from` sent it (and so did everyone who sends it again).
    pub fn reject(&mut self, from: &PeerId, id: &MessageId, topic: &str, now: Instant) {
        self.promises.remove(id);
        let d = self.record(id, now);
        d.valid = false;
        d.topic = topic.to_string();
        d.from.insert(from.clone());
        if let Some(s) = self.topic_stats(from, topic) {
            s.invalid += 1.0;
        }
    }

    /// `from` sent a message we had already seen: near-first copies of valid messages count for mesh
    /// delivery, copies of invalid ones count against the peer.
    pub fn duplicate(&mut self, from: &PeerId, id: &MessageId, now: Instant) {
        let Some(d) = self.deliveries.get_mut(id) else { return };
        if !d.from.insert(from.clone()) {
            return;
        }
        let (valid, at, topic) = (d.valid, d.at, d.topic.clone());
        let Some(tp) = self.topic_params(&topic).cloned() else { return };
        let Some(s) = self.topic_stats(from, &topic) else { return };
        if !valid {
            s.invalid += 1.0;
        } else if s.in_mesh && now.saturating_duration_since(at) <= tp.mesh_message_deliveries_window {
            s.mesh_deliveries = (s.mesh_deliveries + 1.0).min(tp.mesh_message_deliveries_cap);
        }
    }

    /// We asked `peer` for `id` (IWANT): it must deliver by `deadline`, or pays a behaviour penalty.
    pub fn promise(&mut self, peer: &PeerId, id: &MessageId, deadline: Instant) {
        if self.promises.len() < MAX_RECORDS && !self.promises.contains_key(id) {
            self.promises.insert(id.clone(), (peer.clone(), deadline));
        }
    }

    /// Misbehaviour: a GRAFT during a backoff, a broken promise, a malformed RPC.
    pub fn penalize(&mut self, peer: &PeerId, count: f64) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.behaviour_penalty += count;
        }
    }

    /// P5: the application's opinion of the peer.
    pub fn set_app_score(&mut self, peer: &PeerId, score: f64) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.app_score = score;
        }
    }

    /// Decays counters (every `decay_interval`), activates mesh delivery accounting, breaks promises
    /// whose time ran out and forgets what expired. Call from the heartbeat.
    pub fn refresh(&mut self, now: Instant) {
        let expired: Vec<(MessageId, PeerId)> =
            self.promises.iter().filter(|(_, (_, d))| *d <= now).map(|(id, (p, _))| (id.clone(), p.clone())).collect();
        for (id, p) in expired {
            self.promises.remove(&id);
            self.penalize(&p, 1.0);
        }
        while let Some((t, _)) = self.delivery_order.front() {
            if *t + DELIVERY_TTL > now {
                break;
            }
            let (_, id) = self.delivery_order.pop_front().expect("front exists");
            self.deliveries.remove(&id);
        }
        let gone: Vec<PeerId> = self.peers.iter().filter(|(_, p)| !p.connected && p.expires <= now).map(|(k, _)| k.clone()).collect();
        for p in gone {
            self.forget(&p);
        }
        if now < self.next_decay {
            return;
        }
        self.next_decay = now + self.params.decay_interval;
        let zero = self.params.decay_to_zero;
        let decay = |x: &mut f64, d: f64| {
            *x *= d;
            if *x < zero {
                *x = 0.0;
            }
        };
        let params = self.params.clone();
        for p in self.peers.values_mut() {
            for (t, s) in p.topics.iter_mut() {
                let Some(tp) = params.topics.get(t).or(params.default_topic.as_ref()) else { continue };
                decay(&mut s.first_deliveries, tp.first_message_deliveries_decay);
                decay(&mut s.mesh_deliveries, tp.mesh_message_deliveries_decay);
                decay(&mut s.mesh_failure, tp.mesh_failure_penalty_decay);
                decay(&mut s.invalid, tp.invalid_message_deliveries_decay);
                if s.in_mesh && now.saturating_duration_since(s.grafted_at) >= tp.mesh_message_deliveries_activation {
                    s.mesh_active = true;
                }
            }
            decay(&mut p.behaviour_penalty, params.behaviour_penalty_decay);
        }
    }

    /// Peers tracked (connected and retained).
    pub fn len(&self) -> usize {
        self.peers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}
