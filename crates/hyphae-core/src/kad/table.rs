//! The routing table: 256 k-buckets by common prefix length with the local key, least recently seen
//! first, and go-libp2p-kad-dht's diversity filter (at most `max_per_group` peers per IP group in the
//! table and `max_per_group_per_bucket` in one bucket; /16 for IPv4, /32 for IPv6). Only DHT servers
//! enter it (the service decides). A full bucket keeps its old peers (older peers stay up longer, the
//! Kademlia paper's observation); a peer that failed `max_failures` requests in a row leaves, making room.
//!
//! With `proximity` on (proximity neighbour selection, PNS: Kaune et al., "Proximity routing in
//! Kademlia", 2008), a full bucket also makes room for a peer that answers clearly faster than its
//! slowest measured peer: any peer in a bucket's range is as good for a lookup's progress, so a table
//! may as well hold the near ones, and the lookups that start from it (and from its neighbours' tables)
//! take shorter rounds. Round-trip times are the connection handshake's last round trip
//! (`ConnectionEvent::Established`'s `rtt`, known when identify adds the peer) and the request →
//! answer times the service measures on established connections; the least seen per peer counts.

use super::{Distance, Key, PeerInfo};
use crate::identity::PeerId;
use crate::multiaddr::{is_local_ip, Multiaddr};
use crate::time::{Duration, Instant};
use core::net::IpAddr;

/// Requests a peer may fail in a row before it leaves the table.
pub const MAX_FAILURES: u8 = 2;
/// Addresses kept per peer.
pub const MAX_ADDRS: usize = 8;
/// With `proximity`, a new peer replaces a bucket's slowest only when that one's round trip is at
/// least this many times the new one's (in 1/4ths: 6 = 1.5×) ...
pub const PROXIMITY_RATIO_QUARTERS: u32 = 6;
/// ... and at least this much longer, so jitter on a short path does not churn the table.
pub const PROXIMITY_MIN_GAIN: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct Entry {
    pub peer: PeerId,
    pub key: Key,
    pub addrs: Vec<Multiaddr>,
    pub last_seen: Instant,
    pub failures: u8,
    /// The least round trip measured (handshake, or request → answer), when one was.
    pub rtt: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Added,
    Updated,
    /// The bucket is full of peers that still answer.
    Full,
    /// The bucket was full; the new peer took the place of a clearly slower one (`proximity`).
    Nearer,
    /// The diversity filter refused it.
    Diversity,
    /// Our own key.
    Local,
}

#[derive(Debug, Clone, Copy)]
pub struct TableConfig {
    pub k: usize,
    pub max_per_group: usize,
    pub max_per_group_per_bucket: usize,
    /// Apply the filter to loopback and private addresses too.
    pub diversity_private: bool,
    /// Proximity neighbour selection (see the module's documentation).
    pub proximity: bool,
}

pub struct Table {
    local: Key,
    config: TableConfig,
    buckets: Vec<Vec<Entry>>,
    len: usize,
}

/// The IP group an address counts in for the diversity filter, or `None` when exempt.
pub(super) fn group(a: &Multiaddr, private_too: bool) -> Option<Vec<u8>> {
    let ip = a.ip()?;
    if !private_too && is_local_ip(ip) {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => Some(vec![4, v4.octets()[0], v4.octets()[1]]),
        IpAddr::V6(v6) => {
            let mut g = vec![6];
            g.extend_from_slice(&v6.octets()[..4]);
            Some(g)
        }
    }
}

impl Table {
    pub fn new(local: Key, config: TableConfig) -> Table {
        Table { local, config, buckets: vec![Vec::new(); 256], len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bucket index of `key`: its common prefix length with ours (`None` for our own key).
    pub fn bucket_of(&self, key: &Key) -> Option<usize> {
        let cpl = self.local.distance(key).leading_zeros();
        (cpl < 256).then_some(cpl)
    }

    /// Peers per bucket (for metrics: table fill).
    pub fn bucket_sizes(&self) -> Vec<usize> {
        self.buckets.iter().map(Vec::len).collect()
    }

    /// The number of DHT servers in the network, estimated from the buckets near us: those from the
    /// first that is not full (b) down hold every server we know of in 1/2^b of the keyspace. 0 until
    /// the first 3 buckets are full (a young table underestimates; networks under ~160 servers never
    /// get an estimate). Optimistic provide stores on the strength of it.
    pub fn size_estimate(&self) -> f64 {
        let k = self.config.k;
        match self.buckets.iter().position(|b| b.len() < k) {
            Some(b0) if b0 >= 3 => (self.buckets[b0..].iter().map(Vec::len).sum::<usize>() + 1) as f64 * 2f64.powi(b0 as i32),
            _ => 0.0,
        }
    }

    /// The estimate the density check uses: [`Table::size_estimate`], or before the table has one, an
    /// estimate from the servers nearest us, which the self-lookup of every bootstrap and the near
    /// buckets' refresh keep complete: n servers spread uniformly put the j-th nearest at a keyspace
    /// fraction d_j with E[(j-1)/d_j] = n (an Erlang(j) distance, ±22% for j = 20); j is k, or fewer
    /// (at least 8) when the buckets below the deepest full one hold fewer (a full bucket may have
    /// turned away nearer servers than its farthest). 0 while the table holds fewer than 3k servers.
    ///
    /// Until 2026-12-02 the density check had only the first, and tables whose first 3 buckets were not
    /// full had the check off: four minutes into a 1,000-node run some held 17 and 10 of the ~80 and
    /// ~40 servers of buckets 1 and 2, and those nodes' lookups for an eclipsed key, seeded with
    /// sybils only, ended on them (12 of 700 failed, `scripts/bench-eclipse.sh`'s near-sybil rows).
    /// The nearest-servers estimate for every table gave 4× the check's false alarms in `dht-1k.hyp`
    /// (0.29% of lookups widened against 0.07%), so it is the fallback; optimistic provide, which an
    /// estimate too low misleads into storing on peers that are not among the closest, keeps the first.
    pub fn density_estimate(&self) -> f64 {
        let mature = self.size_estimate();
        let k = self.config.k;
        if mature > 0.0 || k < 2 || self.len < 3 * k {
            return mature;
        }
        let below_full = match self.buckets.iter().rposition(|b| b.len() >= k) {
            Some(f) => self.buckets[f + 1..].iter().map(Vec::len).sum(),
            None => self.len,
        };
        let j = below_full.clamp(k.min(8), k);
        let mut d: Vec<Distance> = self.iter().map(|e| self.local.distance(&e.key)).collect();
        let (_, jth, _) = d.select_nth_unstable(j - 1);
        let f = jth.fraction();
        if f <= 0.0 {
            return 0.0;
        }
        (j - 1) as f64 / f
    }

    /// The deepest non-empty bucket (refresh goes up to it).
    pub fn max_bucket(&self) -> Option<usize> {
        self.buckets.iter().rposition(|b| !b.is_empty())
    }

    pub fn get(&self, peer: &PeerId) -> Option<&Entry> {
        let b = self.bucket_of(&Key::from_peer(peer))?;
        self.buckets[b].iter().find(|e| &e.peer == peer)
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.get(peer).is_some()
    }

    fn groups_of(&self, addrs: &[Multiaddr]) -> Vec<Vec<u8>> {
        let mut g: Vec<Vec<u8>> = addrs.iter().filter_map(|a| group(a, self.config.diversity_private)).collect();
        g.sort();
        g.dedup();
        g
    }

    fn count_group(entries: &[Entry], g: &[u8], private_too: bool) -> usize {
        entries.iter().filter(|e| e.addrs.iter().any(|a| group(a, private_too).as_deref() == Some(g))).count()
    }

    /// Adds or refreshes a DHT server that announced the protocol.
    pub fn insert(&mut self, peer: &PeerId, addrs: &[Multiaddr], now: Instant) -> Insert {
        self.insert_measured(peer, addrs, now, None)
    }

    /// Adds or refreshes a DHT server that answered a request in `rtt` (when measured).
    pub fn insert_measured(&mut self, peer: &PeerId, addrs: &[Multiaddr], now: Instant, rtt: Option<Duration>) -> Insert {
        let key = Key::from_peer(peer);
        let Some(b) = self.bucket_of(&key) else { return Insert::Local };
        let addrs: Vec<Multiaddr> = addrs.iter().take(MAX_ADDRS).map(Multiaddr::without_peer_id).collect();
        if let Some(e) = self.buckets[b].iter_mut().find(|e| &e.peer == peer) {
            e.last_seen = now;
            e.failures = 0;
            e.rtt = match (e.rtt, rtt) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if !addrs.is_empty() {
                e.addrs = addrs;
            }
            // Most recently seen last.
            let i = self.buckets[b].iter().position(|e| &e.peer == peer).expect("invariant: found above");
            let e = self.buckets[b].remove(i);
            self.buckets[b].push(e);
            return Insert::Updated;
        }
        let private_too = self.config.diversity_private;
        for g in self.groups_of(&addrs) {
            if Self::count_group(&self.buckets[b], &g, private_too) >= self.config.max_per_group_per_bucket {
                return Insert::Diversity;
            }
            let total: usize = self.buckets.iter().map(|bk| Self::count_group(bk, &g, private_too)).sum();
            if total >= self.config.max_per_group {
                return Insert::Diversity;
            }
        }
        let mut result = Insert::Added;
        if self.buckets[b].len() >= self.config.k {
            // Room only where a peer stopped answering, or, with proximity, for a clearly nearer peer.
            let victim = self.buckets[b].iter().position(|e| e.failures >= MAX_FAILURES).or_else(|| {
                let new = rtt.filter(|_| self.config.proximity)?;
                let (i, slowest) = self.buckets[b].iter().enumerate().filter_map(|(i, e)| Some((i, e.rtt?))).max_by_key(|(_, r)| *r)?;
                let clearly =
                    slowest.as_nanos() * 4 >= new.as_nanos() * u128::from(PROXIMITY_RATIO_QUARTERS) && slowest >= new + PROXIMITY_MIN_GAIN;
                clearly.then(|| {
                    result = Insert::Nearer;
                    i
                })
            });
            match victim {
                Some(i) => {
                    self.buckets[b].remove(i);
                    self.len -= 1;
                }
                None => return Insert::Full,
            }
        }
        self.buckets[b].push(Entry { peer: peer.clone(), key, addrs, last_seen: now, failures: 0, rtt });
        self.len += 1;
        result
    }

    /// A request to `peer` failed; it leaves after [`MAX_FAILURES`] in a row. Returns whether it left.
    pub fn failed(&mut self, peer: &PeerId) -> bool {
        let Some(b) = self.bucket_of(&Key::from_peer(peer)) else { return false };
        let Some(i) = self.buckets[b].iter().position(|e| &e.peer == peer) else { return false };
        self.buckets[b][i].failures += 1;
        if self.buckets[b][i].failures >= MAX_FAILURES {
            self.buckets[b].remove(i);
            self.len -= 1;
            return true;
        }
        false
    }

    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let Some(b) = self.bucket_of(&Key::from_peer(peer)) else { return false };
        let Some(i) = self.buckets[b].iter().position(|e| &e.peer == peer) else { return false };
        self.buckets[b].remove(i);
        self.len -= 1;
        true
    }

    /// The `n` peers closest to `target`, closest first.
    pub fn closest(&self, target: &Key, n: usize) -> Vec<PeerInfo> {
        let mut all: Vec<&Entry> = self.buckets.iter().flatten().collect();
        all.sort_by_key(|e| e.key.distance(target));
        all.into_iter().take(n).map(|e| PeerInfo { peer: e.peer.clone(), addrs: e.addrs.clone() }).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    fn cfg() -> TableConfig {
        TableConfig { k: 20, max_per_group: 3, max_per_group_per_bucket: 2, diversity_private: false, proximity: false }
    }

    #[test]
    fn table_orders_by_xor_distance_and_keeps_k_per_bucket() {
        let mut r = rng::from_seed([9; 32]);
        let me = PeerId::random(&mut r);
        let mut t = Table::new(Key::from_peer(&me), cfg());
        assert_eq!(t.insert(&me, &[], Instant(0)), Insert::Local);
        let peers: Vec<PeerId> = (0..500).map(|_| PeerId::random(&mut r)).collect();
        for p in &peers {
            t.insert(p, &["/ip4/10.0.0.1/tcp/1".parse().unwrap()], Instant(0));
        }
        // Bucket 0 holds half the keyspace: full at k, the rest refused.
        assert_eq!(t.bucket_sizes()[0], 20);
        assert!(t.bucket_sizes().iter().all(|n| *n <= 20));
        let target = Key::from_bytes(b"target");
        let c = t.closest(&target, 20);
        let mut want: Vec<&PeerId> = t.iter().map(|e| &e.peer).collect();
        want.sort_by_key(|p| Key::from_peer(p).distance(&target));
        assert_eq!(c.iter().map(|p| &p.peer).collect::<Vec<_>>(), want[..20].to_vec());
        // Two failures in a row make room in a full bucket.
        let victim = t.iter().find(|e| t.bucket_of(&e.key) == Some(0)).unwrap().peer.clone();
        assert!(!t.failed(&victim));
        assert!(t.failed(&victim));
        assert!(!t.contains(&victim));
    }

    /// Proximity: a full bucket makes room for a clearly nearer peer (its slowest measured peer
    /// leaves), not for one only a little nearer, never for an unmeasured one, never evicts an
    /// unmeasured peer, and does nothing with `proximity` off. Round trips only go down (the least seen).
    #[test]
    fn table_proximity_replaces_a_clearly_slower_peer_in_a_full_bucket() {
        let ms = Duration::from_millis;
        for proximity in [false, true] {
            let mut r = rng::from_seed([3; 32]);
            let me = PeerId::random(&mut r);
            let mut t = Table::new(Key::from_peer(&me), TableConfig { proximity, ..cfg() });
            let a: Vec<Multiaddr> = vec!["/ip4/10.0.0.1/tcp/1".parse().unwrap()];
            let in_b0 = |t: &Table, r: &mut rng::Rng| loop {
                let p = PeerId::random(r);
                if t.bucket_of(&Key::from_peer(&p)) == Some(0) {
                    break p;
                }
            };
            // Bucket 0: 19 peers at 40 ms, one at 90 ms.
            let mut slow = None;
            for i in 0..20 {
                let p = in_b0(&t, &mut r);
                let rtt = if i == 7 { ms(90) } else { ms(40) };
                assert_eq!(t.insert_measured(&p, &a, Instant(0), Some(rtt)), Insert::Added);
                if i == 7 {
                    slow = Some(p);
                }
            }
            let slow = slow.unwrap();
            // A later, slower measurement does not raise the least seen.
            assert_eq!(t.insert_measured(&slow, &a, Instant(1), Some(ms(120))), Insert::Updated);
            assert_eq!(t.get(&slow).unwrap().rtt, Some(ms(90)));
            // Unmeasured, or only a little nearer (70 ms: 90 < 1.5 × 70): no room.
            let p = in_b0(&t, &mut r);
            assert_eq!(t.insert(&p, &a, Instant(2)), Insert::Full);
            assert_eq!(t.insert_measured(&p, &a, Instant(2), Some(ms(70))), Insert::Full);
            // Clearly nearer (42 ms): it takes the 90 ms peer's place, when proximity is on.
            let near = in_b0(&t, &mut r);
            let got = t.insert_measured(&near, &a, Instant(3), Some(ms(42)));
            if proximity {
                assert_eq!(got, Insert::Nearer);
                assert!(t.contains(&near) && !t.contains(&slow));
                assert_eq!(t.bucket_sizes()[0], 20);
                // Now every measured peer is within 1.5× of the next: a 30 ms one finds no room.
                assert_eq!(t.insert_measured(&in_b0(&t, &mut r), &a, Instant(4), Some(ms(30))), Insert::Full);
            } else {
                assert_eq!(got, Insert::Full);
                assert!(!t.contains(&near) && t.contains(&slow));
            }
            assert_eq!(t.len(), 20);
        }
    }

    /// Tables that met every one of 1,000 peers estimate the network within a factor of 2, their median
    /// within 15% (the bucket count); so do tables that met every server near them but only 10 of the
    /// ~375 of buckets 1 and 2 (the density check's fallback, from the nearest servers); a table of
    /// fewer than 60 servers gives no estimate.
    #[test]
    fn table_estimates_the_network_size_from_the_servers_near_it() {
        let mut r = rng::from_seed([12; 32]);
        let peers: Vec<PeerId> = (0..1000).map(|_| PeerId::random(&mut r)).collect();
        let a: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().unwrap();
        for far_met in [usize::MAX, 10] {
            let mut estimates = Vec::new();
            for me in peers.iter().take(25) {
                let mut t = Table::new(Key::from_peer(me), cfg());
                let mut far = 0;
                for (i, p) in peers.iter().enumerate() {
                    if i == 50 {
                        assert_eq!(t.density_estimate(), 0.0, "a young table");
                    }
                    if matches!(t.bucket_of(&Key::from_peer(p)), Some(1 | 2)) {
                        far += 1;
                        if far > far_met {
                            continue;
                        }
                    }
                    t.insert(p, std::slice::from_ref(&a), Instant(0));
                }
                if far_met == 10 {
                    assert!(t.bucket_sizes()[1] + t.bucket_sizes()[2] <= 10, "{:?}", t.bucket_sizes());
                }
                // The bucket count has no estimate for the table that met few far servers.
                assert_eq!(t.size_estimate() == 0.0, far_met == 10);
                estimates.push(t.density_estimate());
            }
            assert!(estimates.iter().all(|n| (500.0..2000.0).contains(n)), "{far_met}: {estimates:?}");
            estimates.sort_by(f64::total_cmp);
            let median = estimates[estimates.len() / 2];
            assert!((850.0..1150.0).contains(&median), "{far_met}: {median} of {estimates:?}");
        }
    }

    #[test]
    fn table_diversity_filter_limits_public_groups_and_exempts_private() {
        let mut r = rng::from_seed([7; 32]);
        let me = PeerId::random(&mut r);
        let mut t = Table::new(Key::from_peer(&me), cfg());
        let mut added = 0;
        for i in 0..50u8 {
            let p = PeerId::random(&mut r);
            let a: Multiaddr = format!("/ip4/5.5.{i}.1/tcp/4001").parse().unwrap();
            if t.insert(&p, &[a], Instant(0)) == Insert::Added {
                added += 1;
            }
        }
        assert_eq!(added, 3, "one /16 group: at most 3 peers in the table");
        for i in 0..50u8 {
            let p = PeerId::random(&mut r);
            let a: Multiaddr = format!("/ip4/127.0.0.{i}/tcp/4001").parse().unwrap();
            t.insert(&p, &[a], Instant(0));
        }
        assert!(t.len() > 30, "loopback is exempt: {}", t.len());
    }
}
