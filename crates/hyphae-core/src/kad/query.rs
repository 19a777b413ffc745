//! One iterative lookup as a machine (the spec's "peer routing" section): start from the k closest peers
//! we know, keep α requests in flight to the closest not yet asked, merge the closer peers each answer
//! brings, and finish when the k closest peers seen have all answered (or nothing is left to ask). Time
//! comes in; the machine says whom to ask next and never does I/O.

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
}

#[derive(Debug, Clone)]
pub struct Query {
    target: Key,
    local: PeerId,
    k: usize,
    alpha: usize,
    request_timeout: Duration,
    /// Candidates, closest first; at most `4·k` (the farthest are dropped: never needed).
    peers: Vec<QueryPeer>,
    pub answered: usize,
    pub max_hop: u32,
}

impl Query {
    pub fn new(target: Key, local: PeerId, seeds: Vec<PeerInfo>, k: usize, alpha: usize, request_timeout: Duration) -> Query {
        let mut q = Query { target, local, k, alpha, request_timeout, peers: Vec::new(), answered: 0, max_hop: 0 };
        for s in seeds {
            q.add(s.peer, s.addrs, 1);
        }
        q
    }

    pub fn target(&self) -> &Key {
        &self.target
    }

    fn cap(&self) -> usize {
        self.k * 4
    }

    fn add(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, hop: u32) {
        if peer == self.local {
            return;
        }
        if let Some(p) = self.peers.iter_mut().find(|p| p.peer == peer) {
            if p.addrs.is_empty() {
                p.addrs = addrs;
            }
            return;
        }
        let key = Key::from_peer(&peer);
        let d = key.distance(&self.target);
        let at = self.peers.partition_point(|p| p.key.distance(&self.target) < d);
        if at >= self.cap() {
            return;
        }
        self.peers.insert(at, QueryPeer { peer, key, addrs, state: PeerState::NotAsked, hop });
        self.peers.truncate(self.cap());
    }

    fn in_flight(&self) -> usize {
        self.peers.iter().filter(|p| matches!(p.state, PeerState::Waiting(_))).count()
    }

    /// Done: the k closest candidates that did not fail have all answered, or nobody is left to ask.
    pub fn is_finished(&self) -> bool {
        let mut seen = 0;
        for p in &self.peers {
            match p.state {
                PeerState::Failed => continue,
                PeerState::Answered => seen += 1,
                PeerState::NotAsked | PeerState::Waiting(_) => return false,
            }
            if seen >= self.k {
                return true;
            }
        }
        true
    }

    /// The next peer to ask, if one may be asked now (it is marked waiting).
    pub fn next(&mut self, now: Instant) -> Option<QueryPeer> {
        if self.in_flight() >= self.alpha || self.is_finished() {
            return None;
        }
        // Only among the k closest live candidates: asking farther ones cannot change the result.
        let mut live = 0;
        for p in self.peers.iter_mut() {
            if p.state == PeerState::Failed {
                continue;
            }
            live += 1;
            if live > self.k {
                return None;
            }
            if p.state == PeerState::NotAsked {
                p.state = PeerState::Waiting(now + self.request_timeout);
                return Some(p.clone());
            }
        }
        None
    }

    /// `peer` answered with `closer` peers.
    pub fn on_answer(&mut self, peer: &PeerId, closer: &[KadPeer]) {
        let Some(p) = self.peers.iter_mut().find(|p| &p.peer == peer) else { return };
        if !matches!(p.state, PeerState::Waiting(_)) {
            return;
        }
        p.state = PeerState::Answered;
        let hop = p.hop + 1;
        self.answered += 1;
        self.max_hop = self.max_hop.max(hop - 1);
        for c in closer {
            self.add(c.id.clone(), c.addrs.clone(), hop);
        }
    }

    pub fn on_failure(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.iter_mut().find(|p| &p.peer == peer) {
            if matches!(p.state, PeerState::Waiting(_)) {
                p.state = PeerState::Failed;
            }
        }
    }

    /// Requests past their deadline fail; returns those peers.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<PeerId> {
        let mut v = Vec::new();
        for p in &mut self.peers {
            if let PeerState::Waiting(t) = p.state {
                if t <= now {
                    p.state = PeerState::Failed;
                    v.push(p.peer.clone());
                }
            }
        }
        v
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers.iter().filter_map(|p| if let PeerState::Waiting(t) = p.state { Some(t) } else { None }).min()
    }

    /// The closest peers that answered, closest first (at most k).
    pub fn closest_answered(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .filter(|p| p.state == PeerState::Answered)
            .take(self.k)
            .map(|p| PeerInfo { peer: p.peer.clone(), addrs: p.addrs.clone() })
            .collect()
    }

    pub fn get(&self, peer: &PeerId) -> Option<&QueryPeer> {
        self.peers.iter().find(|p| &p.peer == peer)
    }
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
                q.on_answer(&p, &c);
            }
        }
        let mut want = all.clone();
        want.sort_by_key(|p| Key::from_peer(p).distance(&target));
        let got: Vec<PeerId> = q.closest_answered().into_iter().map(|p| p.peer).collect();
        assert_eq!(got, want[..5].to_vec());
        assert!(asked < 60, "{asked}");
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
