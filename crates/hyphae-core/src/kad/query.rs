//! One iterative lookup as a machine (the spec's "peer routing" section): start from the k closest peers
//! we know, keep α requests in flight to the closest not yet asked, merge the closer peers each answer
//! brings, and finish when the k closest peers seen have all answered (or nothing is left to ask). Time
//! comes in; the machine says whom to ask next and never does I/O.
//!
//! With `paths` > 1 the lookup runs on disjoint paths (S/Kademlia, section 4.4): the seeds are dealt
//! round-robin to the paths, a peer belongs to the path that first learnt of it, each path asks only
//! its own peers (α/paths at a time) and ends on its own k closest, and the lookup ends when every
//! path has. An adversary's peers can then capture only the paths they are on: one honest path
//! suffices to reach the honest closest peers.
//!
//! With a per-group limit (`with_diversity`) a lookup keeps at most that many candidates of one IP
//! group (the routing table's diversity filter, applied to the peers answers bring): sybils run from
//! one address block cannot fill a lookup's k closest, however close their ground IDs are.
//!
//! With a density check (`with_density_check`, given the network's estimated size n) a lookup notices
//! when the peers it found around the key are packed far tighter than n peers spread uniformly would be
//! (the j-th closest within `j / (4n)` of the keyspace, for some j ≥ 6: under 1% of honest lookups) —
//! what sybils ground close to a key look like — and then wants k peers *beyond* that dense set (up to
//! 2k more), so that a provide stores on, and a search asks, the honest peers behind the sybils. The
//! NDSS 2024 censorship paper detects the same anomaly (with a KL divergence of prefix lengths) and
//! widens the lookup the same way. A widened lookup also takes more starting points from its driver's
//! routing table ([`Query::add_seeds`]): one seeded with sybils only would hear of nobody else.

use super::table::group;
use super::{KadPeer, Key, PeerInfo};
use crate::identity::PeerId;
use crate::multiaddr::Multiaddr;
use crate::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    NotAsked,
    /// Asked; fails at the deadline.
    Waiting(Instant),
    Answered,
    Failed,
}

#[derive(Debug, Clone)]
pub struct QueryPeer {
    pub peer: PeerId,
    pub key: Key,
    pub addrs: Vec<Multiaddr>,
    pub state: PeerState,
    /// The round (hops from us) this peer was learnt in.
    pub hop: u32,
    /// The disjoint path it belongs to (0 when there is one).
    pub path: usize,
    /// The IP groups of `addrs`, kept while the query has a per-group limit (else empty).
    groups: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct Query {
    target: Key,
    local: PeerId,
    k: usize,
    alpha: usize,
    paths: usize,
    request_timeout: Duration,
    /// Candidates, closest first; at most `4·k` per path (the farthest are dropped: never needed).
    peers: Vec<QueryPeer>,
    pub answered: usize,
    pub max_hop: u32,
    /// Candidates per IP group (0: no limit), and whether private addresses count.
    per_group: usize,
    private_too: bool,
    /// Peers refused by the per-group limit.
    pub rejected_diversity: u64,
    /// The network's estimated size for the density check (0: off).
    size_estimate: f64,
    /// Peers wanted beyond k: the dense set found around the key (at most 2k).
    pub extra: usize,
    /// The slowest answer so far (request to answer): sets the straggler deadline.
    slowest: Option<Duration>,
    /// Requests given up on as stragglers before `request_timeout`.
    pub stragglers: u64,
    /// Whether the widened lookup was given more seeds ([`Query::add_seeds`]).
    reseeded: bool,
}

/// A request not answered within this many times the slowest answer of its lookup so far ...
pub const STRAGGLER_FACTOR: u32 = 3;
/// ... and not before this, is given up (its peer counts as failed and the lookup asks the next one),
/// instead of holding the lookup's end until `request_timeout` (10 s). A peer that left keeps its QUIC
/// connection looking alive until the idle timeout (nothing refuses a datagram the way a closed TCP
/// socket resets), so its requests hang: in a 300-node QUIC simulation with churn, provides took a
/// median 10.2 s, each waiting out a departed peer's timeout. go-libp2p-kad-dht does not wait either: its
/// lookups end once the β closest answered.
pub const STRAGGLER_MIN: Duration = Duration::from_secs(1);

/// The density check: at least this many peers ...
const DENSE_MIN: usize = 6;
/// ... this many times denser than uniform.
const DENSE_FACTOR: f64 = 4.0;

impl Query {
    pub fn new(target: Key, local: PeerId, seeds: Vec<PeerInfo>, k: usize, alpha: usize, request_timeout: Duration) -> Query {
        Query::disjoint(target, local, seeds, k, alpha, 1, request_timeout)
    }

    /// A lookup on `paths` disjoint paths (1: an ordinary lookup).
    pub fn disjoint(
        target: Key,
        local: PeerId,
        seeds: Vec<PeerInfo>,
        k: usize,
        alpha: usize,
        paths: usize,
        request_timeout: Duration,
    ) -> Query {
        let paths = paths.max(1);
        let mut q = Query {
            target,
            local,
            k,
            alpha,
            paths,
            request_timeout,
            peers: Vec::new(),
            answered: 0,
            max_hop: 0,
            per_group: 0,
            private_too: false,
            rejected_diversity: 0,
            size_estimate: 0.0,
            extra: 0,
            slowest: None,
            stragglers: 0,
            reseeded: false,
        };
        for s in seeds {
            q.add(s.peer, s.addrs, 1, 0);
        }
        // Deal the seeds to the paths, closest first.
        for (i, p) in q.peers.iter_mut().enumerate() {
            p.path = i % paths;
        }
        q
    }

    /// From now on, at most `per_group` candidates of one IP group (/16 for IPv4, /32 for IPv6; private
    /// and loopback addresses exempt unless `private_too`); 0 turns the limit off. Peers announced
    /// without addresses are not limited (they cannot be dialed unless already known).
    pub fn with_diversity(mut self, per_group: usize, private_too: bool) -> Query {
        self.per_group = per_group;
        self.private_too = private_too;
        // The seeds count toward their groups too.
        for i in 0..self.peers.len() {
            self.peers[i].groups = self.groups_of(&self.peers[i].addrs);
        }
        self
    }

    /// Turns the density check on for a network of about `size_estimate` DHT servers (0: off).
    pub fn with_density_check(mut self, size_estimate: f64) -> Query {
        self.size_estimate = size_estimate;
        self
    }

    /// Peers the lookup wants answers from: k, plus the dense set when the check found one.
    fn want(&self) -> usize {
        self.k + self.extra
    }

    /// Looks for a dense set among the closest candidates (see the module doc).
    fn check_density(&mut self) {
        if self.size_estimate <= 0.0 {
            return;
        }
        let n = self.size_estimate;
        let mut dense = 0;
        let live = self.peers.iter().filter(|p| p.state != PeerState::Failed).take(3 * self.k);
        for (j, p) in live.enumerate().map(|(j, p)| (j + 1, p)) {
            if j >= DENSE_MIN && p.key.distance(&self.target).fraction() * n * DENSE_FACTOR < j as f64 {
                dense = j;
            }
        }
        self.extra = self.extra.max(dense.min(2 * self.k));
    }

    /// Whether the density check widened this lookup and it has not been given more seeds yet.
    pub fn wants_seeds(&self) -> bool {
        self.extra > 0 && !self.reseeded
    }

    /// More starting points for a lookup the density check widened (its driver's routing table's
    /// closest peers beyond the first k), dealt to the paths in turn. A lookup seeded only with sybils
    /// (their IDs ground near the key put them first in the table, and they answer only with each
    /// other) would otherwise run out of peers to ask before it reached an honest peer near the key.
    pub fn add_seeds(&mut self, seeds: Vec<PeerInfo>) {
        self.reseeded = true;
        for (i, s) in seeds.into_iter().enumerate() {
            self.add(s.peer, s.addrs, 1, i % self.paths);
        }
    }

    pub fn target(&self) -> &Key {
        &self.target
    }

    fn cap(&self) -> usize {
        self.k * 4 * self.paths
    }

    fn add(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, hop: u32, path: usize) {
        if peer == self.local {
            return;
        }
        if let Some(i) = self.peers.iter().position(|p| p.peer == peer) {
            // Addresses learnt later pass the same per-group limit.
            if self.peers[i].addrs.is_empty() && !addrs.is_empty() {
                let groups = self.groups_of(&addrs);
                if self.over_group_limit(&groups) {
                    self.rejected_diversity += 1;
                } else {
                    self.peers[i].addrs = addrs;
                    self.peers[i].groups = groups;
                }
            }
            return;
        }
        let key = Key::from_peer(&peer);
        let d = key.distance(&self.target);
        let at = self.peers.partition_point(|p| p.key.distance(&self.target) < d);
        if at >= self.cap() {
            return;
        }
        let groups = self.groups_of(&addrs);
        if self.over_group_limit(&groups) {
            self.rejected_diversity += 1;
            return;
        }
        self.peers.insert(at, QueryPeer { peer, key, addrs, state: PeerState::NotAsked, hop, path, groups });
        self.peers.truncate(self.cap());
    }

    /// The distinct IP groups of `addrs` when the query limits candidates per group (else none).
    fn groups_of(&self, addrs: &[Multiaddr]) -> Vec<Vec<u8>> {
        if self.per_group == 0 {
            return Vec::new();
        }
        let mut groups: Vec<Vec<u8>> = addrs.iter().filter_map(|a| group(a, self.private_too)).collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// Whether one of these IP groups already has `per_group` candidates.
    fn over_group_limit(&self, groups: &[Vec<u8>]) -> bool {
        self.per_group > 0 && groups.iter().any(|g| self.peers.iter().filter(|p| p.groups.contains(g)).count() >= self.per_group)
    }

    fn in_flight(&self, path: usize) -> usize {
        self.peers.iter().filter(|p| p.path == path && matches!(p.state, PeerState::Waiting(_))).count()
    }

    /// Done: on every path, the k closest candidates that did not fail have all answered, or nobody is
    /// left to ask.
    pub fn is_finished(&self) -> bool {
        (0..self.paths).all(|p| self.path_finished(p))
    }

    fn path_finished(&self, path: usize) -> bool {
        let mut seen = 0;
        for p in self.peers.iter().filter(|p| p.path == path) {
            match p.state {
                PeerState::Failed => continue,
                PeerState::Answered => seen += 1,
                PeerState::NotAsked | PeerState::Waiting(_) => return false,
            }
            if seen >= self.want() {
                return true;
            }
        }
        true
    }

    /// The next peer to ask, if one may be asked now (it is marked waiting): from the path with the
    /// fewest requests in flight that may send another.
    pub fn next(&mut self, now: Instant) -> Option<QueryPeer> {
        let per_path = (self.alpha / self.paths).max(1);
        let mut order: Vec<usize> = (0..self.paths).collect();
        order.sort_by_key(|&p| self.in_flight(p));
        for path in order {
            if self.in_flight(path) >= per_path || self.path_finished(path) {
                continue;
            }
            if let Some(p) = self.next_on(path, now) {
                return Some(p);
            }
        }
        None
    }

    fn next_on(&mut self, path: usize, now: Instant) -> Option<QueryPeer> {
        // Only among the k closest live candidates: asking farther ones cannot change the result.
        let mut live = 0;
        let want = self.want();
        for p in self.peers.iter_mut().filter(|p| p.path == path) {
            if p.state == PeerState::Failed {
                continue;
            }
            live += 1;
            if live > want {
                return None;
            }
            if p.state == PeerState::NotAsked {
                p.state = PeerState::Waiting(now + self.request_timeout);
                return Some(p.clone());
            }
        }
        None
    }

    /// `peer` answered with `closer` peers at `now`.
    pub fn on_answer(&mut self, now: Instant, peer: &PeerId, closer: &[KadPeer]) {
        let Some(i) = self.peers.iter().position(|p| &p.peer == peer) else { return };
        let PeerState::Waiting(deadline) = self.peers[i].state else { return };
        let took = now.saturating_duration_since(self.asked(deadline));
        self.slowest = Some(self.slowest.map_or(took, |s| s.max(took)));
        let p = &mut self.peers[i];
        p.state = PeerState::Answered;
        let (hop, path) = (p.hop + 1, p.path);
        self.answered += 1;
        self.max_hop = self.max_hop.max(hop - 1);
        for c in closer {
            self.add(c.id.clone(), c.addrs.clone(), hop, path);
        }
        self.check_density();
    }

    pub fn on_failure(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.iter_mut().find(|p| &p.peer == peer) {
            if matches!(p.state, PeerState::Waiting(_)) {
                p.state = PeerState::Failed;
            }
        }
    }

    /// When a request with `deadline` was sent.
    fn asked(&self, deadline: Instant) -> Instant {
        Instant::from_nanos(deadline.as_nanos().saturating_sub(self.request_timeout.as_nanos() as u64))
    }

    /// When a request sent with `deadline` is given up: at its deadline, or as a straggler once the
    /// lookup has an answer to compare with ([`STRAGGLER_FACTOR`], [`STRAGGLER_MIN`]).
    fn give_up_at(&self, deadline: Instant) -> Instant {
        let Some(slowest) = self.slowest else { return deadline };
        let asked = self.asked(deadline);
        deadline.min(asked + (slowest * STRAGGLER_FACTOR).max(STRAGGLER_MIN))
    }

    /// Requests past their deadline, or stragglers, fail; returns those peers.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<PeerId> {
        let mut v = Vec::new();
        for i in 0..self.peers.len() {
            if let PeerState::Waiting(t) = self.peers[i].state {
                let at = self.give_up_at(t);
                if at <= now {
                    self.stragglers += u64::from(t > now);
                    self.peers[i].state = PeerState::Failed;
                    v.push(self.peers[i].peer.clone());
                }
            }
        }
        v
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers.iter().filter_map(|p| if let PeerState::Waiting(t) = p.state { Some(self.give_up_at(t)) } else { None }).min()
    }

    /// The closest peers that answered, closest first (at most k, plus the dense set's size when the
    /// density check found one).
    pub fn closest_answered(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .filter(|p| p.state == PeerState::Answered)
            .take(self.want())
            .map(|p| PeerInfo { peer: p.peer.clone(), addrs: p.addrs.clone() })
            .collect()
    }

    pub fn get(&self, peer: &PeerId) -> Option<&QueryPeer> {
        self.peers.iter().find(|p| &p.peer == peer)
    }

    /// The `n` closest candidates that did not fail (asked or not), closest first, each with its
    /// distance to the target as a fraction of the keyspace: what optimistic provide judges.
    pub fn closest_live(&self, n: usize) -> Vec<(PeerInfo, f64)> {
        self.peers
            .iter()
            .filter(|p| p.state != PeerState::Failed)
            .take(n)
            .map(|p| (PeerInfo { peer: p.peer.clone(), addrs: p.addrs.clone() }, p.key.distance(&self.target).fraction()))
            .collect()
    }
}

/// The regularized lower incomplete gamma function P(n, x) for a whole `n` ≥ 1 (the Erlang
/// distribution's CDF): the probability that the n-th closest of peers spread uniformly at density 1
/// lies within distance x.
pub fn erlang_cdf(n: u32, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    // 1 - e^-x · Σ_{i<n} x^i / i!
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    for i in 1..n {
        term *= x / f64::from(i);
        sum += term;
    }
    (1.0 - (-x).exp() * sum).clamp(0.0, 1.0)
}

/// The x with `erlang_cdf(n, x) == p` (bisection; `p` in (0, 1)).
pub fn erlang_quantile(n: u32, p: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 10.0 * f64::from(n.max(1)) + 50.0);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if erlang_cdf(n, mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    /// A small network: each peer's table holds up to 3 peers per bucket (relative to itself) and answers
    /// with the 8 it knows closest to the target, so a lookup must hop.
    #[test]
    fn query_converges_on_the_k_closest_with_alpha_in_flight() {
        let mut r = rng::from_seed([4; 32]);
        let all: Vec<PeerId> = (0..300).map(|_| PeerId::random(&mut r)).collect();
        let me = PeerId::random(&mut r);
        let target = Key::from_bytes(b"x");
        let knows = |p: &PeerId| -> Vec<KadPeer> {
            let kp = Key::from_peer(p);
            let mut per_bucket = std::collections::BTreeMap::<usize, usize>::new();
            let mut table: Vec<&PeerId> = Vec::new();
            for q in all.iter().filter(|q| *q != p) {
                let n = per_bucket.entry(kp.distance(&Key::from_peer(q)).leading_zeros()).or_default();
                if *n < 3 {
                    *n += 1;
                    table.push(q);
                }
            }
            table.sort_by_key(|q| Key::from_peer(q).distance(&target));
            table.into_iter().take(8).map(|q| KadPeer { id: q.clone(), addrs: vec![], connection: Default::default() }).collect()
        };
        // Seeds: the 5 farthest peers from the target.
        let mut far = all.clone();
        far.sort_by_key(|q| std::cmp::Reverse(Key::from_peer(q).distance(&target)));
        let seeds = far[..5].iter().map(|p| PeerInfo { peer: p.clone(), addrs: vec![] }).collect();
        let mut q = Query::new(target, me, seeds, 5, 3, Duration::from_secs(1));
        let mut asked = 0;
        while !q.is_finished() {
            let mut batch = Vec::new();
            while let Some(p) = q.next(Instant(0)) {
                batch.push(p.peer);
            }
            assert!(batch.len() <= 3, "alpha");
            assert!(!batch.is_empty());
            for p in batch {
                asked += 1;
                let c = knows(&p);
                q.on_answer(Instant(0), &p, &c);
            }
        }
        let mut want = all.clone();
        want.sort_by_key(|p| Key::from_peer(p).distance(&target));
        let got: Vec<PeerId> = q.closest_answered().into_iter().map(|p| p.peer).collect();
        assert_eq!(got, want[..5].to_vec());
        assert!(asked < 60, "{asked}");
    }

    /// Disjoint paths: each path asks only peers it learnt itself (a peer two paths hear of stays with
    /// the first), and an adversary answering on one path with its own peers only cannot keep the
    /// other path from the true closest peers.
    #[test]
    fn disjoint_paths_never_share_a_peer_and_one_honest_path_finds_the_closest() {
        let mut r = rng::from_seed([6; 32]);
        let honest: Vec<PeerId> = (0..200).map(|_| PeerId::random(&mut r)).collect();
        let sybils: Vec<PeerId> = (0..50).map(|_| PeerId::random(&mut r)).collect();
        let target = Key::from_bytes(b"z");
        let me = PeerId::random(&mut r);
        let is_sybil = |p: &PeerId| sybils.contains(p);
        let near = |set: &[PeerId], n: usize| {
            let mut v = set.to_vec();
            v.sort_by_key(|q| Key::from_peer(q).distance(&target));
            v.truncate(n);
            v.into_iter().map(|q| KadPeer { id: q, addrs: vec![], connection: Default::default() }).collect::<Vec<_>>()
        };
        // Honest peers answer with 4 honest peers a bit closer than themselves; sybils name only sybils.
        let answer = |p: &PeerId| -> Vec<KadPeer> {
            if is_sybil(p) {
                return near(&sybils, 8);
            }
            let d = Key::from_peer(p).distance(&target);
            let mut closer: Vec<PeerId> = honest.iter().filter(|q| Key::from_peer(q).distance(&target) < d).cloned().collect();
            closer.sort_by_key(|q| std::cmp::Reverse(Key::from_peer(q).distance(&target)));
            closer.truncate(4);
            closer.into_iter().map(|q| KadPeer { id: q, addrs: vec![], connection: Default::default() }).collect()
        };
        // Two seeds: the closest is a sybil (dealt to path 0), the other honest (path 1).
        let mut far = honest.clone();
        far.sort_by_key(|q| std::cmp::Reverse(Key::from_peer(q).distance(&target)));
        let mut seeds = vec![PeerInfo { peer: far[0].clone(), addrs: vec![] }];
        let sybil_seed = near(&sybils, 1)[0].id.clone();
        seeds.push(PeerInfo { peer: sybil_seed.clone(), addrs: vec![] });
        let mut q = Query::disjoint(target, me.clone(), seeds, 4, 2, 2, Duration::from_secs(1));
        let mut asked_by: std::collections::BTreeMap<PeerId, usize> = Default::default();
        while !q.is_finished() {
            let mut batch = Vec::new();
            while let Some(p) = q.next(Instant(0)) {
                assert!(asked_by.insert(p.peer.clone(), p.path).is_none(), "asked twice");
                batch.push(p.peer);
            }
            assert!(!batch.is_empty());
            for p in batch {
                let c = answer(&p);
                q.on_answer(Instant(0), &p, &c);
            }
        }
        // The sybils captured their path only; the other path asked honest peers alone and reached the
        // 4 closest honest peers.
        let sybil_path = asked_by[&sybil_seed];
        assert!(asked_by.iter().all(|(p, path)| is_sybil(p) == (*path == sybil_path)), "{asked_by:?}");
        assert!(near(&honest, 4).iter().all(|h| asked_by.get(&h.id).is_some_and(|p| *p != sybil_path)));
    }

    /// A target key, `n` honest peers and 10 sybils ground closer to it than any honest one.
    fn eclipse_world(seed: u8, n: usize) -> (Key, Vec<PeerId>, Vec<PeerId>) {
        let mut r = rng::from_seed([seed; 32]);
        let target = Key::from_bytes(b"censored");
        let honest: Vec<PeerId> = (0..n).map(|_| PeerId::random(&mut r)).collect();
        let closest_honest = honest.iter().map(|p| Key::from_peer(p).distance(&target)).min().unwrap();
        let mut sybils = Vec::new();
        while sybils.len() < 10 {
            let p = PeerId::random(&mut r);
            if Key::from_peer(&p).distance(&target) < closest_honest {
                sybils.push(p);
            }
        }
        (target, honest, sybils)
    }

    /// Who `p` names when asked for `target`, 8 closest first: honest peers' tables hold 3 sybils (their
    /// diversity filter) and every honest peer; sybils name sybils only.
    fn eclipse_answer(p: &PeerId, target: &Key, honest: &[PeerId], sybils: &[PeerId]) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = if sybils.contains(p) { sybils.to_vec() } else { honest.iter().chain(&sybils[..3]).cloned().collect() };
        v.sort_by_key(|q| Key::from_peer(q).distance(target));
        v.truncate(8);
        v
    }

    /// Peers as an answer names them, without addresses.
    fn named(v: Vec<PeerId>) -> Vec<KadPeer> {
        v.into_iter().map(|q| KadPeer { addrs: vec![], id: q, connection: Default::default() }).collect()
    }

    /// A peer that never answers holds a lookup's end only until it is a straggler: three times the
    /// slowest answer so far, at least a second — not the 10 s request timeout.
    #[test]
    fn a_straggler_is_given_up_long_before_the_request_timeout() {
        let me = crate::identity::Keypair::generate_ed25519(&mut crate::rng::from_seed([9; 32])).peer_id();
        let peers: Vec<PeerId> =
            (0..4u8).map(|i| crate::identity::Keypair::generate_ed25519(&mut crate::rng::from_seed([i + 10; 32])).peer_id()).collect();
        let target = Key::from_peer(&me);
        let seeds = peers.iter().map(|p| PeerInfo { peer: p.clone(), addrs: vec![] }).collect();
        let mut q = Query::new(target, me, seeds, 4, 4, Duration::from_secs(10));
        let asked: Vec<PeerId> = std::iter::from_fn(|| q.next(Instant(0)).map(|p| p.peer)).collect();
        assert_eq!(asked.len(), 4);
        assert_eq!(q.next_deadline(), Some(Instant(0) + Duration::from_secs(10)), "no answer yet: the request timeout");
        // Three answer within 400 ms; the fourth is gone.
        for (i, p) in asked[..3].iter().enumerate() {
            q.on_answer(Instant(0) + Duration::from_millis(200 * i as u64 + 100), p, &[]);
        }
        assert!(!q.is_finished());
        // Slowest answer 500 ms: the last is a straggler at 1.5 s.
        assert_eq!(q.next_deadline(), Some(Instant(0) + Duration::from_millis(1500)));
        assert!(q.on_timeout(Instant(0) + Duration::from_millis(1499)).is_empty());
        assert_eq!(q.on_timeout(Instant(0) + Duration::from_millis(1500)), vec![asked[3].clone()]);
        assert_eq!(q.stragglers, 1);
        assert!(q.is_finished());
        assert_eq!(q.closest_answered().len(), 3);
    }

    /// Runs `q` to its end, every peer asked answering with `answer`.
    fn drive(q: &mut Query, answer: &dyn Fn(&PeerId) -> Vec<KadPeer>) {
        while !q.is_finished() {
            let batch: Vec<PeerId> = std::iter::from_fn(|| q.next(Instant(0)).map(|p| p.peer)).collect();
            for p in batch {
                let c = answer(&p);
                q.on_answer(Instant(0), &p, &c);
            }
        }
    }

    /// Sybils from one /16, ground closer to the target than any honest peer and naming only each
    /// other: without a limit they are the lookup's k closest; with 3 per group, 3 of them at most.
    #[test]
    fn per_group_limit_keeps_sybils_of_one_block_out_of_the_k_closest() {
        let (target, honest, sybils) = eclipse_world(8, 100);
        let addr = |p: &PeerId| -> Multiaddr {
            match sybils.iter().position(|s| s == p) {
                Some(i) => format!("/ip4/5.5.{i}.1/tcp/4001").parse().unwrap(),
                None => {
                    let i = honest.iter().position(|h| h == p).unwrap();
                    format!("/ip4/{}.{}.0.1/tcp/4001", 20 + i / 200, i % 200).parse().unwrap()
                }
            }
        };
        let kp = |v: Vec<PeerId>| {
            v.into_iter().map(|q| KadPeer { addrs: vec![addr(&q)], id: q, connection: Default::default() }).collect::<Vec<_>>()
        };
        let answer = |p: &PeerId| kp(eclipse_answer(p, &target, &honest, &sybils));
        let run = |per_group: usize| {
            let seeds = honest[..3].iter().map(|p| PeerInfo { peer: p.clone(), addrs: vec![addr(p)] }).collect();
            let mut q = Query::new(target, PeerId::random(&mut rng::from_seed([9; 32])), seeds, 8, 3, Duration::from_secs(1))
                .with_diversity(per_group, false);
            drive(&mut q, &answer);
            let got = q.closest_answered();
            (got.iter().filter(|p| sybils.contains(&p.peer)).count(), got.len(), q.rejected_diversity)
        };
        assert_eq!(run(0), (8, 8, 0), "no limit: the sybils are the 8 closest");
        let (s, n, rejected) = run(3);
        assert_eq!((s, n), (3, 8), "3 per group: 5 honest peers among the 8 closest");
        assert!(rejected > 0);
    }

    /// Sybils on many addresses (the per-group limit cannot tell them apart), ground closer than any of
    /// 300 honest peers: the density check sees 10 peers where a uniform network has about 1 and wants
    /// k peers beyond them; without it the sybils are the k closest.
    #[test]
    fn density_check_wants_k_peers_beyond_a_dense_set() {
        let (target, honest, sybils) = eclipse_world(10, 300);
        let answer = |p: &PeerId| named(eclipse_answer(p, &target, &honest, &sybils));
        let run = |size: f64| {
            let seeds = honest[..3].iter().map(|p| PeerInfo { peer: p.clone(), addrs: vec![] }).collect();
            let mut q = Query::new(target, PeerId::random(&mut rng::from_seed([11; 32])), seeds, 8, 3, Duration::from_secs(1))
                .with_density_check(size);
            drive(&mut q, &answer);
            let got = q.closest_answered();
            let honest_n = got.iter().filter(|p| honest.contains(&p.peer)).count();
            (honest_n, q.extra)
        };
        assert_eq!(run(0.0), (0, 0), "no check: the 8 closest are sybils");
        let (honest_n, extra) = run(300.0);
        assert!(extra >= 10, "the dense set: {extra}");
        assert!(honest_n >= 8, "k honest peers beyond the sybils: {honest_n}");
        // The same network without sybils: the check stays quiet.
        let mut q = Query::new(
            target,
            PeerId::random(&mut rng::from_seed([12; 32])),
            honest[..3].iter().map(|p| PeerInfo { peer: p.clone(), addrs: vec![] }).collect(),
            8,
            3,
            Duration::from_secs(1),
        )
        .with_density_check(300.0);
        drive(&mut q, &|_| {
            let mut v = honest.clone();
            v.sort_by_key(|x| Key::from_peer(x).distance(&target));
            v.truncate(8);
            named(v)
        });
        assert_eq!(q.extra, 0);
    }

    /// A lookup whose seeds are all sybils (they were nearest the key in the routing table) hears only
    /// of sybils: the density check widens it, but with nobody else to ask it ends on them. Seeded
    /// again from the table once widened (the driver's part), it reaches k honest peers.
    #[test]
    fn a_widened_lookup_seeded_only_with_sybils_reaches_honest_peers_with_more_seeds() {
        let (target, honest, sybils) = eclipse_world(10, 300);
        let info = |p: &PeerId| PeerInfo { peer: p.clone(), addrs: vec![] };
        let run = |reseed: bool| {
            let seeds = sybils[..3].iter().map(info).collect();
            let mut q = Query::new(target, PeerId::random(&mut rng::from_seed([13; 32])), seeds, 8, 3, Duration::from_secs(1))
                .with_density_check(300.0);
            while !q.is_finished() {
                let batch: Vec<PeerId> = std::iter::from_fn(|| q.next(Instant(0)).map(|p| p.peer)).collect();
                for p in batch {
                    q.on_answer(Instant(0), &p, &named(eclipse_answer(&p, &target, &honest, &sybils)));
                    if reseed && q.wants_seeds() {
                        q.add_seeds(honest[..24].iter().map(info).collect());
                    }
                }
            }
            (q.closest_answered().iter().filter(|p| honest.contains(&p.peer)).count(), q.extra)
        };
        let (honest_n, extra) = run(false);
        assert!(extra >= 6 && honest_n == 0, "no new seeds: {honest_n} honest, {extra} extra");
        let (honest_n, _) = run(true);
        assert!(honest_n >= 8, "k honest peers beyond the sybils: {honest_n}");
    }

    #[test]
    fn query_fails_silent_peers_at_their_deadline_and_finishes_without_them() {
        let mut r = rng::from_seed([5; 32]);
        let seeds: Vec<PeerInfo> = (0..3).map(|_| PeerInfo { peer: PeerId::random(&mut r), addrs: vec![] }).collect();
        let mut q = Query::new(Key::from_bytes(b"y"), PeerId::random(&mut r), seeds, 20, 10, Duration::from_secs(10));
        while q.next(Instant(0)).is_some() {}
        assert_eq!(q.next_deadline(), Some(Instant(0) + Duration::from_secs(10)));
        assert_eq!(q.on_timeout(Instant(0) + Duration::from_secs(10)).len(), 3);
        assert!(q.is_finished());
        assert!(q.closest_answered().is_empty());
    }
}
