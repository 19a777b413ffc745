//! What the node knows of peers: addresses, keys, protocols, agent — capped, in the sans-IO core so the
//! simulator runs the same policy as the Host. (The compact persistent peerstore is its own piece of
//! work; this is the in-memory one the Host had, moved.)

use crate::identify::Info;
use crate::identity::{PeerId, PublicKey};
use crate::multiaddr::Multiaddr;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Peers remembered (beyond: the oldest-inserted peer that is not connected is forgotten). Default 10 000.
    pub max_peers: usize,
    /// Addresses kept per peer (beyond: new ones are ignored). Default 32.
    pub max_addrs_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_peers: 10_000, max_addrs_per_peer: 32 }
    }
}

/// What the node knows of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRecord {
    pub addrs: Vec<Multiaddr>,
    pub protocols: Vec<String>,
    pub agent_version: Option<String>,
    pub protocol_version: Option<String>,
    pub public_key: Option<PublicKey>,
    /// Our address as this peer saw it.
    pub observed_addr: Option<Multiaddr>,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub evicted: u64,
    pub addrs_dropped: u64,
}

#[derive(Debug, Default)]
pub struct Peerstore {
    peers: BTreeMap<PeerId, PeerRecord>,
    limits: Limits,
    stats: Stats,
}

impl Peerstore {
    pub fn new(limits: Limits) -> Self {
        Peerstore { peers: BTreeMap::new(), limits, stats: Stats::default() }
    }

    pub fn get(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.peers.get(peer)
    }
    pub fn len(&self) -> usize {
        self.peers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn peers(&self) -> impl Iterator<Item = (&PeerId, &PeerRecord)> {
        self.peers.iter()
    }

    /// The record of `peer`, made room for if new (`connected` peers are never evicted).
    fn entry(&mut self, peer: &PeerId, connected: &dyn Fn(&PeerId) -> bool) -> &mut PeerRecord {
        if !self.peers.contains_key(peer) && self.peers.len() >= self.limits.max_peers {
            if let Some(victim) = self.peers.keys().find(|p| !connected(p)).cloned() {
                self.peers.remove(&victim);
                self.stats.evicted += 1;
            }
        }
        self.peers.entry(peer.clone()).or_default()
    }

    /// Remembers addresses of `peer` (any `/p2p/..` suffix removed).
    pub fn add_addrs(&mut self, peer: &PeerId, addrs: &[Multiaddr], connected: &dyn Fn(&PeerId) -> bool) {
        let max = self.limits.max_addrs_per_peer;
        let e = self.entry(peer, connected);
        let mut dropped = 0;
        for a in addrs {
            let a = a.without_peer_id();
            if e.addrs.contains(&a) {
                continue;
            }
            if e.addrs.len() >= max {
                dropped += 1;
                continue;
            }
            e.addrs.push(a);
        }
        self.stats.addrs_dropped += dropped;
    }

    pub fn set_public_key(&mut self, peer: &PeerId, key: PublicKey, connected: &dyn Fn(&PeerId) -> bool) {
        self.entry(peer, connected).public_key = Some(key);
    }

    /// What identify told us (an answer or a push): protocols replace the old ones, addresses add.
    pub fn apply_identify(&mut self, peer: &PeerId, info: &Info, connected: &dyn Fn(&PeerId) -> bool) {
        let e = self.entry(peer, connected);
        e.protocols = info.protocols.clone();
        e.agent_version = info.agent_version.clone().or(e.agent_version.take());
        e.protocol_version = info.protocol_version.clone().or(e.protocol_version.take());
        if let Some(k) = &info.public_key {
            e.public_key = Some(k.clone());
        }
        if info.observed_addr.is_some() {
            e.observed_addr = info.observed_addr.clone();
        }
        self.add_addrs(peer, &info.listen_addrs, connected);
    }
}
