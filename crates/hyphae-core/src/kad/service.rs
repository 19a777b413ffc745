//! Kademlia as a node service. Serves requests while in server mode (otherwise the protocol is neither
//! announced nor routed here); runs lookups as [`Query`] machines, one request per stream (as
//! rust-libp2p does), dialing peers it is not connected to through the node's outbox.

use super::query::Query;
use super::store::{RecordError, Store};
use super::table::{Insert, Table, TableConfig};
use super::wire::{self, Connection};
use super::{Config, Event, KadPeer, Key, Mode, Msg, MsgType, Outcome, PeerInfo, QueryError, QueryId, Record, Stats, PROTOCOL_ID};
use crate::identity::PeerId;
use crate::multiaddr::Multiaddr;
use crate::service::{ConnId, ConnectionEvent, Cx, Event as NodeEvent, Service, StreamEvent};
use crate::stream::{OpenError, StreamId, Violation, ViolationKind};
use crate::time::{Duration, Instant};
use rand_core::RngCore;
use std::collections::{BTreeMap, BTreeSet};

/// Buckets refreshed with a random key each round, up to this common prefix length (go goes to 15;
/// deeper buckets are the peers around us, which the self-lookup of every round refreshes).
const MAX_REFRESH_CPL: usize = 8;
/// Draws for a key that lands in a bucket (2^(cpl+1) expected: 512 at cpl 8).
const REFRESH_KEY_DRAWS: usize = 4096;
/// Bootstrap peers remembered for joining again.
const MAX_SEEDS: usize = 16;
/// How often expired records and providers are dropped.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// `now + base`, plus a random part of up to `base / divisor` (so nodes started together spread out).
fn jittered(cx: &mut Cx<'_>, base: Duration, divisor: u64) -> Instant {
    let span = (base.as_nanos() as u64 / divisor).max(1);
    cx.now + base + Duration::from_nanos(cx.rng.next_u64() % span)
}

/// ADD_PROVIDER for `key`, announcing `local` at our listen addresses.
fn add_provider(local: &PeerId, cx: &Cx<'_>, key: &[u8]) -> Msg {
    let mut m = Msg::new(MsgType::AddProvider, key.to_vec());
    m.providers.push(KadPeer { id: local.clone(), addrs: cx.local.listen_addrs.clone(), connection: Connection::Connected });
    m
}

/// What a query is for.
#[derive(Debug, Clone)]
enum Kind {
    Bootstrap,
    FindPeer(PeerId),
    Closest,
    GetProviders { limit: usize, seen: BTreeSet<PeerId> },
    GetValue { quorum: usize, found: usize },
    PutValue(Record),
    Provide,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Lookup,
    /// Sending the record / provider message to the closest peers: how many are still in flight.
    Storing {
        pending: usize,
        stored: usize,
    },
}

struct QueryState {
    kind: Kind,
    key: Vec<u8>,
    q: Query,
    phase: Phase,
    deadline: Instant,
    found: Option<PeerInfo>,
    /// A provide run optimistically (`Config::optimistic_provide`).
    opt: Option<Optimistic>,
}

/// Optimistic provide's state: thresholds are distances as fractions of the keyspace.
struct Optimistic {
    /// A peer this close is among the k closest with 90% certainty: it gets the record at once.
    individual: f64,
    /// The k closest known this close on average: the lookup may end.
    set: f64,
    /// Peers sent (or being sent) the ADD_PROVIDER, and how many of those sends ended, how many well.
    scheduled: BTreeSet<PeerId>,
    done: usize,
    stored: usize,
}

/// Optimistic provide's certainties, as go-libp2p-kad-dht has them: a peer stored to early is among
/// the k closest with this probability ...
const OPT_INDIVIDUAL_CERTAINTY: f64 = 0.9;
/// ... the chance that the set rule is too strict (the k closest really are farther than it wants) ...
const OPT_SET_STRICTNESS: f64 = 0.1;
/// ... and the share of ADD_PROVIDERs that must be out before the provide reports done (15 of 20).
const OPT_RETURN_RATIO: f64 = 0.75;

impl Optimistic {
    /// The thresholds for a network of `size` DHT servers and bucket size `k` (go's: the distance of
    /// the k-th closest of `size` uniform peers is Erlang(k)/size; the mean of the k closest is judged
    /// against Erlang(k/2 + 1)/size). `None` without an estimate.
    fn new(size: f64, k: usize) -> Option<Optimistic> {
        if size < 1.0 || k == 0 {
            return None;
        }
        let k32 = u32::try_from(k).unwrap_or(u32::MAX);
        let individual = crate::kad::query::erlang_quantile(k32, 1.0 - OPT_INDIVIDUAL_CERTAINTY) / size;
        let set = crate::kad::query::erlang_quantile(k32 / 2 + 1, 1.0 - OPT_SET_STRICTNESS) / size;
        Some(Optimistic { individual, set, scheduled: BTreeSet::new(), done: 0, stored: 0 })
    }

    /// How many sends must have ended before the provide reports done.
    fn return_at(&self, k: usize) -> usize {
        ((k as f64 * OPT_RETURN_RATIO).ceil() as usize).min(self.scheduled.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    Dialing,
    Opening(ConnId),
    Sent(ConnId, StreamId),
    /// Its stream is released or gone: nothing left to reset (the request ends right after).
    Detached,
}

struct Request {
    peer: PeerId,
    query: QueryId,
    msg: Msg,
    /// PUT_VALUE, GET_*, FIND_NODE are answered; ADD_PROVIDER is not.
    expect_reply: bool,
    /// A store (PUT_VALUE, ADD_PROVIDER to the closest), not a lookup request. An optimistic provide's
    /// stores outlive its query: the query reports done before all of them ended.
    store: bool,
    state: ReqState,
    /// Addresses still to try when a dial fails.
    addrs: Vec<Multiaddr>,
    deadline: Instant,
    buf: Vec<u8>,
    /// When the request went out on an established connection: its answer then measures one round
    /// trip (plus the peer's work), which `Config::proximity` ranks table peers by.
    opened: Option<Instant>,
}

pub struct KadService {
    config: Config,
    local: PeerId,
    table: Table,
    store: Store,
    server: bool,
    /// Our connections: the peer, and the handshake's round trip (the first RTT sample of the peer).
    conns: BTreeMap<ConnId, (PeerId, Duration)>,
    next_id: u64,
    requests: BTreeMap<u64, Request>,
    by_stream: BTreeMap<(ConnId, StreamId), u64>,
    inbound: BTreeMap<(ConnId, StreamId), (PeerId, Vec<u8>)>,
    queries: BTreeMap<QueryId, QueryState>,
    next_refresh: Option<Instant>,
    /// When a lookup last started toward each bucket (refresh skips those used within the interval).
    bucket_used: Vec<Instant>,
    /// Bootstrap lookups followed by a bucket refresh when they end.
    refresh_after: BTreeSet<QueryId>,
    /// Peers given by `add_peer` (bootstrap peers), to join again through when nobody answered.
    seeds: Vec<(PeerId, Vec<Multiaddr>)>,
    next_rebootstrap: Option<Instant>,
    /// When to check the table for `Config::low_table` (armed by the first bootstrap).
    next_low_check: Option<Instant>,
    next_expire: Instant,
    /// Keys we provide, re-announced every `reprovide_interval`, and when next.
    providing: BTreeSet<Vec<u8>>,
    next_reprovide: Option<Instant>,
    stats: Stats,
}

impl KadService {
    pub fn new(local: PeerId, config: Config) -> KadService {
        let tc = TableConfig {
            k: config.k,
            max_per_group: config.max_per_group,
            max_per_group_per_bucket: config.max_per_group_per_bucket,
            diversity_private: config.diversity_private,
            proximity: config.proximity,
        };
        KadService {
            table: Table::new(Key::from_peer(&local), tc),
            store: Store::with_validators(config.store.clone(), config.validators.clone()),
            server: config.mode == Mode::Server,
            local,
            conns: BTreeMap::new(),
            next_id: 0,
            requests: BTreeMap::new(),
            by_stream: BTreeMap::new(),
            inbound: BTreeMap::new(),
            queries: BTreeMap::new(),
            next_refresh: None,
            bucket_used: vec![Instant(0); 256],
            refresh_after: BTreeSet::new(),
            seeds: Vec::new(),
            next_rebootstrap: None,
            next_low_check: None,
            next_expire: Instant(0) + EXPIRE_EVERY,
            providing: BTreeSet::new(),
            next_reprovide: None,
            stats: Stats::default(),
            config,
        }
    }

    pub fn table(&self) -> &Table {
        &self.table
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn mode(&self) -> Mode {
        self.config.mode
    }
    pub fn is_server(&self) -> bool {
        self.server
    }
    pub fn queries_in_flight(&self) -> usize {
        self.queries.len()
    }

    /// Pins the mode (call `Node::update_protocols` after, so the protocol is announced or withdrawn).
    pub fn set_mode(&mut self, cx: &mut Cx<'_>, mode: Mode) {
        self.config.mode = mode;
        self.follow_mode(cx);
    }

    /// Serves or not as the mode says; auto mode serves exactly while AutoNAT says we are public.
    fn follow_mode(&mut self, cx: &mut Cx<'_>) {
        let server = match self.config.mode {
            Mode::Server => true,
            Mode::Client => false,
            Mode::Auto => cx.local.reachability == crate::autonat::Reachability::Public,
        };
        self.set_server(cx, server);
    }

    fn set_server(&mut self, cx: &mut Cx<'_>, server: bool) {
        if server != self.server {
            self.server = server;
            cx.emit(NodeEvent::Kad(Event::ModeChanged { server }));
        }
    }

    /// Teaches the table a DHT server (a bootstrap peer). Its addresses are dialed when a query needs it.
    pub fn add_peer(&mut self, cx: &mut Cx<'_>, peer: &PeerId, addrs: &[Multiaddr]) -> Insert {
        if self.seeds.len() < MAX_SEEDS && !self.seeds.iter().any(|(p, _)| p == peer) {
            self.seeds.push((peer.clone(), addrs.to_vec()));
        }
        let r = self.table.insert(peer, addrs, cx.now);
        self.note_insert(cx, peer, r);
        r
    }

    fn note_insert(&mut self, cx: &mut Cx<'_>, peer: &PeerId, r: Insert) {
        match r {
            Insert::Added => {
                cx.emit(NodeEvent::Kad(Event::RoutingUpdated { peer: peer.clone() }));
                if self.next_refresh.is_none() {
                    self.next_refresh = Some(jittered(cx, self.config.refresh_interval, 10));
                }
            }
            Insert::Diversity => self.stats.table_rejected_diversity += 1,
            Insert::Full => self.stats.table_rejected_full += 1,
            Insert::Nearer => {
                self.stats.table_replaced_nearer += 1;
                cx.emit(NodeEvent::Kad(Event::RoutingUpdated { peer: peer.clone() }));
            }
            Insert::Updated | Insert::Local => {}
        }
    }

    // ---------- commands ----------

    /// Bootstraps again through the seeds (`add_peer`'s peers), put back in the table first.
    fn rejoin(&mut self, cx: &mut Cx<'_>) {
        for (p, a) in self.seeds.clone() {
            let r = self.table.insert(&p, &a, cx.now);
            self.note_insert(cx, &p, r);
        }
        if let Err(e) = self.bootstrap(cx) {
            tracing::debug!(error = %e, "re-bootstrap could not start");
        }
    }

    /// Looks up our own key (the peers around us), then — with `Config::refresh_on_bootstrap`, as go's
    /// bootstrap does — refreshes the far buckets, which the self-lookup leaves thin.
    pub fn bootstrap(&mut self, cx: &mut Cx<'_>) -> Result<QueryId, QueryError> {
        let key = self.local.to_bytes();
        if self.next_low_check.is_none() && self.config.low_table > 0 {
            self.next_low_check = Some(jittered(cx, self.config.low_table_interval, 10));
        }
        let id = self.start(cx, Kind::Bootstrap, key)?;
        if self.config.refresh_on_bootstrap {
            self.refresh_after.insert(id);
        }
        Ok(id)
    }

    pub fn find_peer(&mut self, cx: &mut Cx<'_>, peer: &PeerId) -> Result<QueryId, QueryError> {
        self.start(cx, Kind::FindPeer(peer.clone()), peer.to_bytes())
    }

    /// The k closest peers to `key` (FIND_NODE, iteratively).
    pub fn get_closest_peers(&mut self, cx: &mut Cx<'_>, key: Vec<u8>) -> Result<QueryId, QueryError> {
        self.start(cx, Kind::Closest, key)
    }

    /// Providers of `key` (a multihash), as they come; ends after `limit` providers or when the lookup ends.
    pub fn find_providers(&mut self, cx: &mut Cx<'_>, key: Vec<u8>, limit: usize) -> Result<QueryId, QueryError> {
        let mut seen = BTreeSet::new();
        let local = self.store.providers(&key, cx.now);
        for p in &local {
            seen.insert(p.peer.clone());
        }
        let id = self.start(cx, Kind::GetProviders { limit, seen }, key)?;
        for p in local {
            cx.emit(NodeEvent::Kad(Event::Provider { query: id, provider: p }));
        }
        Ok(id)
    }

    /// Valid records for `key`; ends after `quorum` records or when the lookup ends.
    pub fn get_value(&mut self, cx: &mut Cx<'_>, key: Vec<u8>, quorum: usize) -> Result<QueryId, QueryError> {
        let local = self.store.get(&key, cx.now).cloned();
        let found = usize::from(local.is_some());
        let id = self.start(cx, Kind::GetValue { quorum: quorum.max(1), found }, key)?;
        if let Some(record) = local {
            cx.emit(NodeEvent::Kad(Event::Value { query: id, record, from: self.local.clone() }));
        }
        Ok(id)
    }

    /// Stores `record` locally and on the k closest peers to its key.
    pub fn put_value(&mut self, cx: &mut Cx<'_>, record: Record) -> Result<QueryId, QueryError> {
        let exp = cx.now + self.config.record_ttl;
        let wall = self.config.unix_nanos(cx.now);
        self.store.put(record.clone(), exp, wall).map_err(|e| QueryError::InvalidRecord(e.to_string()))?;
        let key = record.key.clone();
        self.start(cx, Kind::PutValue(record), key)
    }

    /// Announces us as a provider of `key` locally and to the k closest peers, and again every
    /// `reprovide_interval` until [`KadService::stop_providing`].
    pub fn provide(&mut self, cx: &mut Cx<'_>, key: Vec<u8>) -> Result<QueryId, QueryError> {
        if self.providing.len() < self.config.store.max_provider_keys {
            self.providing.insert(key.clone());
            self.next_reprovide.get_or_insert(cx.now + self.config.reprovide_interval);
        }
        self.announce(cx, key)
    }

    pub fn stop_providing(&mut self, key: &[u8]) {
        self.providing.remove(key);
    }

    fn announce(&mut self, cx: &mut Cx<'_>, key: Vec<u8>) -> Result<QueryId, QueryError> {
        let me = PeerInfo { peer: self.local.clone(), addrs: cx.local.listen_addrs.clone() };
        let _ = self.store.add_provider(&key, me, cx.now + self.config.provider_ttl);
        self.start(cx, Kind::Provide, key)
    }

    fn start(&mut self, cx: &mut Cx<'_>, kind: Kind, key: Vec<u8>) -> Result<QueryId, QueryError> {
        if self.queries.len() >= self.config.max_queries {
            self.stats.queries_refused += 1;
            return Err(QueryError::TooMany);
        }
        let target = Key::from_bytes(&key);
        let seeds = self.table.closest(&target, self.config.k);
        if seeds.is_empty() {
            return Err(QueryError::NoPeers);
        }
        if let Some(cpl) = self.table.bucket_of(&target) {
            self.bucket_used[cpl] = cx.now;
        }
        self.next_id += 1;
        let id = QueryId(self.next_id);
        self.stats.queries_started += 1;
        let c = &self.config;
        let q = Query::disjoint(target, self.local.clone(), seeds, c.k, c.alpha, c.disjoint_paths, c.request_timeout)
            .with_diversity(c.lookup_max_per_group, c.diversity_private)
            .with_density_check(if c.density_check { self.table.density_estimate() } else { 0.0 });
        let deadline = cx.now + self.config.query_timeout;
        let opt = match kind {
            Kind::Provide if c.optimistic_provide => Optimistic::new(self.table.size_estimate(), c.k),
            _ => None,
        };
        if opt.is_some() {
            self.stats.optimistic_provides += 1;
        }
        self.queries.insert(id, QueryState { kind, key, q, phase: Phase::Lookup, deadline, found: None, opt });
        self.drive(cx, id);
        Ok(id)
    }

    // ---------- queries ----------

    fn request_for(kind: &Kind, key: &[u8]) -> Msg {
        let t = match kind {
            Kind::GetProviders { .. } => MsgType::GetProviders,
            Kind::GetValue { .. } => MsgType::GetValue,
            _ => MsgType::FindNode,
        };
        Msg::new(t, key.to_vec())
    }

    /// Sends what the query may send now; finishes it (or moves it to its storing phase) when done.
    fn drive(&mut self, cx: &mut Cx<'_>, id: QueryId) {
        let Some(st) = self.queries.get_mut(&id) else { return };
        if let Phase::Storing { pending, stored } = st.phase {
            // Classic: every store ended. Optimistic: 75% of them (the rest go on without the query).
            let enough = match &st.opt {
                Some(o) => o.scheduled.len() - pending >= o.return_at(self.config.k),
                None => pending == 0,
            };
            if enough {
                let outcome = if stored > 0 { Ok(self.outcome(id, stored)) } else { Err(QueryError::NotStored) };
                self.finish(cx, id, outcome);
            }
            return;
        }
        let mut sends = Vec::new();
        while let Some(p) = st.q.next(cx.now) {
            sends.push(p);
        }
        let msg = Self::request_for(&st.kind, &st.key);
        for p in sends {
            self.send(cx, id, p.peer, p.addrs, msg.clone(), true, false);
        }
        let early_end = self.optimistic_step(cx, id);
        // A send that failed at once (no address) drove this query already: it may be gone or storing.
        let Some(st) = self.queries.get_mut(&id).filter(|st| st.phase == Phase::Lookup) else { return };
        if !st.q.is_finished() {
            if !early_end {
                return;
            }
            self.stats.optimistic_early_ends += 1;
        }
        match st.kind.clone() {
            Kind::PutValue(record) => {
                let mut m = Msg::new(MsgType::PutValue, st.key.clone());
                m.record = Some(record);
                self.store_phase(cx, id, m, true);
            }
            Kind::Provide => {
                let m = add_provider(&self.local, cx, &st.key);
                self.store_phase(cx, id, m, false);
            }
            Kind::FindPeer(_) if st.found.is_none() => self.finish(cx, id, Err(QueryError::NotFound)),
            Kind::Bootstrap if st.q.answered == 0 => {
                // Nobody answered (the seeds refused us, or are gone): try again later from the seeds.
                self.next_rebootstrap = Some(jittered(cx, self.config.rebootstrap_after, 4));
                self.finish(cx, id, Err(QueryError::NoAnswer));
            }
            Kind::GetValue { found: 0, .. } => self.finish(cx, id, Err(QueryError::NotFound)),
            _ => {
                let o = self.outcome(id, 0);
                self.finish(cx, id, Ok(o));
            }
        }
    }

    fn store_phase(&mut self, cx: &mut Cx<'_>, id: QueryId, msg: Msg, expect_reply: bool) {
        let k = self.config.k;
        let st = self.queries.get_mut(&id).expect("invariant: caller found it");
        let targets: Vec<PeerInfo> = match st.opt.as_mut() {
            // Optimistic: the k closest known (asked or not, as go's), but for those stored to already;
            // when the density check widened the lookup, the classic targets (beyond the dense set).
            Some(o) => {
                let all = if st.q.extra > 0 { st.q.closest_answered() } else { st.q.closest_live(k).into_iter().map(|(p, _)| p).collect() };
                let t: Vec<PeerInfo> = all.into_iter().filter(|p| !o.scheduled.contains(&p.peer)).collect();
                o.scheduled.extend(t.iter().map(|p| p.peer.clone()));
                t
            }
            None => st.q.closest_answered(),
        };
        let (in_flight, stored) = st.opt.as_ref().map_or((0, 0), |o| (o.scheduled.len() - targets.len() - o.done, o.stored));
        st.phase = Phase::Storing { pending: in_flight + targets.len(), stored };
        if in_flight + targets.len() == 0 {
            let outcome = if stored > 0 { Ok(self.outcome(id, stored)) } else { Err(QueryError::NotStored) };
            self.finish(cx, id, outcome);
            return;
        }
        for p in targets {
            self.send(cx, id, p.peer, p.addrs, msg.clone(), expect_reply, true);
        }
        self.drive(cx, id);
    }

    /// Optimistic provide during the lookup: sends the record to peers close enough to be among the
    /// k closest, and says whether the lookup may end now (go's `stopFn`).
    fn optimistic_step(&mut self, cx: &mut Cx<'_>, id: QueryId) -> bool {
        let k = self.config.k;
        let Some(st) = self.queries.get_mut(&id) else { return false };
        let Some(o) = st.opt.as_mut() else { return false };
        let closest = st.q.closest_live(k);
        let mut now = Vec::new();
        for (p, d) in &closest {
            if *d <= o.individual && o.scheduled.insert(p.peer.clone()) {
                now.push(p.clone());
            }
        }
        let mean = closest.iter().map(|(_, d)| d).sum::<f64>() / k as f64;
        // A lookup the density check widened (peers packed around the key: sybils?) ends the classic way.
        let end = st.q.extra == 0 && (o.scheduled.len() >= k || (closest.len() >= k && mean < o.set));
        if !now.is_empty() {
            let m = add_provider(&self.local, cx, &st.key);
            self.stats.optimistic_early_stores += now.len() as u64;
            for p in now {
                self.send(cx, id, p.peer, p.addrs, m.clone(), false, true);
            }
        }
        end && self.queries.contains_key(&id)
    }

    fn outcome(&self, id: QueryId, stored: usize) -> Outcome {
        let st = &self.queries[&id];
        Outcome { closest: st.q.closest_answered(), found: st.found.clone(), stored, answered: st.q.answered, hops: st.q.max_hop }
    }

    fn finish(&mut self, cx: &mut Cx<'_>, id: QueryId, outcome: Result<Outcome, QueryError>) {
        let Some(st) = self.queries.remove(&id) else { return };
        self.stats.lookup_rejected_diversity += st.q.rejected_diversity;
        self.stats.lookups_widened += u64::from(st.q.extra > 0);
        self.stats.lookup_stragglers += st.q.stragglers;
        if self.refresh_after.remove(&id) {
            self.refresh_buckets(cx);
        }
        // Requests of this query still in flight are dropped (their streams reset).
        // (An optimistic provide's stores still in flight go on: they need no query.)
        let gone: Vec<u64> = self.requests.iter().filter(|(_, r)| r.query == id && !r.store).map(|(t, _)| *t).collect();
        for t in gone {
            self.drop_request(cx, t);
        }
        cx.emit(NodeEvent::Kad(Event::Finished { query: id, outcome }));
    }

    // ---------- requests ----------

    fn conn_to(&self, peer: &PeerId) -> Option<ConnId> {
        self.conns.iter().find(|(_, (p, _))| p == peer).map(|(c, _)| *c)
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        cx: &mut Cx<'_>,
        query: QueryId,
        peer: PeerId,
        mut addrs: Vec<Multiaddr>,
        msg: Msg,
        expect_reply: bool,
        store: bool,
    ) {
        self.next_id += 1;
        let token = self.next_id;
        self.stats.requests_sent += 1;
        let deadline = cx.now + self.config.request_timeout;
        if addrs.is_empty() {
            if let Some(e) = self.table.get(&peer) {
                addrs = e.addrs.clone();
            }
        }
        let mut state = ReqState::Dialing;
        let mut unroutable = false;
        let mut opened = None;
        if let Some(conn) = self.conn_to(&peer) {
            // Lazy: the request goes out with the protocol proposal (one round trip less per request).
            cx.open_stream_lazy(conn, PROTOCOL_ID, token);
            state = ReqState::Opening(conn);
            opened = Some(cx.now);
        } else if !self.requests.values().any(|r| r.peer == peer && r.state == ReqState::Dialing) {
            // One dial per peer: requests waiting for it share its connection.
            if addrs.is_empty() {
                unroutable = true;
            } else {
                let a = addrs.remove(0);
                cx.dial(a.with_peer_id(&peer), Some(peer.clone()));
            }
        }
        self.requests.insert(token, Request { peer, query, msg, expect_reply, store, state, addrs, deadline, buf: Vec::new(), opened });
        if unroutable {
            self.fail_request(cx, token);
        }
    }

    /// Forgets a request, resetting its stream.
    fn drop_request(&mut self, cx: &mut Cx<'_>, token: u64) -> Option<Request> {
        let r = self.requests.remove(&token)?;
        match r.state {
            ReqState::Sent(c, s) => {
                self.by_stream.remove(&(c, s));
                cx.reset_stream(c, s);
            }
            ReqState::Opening(c) => cx.cancel_open(c, token),
            ReqState::Dialing | ReqState::Detached => {}
        }
        Some(r)
    }

    fn fail_request(&mut self, cx: &mut Cx<'_>, token: u64) {
        let Some(r) = self.drop_request(cx, token) else { return };
        self.stats.requests_failed += 1;
        if self.table.failed(&r.peer) {
            tracing::debug!(peer = %r.peer, "kad peer left the table after failed requests");
        }
        let Some(st) = self.queries.get_mut(&r.query) else { return };
        match (&mut st.phase, r.store) {
            (Phase::Lookup, false) => st.q.on_failure(&r.peer),
            (Phase::Lookup, true) => {
                if let Some(o) = st.opt.as_mut() {
                    o.done += 1;
                }
            }
            (Phase::Storing { pending, .. }, true) => *pending = pending.saturating_sub(1),
            // A lookup request that ends after its lookup did.
            (Phase::Storing { .. }, false) => return,
        }
        self.drive(cx, r.query);
    }

    /// A request got its answer (or, for one without an answer, was sent).
    fn complete(&mut self, cx: &mut Cx<'_>, token: u64, answer: Option<Msg>) {
        let Some(r) = self.requests.remove(&token) else { return };
        if let ReqState::Sent(c, s) = r.state {
            self.by_stream.remove(&(c, s));
        }
        // It answered kad: a server. Known addresses come from the query or the table.
        let addrs = self.queries.get(&r.query).and_then(|st| st.q.get(&r.peer)).map(|p| p.addrs.clone()).unwrap_or_default();
        let rtt = r.opened.filter(|_| answer.is_some()).map(|t| cx.now.saturating_duration_since(t));
        let ins = self.table.insert_measured(&r.peer, &addrs, cx.now, rtt);
        self.note_insert(cx, &r.peer, ins);
        let Some(st) = self.queries.get_mut(&r.query) else { return };
        if r.store {
            match st.phase {
                Phase::Storing { ref mut pending, ref mut stored } => {
                    *pending = pending.saturating_sub(1);
                    *stored += 1;
                }
                Phase::Lookup => {
                    if let Some(o) = st.opt.as_mut() {
                        o.done += 1;
                        o.stored += 1;
                    }
                }
            }
            self.drive(cx, r.query);
            return;
        }
        if st.phase != Phase::Lookup {
            // A lookup request that ends after its lookup did.
            return;
        }
        let Some(m) = answer else { return };
        st.q.on_answer(cx.now, &r.peer, &m.closer);
        if st.q.wants_seeds() {
            st.q.add_seeds(self.table.closest(st.q.target(), 3 * self.config.k));
        }
        let id = r.query;
        let mut done = false;
        match &mut st.kind {
            Kind::FindPeer(target) => {
                if let Some(p) = m.closer.iter().find(|p| &p.id == target && !p.addrs.is_empty()) {
                    st.found = Some(PeerInfo { peer: p.id.clone(), addrs: p.addrs.clone() });
                    done = true;
                } else if &r.peer == target {
                    st.found = Some(PeerInfo { peer: r.peer.clone(), addrs });
                    done = true;
                }
            }
            Kind::GetProviders { limit, seen } => {
                for p in &m.providers {
                    if seen.len() >= *limit {
                        break;
                    }
                    if seen.insert(p.id.clone()) {
                        cx.emit(NodeEvent::Kad(Event::Provider {
                            query: id,
                            provider: PeerInfo { peer: p.id.clone(), addrs: p.addrs.clone() },
                        }));
                    }
                }
                done = seen.len() >= *limit;
            }
            Kind::GetValue { quorum, found } => {
                let wall = self.config.unix_nanos(cx.now);
                let valid = |rec: &Record| self.store.validators().validate(&rec.key, &rec.value, wall).is_ok();
                if let Some(rec) = m.record.filter(|rec| rec.key == st.key && valid(rec)) {
                    *found += 1;
                    done = *found >= *quorum;
                    cx.emit(NodeEvent::Kad(Event::Value { query: id, record: rec, from: r.peer.clone() }));
                }
            }
            _ => {}
        }
        if done {
            let o = self.outcome(id, 0);
            self.finish(cx, id, Ok(o));
        } else {
            self.drive(cx, id);
        }
    }

    // ---------- serving ----------

    fn answer(&mut self, cx: &mut Cx<'_>, from: &PeerId, req: Msg) -> Result<Option<Msg>, RecordError> {
        self.stats.requests_served += 1;
        let target = Key::from_bytes(&req.key);
        let closer = |t: &Table, local: &PeerId| -> Vec<KadPeer> {
            t.closest(&target, t.len().min(40))
                .into_iter()
                .filter(|p| &p.peer != from && &p.peer != local)
                .take(20)
                .map(|p| KadPeer { id: p.peer, addrs: p.addrs, connection: Connection::NotConnected })
                .collect()
        };
        let mut resp = Msg::new(req.kind, req.key.clone());
        if let Some(e) = self.config.adversary.as_ref().filter(|e| e.key == req.key) {
            // A sybil asked for the eclipsed key: only sybils, nothing stored, nothing kept.
            let mut sybils: Vec<&PeerInfo> = e.sybils.iter().filter(|p| &p.peer != from && p.peer != self.local).collect();
            sybils.sort_by_key(|p| Key::from_peer(&p.peer).distance(&target));
            resp.closer = sybils
                .into_iter()
                .take(self.config.k)
                .map(|p| KadPeer { id: p.peer.clone(), addrs: p.addrs.clone(), connection: Connection::NotConnected })
                .collect();
            return Ok(match req.kind {
                MsgType::AddProvider => None,
                MsgType::PutValue => Some(req),
                _ => Some(resp),
            });
        }
        match req.kind {
            MsgType::FindNode => {
                // Asked for ourselves: answer with ourselves, as go and js do (go keeps a new DHT peer only if
                // this answer is non-empty).
                if req.key == self.local.as_bytes() {
                    resp.closer.push(KadPeer {
                        id: self.local.clone(),
                        addrs: cx.local.listen_addrs.clone(),
                        connection: Connection::Connected,
                    });
                } else {
                    resp.closer = closer(&self.table, &self.local);
                }
            }
            MsgType::GetProviders => {
                resp.providers = self
                    .store
                    .providers(&req.key, cx.now)
                    .into_iter()
                    .map(|p| KadPeer { id: p.peer, addrs: p.addrs, connection: Connection::NotConnected })
                    .collect();
                resp.closer = closer(&self.table, &self.local);
            }
            MsgType::GetValue => {
                resp.record = self.store.get(&req.key, cx.now).cloned();
                resp.closer = closer(&self.table, &self.local);
            }
            MsgType::AddProvider => {
                // Only the sender may announce itself (go ignores other providers in the message).
                for p in req.providers.iter().filter(|p| &p.id == from) {
                    let info = PeerInfo { peer: p.id.clone(), addrs: p.addrs.clone() };
                    self.store.add_provider(&req.key, info, cx.now + self.config.provider_ttl)?;
                }
                return Ok(None);
            }
            MsgType::PutValue => {
                let rec = req.record.clone().filter(|r| r.key == req.key).ok_or(RecordError::BadKey)?;
                self.store.put(rec, cx.now + self.config.record_ttl, self.config.unix_nanos(cx.now))?;
                return Ok(Some(req));
            }
            MsgType::Ping => {}
        }
        Ok(Some(resp))
    }

    /// Bucket refresh (go's): a self-lookup, then for each bucket up to the deepest non-empty one
    /// (at most cpl 8) that no lookup touched within the interval, a lookup of a random key that falls
    /// in it. The next round comes one interval later, with up to 10% jitter so nodes started together
    /// do not refresh together.
    fn refresh(&mut self, cx: &mut Cx<'_>) {
        if self.table.is_empty() {
            self.next_refresh = None;
            return;
        }
        self.next_refresh = Some(jittered(cx, self.config.refresh_interval, 10));
        let key = self.local.to_bytes();
        let _ = self.start(cx, Kind::Bootstrap, key);
        self.refresh_buckets(cx);
    }

    /// One lookup for a key in each bucket up to the deepest non-empty one (at most cpl 8) that no lookup
    /// touched within the refresh interval.
    fn refresh_buckets(&mut self, cx: &mut Cx<'_>) {
        let interval = self.config.refresh_interval;
        let local = Key::from_peer(&self.local);
        let top = self.table.max_bucket().unwrap_or(0).min(MAX_REFRESH_CPL);
        for cpl in 0..=top {
            if self.bucket_used[cpl] + interval > cx.now && self.bucket_used[cpl] != Instant(0) {
                continue;
            }
            // A key whose sha256 lands in the bucket: expected 2^(cpl+1) draws, bounded.
            let mut found = None;
            for _ in 0..REFRESH_KEY_DRAWS {
                let k = cx.rng.next_u64().to_be_bytes().to_vec();
                if local.distance(&Key::from_bytes(&k)).leading_zeros() == cpl {
                    found = Some(k);
                    break;
                }
            }
            if let Some(k) = found {
                let _ = self.start(cx, Kind::Bootstrap, k);
            }
        }
    }
}

impl Service for KadService {
    fn name(&self) -> &'static str {
        "kad"
    }

    fn protocols(&self) -> Vec<String> {
        if self.server {
            vec![PROTOCOL_ID.into()]
        } else {
            Vec::new()
        }
    }

    fn on_connection(&mut self, cx: &mut Cx<'_>, ev: ConnectionEvent<'_>) {
        match ev {
            ConnectionEvent::Established { conn, peer, rtt, .. } => {
                self.conns.insert(conn, (peer.clone(), rtt));
                let waiting: Vec<u64> =
                    self.requests.iter().filter(|(_, r)| &r.peer == peer && r.state == ReqState::Dialing).map(|(t, _)| *t).collect();
                for t in waiting {
                    cx.open_stream_lazy(conn, PROTOCOL_ID, t);
                    let r = self.requests.get_mut(&t).expect("invariant: listed above");
                    r.state = ReqState::Opening(conn);
                    r.opened = Some(cx.now);
                }
            }
            ConnectionEvent::Identified { conn, peer, info } => {
                if info.protocols.iter().any(|p| p == PROTOCOL_ID) {
                    let rtt = self.conns.get(&conn).map(|(_, r)| *r);
                    let r = self.table.insert_measured(peer, &info.listen_addrs, cx.now, rtt);
                    self.note_insert(cx, peer, r);
                } else if self.table.remove(peer) {
                    tracing::debug!(%peer, "kad peer stopped serving the DHT; removed from the table");
                }
            }
            ConnectionEvent::Closed { conn, .. } => {
                self.conns.remove(&conn);
                self.inbound.retain(|(c, _), _| *c != conn);
                let lost: Vec<u64> = self
                    .requests
                    .iter()
                    .filter(|(_, r)| matches!(r.state, ReqState::Opening(c) | ReqState::Sent(c, _) if c == conn))
                    .map(|(t, _)| *t)
                    .collect();
                for t in lost {
                    if let Some(r) = self.requests.get_mut(&t) {
                        if let ReqState::Sent(c, s) = r.state {
                            self.by_stream.remove(&(c, s));
                        }
                        r.state = ReqState::Detached;
                    }
                    self.fail_request(cx, t);
                }
            }
            ConnectionEvent::DialFailed { peer: Some(peer), .. } => {
                if self.conn_to(peer).is_some() {
                    return;
                }
                let waiting: Vec<u64> =
                    self.requests.iter().filter(|(_, r)| &r.peer == peer && r.state == ReqState::Dialing).map(|(t, _)| *t).collect();
                let next = waiting.first().and_then(|t| {
                    let r = self.requests.get_mut(t).expect("invariant: listed above");
                    (!r.addrs.is_empty()).then(|| r.addrs.remove(0))
                });
                match next {
                    Some(a) => cx.dial(a.with_peer_id(peer), Some(peer.clone())),
                    None => {
                        for t in waiting {
                            self.fail_request(cx, t);
                        }
                    }
                }
            }
            ConnectionEvent::DialFailed { peer: None, .. } => {}
        }
    }

    fn on_local_changed(&mut self, cx: &mut Cx<'_>) {
        self.follow_mode(cx);
    }

    fn on_inbound(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, _protocol: &str) {
        let peer = self.conns.get(&conn).map(|(p, _)| p.clone());
        match peer {
            Some(peer) if self.server && self.inbound.len() < self.config.max_inbound_streams => {
                self.inbound.insert((conn, stream), (peer, Vec::new()));
            }
            _ => {
                self.stats.inbound_refused += 1;
                cx.reset_stream(conn, stream);
            }
        }
    }

    fn on_stream(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>) {
        if let Some((peer, buf)) = self.inbound.get_mut(&(conn, stream)) {
            let peer = peer.clone();
            match ev {
                StreamEvent::Data(d) => {
                    buf.extend_from_slice(d);
                    loop {
                        let buf = &mut self.inbound.get_mut(&(conn, stream)).expect("invariant: present").1;
                        match wire::decode(buf, &self.config.limits) {
                            Ok(None) => break,
                            Ok(Some((req, used))) => {
                                buf.drain(..used);
                                match self.answer(cx, &peer, req) {
                                    Ok(Some(resp)) => {
                                        let mut out = Vec::new();
                                        wire::encode(&resp, &mut out);
                                        cx.write(conn, stream, &out);
                                    }
                                    Ok(None) => {}
                                    Err(e) => {
                                        tracing::debug!(%peer, error = %e, "kad request refused: stream reset");
                                        self.inbound.remove(&(conn, stream));
                                        cx.reset_stream(conn, stream);
                                        return;
                                    }
                                }
                            }
                            Err(e) => {
                                self.stats.malformed += 1;
                                self.inbound.remove(&(conn, stream));
                                cx.reset_stream(conn, stream);
                                cx.violation(Violation { peer: Some(peer), protocol: PROTOCOL_ID, kind: ViolationKind::Malformed(e) });
                                return;
                            }
                        }
                    }
                }
                StreamEvent::Eof => {
                    self.inbound.remove(&(conn, stream));
                    cx.finish(conn, stream);
                }
                StreamEvent::Reset => {
                    self.inbound.remove(&(conn, stream));
                }
                StreamEvent::Opened { .. } | StreamEvent::Drained => {}
            }
            return;
        }
        if let StreamEvent::Opened { token, .. } = ev {
            let Some(r) = self.requests.get_mut(&token) else {
                cx.reset_stream(conn, stream);
                return;
            };
            r.state = ReqState::Sent(conn, stream);
            self.by_stream.insert((conn, stream), token);
            let mut out = Vec::new();
            wire::encode(&r.msg, &mut out);
            cx.write(conn, stream, &out);
            if !r.expect_reply {
                cx.finish(conn, stream);
                self.by_stream.remove(&(conn, stream));
                r.state = ReqState::Detached;
                self.complete(cx, token, None);
            }
            return;
        }
        let Some(&token) = self.by_stream.get(&(conn, stream)) else { return };
        match ev {
            StreamEvent::Data(d) => {
                let r = self.requests.get_mut(&token).expect("invariant: by_stream names live requests");
                r.buf.extend_from_slice(d);
                match wire::decode(&r.buf, &self.config.limits) {
                    Ok(None) => {}
                    Ok(Some((m, _))) => {
                        cx.finish(conn, stream);
                        self.by_stream.remove(&(conn, stream));
                        r.state = ReqState::Detached;
                        self.complete(cx, token, Some(m));
                    }
                    Err(e) => {
                        self.stats.malformed += 1;
                        let peer = r.peer.clone();
                        cx.violation(Violation { peer: Some(peer), protocol: PROTOCOL_ID, kind: ViolationKind::Malformed(e) });
                        self.fail_request(cx, token);
                    }
                }
            }
            StreamEvent::Eof | StreamEvent::Reset => {
                if let Some(r) = self.requests.get_mut(&token) {
                    self.by_stream.remove(&(conn, stream));
                    if matches!(ev, StreamEvent::Eof) {
                        cx.release(conn, stream);
                    }
                    r.state = ReqState::Detached;
                }
                self.fail_request(cx, token);
            }
            StreamEvent::Opened { .. } | StreamEvent::Drained => {}
        }
    }

    fn on_open_failed(&mut self, cx: &mut Cx<'_>, _conn: ConnId, token: u64, reason: &OpenError) {
        if let Some(r) = self.requests.get_mut(&token) {
            tracing::debug!(peer = %r.peer, %reason, "kad stream refused");
            r.state = ReqState::Detached;
            self.fail_request(cx, token);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let reqs = self.requests.values().map(|r| r.deadline).min();
        let queries = self.queries.values().map(|q| q.deadline).min();
        let stragglers = self.queries.values().filter(|q| q.phase == Phase::Lookup).filter_map(|q| q.q.next_deadline()).min();
        [
            reqs,
            queries,
            stragglers,
            self.next_refresh,
            self.next_reprovide,
            self.next_rebootstrap,
            self.next_low_check,
            Some(self.next_expire),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let late: Vec<u64> = self.requests.iter().filter(|(_, r)| r.deadline <= now).map(|(t, _)| *t).collect();
        for t in late {
            self.fail_request(cx, t);
        }
        // Lookups give up on stragglers before the request timeout (see `query::STRAGGLER_FACTOR`).
        let ids: Vec<QueryId> = self.queries.keys().copied().collect();
        for id in ids {
            let Some(st) = self.queries.get_mut(&id).filter(|st| st.phase == Phase::Lookup) else { continue };
            let gone = st.q.on_timeout(now);
            if gone.is_empty() {
                continue;
            }
            let tokens: Vec<u64> = self.requests.iter().filter(|(_, r)| r.query == id && gone.contains(&r.peer)).map(|(t, _)| *t).collect();
            for t in tokens {
                self.fail_request(cx, t);
            }
            self.drive(cx, id);
        }
        let late: Vec<QueryId> = self.queries.iter().filter(|(_, q)| q.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            let o = self.outcome(id, 0);
            let outcome = if o.answered > 0 && matches!(self.queries[&id].kind, Kind::Closest | Kind::Bootstrap) {
                Ok(o)
            } else {
                Err(QueryError::Timeout)
            };
            self.finish(cx, id, outcome);
        }
        if self.next_rebootstrap.is_some_and(|t| t <= now) {
            self.next_rebootstrap = None;
            self.rejoin(cx);
        }
        if self.next_low_check.is_some_and(|t| t <= now) {
            self.next_low_check = Some(jittered(cx, self.config.low_table_interval, 10));
            let bootstrapping = self.queries.values().any(|q| matches!(q.kind, Kind::Bootstrap));
            if self.table.len() <= self.config.low_table && !bootstrapping {
                self.stats.low_table_bootstraps += 1;
                tracing::debug!(peers = self.table.len(), "kad: routing table low, bootstrapping again");
                self.rejoin(cx);
            }
        }
        if self.next_refresh.is_some_and(|t| t <= now) {
            self.refresh(cx);
        }
        if self.next_reprovide.is_some_and(|t| t <= now) {
            self.next_reprovide = (!self.providing.is_empty()).then(|| now + self.config.reprovide_interval);
            for key in self.providing.clone() {
                if let Err(e) = self.announce(cx, key) {
                    tracing::debug!(error = %e, "reprovide failed");
                }
            }
        }
        if self.next_expire <= now {
            self.store.expire(now);
            self.next_expire = now + EXPIRE_EVERY;
        }
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
