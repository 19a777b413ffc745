//! The gossipsub router as a sans-IO machine. It knows peers by id (the service maps them to streams),
//! takes decoded RPCs, the time and an RNG, and produces per-peer frames ([`Router::take_frames`]) and
//! application events ([`Router::poll_event`]). Everything it keeps is bounded by [`Config`]'s limits.
//! It iterates only ordered maps: one seed replays a simulation exactly.

use super::score::PeerScore;
use super::wire::{self, Control, Extensions, IHave, Message, MessageId, Preamble, Prune, PxPeer, Rpc, SubOpt};
use super::{Acceptance, Adversary, Config, Event, PeerKind, Signing};
use crate::identity::{Keypair, PeerId, PublicKey};
use crate::rng::{Rng, RngCore};
use crate::time::{Duration, Instant};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("no peer subscribed to the topic")]
    InsufficientPeers,
    #[error("message of {len} bytes exceeds the {limit}-byte RPC limit")]
    TooLarge { len: usize, limit: usize },
    #[error("this message was already published")]
    Duplicate,
}

/// Counters (every limit hit is one of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub rpcs_received: u64,
    pub messages_received: u64,
    pub duplicates: u64,
    pub invalid_messages: u64,
    pub delivered: u64,
    pub published: u64,
    /// Message copies sent to peers (publishes, forwards and IWANT answers), and their frame bytes.
    pub messages_sent: u64,
    pub message_bytes_sent: u64,
    /// Control bytes sent by kind (IHAVE and IWANT entries, IDONTWANT, GRAFT and PRUNE; each entry's
    /// encoding, without the RPC's own framing).
    pub ihave_bytes_sent: u64,
    pub iwant_bytes_sent: u64,
    pub idontwant_bytes_sent: u64,
    pub graft_prune_bytes_sent: u64,
    pub idontwant_sent: u64,
    pub idontwant_received: u64,
    /// Forwards left out because the peer said IDONTWANT.
    pub idontwant_saved: u64,
    /// Queued copies taken back because the peer said IDONTWANT before they were sent (then they no
    /// longer count in `messages_sent` and `message_bytes_sent`).
    pub idontwant_cancelled: u64,
    /// Forwards left out because the peer sent us the message while it was being validated.
    pub duplicates_spared: u64,
    /// Messages we were the first hop of whose flood (`Config::flood_first_hop`) stopped at
    /// `Config::flood_first_hop_peers` peers beyond the mesh.
    pub first_hop_capped: u64,
    pub idontwant_ignored: u64,
    pub ihave_sent: u64,
    pub ihave_ignored: u64,
    pub iwant_sent: u64,
    pub iwant_served: u64,
    pub grafts_sent: u64,
    pub grafts_received: u64,
    pub prunes_sent: u64,
    pub prunes_received: u64,
    /// Peer exchange received: peers taken to connect to (`Router::take_px`), offers ignored because
    /// the pruning peer's score was below `thresholds.accept_px`, peers left out (invalid id, us,
    /// already connected, or past [`MAX_PX_QUEUE`]).
    pub px_taken: u64,
    pub px_ignored_score: u64,
    pub px_skipped: u64,
    /// What the service did with the peers taken: dialed (an address from the peer's signed record, or
    /// from the peerstore), or not (no address known, or a record that did not verify for that peer).
    pub px_dialed: u64,
    pub px_no_address: u64,
    pub px_bad_record: u64,
    pub subscriptions_ignored: u64,
    /// RPCs ignored because their sender's score was below the graylist threshold.
    pub graylisted_rpcs: u64,
    /// Mesh peers pruned for a negative score, and peers grafted opportunistically.
    pub pruned_for_score: u64,
    pub opportunistic_grafts: u64,
    /// Application verdicts, and messages dropped for want of one.
    pub validation_accepted: u64,
    pub validation_rejected: u64,
    pub validation_ignored: u64,
    pub validation_dropped: u64,
    pub validation_timeouts: u64,
    pub dropped_messages: u64,
    pub dropped_gossip: u64,
    pub dropped_control: u64,
    pub seen_evicted: u64,
    /// Messages not cached for gossip because the cache was full.
    pub cache_full: u64,
    pub heartbeats: u64,
    /// v1.3: extensions messages taken, and repeats ignored (the spec allows one per stream; we take
    /// the first per peer). Test-extension messages received.
    pub extensions_received: u64,
    pub extensions_repeated: u64,
    pub test_extensions_received: u64,
    /// v1.4: PREAMBLEs sent ahead of large copies; received; ignored (not a mesh peer of a topic of
    /// ours, or over `max_preambles_per_peer`); announced messages that never came from their announcer
    /// within the wait (a behaviour penalty each).
    pub preambles_sent: u64,
    pub preambles_received: u64,
    pub preambles_ignored: u64,
    pub preambles_broken: u64,
    /// v1.4: IMRECEIVING sent and received; queued copies taken back by one; IWANTs deferred because the
    /// message was announced to us and on its way.
    pub imreceiving_sent: u64,
    pub imreceiving_received: u64,
    pub imreceiving_cancelled: u64,
    pub iwant_deferred: u64,
    /// Bytes of PREAMBLE and IMRECEIVING frames sent.
    pub preamble_bytes_sent: u64,
}

/// One peer's counters (what it sent us and what we sent it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub kind: Option<PeerKind>,
    pub messages_received: u64,
    pub duplicates: u64,
    pub invalid_messages: u64,
    pub messages_sent: u64,
    pub idontwant_sent: u64,
    pub idontwant_received: u64,
    /// Forwards to this peer left out because it said IDONTWANT.
    pub idontwant_saved: u64,
    /// Copies queued for this peer taken back by its IDONTWANT.
    pub idontwant_cancelled: u64,
    /// v1.3: the extensions it advertised (`None`: no extensions message yet), and whether it sent the
    /// test extension's message.
    pub extensions: Option<Extensions>,
    pub test_extension_received: bool,
    /// Its round trip as the latency-aware mesh last saw it (`Router::set_rtt`; ping's average).
    pub rtt: Option<Duration>,
    /// v1.4: PREAMBLEs it sent us; IMRECEIVING both ways; copies to it taken back by its IMRECEIVING.
    pub preambles_received: u64,
    pub imreceiving_sent: u64,
    pub imreceiving_received: u64,
    pub imreceiving_cancelled: u64,
}

/// Frames waiting for one peer: control and messages first, gossip after (and dropped first).
#[derive(Default)]
struct SendQueue {
    urgent: VecDeque<Queued>,
    urgent_bytes: usize,
    gossip: VecDeque<Vec<u8>>,
    gossip_bytes: usize,
    /// Ids of the messages in `urgent`, with their frame lengths: an IDONTWANT for one of them takes
    /// it back (lazily: it is skipped when its turn comes).
    messages: BTreeMap<MessageId, usize>,
    cancelled: BTreeSet<MessageId>,
    /// Large entries in `urgent`, taken back or not: none is the common case, answered without a scan.
    large: usize,
}

/// A frame in a peer's urgent queue.
struct Queued {
    frame: Vec<u8>,
    /// The message it carries (control frames: `None`).
    id: Option<MessageId>,
    /// A message of at least `Config::stagger_threshold` bytes: sent to a limited number of peers at a
    /// time (`Config::stagger`).
    large: bool,
    /// v1.4: the PREAMBLE frame that goes right ahead of this copy when it is taken.
    preamble: Option<Vec<u8>>,
}

impl SendQueue {
    fn push_control(&mut self, frame: Vec<u8>) {
        self.urgent_bytes += frame.len();
        self.urgent.push_back(Queued { frame, id: None, large: false, preamble: None });
    }

    /// Takes a queued message back; its frame length if it was queued (and not taken yet).
    fn cancel(&mut self, id: &MessageId) -> Option<usize> {
        let len = self.messages.remove(id)?;
        self.urgent_bytes -= len;
        self.cancelled.insert(id.clone());
        Some(len)
    }
}

struct Peer {
    kind: PeerKind,
    outbound: bool,
    topics: BTreeSet<String>,
    /// IDONTWANT ids and the heartbeat after which they are forgotten.
    dont_want: BTreeMap<MessageId, u64>,
    ihave_msgs: usize,
    ihave_asked: usize,
    idontwant_taken: usize,
    /// v1.4: messages it announced by PREAMBLE and has not delivered yet, until when we wait.
    announced: BTreeMap<MessageId, Instant>,
    /// Its round trip, when measured (`Router::set_rtt`): what `Config::d_near` ranks by.
    rtt: Option<Duration>,
    /// Its signed peer record as identify brought it (`Router::set_record`): offered with its id when
    /// we prune others (peer exchange).
    record: Option<Vec<u8>>,
    queue: SendQueue,
    stats: PeerStats,
}

struct CacheEntry {
    msg: Arc<Message>,
    /// IWANT answers per peer.
    served: BTreeMap<PeerId, u8>,
}

/// Messages of the last `history_length` heartbeats, by id.
#[derive(Default)]
struct MessageCache {
    windows: VecDeque<Vec<MessageId>>,
    msgs: BTreeMap<MessageId, CacheEntry>,
    /// Encoded bytes of the cached messages.
    bytes: usize,
}

struct Pending {
    msg: Arc<Message>,
    source: PeerId,
    author: Option<PeerId>,
    deadline: Instant,
    /// Peers that sent it again while it waited: they have it, so it is not forwarded to them.
    have: BTreeSet<PeerId>,
}

struct Fanout {
    peers: BTreeSet<PeerId>,
    last_publish: Instant,
}

pub struct Router {
    cfg: Config,
    local: PeerId,
    keypair: Option<Keypair>,
    /// Whether `from`'s key must travel in `key` (it is not inlined in the peer id).
    key_bytes: Option<Vec<u8>>,
    seqno: u64,
    peers: BTreeMap<PeerId, Peer>,
    /// Known subscribers per topic.
    subscribers: BTreeMap<String, BTreeSet<PeerId>>,
    /// Topics we are subscribed to, with their mesh.
    mesh: BTreeMap<String, BTreeSet<PeerId>>,
    fanout: BTreeMap<String, Fanout>,
    backoff: BTreeMap<(String, PeerId), Instant>,
    mcache: MessageCache,
    seen: BTreeMap<MessageId, Instant>,
    seen_order: VecDeque<(Instant, MessageId)>,
    next_heartbeat: Instant,
    ticks: u64,
    events: VecDeque<Event>,
    stats: Stats,
    /// Control waiting to be sent at the end of the current call (batched per peer).
    pending: BTreeMap<PeerId, Control>,
    /// Topics whose messages wait for the application's verdict.
    validated: BTreeSet<String>,
    awaiting: BTreeMap<MessageId, Pending>,
    score: Option<PeerScore>,
    /// v1.4: large messages announced to us and on their way, until when IWANTs for them wait. At most
    /// `max_preambles_per_peer` per peer.
    receiving: BTreeMap<MessageId, Instant>,
    /// Peers offered by peer exchange, for the service to connect to (`take_px`); at most
    /// [`MAX_PX_QUEUE`].
    px: Vec<(PeerId, Option<Vec<u8>>)>,
    /// Public keys decoded from message authors' peer ids (an Ed25519 key is a compressed point:
    /// decompressing it is a field exponentiation, ~15% of checking the signature). At most
    /// [`AUTHOR_KEYS`], cleared when full.
    author_keys: BTreeMap<PeerId, PublicKey>,
}

/// Authors whose decoded keys are kept (`Router::author_keys`): ~200 B each.
pub const AUTHOR_KEYS: usize = 4096;

/// Peer-exchange offers waiting for the service to dial them (a PRUNE offers at most `prune_peers`;
/// the service takes them after every call, so this bounds what one call can queue).
pub const MAX_PX_QUEUE: usize = 64;

/// What became of a peer offered by peer exchange (`Router::px_outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PxOutcome {
    Dialed,
    NoAddress,
    BadRecord,
}

/// Up to `n` of `v`, picked at random (partial Fisher–Yates).
fn choose<T>(rng: &mut Rng, mut v: Vec<T>, n: usize) -> Vec<T> {
    let n = n.min(v.len());
    for i in 0..n {
        let j = i + (rng.next_u64() % (v.len() - i) as u64) as usize;
        v.swap(i, j);
    }
    v.truncate(n);
    v
}

impl Router {
    /// A router for `keypair`'s node (`None`: it cannot publish signed messages; fine with
    /// [`Signing::StrictNoSign`]).
    pub fn new(cfg: Config, local: PeerId, keypair: Option<Keypair>, now: Instant) -> Router {
        let score = cfg.score.clone().map(|p| PeerScore::new(p, now));
        let mut r = Router::build(cfg, local, keypair, now);
        r.score = score;
        r
    }

    fn build(cfg: Config, local: PeerId, keypair: Option<Keypair>, now: Instant) -> Router {
        let key_bytes = keypair.as_ref().and_then(|k| local.inline_public_key().is_none().then(|| k.public().encode_protobuf()));
        Router {
            next_heartbeat: now + cfg.heartbeat_initial_delay,
            seqno: cfg.first_seqno,
            cfg,
            local,
            keypair,
            key_bytes,
            author_keys: BTreeMap::new(),
            peers: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            mesh: BTreeMap::new(),
            fanout: BTreeMap::new(),
            backoff: BTreeMap::new(),
            mcache: MessageCache { windows: VecDeque::from(vec![Vec::new()]), msgs: BTreeMap::new(), bytes: 0 },
            seen: BTreeMap::new(),
            seen_order: VecDeque::new(),
            ticks: 0,
            events: VecDeque::new(),
            stats: Stats::default(),
            pending: BTreeMap::new(),
            validated: BTreeSet::new(),
            awaiting: BTreeMap::new(),
            score: None,
            receiving: BTreeMap::new(),
            px: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    pub fn poll_timeout(&self) -> Instant {
        self.next_heartbeat
    }
    /// Topics we are subscribed to.
    pub fn topics(&self) -> Vec<String> {
        self.mesh.keys().cloned().collect()
    }
    pub fn mesh_peers(&self, topic: &str) -> Vec<PeerId> {
        self.mesh.get(topic).map(|m| m.iter().cloned().collect()).unwrap_or_default()
    }
    /// Peers known to be subscribed to `topic` (all topics when `None`).
    pub fn peers(&self, topic: Option<&str>) -> Vec<PeerId> {
        match topic {
            Some(t) => self.subscribers.get(t).map(|s| s.iter().cloned().collect()).unwrap_or_default(),
            None => self.peers.keys().cloned().collect(),
        }
    }
    pub fn peer_kind(&self, peer: &PeerId) -> Option<PeerKind> {
        self.peers.get(peer).map(|p| p.kind)
    }
    /// `peer`'s score at `now` (0 with scoring off or for a peer never seen).
    pub fn peer_score(&self, peer: &PeerId, now: Instant) -> f64 {
        self.score.as_ref().map_or(0.0, |s| s.score(peer, now))
    }

    /// P5: the application's score for `peer` (weighted by `score::Params::app_specific_weight`).
    pub fn set_app_score(&mut self, peer: &PeerId, score: f64) {
        if let Some(s) = &mut self.score {
            s.set_app_score(peer, score);
        }
    }

    /// The peer misbehaved outside the router's sight (a malformed RPC): a behaviour penalty.
    pub fn penalize(&mut self, peer: &PeerId) {
        if let Some(s) = &mut self.score {
            s.penalize(peer, 1.0);
        }
    }

    /// Adds `peer` to `topic`'s mesh (and tells the score).
    fn mesh_insert(&mut self, now: Instant, topic: &str, peer: &PeerId) {
        if let Some(m) = self.mesh.get_mut(topic) {
            if m.insert(peer.clone()) {
                if let Some(s) = &mut self.score {
                    s.graft(peer, topic, now);
                }
            }
        }
    }

    /// Removes `peer` from `topic`'s mesh (and tells the score).
    fn mesh_remove(&mut self, now: Instant, topic: &str, peer: &PeerId) {
        if let Some(m) = self.mesh.get_mut(topic) {
            m.remove(peer);
        }
        if let Some(s) = &mut self.score {
            s.prune(peer, topic, now);
        }
    }

    /// `peer`'s counters, while it is a pubsub peer.
    pub fn peer_stats(&self, peer: &PeerId) -> Option<PeerStats> {
        self.peers.get(peer).map(|p| PeerStats { rtt: p.rtt, ..p.stats.clone() })
    }
    /// (topic, peer) backoffs held.
    pub fn backoffs(&self) -> usize {
        self.backoff.len()
    }
    /// Message ids remembered as seen, and bytes of messages cached for gossip.
    pub fn cache_sizes(&self) -> (usize, usize) {
        (self.seen.len(), self.mcache.bytes)
    }
    /// IDONTWANT ids held for `peer`.
    pub fn dont_want_len(&self, peer: &PeerId) -> usize {
        self.peers.get(peer).map_or(0, |p| p.dont_want.len())
    }
    /// Bytes queued for `peer`.
    pub fn queued(&self, peer: &PeerId) -> usize {
        self.peers.get(peer).map_or(0, |p| p.queue.urgent_bytes + p.queue.gossip_bytes)
    }

    // ---------------- peers ----------------

    /// A peer we can talk to (its stream protocol decides `kind`). We send it our subscriptions.
    /// `ip`: the address it connected from (IP colocation scoring).
    pub fn add_peer(&mut self, peer: PeerId, kind: PeerKind, outbound: bool, ip: Option<IpAddr>, now: Instant) {
        if self.peers.contains_key(&peer) {
            return;
        }
        if let Some(s) = &mut self.score {
            s.add_peer(&peer, ip, now);
        }
        self.peers.insert(
            peer.clone(),
            Peer {
                kind,
                outbound,
                topics: BTreeSet::new(),
                dont_want: BTreeMap::new(),
                ihave_msgs: 0,
                ihave_asked: 0,
                idontwant_taken: 0,
                announced: BTreeMap::new(),
                rtt: None,
                record: None,
                queue: SendQueue::default(),
                stats: PeerStats { kind: Some(kind), ..PeerStats::default() },
            },
        );
        // v1.3: the extensions message goes in the first RPC on the stream (it is new: nothing is queued).
        let ours = self.extensions();
        let extensions = (kind.has_extensions() && ours != Extensions::default()).then_some(ours);
        if !self.mesh.is_empty() || extensions.is_some() {
            let subscriptions = self.mesh.keys().map(|t| SubOpt { subscribe: true, topic: t.clone() }).collect();
            self.send_rpc(&peer, &Rpc { subscriptions, control: Control { extensions, ..Control::default() }, ..Rpc::default() });
        }
    }

    /// `peer`'s round trip as measured outside gossipsub (the service passes ping's average on each
    /// heartbeat): the mesh prefers near peers for `Config::d_near` of its places.
    pub fn set_rtt(&mut self, peer: &PeerId, rtt: Option<Duration>) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.rtt = rtt;
        }
    }

    /// `peer`'s round trip as last set (`set_rtt`).
    pub fn rtt(&self, peer: &PeerId) -> Option<Duration> {
        self.peers.get(peer).and_then(|p| p.rtt)
    }

    /// Whether a large message (see [`Config::stagger`]) waits in `peer`'s queue for a turn.
    pub fn waits_large(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| {
            p.queue.large > 0 && p.queue.urgent.iter().any(|e| e.large && e.id.as_ref().is_some_and(|id| !p.queue.cancelled.contains(id)))
        })
    }

    /// `peer`'s signed peer record (an envelope, as identify carried it), offered with its id in our
    /// peer exchange. One longer than `limits.max_px_record_len` is not kept (a peer would drop it).
    pub fn set_record(&mut self, peer: &PeerId, record: Option<Vec<u8>>) {
        let max = self.cfg.limits.max_px_record_len;
        if let Some(p) = self.peers.get_mut(peer) {
            p.record = record.filter(|r| r.len() <= max);
        }
    }

    /// The peers of `v` with a measured round trip, nearest first (ties in `v`'s order).
    fn by_rtt(&self, v: &[PeerId]) -> Vec<PeerId> {
        let mut m: Vec<(Duration, &PeerId)> = v.iter().filter_map(|p| self.peers.get(p).and_then(|x| x.rtt).map(|r| (r, p))).collect();
        m.sort_by_key(|(r, _)| *r);
        m.into_iter().map(|(_, p)| p.clone()).collect()
    }

    /// Up to `n` of `cands` to graft into `mesh`: first the nearest, until the `d_near` nearest of the
    /// mesh and the candidates together are in it, then at random.
    fn pick_grafts(&self, rng: &mut Rng, mesh: &BTreeSet<PeerId>, cands: Vec<PeerId>, n: usize) -> Vec<PeerId> {
        if self.cfg.d_near == 0 {
            return choose(rng, cands, n);
        }
        let all: Vec<PeerId> = mesh.iter().chain(cands.iter()).cloned().collect();
        let mut near: Vec<PeerId> = self.by_rtt(&all).into_iter().take(self.cfg.d_near).filter(|p| !mesh.contains(p)).take(n).collect();
        let rest: Vec<PeerId> = cands.into_iter().filter(|p| !near.contains(p)).collect();
        let more = n - near.len();
        near.extend(choose(rng, rest, more));
        near
    }

    /// The extensions we advertise to v1.3 peers.
    pub fn extensions(&self) -> Extensions {
        Extensions { large_messages: self.cfg.large_messages, test: self.cfg.test_extension }
    }

    /// Whether `peer` advertised large-message handling and we do it too.
    fn large_messages_with(&self, peer: &Peer) -> bool {
        self.cfg.large_messages && peer.stats.extensions.is_some_and(|e| e.large_messages)
    }

    /// The peer is gone (its last connection closed, or its stream failed).
    pub fn remove_peer(&mut self, peer: &PeerId, now: Instant) {
        if let Some(s) = &mut self.score {
            s.remove_peer(peer, now);
        }
        let Some(p) = self.peers.remove(peer) else { return };
        for t in &p.topics {
            self.forget_subscriber(t, peer);
        }
        for m in self.mesh.values_mut() {
            m.remove(peer);
        }
        for f in self.fanout.values_mut() {
            f.peers.remove(peer);
        }
        self.pending.remove(peer);
    }

    // ---------------- the application ----------------

    /// Joins `topic`: announces it and builds its mesh from fanout peers, then other subscribers.
    pub fn subscribe(&mut self, rng: &mut Rng, now: Instant, topic: &str) -> bool {
        if self.mesh.contains_key(topic) {
            return false;
        }
        let mut mesh: BTreeSet<PeerId> = self.fanout.remove(topic).map(|f| f.peers).unwrap_or_default();
        if mesh.len() < self.cfg.d {
            let more: Vec<PeerId> = self.graft_candidates(now, topic, &mesh, false);
            let add = self.pick_grafts(rng, &mesh, more, self.cfg.d - mesh.len());
            mesh.extend(add);
        }
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        for p in &peers {
            self.send_rpc(p, &Rpc { subscriptions: vec![SubOpt { subscribe: true, topic: topic.to_string() }], ..Rpc::default() });
        }
        self.mesh.insert(topic.to_string(), BTreeSet::new());
        for p in &mesh {
            self.mesh_insert(now, topic, p);
            self.pending.entry(p.clone()).or_default().graft.push(topic.to_string());
            self.stats.grafts_sent += 1;
        }
        self.flush_pending();
        true
    }

    /// Leaves `topic`: announces it and prunes the mesh.
    pub fn unsubscribe(&mut self, now: Instant, topic: &str) -> bool {
        let Some(mesh) = self.mesh.remove(topic) else { return false };
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        for p in &peers {
            self.send_rpc(p, &Rpc { subscriptions: vec![SubOpt { subscribe: false, topic: topic.to_string() }], ..Rpc::default() });
        }
        for p in mesh {
            self.prune(now, &p, topic, self.cfg.unsubscribe_backoff, None);
        }
        self.flush_pending();
        true
    }

    /// Publishes `data` on `topic` (signed per [`Config::signing`]); returns the message id.
    pub fn publish(&mut self, rng: &mut Rng, now: Instant, topic: &str, data: Vec<u8>) -> Result<MessageId, PublishError> {
        let msg = match (self.cfg.signing, &self.keypair) {
            (Signing::StrictSign, Some(k)) => {
                let seqno = self.seqno.to_be_bytes().to_vec();
                let unsigned = Message::new(Some(self.local.to_bytes()), data, Some(seqno), topic.to_string(), None, None);
                let sig = k.sign(&unsigned.signed_bytes());
                unsigned.with_signature(sig, self.key_bytes.clone())
            }
            _ => Message::new(None, data, None, topic.to_string(), None, None),
        };
        let len = wire::message_frame_len(&msg);
        if len > self.cfg.limits.max_rpc_len {
            return Err(PublishError::TooLarge { len, limit: self.cfg.limits.max_rpc_len });
        }
        let id = self.cfg.message_id.id(&msg);
        if self.seen.contains_key(&id) {
            return Err(PublishError::Duplicate);
        }
        let recipients = self.publish_peers(rng, now, topic);
        if recipients.is_empty() {
            return Err(PublishError::InsufficientPeers);
        }
        self.seqno = self.seqno.wrapping_add(1);
        let msg = Arc::new(msg);
        self.mark_seen(now, id.clone());
        self.mcache_put(id.clone(), msg.clone());
        for p in &recipients {
            self.send_message(p, &id, &msg);
        }
        self.stats.published += 1;
        Ok(id)
    }

    fn publish_peers(&mut self, rng: &mut Rng, now: Instant, topic: &str) -> Vec<PeerId> {
        let subs: Vec<PeerId> = self.subscribers.get(topic).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        let flood: Vec<PeerId> =
            subs.iter().filter(|p| self.peers.get(*p).is_some_and(|x| x.kind == PeerKind::Floodsub)).cloned().collect();
        if self.cfg.flood_publish {
            let t = self.cfg.thresholds.publish;
            return subs.into_iter().filter(|p| self.peer_score(p, now) >= t).collect();
        }
        let mut out: BTreeSet<PeerId> = flood.into_iter().collect();
        if let Some(m) = self.mesh.get(topic) {
            out.extend(m.iter().cloned());
        } else {
            let f = self.fanout.entry(topic.to_string()).or_insert(Fanout { peers: BTreeSet::new(), last_publish: now });
            f.last_publish = now;
            if f.peers.is_empty() {
                let cands: Vec<PeerId> = subs.into_iter().filter(|p| self.peers.get(p).is_some_and(|x| x.kind.is_meshsub())).collect();
                let f = self.fanout.get_mut(topic).expect("inserted above");
                f.peers.extend(choose(rng, cands, self.cfg.d));
            }
            out.extend(self.fanout[topic].peers.iter().cloned());
        }
        out.into_iter().collect()
    }

    // ---------------- RPCs from peers ----------------

    /// Handles one RPC from `from` (a peer added before).
    pub fn handle_rpc(&mut self, rng: &mut Rng, now: Instant, from: &PeerId, rpc: Rpc) {
        if !self.peers.contains_key(from) {
            return;
        }
        self.stats.rpcs_received += 1;
        if self.peer_score(from, now) < self.cfg.thresholds.graylist {
            self.stats.graylisted_rpcs += 1;
            return;
        }
        let mut c = rpc.control;
        if let Some(e) = c.extensions.take() {
            self.handle_extensions(from, e);
        }
        if rpc.test_extension {
            self.stats.test_extensions_received += 1;
            if let Some(p) = self.peers.get_mut(from) {
                p.stats.test_extension_received = true;
            }
        }
        for s in rpc.subscriptions {
            self.handle_subscription(now, from, s);
        }
        // PREAMBLEs before messages: an RPC may carry one and then its message.
        for p in std::mem::take(&mut c.preamble) {
            self.handle_preamble(now, from, p);
        }
        for m in rpc.publish {
            self.handle_message(now, from, m);
        }
        // IDONTWANT first: it may spare a forward of a message in this same RPC's IWANT.
        self.handle_idontwant(from, c.idontwant, false);
        self.handle_idontwant(from, c.imreceiving, true);
        for t in c.graft {
            self.handle_graft(rng, now, from, t);
        }
        for p in c.prune {
            self.handle_prune(now, from, p);
        }
        if self.peer_score(from, now) >= self.cfg.thresholds.gossip {
            self.handle_ihave(rng, now, from, c.ihave);
            self.handle_iwant(from, c.iwant);
        } else if !c.ihave.is_empty() || !c.iwant.is_empty() {
            self.stats.ihave_ignored += 1;
        }
        self.flush_pending();
    }

    /// `peer` no longer counts as a subscriber of `topic` (an emptied topic is forgotten).
    fn forget_subscriber(&mut self, topic: &str, peer: &PeerId) {
        if let Some(set) = self.subscribers.get_mut(topic) {
            set.remove(peer);
            if set.is_empty() {
                self.subscribers.remove(topic);
            }
        }
    }

    fn handle_subscription(&mut self, now: Instant, from: &PeerId, s: SubOpt) {
        let Some(p) = self.peers.get_mut(from) else { return };
        if s.subscribe {
            if p.topics.contains(&s.topic) {
                return;
            }
            if p.topics.len() >= self.cfg.max_topics_per_peer {
                self.stats.subscriptions_ignored += 1;
                return;
            }
            p.topics.insert(s.topic.clone());
            self.subscribers.entry(s.topic.clone()).or_default().insert(from.clone());
            self.events.push_back(Event::Subscribed { peer: from.clone(), topic: s.topic });
        } else if p.topics.remove(&s.topic) {
            self.forget_subscriber(&s.topic, from);
            if self.mesh.contains_key(&s.topic) {
                self.mesh_remove(now, &s.topic, from);
            }
            if let Some(f) = self.fanout.get_mut(&s.topic) {
                f.peers.remove(from);
            }
            self.events.push_back(Event::Unsubscribed { peer: from.clone(), topic: s.topic });
        }
    }

    /// Checks a message against the signing policy; its author when signed.
    fn validate(&mut self, m: &Message) -> Result<Option<PeerId>, &'static str> {
        match self.cfg.signing {
            Signing::StrictNoSign => {
                if m.from.is_some() || m.seqno.is_some() || m.signature.is_some() || m.key.is_some() {
                    return Err("an author field in a StrictNoSign message");
                }
                Ok(None)
            }
            Signing::StrictSign => {
                let from = PeerId::from_bytes(m.from.as_deref().ok_or("unsigned message (no from)")?).map_err(|_| "bad from")?;
                match m.seqno.as_deref() {
                    Some(s) if !s.is_empty() && s.len() <= 32 => {}
                    _ => return Err("missing or bad seqno"),
                }
                let sig = m.signature.as_deref().ok_or("unsigned message")?;
                let key = match &m.key {
                    Some(k) => {
                        let k = PublicKey::decode_protobuf(k).map_err(|_| "bad key")?;
                        if !from.matches(&k) {
                            return Err("key does not match from");
                        }
                        k
                    }
                    None => match self.author_keys.get(&from) {
                        Some(k) => k.clone(),
                        None => {
                            let k = from.inline_public_key().ok_or("no key for from")?;
                            if self.author_keys.len() >= AUTHOR_KEYS {
                                self.author_keys.clear();
                            }
                            self.author_keys.insert(from.clone(), k.clone());
                            k
                        }
                    },
                };
                if !key.verify(&m.signed_bytes(), sig) {
                    return Err("bad signature");
                }
                Ok(Some(from))
            }
        }
    }

    fn handle_message(&mut self, now: Instant, source: &PeerId, m: Message) {
        self.stats.messages_received += 1;
        let id = self.cfg.message_id.id(&m);
        let dup = self.seen.contains_key(&id);
        if let Some(p) = self.peers.get_mut(source) {
            p.stats.messages_received += 1;
            p.stats.duplicates += u64::from(dup);
            p.announced.remove(&id);
        }
        if !self.receiving.is_empty() {
            self.receiving.remove(&id);
        }
        if dup {
            self.stats.duplicates += 1;
            if let Some(s) = &mut self.score {
                s.duplicate(source, &id, now);
            }
            if let Some(p) = self.awaiting.get_mut(&id) {
                if p.have.len() < self.cfg.d_hi {
                    p.have.insert(source.clone());
                }
            }
            return;
        }
        // v1.2: tell our other v1.2 mesh peers at once, before validating, that we have it.
        if m.data().len() >= self.cfg.idontwant_threshold {
            if let Some(mesh) = self.mesh.get(&m.topic) {
                let to: Vec<PeerId> =
                    mesh.iter().filter(|p| *p != source && self.peers.get(*p).is_some_and(|x| x.kind.has_idontwant())).cloned().collect();
                self.send_refusal(&to, id.clone(), false);
            }
        }
        self.mark_seen(now, id.clone());
        let author = match self.validate(&m) {
            Ok(a) => a,
            Err(why) => {
                self.stats.invalid_messages += 1;
                if let Some(s) = &mut self.score {
                    s.reject(source, &id, &m.topic, now);
                }
                if let Some(p) = self.peers.get_mut(source) {
                    p.stats.invalid_messages += 1;
                }
                tracing::debug!(peer = %source, why, "gossipsub: invalid message rejected");
                return;
            }
        };
        if author.as_ref() == Some(&self.local) {
            // Our own message came back.
            return;
        }
        let msg = Arc::new(m);
        if self.validated.contains(&msg.topic) {
            if self.awaiting.len() >= self.cfg.max_pending_validation {
                self.stats.validation_dropped += 1;
                return;
            }
            let deadline = now + self.cfg.validation_timeout;
            let p = Pending { msg: msg.clone(), source: source.clone(), author: author.clone(), deadline, have: BTreeSet::new() };
            self.awaiting.insert(id.clone(), p);
            self.events.push_back(Event::Validate { id, source: source.clone(), author, message: msg });
            return;
        }
        self.accept(now, id, msg, source, author, &BTreeSet::new());
    }

    /// Marks `topic` validated (its messages wait for [`Router::report_validation`]) or not.
    pub fn set_validated(&mut self, topic: &str, on: bool) {
        if on {
            self.validated.insert(topic.to_string());
        } else {
            self.validated.remove(topic);
        }
    }

    /// The application's verdict on a message handed out as `Event::Validate`; false if it was not
    /// waiting (timed out, or unknown).
    pub fn report_validation(&mut self, now: Instant, id: &MessageId, verdict: Acceptance) -> bool {
        let Some(p) = self.awaiting.remove(id) else { return false };
        match verdict {
            Acceptance::Accept => {
                self.stats.validation_accepted += 1;
                self.accept(now, id.clone(), p.msg, &p.source, p.author, &p.have);
            }
            Acceptance::Reject => {
                self.stats.validation_rejected += 1;
                if let Some(s) = &mut self.score {
                    s.reject(&p.source, id, &p.msg.topic, now);
                }
                if let Some(x) = self.peers.get_mut(&p.source) {
                    x.stats.invalid_messages += 1;
                }
            }
            Acceptance::Ignore => self.stats.validation_ignored += 1,
        }
        self.flush_pending();
        true
    }

    /// A valid message: cached for gossip, delivered if we are subscribed, forwarded (not to the peers in
    /// `have`, which sent it to us too).
    fn accept(&mut self, now: Instant, id: MessageId, msg: Arc<Message>, source: &PeerId, author: Option<PeerId>, have: &BTreeSet<PeerId>) {
        if let Some(s) = &mut self.score {
            s.deliver(source, &id, &msg.topic, now);
        }
        self.mcache_put(id.clone(), msg.clone());
        if self.mesh.contains_key(&msg.topic) {
            self.stats.delivered += 1;
            self.events.push_back(Event::Message { id: id.clone(), source: source.clone(), author: author.clone(), message: msg.clone() });
        }
        self.forward(now, &id, &msg, source, author.as_ref(), have);
    }

    /// Sends a message on to the topic's mesh and its floodsub subscribers (and, when we are its first
    /// hop, up to `Config::flood_first_hop_peers` more subscribers: `Config::flood_first_hop`), except
    /// to its source, its author and peers that said IDONTWANT.
    fn forward(
        &mut self,
        now: Instant,
        id: &MessageId,
        msg: &Arc<Message>,
        source: &PeerId,
        author: Option<&PeerId>,
        have: &BTreeSet<PeerId>,
    ) {
        if self.cfg.adversary != Adversary::Honest {
            return;
        }
        let mut to: BTreeSet<PeerId> = self.mesh.get(&msg.topic).cloned().unwrap_or_default();
        if let Some(subs) = self.subscribers.get(&msg.topic) {
            to.extend(subs.iter().filter(|p| self.peers.get(*p).is_some_and(|x| x.kind == PeerKind::Floodsub)).cloned());
            if author == Some(source) && msg.data().len() <= self.cfg.flood_first_hop {
                // The publisher's first hop: on to other subscribers too, the nearest first, at most
                // `flood_first_hop_peers` (a node with a thousand peers must not send a thousand copies).
                let t = self.cfg.thresholds.publish;
                let mut extra: Vec<PeerId> =
                    subs.iter().filter(|p| !to.contains(*p) && *p != source && self.peer_score(p, now) >= t).cloned().collect();
                if extra.len() > self.cfg.flood_first_hop_peers {
                    self.stats.first_hop_capped += 1;
                    // Measured round trips first, nearest first; the rest after, in peer-id order (stable).
                    extra.sort_by_key(|p| self.rtt(p).map_or((1, Duration::ZERO), |r| (0, r)));
                    extra.truncate(self.cfg.flood_first_hop_peers);
                }
                to.extend(extra);
            }
        }
        for p in to {
            if &p == source || Some(&p) == author {
                continue;
            }
            if have.contains(&p) {
                self.stats.duplicates_spared += 1;
                continue;
            }
            if let Some(x) = self.peers.get_mut(&p).filter(|x| x.dont_want.contains_key(id)) {
                x.stats.idontwant_saved += 1;
                self.stats.idontwant_saved += 1;
                continue;
            }
            self.send_message(&p, id, msg);
        }
    }

    /// IDONTWANT, or (`receiving`) v1.4's IMRECEIVING, which is honoured the same way: queued copies
    /// taken back, later forwards left out. Both share the per-heartbeat cap.
    fn handle_idontwant(&mut self, from: &PeerId, ids: Vec<MessageId>, receiving: bool) {
        let until = self.ticks + self.cfg.idontwant_heartbeats;
        let Some(p) = self.peers.get_mut(from) else { return };
        let s = &mut self.stats;
        // The counters this kind bumps, chosen once: (received, cancelled) in total and for the peer.
        let (received, cancelled, p_received, p_cancelled) = if receiving {
            (
                &mut s.imreceiving_received,
                &mut s.imreceiving_cancelled,
                &mut p.stats.imreceiving_received,
                &mut p.stats.imreceiving_cancelled,
            )
        } else {
            (&mut s.idontwant_received, &mut s.idontwant_cancelled, &mut p.stats.idontwant_received, &mut p.stats.idontwant_cancelled)
        };
        for id in ids {
            *received += 1;
            *p_received += 1;
            if p.idontwant_taken >= self.cfg.max_idontwant_per_heartbeat {
                s.idontwant_ignored += 1;
                continue;
            }
            p.idontwant_taken += 1;
            if let Some(len) = p.queue.cancel(&id) {
                *cancelled += 1;
                *p_cancelled += 1;
                s.messages_sent -= 1;
                s.message_bytes_sent -= len as u64;
                p.stats.messages_sent -= 1;
            }
            let e = p.dont_want.entry(id).or_insert(until);
            *e = (*e).max(until);
        }
    }

    /// v1.3: the peer's extensions, taken once (a repeat is ignored and counted: the spec allows one per
    /// stream, and a peer that reopens its stream sends it again). Both supporting the test extension,
    /// we send its message.
    fn handle_extensions(&mut self, from: &PeerId, e: Extensions) {
        let test = self.cfg.test_extension;
        let Some(p) = self.peers.get_mut(from) else { return };
        if p.stats.extensions.is_some() || !p.kind.has_extensions() {
            self.stats.extensions_repeated += 1;
            tracing::debug!(peer = %from, "gossipsub: extensions message ignored (repeated, or not a v1.3 peer)");
            return;
        }
        p.stats.extensions = Some(e);
        self.stats.extensions_received += 1;
        if test && e.test {
            self.send_rpc(from, &Rpc { test_extension: true, ..Rpc::default() });
        }
    }

    /// v1.4: a mesh peer announces a large message. If we have not seen it, we tell our other mesh
    /// peers that advertised large-message handling IMRECEIVING (once per message), and wait for it
    /// before asking anyone with IWANT.
    fn handle_preamble(&mut self, now: Instant, from: &PeerId, pre: Preamble) {
        self.stats.preambles_received += 1;
        let max = self.cfg.max_preambles_per_peer;
        let in_mesh = self.mesh.get(&pre.topic).is_some_and(|m| m.contains(from));
        let Some(p) = self.peers.get_mut(from) else { return };
        p.stats.preambles_received += 1;
        if !self.cfg.large_messages || !in_mesh || p.announced.len() >= max {
            self.stats.preambles_ignored += 1;
            return;
        }
        if self.seen.contains_key(&pre.id) {
            return;
        }
        // A conservative wait: the configured one, plus the message at 1 MB/s.
        let until = now + self.cfg.preamble_wait + Duration::from_micros(pre.size.min(self.cfg.limits.max_rpc_len as u64));
        p.announced.insert(pre.id.clone(), until);
        if self.receiving.insert(pre.id.clone(), until).is_some() {
            return;
        }
        let to: Vec<PeerId> = self.mesh[&pre.topic]
            .iter()
            .filter(|q| *q != from && self.peers.get(*q).is_some_and(|x| self.large_messages_with(x)))
            .cloned()
            .collect();
        if to.is_empty() {
            return;
        }
        self.send_refusal(&to, pre.id, true);
    }

    /// IDONTWANT, or (`receiving`) IMRECEIVING, for one message to each of `to`, counted. Its own
    /// frame, ahead of anything queued: it is small and has to overtake the copies it spares.
    fn send_refusal(&mut self, to: &[PeerId], id: MessageId, receiving: bool) {
        let control = if receiving {
            Control { imreceiving: vec![id], ..Control::default() }
        } else {
            Control { idontwant: vec![id], ..Control::default() }
        };
        let rpc = Rpc { control, ..Rpc::default() };
        for q in to {
            self.send_rpc(q, &rpc);
            if let Some(x) = self.peers.get_mut(q) {
                *if receiving { &mut x.stats.imreceiving_sent } else { &mut x.stats.idontwant_sent } += 1;
            }
        }
        *if receiving { &mut self.stats.imreceiving_sent } else { &mut self.stats.idontwant_sent } += to.len() as u64;
    }

    fn in_backoff(&self, now: Instant, topic: &str, peer: &PeerId) -> bool {
        self.backoff.get(&(topic.to_string(), peer.clone())).is_some_and(|t| *t > now)
    }

    fn set_backoff(&mut self, now: Instant, topic: &str, peer: &PeerId, d: Duration) {
        let until = now + d;
        let e = self.backoff.entry((topic.to_string(), peer.clone())).or_insert(until);
        *e = (*e).max(until);
    }

    fn handle_graft(&mut self, rng: &mut Rng, now: Instant, from: &PeerId, topic: String) {
        self.stats.grafts_received += 1;
        let Some(kind) = self.peers.get(from).map(|p| p.kind) else { return };
        let Some(mesh) = self.mesh.get(&topic) else {
            // Not our topic: refuse without peer exchange (it would leak our peers).
            self.prune(now, from, &topic, self.cfg.prune_backoff, None);
            return;
        };
        if mesh.contains(from) || !kind.is_meshsub() {
            return;
        }
        if self.in_backoff(now, &topic, from) {
            // Grafting during a backoff: refused, penalized, and the backoff restarts.
            self.penalize(from);
            self.prune(now, from, &topic, self.cfg.prune_backoff, None);
            return;
        }
        if self.peer_score(from, now) < 0.0 {
            self.prune(now, from, &topic, self.cfg.prune_backoff, None);
            return;
        }
        let outbound = self.peers.get(from).is_some_and(|p| p.outbound);
        if mesh.len() >= self.cfg.d_hi && !outbound {
            self.prune(now, from, &topic, self.cfg.prune_backoff, Some(rng));
            return;
        }
        self.mesh_insert(now, &topic, from);
    }

    fn handle_prune(&mut self, now: Instant, from: &PeerId, p: Prune) {
        self.stats.prunes_received += 1;
        if self.mesh.contains_key(&p.topic) {
            self.mesh_remove(now, &p.topic, from);
        }
        let d = match p.backoff {
            Some(s) => Duration::from_secs(s).min(self.cfg.max_prune_backoff),
            None => self.cfg.prune_backoff,
        };
        // Only for topics we are in or publish to (the map stays bounded by our own topics × peers).
        if self.mesh.contains_key(&p.topic) || self.fanout.contains_key(&p.topic) {
            self.set_backoff(now, &p.topic, from, d);
        }
        // Peer exchange (v1.1): only from a peer whose score reaches `accept_px` (a sybil's PRUNE must
        // not steer our connections); peers we know or that are invalid are left out.
        if p.peers.is_empty() {
            return;
        }
        if self.score.is_some() && self.peer_score(from, now) < self.cfg.thresholds.accept_px {
            self.stats.px_ignored_score += 1;
            return;
        }
        for PxPeer { id, record } in p.peers.into_iter().take(self.cfg.prune_peers) {
            match PeerId::from_bytes(&id) {
                Ok(id) if id != self.local && !self.peers.contains_key(&id) && self.px.len() < MAX_PX_QUEUE => {
                    if !self.px.iter().any(|(q, _)| *q == id) {
                        self.px.push((id, record));
                        self.stats.px_taken += 1;
                    }
                }
                _ => self.stats.px_skipped += 1,
            }
        }
    }

    /// Peers offered by peer exchange since the last call, with their signed records when sent: the
    /// service connects to them.
    pub fn take_px(&mut self) -> Vec<(PeerId, Option<Vec<u8>>)> {
        std::mem::take(&mut self.px)
    }

    /// Counts what the service did with a peer from `take_px`.
    pub fn px_outcome(&mut self, outcome: PxOutcome) {
        match outcome {
            PxOutcome::Dialed => self.stats.px_dialed += 1,
            PxOutcome::NoAddress => self.stats.px_no_address += 1,
            PxOutcome::BadRecord => self.stats.px_bad_record += 1,
        }
    }

    fn handle_ihave(&mut self, rng: &mut Rng, now: Instant, from: &PeerId, ihave: Vec<IHave>) {
        if ihave.is_empty() {
            return;
        }
        let Some(p) = self.peers.get_mut(from) else { return };
        p.ihave_msgs += 1;
        if p.ihave_msgs > self.cfg.max_ihave_messages || p.ihave_asked >= self.cfg.max_ihave_length {
            self.stats.ihave_ignored += 1;
            return;
        }
        // A set: an IHAVE may repeat ids (a linear check made a 1,000-id flood quadratic).
        let mut want: BTreeSet<MessageId> = BTreeSet::new();
        for h in ihave {
            if !self.mesh.contains_key(&h.topic) {
                continue;
            }
            for id in h.ids {
                if self.seen.contains_key(&id) {
                    continue;
                }
                // Announced to us and on its way (v1.4): asked for only once the wait is over.
                if self.receiving.get(&id).is_some_and(|t| *t > now) {
                    self.stats.iwant_deferred += 1;
                    continue;
                }
                want.insert(id);
            }
        }
        let want: Vec<MessageId> = want.into_iter().collect();
        let p = self.peers.get_mut(from).expect("checked");
        let room = self.cfg.max_ihave_length - p.ihave_asked;
        let want = if want.len() > room { choose(rng, want, room) } else { want };
        if want.is_empty() {
            return;
        }
        p.ihave_asked += want.len();
        self.stats.iwant_sent += want.len() as u64;
        if let Some(s) = &mut self.score {
            // One promise per IWANT (go's way): the first id stands for the rest.
            s.promise(from, &want[0], now + self.cfg.iwant_followup);
        }
        self.pending.entry(from.clone()).or_default().iwant.extend(want);
    }

    fn handle_iwant(&mut self, from: &PeerId, ids: Vec<MessageId>) {
        if self.cfg.adversary != Adversary::Honest {
            return;
        }
        for id in ids {
            let Some(e) = self.mcache.msgs.get_mut(&id) else { continue };
            let n = e.served.entry(from.clone()).or_insert(0);
            if *n >= self.cfg.gossip_retransmission {
                continue;
            }
            *n += 1;
            let msg = e.msg.clone();
            self.stats.iwant_served += 1;
            self.stats.messages_sent += 1;
            self.stats.message_bytes_sent += wire::message_frame_len(&msg) as u64;
            let mut f = Vec::with_capacity(wire::message_frame_len(&msg));
            wire::encode_message(&msg, &mut f);
            self.enqueue(from, f, true);
        }
    }

    // ---------------- the heartbeat ----------------

    /// Runs the heartbeat if it is due.
    pub fn on_timeout(&mut self, rng: &mut Rng, now: Instant) {
        if now < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = now + self.cfg.heartbeat_interval;
        self.heartbeat(rng, now);
    }

    /// Peers of `topic` that may join its mesh: meshsub, subscribed, not in `except`, not backing off,
    /// outbound only when asked.
    fn graft_candidates(&self, now: Instant, topic: &str, except: &BTreeSet<PeerId>, outbound_only: bool) -> Vec<PeerId> {
        let Some(subs) = self.subscribers.get(topic) else { return Vec::new() };
        subs.iter()
            .filter(|p| !except.contains(*p) && !self.in_backoff(now, topic, p) && self.peer_score(p, now) >= 0.0)
            .filter(|p| self.peers.get(*p).is_some_and(|x| x.kind.is_meshsub() && (!outbound_only || x.outbound)))
            .cloned()
            .collect()
    }

    fn heartbeat(&mut self, rng: &mut Rng, now: Instant) {
        self.stats.heartbeats += 1;
        self.ticks += 1;
        if let Some(s) = &mut self.score {
            s.refresh(now);
        }
        let topics: Vec<String> = self.mesh.keys().cloned().collect();
        for t in &topics {
            let before = self.mesh[t].clone();
            let mut mesh = before.clone();
            let mut grafts = Vec::new();
            // Negative scores leave the mesh (no peer exchange for them).
            for p in mesh.iter().filter(|p| self.peer_score(p, now) < 0.0).cloned().collect::<Vec<_>>() {
                mesh.remove(&p);
                self.stats.pruned_for_score += 1;
                self.prune(now, &p, t, self.cfg.prune_backoff, None);
            }
            // Too few: graft subscribers at random.
            if mesh.len() < self.cfg.d_lo {
                let c = self.graft_candidates(now, t, &mesh, false);
                grafts.extend(self.pick_grafts(rng, &mesh, c, self.cfg.d - mesh.len()));
                mesh.extend(grafts.iter().cloned());
            }
            // Too many: keep D, the d_score best by score and the rest at random, at least d_out of them
            // outbound.
            if mesh.len() > self.cfg.d_hi {
                let shuffled = choose(rng, mesh.iter().cloned().collect(), mesh.len());
                let mut scored: Vec<(f64, PeerId)> = shuffled.into_iter().map(|p| (self.peer_score(&p, now), p)).collect();
                // Stable: equal scores keep their random order.
                scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                let mut all: Vec<PeerId> = scored.into_iter().map(|(_, p)| p).collect();
                let best: Vec<PeerId> = all.drain(..self.cfg.d_score.min(all.len())).collect();
                // Then the nearest (`d_near` places, counting near peers already kept by score), then
                // the rest at random.
                let near_all = self.by_rtt(&best.iter().chain(all.iter()).cloned().collect::<Vec<_>>());
                let near: Vec<PeerId> = near_all.into_iter().take(self.cfg.d_near).filter(|p| !best.contains(p)).collect();
                all.retain(|p| !near.contains(p));
                let n = all.len();
                let ranked: Vec<PeerId> = best.into_iter().chain(near).chain(choose(rng, all, n)).collect();
                let mut keep: BTreeSet<PeerId> =
                    ranked.iter().filter(|p| self.peers.get(*p).is_some_and(|x| x.outbound)).take(self.cfg.d_out).cloned().collect();
                let room = self.cfg.d.saturating_sub(keep.len());
                let others: Vec<PeerId> = ranked.iter().filter(|p| !keep.contains(*p)).take(room).cloned().collect();
                keep.extend(others);
                for p in mesh.difference(&keep).cloned().collect::<Vec<_>>() {
                    grafts.retain(|g| g != &p);
                    self.prune(now, &p, t, self.cfg.prune_backoff, Some(&mut *rng));
                }
                mesh = keep;
            }
            // Too few outbound: graft outbound peers.
            let outbound = mesh.iter().filter(|p| self.peers.get(*p).is_some_and(|x| x.outbound)).count();
            if mesh.len() >= self.cfg.d_lo && outbound < self.cfg.d_out {
                let c = self.graft_candidates(now, t, &mesh, true);
                let add = choose(rng, c, self.cfg.d_out - outbound);
                mesh.extend(add.iter().cloned());
                grafts.extend(add);
            }
            // Opportunistic grafting: a mesh of poor scorers takes up to 2 better peers now and then.
            if self.score.is_some() && self.ticks.is_multiple_of(self.cfg.opportunistic_graft_ticks.max(1)) && mesh.len() > 1 {
                let mut scores: Vec<f64> = mesh.iter().map(|p| self.peer_score(p, now)).collect();
                scores.sort_by(f64::total_cmp);
                let median = scores[scores.len() / 2];
                if median < self.cfg.thresholds.opportunistic_graft {
                    let c: Vec<PeerId> =
                        self.graft_candidates(now, t, &mesh, false).into_iter().filter(|p| self.peer_score(p, now) > median).collect();
                    let add = choose(rng, c, 2);
                    self.stats.opportunistic_grafts += add.len() as u64;
                    mesh.extend(add.iter().cloned());
                    grafts.extend(add);
                }
            }
            for p in grafts {
                self.pending.entry(p).or_default().graft.push(t.clone());
                self.stats.grafts_sent += 1;
            }
            self.mesh.insert(t.clone(), before.intersection(&mesh).cloned().collect());
            for p in mesh.difference(&before).cloned().collect::<Vec<_>>() {
                self.mesh_insert(now, t, &p);
            }
        }
        // Fanout: forget idle topics, refill the rest.
        let ttl = self.cfg.fanout_ttl;
        self.fanout.retain(|_, f| f.last_publish + ttl > now);
        let fan: Vec<String> = self.fanout.keys().cloned().collect();
        for t in &fan {
            let subs = self.subscribers.get(t).cloned().unwrap_or_default();
            let f = self.fanout.get_mut(t).expect("listed");
            f.peers.retain(|p| subs.contains(p));
            if f.peers.len() < self.cfg.d {
                let have = f.peers.clone();
                let c = self.graft_candidates(now, t, &have, false);
                let add = choose(rng, c, self.cfg.d - have.len());
                self.fanout.get_mut(t).expect("listed").peers.extend(add);
            }
        }
        // Gossip: IHAVE of recent messages to peers outside the mesh.
        for t in topics.iter().chain(fan.iter()) {
            self.emit_gossip(rng, now, t);
        }
        self.attack(rng);
        // Forget what has expired.
        let ticks = self.ticks;
        for p in self.peers.values_mut() {
            p.ihave_msgs = 0;
            p.ihave_asked = 0;
            p.idontwant_taken = 0;
            p.dont_want.retain(|_, until| *until > ticks);
        }
        // v1.4: announcers that did not deliver within the wait pay a behaviour penalty.
        let mut broken = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let before = p.announced.len();
            p.announced.retain(|_, until| *until > now);
            broken.extend(std::iter::repeat_n(id.clone(), before - p.announced.len()));
        }
        for id in broken {
            self.stats.preambles_broken += 1;
            tracing::debug!(peer = %id, "gossipsub: a PREAMBLE's message did not follow");
            self.penalize(&id);
        }
        self.receiving.retain(|_, until| *until > now);
        self.backoff.retain(|_, t| *t > now);
        let before = self.awaiting.len();
        self.awaiting.retain(|_, p| p.deadline > now);
        self.stats.validation_timeouts += (before - self.awaiting.len()) as u64;
        while let Some((t, _)) = self.seen_order.front() {
            if *t + self.cfg.seen_ttl > now {
                break;
            }
            let (_, id) = self.seen_order.pop_front().expect("front exists");
            self.seen.remove(&id);
        }
        self.mcache_shift();
        self.flush_pending();
    }

    fn emit_gossip(&mut self, rng: &mut Rng, now: Instant, topic: &str) {
        if self.cfg.adversary != Adversary::Honest {
            return;
        }
        let mut ids: Vec<MessageId> = Vec::new();
        for w in self.mcache.windows.iter().take(self.cfg.history_gossip) {
            ids.extend(w.iter().filter(|id| self.mcache.msgs.get(*id).is_some_and(|e| e.msg.topic == topic)).cloned());
        }
        if ids.is_empty() {
            return;
        }
        let exclude: BTreeSet<PeerId> =
            self.mesh.get(topic).cloned().or_else(|| self.fanout.get(topic).map(|f| f.peers.clone())).unwrap_or_default();
        let cands: Vec<PeerId> = self
            .subscribers
            .get(topic)
            .map(|s| {
                s.iter()
                    .filter(|p| !exclude.contains(*p) && self.peers.get(*p).is_some_and(|x| x.kind.is_meshsub()))
                    .filter(|p| self.peer_score(p, now) >= self.cfg.thresholds.gossip)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let n = self.cfg.d_lazy.max((self.cfg.gossip_factor * cands.len() as f64) as usize);
        let ids = if ids.len() > self.cfg.max_ihave_length { choose(rng, ids, self.cfg.max_ihave_length) } else { ids };
        for p in choose(rng, cands, n) {
            self.pending.entry(p).or_default().ihave.push(IHave { topic: topic.to_string(), ids: ids.clone() });
            self.stats.ihave_sent += 1;
        }
    }

    /// Switches this node's behaviour (a covert flash: honest until now).
    pub fn set_adversary(&mut self, a: Adversary) {
        self.cfg.adversary = a;
    }

    /// What an attacking node sends every heartbeat.
    fn attack(&mut self, rng: &mut Rng) {
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        let topics: Vec<String> = self.subscribers.keys().chain(self.mesh.keys()).cloned().collect::<BTreeSet<_>>().into_iter().collect();
        match self.cfg.adversary {
            Adversary::Honest | Adversary::Drop => {}
            Adversary::Spam(n) => {
                for t in &topics {
                    for _ in 0..n {
                        let mut seq = [0u8; 8];
                        rng.fill_bytes(&mut seq);
                        let m =
                            Message::new(Some(self.local.to_bytes()), seq.to_vec(), Some(seq.to_vec()), t.clone(), Some(vec![0; 64]), None);
                        let id = self.cfg.message_id.id(&m);
                        for p in &peers {
                            self.send_message(p, &id, &m);
                        }
                    }
                }
            }
            Adversary::FloodControl => {
                // 1,000 unknown ids a heartbeat per topic (within the decoder's per-RPC limit; a victim
                // without scoring answers each with an IWANT, up to its own per-heartbeat cap).
                let per_topic = 1000.min(self.cfg.max_ihave_length.saturating_sub(100) / topics.len().max(1));
                let ids: Vec<MessageId> = (0..per_topic)
                    .map(|_| {
                        let mut b = [0u8; 20];
                        rng.fill_bytes(&mut b);
                        Arc::from(&b[..])
                    })
                    .collect();
                for p in &peers {
                    let c = Control {
                        ihave: topics.iter().map(|t| IHave { topic: t.clone(), ids: ids.clone() }).collect(),
                        iwant: ids[..ids.len().min(100)].to_vec(),
                        graft: topics.clone(),
                        ..Control::default()
                    };
                    self.send_rpc(p, &Rpc { control: c, ..Rpc::default() });
                }
            }
        }
    }

    // ---------------- sending ----------------

    /// Queues a PRUNE (with our backoff to v1.1 peers) and starts our own backoff for the peer. With
    /// `px` (the randomness to choose with), the PRUNE offers up to `prune_peers` other subscribers of
    /// non-negative score, chosen at random (as go does: an attacker cannot predict whom a node will
    /// offer), each with its signed record when identify brought one.
    fn prune(&mut self, now: Instant, peer: &PeerId, topic: &str, backoff: Duration, px: Option<&mut Rng>) {
        let Some(kind) = self.peers.get(peer).map(|p| p.kind) else { return };
        // A backoff is kept only for our own topics: GRAFTs for arbitrary topics must not grow a map.
        if let Some(s) = &mut self.score {
            s.prune(peer, topic, now);
        }
        if let Some(m) = self.mesh.get_mut(topic) {
            m.remove(peer);
            self.set_backoff(now, topic, peer, backoff);
        }
        let mut pr = Prune { topic: topic.to_string(), peers: Vec::new(), backoff: None };
        if kind.has_px() {
            pr.backoff = Some(backoff.as_secs());
            if let Some(rng) = px {
                let cands: Vec<PeerId> = self
                    .subscribers
                    .get(topic)
                    .map(|s| s.iter().filter(|p| *p != peer && self.peer_score(p, now) >= 0.0).cloned().collect())
                    .unwrap_or_default();
                pr.peers = choose(rng, cands, self.cfg.prune_peers)
                    .into_iter()
                    .map(|p| PxPeer { id: p.to_bytes(), record: self.peers.get(&p).and_then(|x| x.record.clone()) })
                    .collect();
            }
        }
        self.pending.entry(peer.clone()).or_default().prune.push(pr);
        self.stats.prunes_sent += 1;
    }

    fn send_rpc(&mut self, peer: &PeerId, rpc: &Rpc) {
        let mut f = Vec::new();
        wire::encode(rpc, &mut f);
        self.count_control(&rpc.control);
        self.enqueue(peer, f, false);
    }

    fn send_message(&mut self, peer: &PeerId, id: &MessageId, msg: &Message) {
        let len = wire::message_frame_len(msg);
        let Some(p) = self.peers.get_mut(peer) else { return };
        if p.queue.messages.contains_key(id) {
            return;
        }
        if p.queue.urgent_bytes + len > self.cfg.max_queue_bytes {
            self.stats.dropped_messages += 1;
            return;
        }
        self.stats.messages_sent += 1;
        self.stats.message_bytes_sent += len as u64;
        p.stats.messages_sent += 1;
        let q = &mut p.queue;
        q.urgent_bytes += len;
        q.messages.insert(id.clone(), len);
        // Taken back but still in the queue: it goes in its old place.
        if q.cancelled.remove(id) {
            return;
        }
        let mut f = Vec::with_capacity(len);
        wire::encode_message(msg, &mut f);
        let large = self.cfg.stagger > 0 && msg.data().len() >= self.cfg.stagger_threshold;
        let preamble = (msg.data().len() >= self.cfg.preamble_threshold
            && self.cfg.large_messages
            && p.stats.extensions.is_some_and(|e| e.large_messages))
        .then(|| {
            let mut b = Vec::new();
            let pre = Preamble { id: id.clone(), size: msg.data().len() as u64, topic: msg.topic.clone() };
            wire::encode(&Rpc { control: Control { preamble: vec![pre], ..Control::default() }, ..Rpc::default() }, &mut b);
            b
        });
        let q = &mut p.queue;
        q.large += usize::from(large);
        q.urgent.push_back(Queued { frame: f, id: Some(id.clone()), large, preamble });
    }

    /// Queues a frame: gossip within its own cap (dropped beyond), control always.
    fn enqueue(&mut self, peer: &PeerId, f: Vec<u8>, gossip: bool) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        let q = &mut p.queue;
        if gossip {
            if q.gossip_bytes + f.len() > self.cfg.max_gossip_queue_bytes {
                self.stats.dropped_gossip += 1;
                return;
            }
            q.gossip_bytes += f.len();
            q.gossip.push_back(f);
        } else {
            // A peer that stopped reading while it keeps asking (GRAFTs answered with PRUNEs, IHAVEs with
            // IWANTs) must not grow our memory: beyond the cap its control is dropped too.
            if q.urgent_bytes + f.len() > self.cfg.max_queue_bytes {
                self.stats.dropped_control += 1;
                return;
            }
            q.push_control(f);
        }
    }

    /// Sends the control batched during this call, one RPC per peer (IHAVE as gossip, the rest at once).
    fn flush_pending(&mut self) {
        for (peer, mut c) in std::mem::take(&mut self.pending) {
            let ihave = std::mem::take(&mut c.ihave);
            if !c.is_empty() {
                self.send_rpc(&peer, &Rpc { control: c, ..Rpc::default() });
            }
            if !ihave.is_empty() {
                let mut f = Vec::new();
                let c = Control { ihave, ..Control::default() };
                self.count_control(&c);
                wire::encode(&Rpc { control: c, ..Rpc::default() }, &mut f);
                self.enqueue(&peer, f, true);
            }
        }
    }

    fn count_control(&mut self, c: &Control) {
        let ids = |v: &[MessageId]| v.iter().map(|i| i.len() as u64 + 2).sum::<u64>();
        let s = &mut self.stats;
        s.ihave_bytes_sent += c.ihave.iter().map(|h| h.topic.len() as u64 + 4 + ids(&h.ids)).sum::<u64>();
        s.iwant_bytes_sent += if c.iwant.is_empty() { 0 } else { ids(&c.iwant) + 4 };
        s.idontwant_bytes_sent += if c.idontwant.is_empty() { 0 } else { ids(&c.idontwant) + 4 };
        s.preamble_bytes_sent += c.imreceiving.iter().map(|i| i.len() as u64 + 6).sum::<u64>();
        s.graft_prune_bytes_sent += c.graft.iter().map(|t| t.len() as u64 + 4).sum::<u64>()
            + c.prune
                .iter()
                .map(|p| {
                    p.topic.len() as u64
                        + 8
                        + p.peers.iter().map(|x| (x.id.len() + x.record.as_ref().map_or(0, |r| r.len() + 4)) as u64 + 4).sum::<u64>()
                })
                .sum::<u64>();
    }

    /// Whether frames wait for `peer`.
    pub fn has_frames(&self, peer: &PeerId) -> bool {
        self.queued(peer) > 0
    }

    /// Takes queued frames for `peer`, whole frames up to about `max` bytes (at least one), control and
    /// messages before gossip. A large message (see [`Config::stagger`]) travels alone, and only when
    /// `large` allows it; otherwise the frames queued around it go first. The flag says whether the
    /// batch is a large message.
    pub fn take_frames(&mut self, peer: &PeerId, max: usize, large: bool) -> Option<(Vec<u8>, bool)> {
        let q = &mut self.peers.get_mut(peer)?.queue;
        let (mut preambles, mut preamble_bytes) = (0, 0);
        let mut out: Vec<u8> = Vec::new();
        // Large messages passed over, to go back in front in their order.
        let mut held: VecDeque<Queued> = VecDeque::new();
        let mut took_large = false;
        while out.is_empty() || out.len() < max {
            let f = if let Some(e) = q.urgent.pop_front() {
                if let Some(id) = &e.id {
                    if q.cancelled.remove(id) {
                        q.large -= usize::from(e.large);
                        continue;
                    }
                    if e.large && (!large || !out.is_empty()) {
                        held.push_back(e);
                        continue;
                    }
                    q.messages.remove(id);
                }
                q.urgent_bytes -= e.frame.len();
                // v1.4: its PREAMBLE right ahead of it, so the peer knows of it from its first bytes.
                if let Some(pre) = e.preamble {
                    preambles += 1;
                    preamble_bytes += pre.len() as u64;
                    out.extend_from_slice(&pre);
                }
                if e.large {
                    // Alone: nothing was taken before it (see above), nothing after it.
                    took_large = true;
                    q.large -= 1;
                    out.extend_from_slice(&e.frame);
                    break;
                }
                e.frame
            } else if let Some(f) = q.gossip.pop_front() {
                q.gossip_bytes -= f.len();
                f
            } else {
                break;
            };
            if out.is_empty() {
                out = f;
            } else {
                out.extend_from_slice(&f);
            }
        }
        // Back in front, in their order: O(held), not O(queue) (a large message waiting for its turn is
        // passed over on every call).
        while let Some(e) = held.pop_back() {
            q.urgent.push_front(e);
        }
        self.stats.preambles_sent += preambles;
        self.stats.preamble_bytes_sent += preamble_bytes;
        (!out.is_empty()).then_some((out, took_large))
    }

    // ---------------- caches ----------------

    fn mark_seen(&mut self, now: Instant, id: MessageId) {
        if self.seen.len() >= self.cfg.max_seen {
            if let Some((_, old)) = self.seen_order.pop_front() {
                self.seen.remove(&old);
                self.stats.seen_evicted += 1;
            }
        }
        if self.seen.insert(id.clone(), now).is_none() {
            self.seen_order.push_back((now, id));
        }
    }

    fn mcache_put(&mut self, id: MessageId, msg: Arc<Message>) {
        if self.mcache.msgs.contains_key(&id) {
            return;
        }
        if self.mcache.bytes + msg.raw.len() > self.cfg.max_cache_bytes {
            // Still delivered and forwarded; only not offered in gossip.
            self.stats.cache_full += 1;
            return;
        }
        self.mcache.bytes += msg.raw.len();
        self.mcache.windows.front_mut().expect("one window at least").push(id.clone());
        self.mcache.msgs.insert(id, CacheEntry { msg, served: BTreeMap::new() });
    }

    fn mcache_shift(&mut self) {
        while self.mcache.windows.len() >= self.cfg.history_length.max(1) {
            for id in self.mcache.windows.pop_back().expect("not empty") {
                if let Some(e) = self.mcache.msgs.remove(&id) {
                    self.mcache.bytes -= e.msg.raw.len();
                }
            }
        }
        self.mcache.windows.push_front(Vec::new());
    }
}

#[cfg(test)]
mod tests;
