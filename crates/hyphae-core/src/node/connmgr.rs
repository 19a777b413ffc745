//! The connection manager: keeps the number of established connections between two watermarks, as
//! go-libp2p's `connmgr.BasicConnMgr` does. Above `high_water`, it closes the connections of the least
//! valuable peers until `low_water` remain; a peer's value is the sum of its tags' weights (the
//! application and the daemon's CONNMANAGER TAG_PEER set them); protected peers and peers connected for
//! less than `grace` are never trimmed.
//!
//! One difference from go: at equal value, peers we only have inbound connections from go first. An
//! attacker can open connections to us but cannot choose whom we dial, so keeping the peers we chose is
//! what makes a flood of cheap inbound connections unable to push out our own (an eclipse defence).
//!
//! Sans-IO: it decides; the node machine closes (`Op::CloseConnection`, with `CloseReason::Trimmed`).

use crate::identity::PeerId;
use crate::service::ConnId;
use crate::stream::Role;
use crate::time::{Duration, Instant};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Trim down to this many connections. Default 256 (p2pd's `-connLo`).
    pub low_water: usize,
    /// Trim when more than this many are established. Default 512 (p2pd's `-connHi`).
    pub high_water: usize,
    /// A peer's connections are safe for this long after its first one. Default 2 min (p2pd's
    /// `-connGrace`).
    pub grace: Duration,
    /// At most one automatic trim per this long (go: 10 s). A trim asked for through the API runs
    /// regardless.
    pub silence: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { low_water: 256, high_water: 512, grace: Duration::from_secs(120), silence: Duration::from_secs(10) }
    }
}

/// Limits of the tag tables (each counted when hit).
pub const MAX_TAGGED_PEERS: usize = 16_384;
pub const MAX_TAGS_PER_PEER: usize = 64;
pub const MAX_PROTECTED_PEERS: usize = 16_384;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub trims: u64,
    pub connections_trimmed: u64,
    /// Tags or protections refused because a table above was full.
    pub tags_refused: u64,
}

/// One established connection, as the node sees it.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo<'a> {
    pub conn: ConnId,
    pub peer: &'a PeerId,
    pub role: Role,
    pub established_at: Instant,
}

#[derive(Debug, Clone, Default)]
pub struct ConnManager {
    config: Option<Config>,
    tags: BTreeMap<PeerId, BTreeMap<String, i32>>,
    /// Protection tags by peer (the value is unused: the tags and the protections share `put`).
    protected: BTreeMap<PeerId, BTreeMap<String, ()>>,
    last_trim: Option<Instant>,
    stats: Stats,
}

impl ConnManager {
    /// `None`: tags and protections are kept, nothing is trimmed automatically.
    pub fn new(config: Option<Config>) -> Self {
        ConnManager { config, ..Default::default() }
    }
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sets `peer`'s tag `tag` to `weight` (go's `TagPeer`). False when a table is full.
    pub fn tag(&mut self, peer: &PeerId, tag: &str, weight: i32) -> bool {
        put(&mut self.tags, MAX_TAGGED_PEERS, peer, tag, weight, &mut self.stats.tags_refused)
    }

    /// Removes `peer`'s tag `tag` (go's `UntagPeer`).
    pub fn untag(&mut self, peer: &PeerId, tag: &str) {
        if let Some(t) = self.tags.get_mut(peer) {
            t.remove(tag);
            if t.is_empty() {
                self.tags.remove(peer);
            }
        }
    }

    pub fn tags(&self, peer: &PeerId) -> Option<&BTreeMap<String, i32>> {
        self.tags.get(peer)
    }

    /// The sum of `peer`'s tag weights.
    pub fn value(&self, peer: &PeerId) -> i64 {
        self.tags.get(peer).map_or(0, |t| t.values().map(|&w| w as i64).sum())
    }

    /// Protects `peer` from trimming under `tag` (several tags may protect one peer).
    pub fn protect(&mut self, peer: &PeerId, tag: &str) -> bool {
        put(&mut self.protected, MAX_PROTECTED_PEERS, peer, tag, (), &mut self.stats.tags_refused)
    }

    /// Lifts the protection `tag`; whether `peer` is still protected by another.
    pub fn unprotect(&mut self, peer: &PeerId, tag: &str) -> bool {
        let Some(t) = self.protected.get_mut(peer) else { return false };
        t.remove(tag);
        if t.is_empty() {
            self.protected.remove(peer);
            return false;
        }
        true
    }

    pub fn is_protected(&self, peer: &PeerId, tag: Option<&str>) -> bool {
        self.protected.get(peer).is_some_and(|t| tag.is_none_or(|tag| t.contains_key(tag)))
    }

    /// `peer`'s last connection closed: its tags go (as in go; protections stay).
    pub fn on_disconnected(&mut self, peer: &PeerId) {
        self.tags.remove(peer);
    }

    /// Whether an automatic trim is due: more than `high_water` established, the silence period over.
    pub fn wants_trim(&self, now: Instant, established: usize) -> bool {
        let Some(c) = &self.config else { return false };
        established > c.high_water && self.last_trim.is_none_or(|t| t + c.silence <= now)
    }

    /// The connections to close to get down to the low watermark (none when at or below it): whole
    /// peers, least valuable first; at equal value, inbound-only peers first, then the most recently
    /// connected. Protected peers and peers within their grace period are skipped.
    pub fn select(&mut self, now: Instant, conns: &[ConnInfo<'_>]) -> Vec<ConnId> {
        let c = self.config.clone().unwrap_or_default();
        self.last_trim = Some(now);
        if conns.len() <= c.low_water {
            return Vec::new();
        }
        struct Cand<'a> {
            peer: &'a PeerId,
            conns: Vec<ConnId>,
            first: Instant,
            dialed: bool,
        }
        let mut by_peer: BTreeMap<&PeerId, Cand<'_>> = BTreeMap::new();
        for ci in conns {
            let e = by_peer.entry(ci.peer).or_insert(Cand { peer: ci.peer, conns: Vec::new(), first: ci.established_at, dialed: false });
            e.conns.push(ci.conn);
            e.first = e.first.min(ci.established_at);
            e.dialed |= ci.role == Role::Dialer;
        }
        let mut cands: Vec<Cand<'_>> =
            by_peer.into_values().filter(|p| !self.protected.contains_key(p.peer) && p.first + c.grace <= now).collect();
        cands.sort_by(|a, b| {
            (self.value(a.peer), a.dialed, std::cmp::Reverse(a.first), a.peer).cmp(&(
                self.value(b.peer),
                b.dialed,
                std::cmp::Reverse(b.first),
                b.peer,
            ))
        });
        let mut excess = conns.len() - c.low_water;
        let mut out = Vec::new();
        for p in cands {
            if excess == 0 {
                break;
            }
            excess = excess.saturating_sub(p.conns.len());
            out.extend(p.conns);
        }
        self.stats.trims += 1;
        self.stats.connections_trimmed += out.len() as u64;
        out
    }
}

/// Sets `peer`'s `tag` in a table of tags by peer, within `max_peers` peers and `MAX_TAGS_PER_PEER`
/// tags each (a tag already there may always change); a refusal is counted in `refused`.
fn put<V>(table: &mut BTreeMap<PeerId, BTreeMap<String, V>>, max_peers: usize, peer: &PeerId, tag: &str, v: V, refused: &mut u64) -> bool {
    if !table.contains_key(peer) && table.len() >= max_peers {
        *refused += 1;
        return false;
    }
    let t = table.entry(peer.clone()).or_default();
    if !t.contains_key(tag) && t.len() >= MAX_TAGS_PER_PEER {
        *refused += 1;
        return false;
    }
    t.insert(tag.to_string(), v);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn peer(n: u8) -> PeerId {
        PeerId::random(&mut rand_chacha::ChaCha8Rng::from_seed([n; 32]))
    }

    #[test]
    fn trims_the_least_valuable_peers_down_to_the_low_watermark() {
        let mut cm =
            ConnManager::new(Some(Config { low_water: 3, high_water: 5, grace: Duration::from_secs(10), silence: Duration::from_secs(1) }));
        let peers: Vec<PeerId> = (0..7).map(peer).collect();
        let t0 = Instant(0);
        let now = t0 + Duration::from_secs(60);
        let conns: Vec<ConnInfo<'_>> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| ConnInfo { conn: ConnId(i as u64), peer: p, role: Role::Listener, established_at: t0 })
            .collect();
        cm.tag(&peers[0], "kad", 10);
        cm.tag(&peers[1], "mesh", 5);
        cm.tag(&peers[1], "app", 5);
        cm.tag(&peers[2], "x", -5);
        cm.protect(&peers[3], "keep");
        assert!(cm.wants_trim(now, 6));
        assert!(!cm.wants_trim(now, 5));
        let out = cm.select(now, &conns);
        // 7 connections, low water 3: four go; protected 3, valuable 0 and 1 stay; 2 (negative) first.
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(out.contains(&ConnId(2)));
        for keep in [0, 1, 3] {
            assert!(!out.contains(&ConnId(keep)), "{keep} trimmed");
        }
        assert!(!cm.wants_trim(now, 6), "silence period");
        assert_eq!(cm.stats().connections_trimmed, 4);
    }

    #[test]
    fn grace_period_and_dialed_peers_are_spared() {
        let mut cm =
            ConnManager::new(Some(Config { low_water: 2, high_water: 3, grace: Duration::from_secs(30), silence: Duration::ZERO }));
        let peers: Vec<PeerId> = (0..5).map(peer).collect();
        let now = Instant(0) + Duration::from_secs(100);
        let old = Instant(0);
        let conns = vec![
            ConnInfo { conn: ConnId(0), peer: &peers[0], role: Role::Dialer, established_at: old },
            ConnInfo { conn: ConnId(1), peer: &peers[1], role: Role::Listener, established_at: old },
            ConnInfo { conn: ConnId(2), peer: &peers[2], role: Role::Listener, established_at: old },
            // New: within its grace period.
            ConnInfo { conn: ConnId(3), peer: &peers[3], role: Role::Listener, established_at: now },
            // Dialed, and more recent than peer 0: the next to go.
            ConnInfo { conn: ConnId(4), peer: &peers[4], role: Role::Dialer, established_at: old + Duration::from_secs(1) },
        ];
        let mut out = cm.select(now, &conns);
        out.sort();
        assert_eq!(out, vec![ConnId(1), ConnId(2), ConnId(4)], "inbound-only first, then the newest we dialed");
    }

    #[test]
    fn tags_are_bounded_and_go_with_the_last_connection() {
        let mut cm = ConnManager::new(None);
        let p = peer(1);
        for i in 0..MAX_TAGS_PER_PEER {
            assert!(cm.tag(&p, &format!("t{i}"), 1));
        }
        assert!(!cm.tag(&p, "one-more", 1));
        assert!(cm.tag(&p, "t0", 7), "updating a tag is always allowed");
        assert_eq!(cm.value(&p), MAX_TAGS_PER_PEER as i64 + 6);
        assert_eq!(cm.stats().tags_refused, 1);
        cm.protect(&p, "a");
        cm.protect(&p, "b");
        assert!(cm.unprotect(&p, "a"));
        assert!(!cm.unprotect(&p, "b"));
        assert!(!cm.is_protected(&p, None));
        cm.on_disconnected(&p);
        assert_eq!(cm.value(&p), 0);
        assert!(!cm.wants_trim(Instant(0), 10_000), "no config: never automatic");
    }
}
