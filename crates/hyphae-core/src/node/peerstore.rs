//! What the node knows of peers: addresses with go-libp2p's TTL classes, public keys, protocols, agent
//! and protocol versions, latency — compact, capped, in the sans-IO core so the simulator runs the same
//! policy as the Host.
//!
//! # Layout (why a million peers fit in ~150 bytes each)
//!
//! go's and rust's peerstores keep a map per peer of maps and strings; libp2p's maintainers wanted it
//! smaller. Here a peer is one fixed 80-byte slot (its id inline, no allocation) in a `Vec`, found
//! through a hash table of 4-byte slot numbers (`hashbrown::HashTable`: the hash and the equality
//! read the slot, so the id is stored once). Everything variable is shared or packed:
//!
//! - addresses: packed binary multiaddrs, each with its expiry (4 bytes) and class (1 byte), in one
//!   byte arena (`data`), compacted when half of it is garbage;
//! - protocols: a peer holds one id of an interned *set* of protocol names (most peers run the same
//!   software, so most share a set), reference-counted;
//! - agent and protocol version strings: interned ids;
//! - public keys: derived from the peer id when it inlines them (Ed25519, secp256k1); only the others
//!   (RSA, ECDSA) are kept, in a side table.
//!
//! Iteration follows slot order and hashing uses fixed keys: the same inputs give the same store.

use crate::identify::Info;
use crate::identity::{PeerId, PublicKey};
use crate::multiaddr::Multiaddr;
use crate::time::{Duration, Instant};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Peers remembered (beyond: the oldest-inserted peer that is not connected is forgotten). Default 10 000.
    pub max_peers: usize,
    /// Addresses kept per peer (go: 64; beyond: new ones are ignored). Default 64.
    pub max_addrs_per_peer: usize,
    /// Protocols kept per peer (go: 128; beyond: the rest are dropped). Default 128.
    pub max_protocols_per_peer: usize,
    /// Addresses over all peers (go: 10^6; beyond: new ones are ignored). Default 1 000 000.
    pub max_addrs: usize,
    /// Distinct strings (protocol names, agent and protocol versions) interned (beyond: a new name is
    /// dropped, counted). Default 65 536.
    pub max_strings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_peers: 10_000, max_addrs_per_peer: 64, max_protocols_per_peer: 128, max_addrs: 1_000_000, max_strings: 65_536 }
    }
}

/// How long an address stays: go-libp2p's TTL classes (`peerstore.TempAddrTTL` and the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddrTtl {
    /// 2 min: an address heard in passing (a DHT answer).
    Temp,
    /// 15 min: a peer we were connected to, after the connection closed.
    RecentlyConnected,
    /// 30 min: a provider record's address.
    Provider,
    /// 1 h: an address someone told us.
    Address,
    /// While connected; becomes `RecentlyConnected` when the last connection closes.
    Connected,
    /// Until removed (addresses the application added, bootstrap peers).
    Permanent,
}

impl AddrTtl {
    fn code(self) -> u8 {
        self as u8
    }
    fn from_code(c: u8) -> AddrTtl {
        match c {
            0 => AddrTtl::Temp,
            1 => AddrTtl::RecentlyConnected,
            2 => AddrTtl::Provider,
            3 => AddrTtl::Address,
            4 => AddrTtl::Connected,
            _ => AddrTtl::Permanent,
        }
    }
    /// The expiry (whole seconds of our clock) from `now`; `u32::MAX` for the classes without one.
    fn expiry(self, now: Instant) -> u32 {
        let secs = |d: u64| u32::try_from(now.as_nanos() / 1_000_000_000 + d).unwrap_or(u32::MAX - 1);
        match self {
            AddrTtl::Temp => secs(120),
            AddrTtl::RecentlyConnected => secs(15 * 60),
            AddrTtl::Provider => secs(30 * 60),
            AddrTtl::Address => secs(3600),
            AddrTtl::Connected | AddrTtl::Permanent => u32::MAX,
        }
    }
}

/// Our own address as a peer saw it (identify's observed address): kept with the peer's entries.
const OBSERVED: u8 = 0x40;
/// An address taken from a signed peer record (certified).
pub const CERTIFIED: u8 = 0x80;

/// What the node knows of one peer (decoded from the compact store).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRecord {
    pub addrs: Vec<Multiaddr>,
    pub protocols: Vec<String>,
    pub agent_version: Option<String>,
    pub protocol_version: Option<String>,
    pub public_key: Option<PublicKey>,
    /// Our address as this peer saw it.
    pub observed_addr: Option<Multiaddr>,
    /// Those of `addrs` the peer signed (a verified signed peer record).
    pub certified_addrs: Vec<Multiaddr>,
    /// Round-trip EWMA (go's: α = 0.1), from pings.
    pub latency: Option<Duration>,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub evicted: u64,
    /// Addresses not kept (a cap, or longer than 255 bytes).
    pub addrs_dropped: u64,
    pub addrs_expired: u64,
    pub protocols_dropped: u64,
    /// Strings not interned because `max_strings` was reached.
    pub strings_refused: u64,
    pub compactions: u64,
}

const MAX_ID: usize = 44;

/// One peer: 80 bytes, no allocation.
#[derive(Clone, Copy)]
struct Slot {
    id: [u8; MAX_ID],
    id_len: u8,
    live: bool,
    /// Its addresses in `data`: `[expiry u32 LE][class u8][len u8][multiaddr bytes]` each.
    addr_off: u32,
    addr_len: u16,
    /// Interned protocol set (0: none), agent and protocol version strings (0: none).
    protos: u32,
    agent: u32,
    pver: u32,
    latency_us: u32,
    /// Insertion sequence (eviction order).
    seq: u32,
    /// The sequence number of the newest signed peer record taken (0: none).
    record_seq: u64,
}

impl Slot {
    fn id(&self) -> &[u8] {
        &self.id[..self.id_len as usize]
    }
}

type Fixed = BuildHasherDefault<DefaultHasher>;

#[derive(Default)]
pub struct Peerstore {
    limits: Limits,
    stats: Stats,
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: hashbrown::HashTable<u32>,
    hasher: Fixed,
    /// (slot, its seq) in insertion order; stale pairs are skipped.
    order: VecDeque<(u32, u32)>,
    next_seq: u32,
    data: Vec<u8>,
    garbage: usize,
    n_addrs: usize,
    strings: Vec<Box<str>>,
    string_ids: HashMap<Box<str>, u32, Fixed>,
    /// Protocol sets: names, and how many peers hold each (0: free).
    sets: Vec<(Box<[u32]>, u32)>,
    set_ids: HashMap<Box<[u32]>, u32, Fixed>,
    free_sets: Vec<u32>,
    /// Public keys the peer id does not inline, by slot.
    keys: BTreeMap<u32, PublicKey>,
    /// Changed since the driver last took them (`take_changes`): the persistence journal. Bounded by
    /// the peers held (a peer is in it once) plus removals since the last take (at most `max_peers`;
    /// beyond, the oldest removals are forgotten and counted, and the store rewrites them as gone
    /// when it next loads, as its records stay valid).
    dirty: Dirty,
    removed: VecDeque<Vec<u8>>,
}

/// Slots changed since the journal was last taken: one bit per slot (a million peers: 122 KiB).
#[derive(Debug, Default)]
struct Dirty {
    bits: Vec<u64>,
    count: usize,
}

impl Dirty {
    fn set(&mut self, s: u32) {
        let (w, b) = (s as usize / 64, 1u64 << (s % 64));
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & b == 0 {
            self.bits[w] |= b;
            self.count += 1;
        }
    }
    fn clear(&mut self, s: u32) {
        let (w, b) = (s as usize / 64, 1u64 << (s % 64));
        if self.bits.get(w).is_some_and(|x| x & b != 0) {
            self.bits[w] &= !b;
            self.count -= 1;
        }
    }
    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &x)| (0..64).filter(move |b| x & (1 << b) != 0).map(move |b| (w * 64 + b) as u32))
    }
}

/// A change for the persistent store: `record` is the peer's encoding (the persistent format of `Peerstore::take_changes`), `None`
/// when the peer was forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub peer: Vec<u8>,
    pub record: Option<Vec<u8>>,
}

impl std::fmt::Debug for Peerstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peerstore").field("peers", &self.len()).field("addrs", &self.n_addrs).finish()
    }
}

/// One packed address entry.
struct Entry<'a> {
    expiry: u32,
    class: u8,
    bytes: &'a [u8],
}

fn entries(mut b: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    std::iter::from_fn(move || {
        if b.len() < 6 {
            return None;
        }
        let expiry = u32::from_le_bytes(b[..4].try_into().expect("invariant: 4 bytes"));
        let (class, len) = (b[4], b[5] as usize);
        let bytes = &b[6..6 + len];
        b = &b[6 + len..];
        Some(Entry { expiry, class, bytes })
    })
}

/// Where the entry of address `bytes` (not an observed one) starts in packed `buf`.
/// A slot's round-trip average (0: none measured).
fn slot_latency(sl: &Slot) -> Option<Duration> {
    (sl.latency_us != 0).then(|| Duration::from_micros(u64::from(sl.latency_us)))
}

fn find_addr(buf: &[u8], bytes: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while pos + 6 <= buf.len() {
        let len = buf[pos + 5] as usize;
        if buf[pos + 4] & OBSERVED == 0 && buf[pos + 6..pos + 6 + len] == *bytes {
            return Some(pos);
        }
        pos += 6 + len;
    }
    None
}

fn push_entry(out: &mut Vec<u8>, expiry: u32, class: u8, bytes: &[u8]) {
    out.extend_from_slice(&expiry.to_le_bytes());
    out.push(class);
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn secs(now: Instant) -> u32 {
    u32::try_from(now.as_nanos() / 1_000_000_000).unwrap_or(u32::MAX - 2)
}

impl Peerstore {
    pub fn new(limits: Limits) -> Self {
        Peerstore { limits, strings: vec!["".into()], sets: vec![(Box::new([]), u32::MAX)], next_seq: 1, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Addresses held over all peers.
    pub fn num_addrs(&self) -> usize {
        self.n_addrs
    }
    /// Bytes the store holds on the heap (slots, index, arena, interned strings and sets): what the
    /// million-peer benchmark reports per peer.
    pub fn heap_bytes(&self) -> usize {
        let strings: usize = self.strings.iter().map(|s| s.len() + 16).sum::<usize>() + self.string_ids.capacity() * 24;
        let sets: usize = self.sets.iter().map(|(s, _)| s.len() * 4 + 24).sum::<usize>() + self.set_ids.capacity() * 24;
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.index.capacity() * 5
            + self.order.capacity() * 8
            + self.data.capacity()
            + self.free.capacity() * 4
            + strings
            + sets
            + self.keys.len() * 64
            + self.dirty.bits.capacity() * 8
            + self.removed.iter().map(|r| r.len() + 24).sum::<usize>()
    }

    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    fn find(&self, peer: &PeerId) -> Option<u32> {
        let id = peer.as_bytes();
        self.index.find(self.hash(id), |&s| self.slots[s as usize].id() == id).copied()
    }

    /// The slot of `peer`, made if new (`connected` peers are never evicted). `None`: its id is too
    /// long to store (never for ids this crate makes).
    fn slot(&mut self, peer: &PeerId, connected: &dyn Fn(&PeerId) -> bool) -> Option<u32> {
        if let Some(s) = self.find(peer) {
            return Some(s);
        }
        let id = peer.as_bytes();
        if id.len() > MAX_ID {
            return None;
        }
        if self.len() >= self.limits.max_peers {
            self.evict_one(connected);
        }
        let mut slot = Slot {
            id: [0; MAX_ID],
            id_len: id.len() as u8,
            live: true,
            addr_off: 0,
            addr_len: 0,
            protos: 0,
            agent: 0,
            pver: 0,
            latency_us: 0,
            seq: self.next_seq,
            record_seq: 0,
        };
        slot.id[..id.len()].copy_from_slice(id);
        self.next_seq = self.next_seq.wrapping_add(1);
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                s
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.order.push_back((s, slot.seq));
        let h = self.hash(id);
        let slots = &self.slots;
        let hasher = &self.hasher;
        self.index.insert_unique(h, s, |&x| hasher.hash_one(slots[x as usize].id()));
        Some(s)
    }

    /// Forgets the oldest-inserted peer that is not connected.
    fn evict_one(&mut self, connected: &dyn Fn(&PeerId) -> bool) {
        for _ in 0..self.order.len() {
            let Some((s, seq)) = self.order.pop_front() else { return };
            let sl = &self.slots[s as usize];
            if !sl.live || sl.seq != seq {
                continue;
            }
            let peer = PeerId::from_bytes(sl.id()).expect("invariant: stored ids were valid");
            if connected(&peer) {
                self.order.push_back((s, seq));
                continue;
            }
            self.remove_slot(s);
            self.stats.evicted += 1;
            return;
        }
    }

    fn remove_slot(&mut self, s: u32) {
        let sl = self.slots[s as usize];
        let h = self.hash(sl.id());
        if let Ok(e) = self.index.find_entry(h, |&x| x == s) {
            e.remove();
        }
        self.n_addrs -= entries(self.addr_bytes(&sl)).filter(|e| e.class & OBSERVED == 0).count();
        self.garbage += sl.addr_len as usize;
        self.release_set(sl.protos);
        self.keys.remove(&s);
        self.slots[s as usize].live = false;
        self.free.push(s);
        self.dirty.clear(s);
        if self.removed.len() >= self.limits.max_peers {
            self.removed.pop_front();
        }
        self.removed.push_back(sl.id().to_vec());
    }

    /// Forgets `peer` entirely.
    pub fn remove(&mut self, peer: &PeerId) {
        if let Some(s) = self.find(peer) {
            self.remove_slot(s);
        }
    }

    fn addr_bytes(&self, sl: &Slot) -> &[u8] {
        &self.data[sl.addr_off as usize..sl.addr_off as usize + sl.addr_len as usize]
    }

    /// Replaces slot `s`'s packed addresses.
    fn set_addr_bytes(&mut self, s: u32, bytes: &[u8]) {
        self.dirty.set(s);
        let old = self.slots[s as usize].addr_len as usize;
        self.garbage += old;
        let off = self.data.len();
        self.data.extend_from_slice(bytes);
        let sl = &mut self.slots[s as usize];
        sl.addr_off = off as u32;
        sl.addr_len = bytes.len() as u16;
        if self.garbage > 1 << 20 && self.garbage * 2 > self.data.len() {
            self.compact();
        }
    }

    /// Rewrites the arena without its garbage.
    fn compact(&mut self) {
        let mut data = Vec::with_capacity(self.data.len() - self.garbage);
        for sl in self.slots.iter_mut().filter(|s| s.live) {
            let off = data.len();
            data.extend_from_slice(&self.data[sl.addr_off as usize..sl.addr_off as usize + sl.addr_len as usize]);
            sl.addr_off = off as u32;
        }
        self.data = data;
        self.garbage = 0;
        self.stats.compactions += 1;
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        if self.strings.len() > self.limits.max_strings {
            self.stats.strings_refused += 1;
            return 0;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.into());
        self.string_ids.insert(s.into(), id);
        id
    }

    fn string(&self, id: u32) -> Option<String> {
        (id != 0).then(|| self.strings[id as usize].to_string())
    }

    fn release_set(&mut self, id: u32) {
        if id == 0 {
            return;
        }
        let e = &mut self.sets[id as usize];
        e.1 -= 1;
        if e.1 == 0 {
            let names = std::mem::take(&mut e.0);
            self.set_ids.remove(&names);
            self.free_sets.push(id);
        }
    }

    fn intern_set(&mut self, names: Vec<u32>) -> u32 {
        if names.is_empty() {
            return 0;
        }
        let names: Box<[u32]> = names.into();
        if let Some(&id) = self.set_ids.get(&names) {
            self.sets[id as usize].1 += 1;
            return id;
        }
        let id = match self.free_sets.pop() {
            Some(id) => {
                self.sets[id as usize] = (names.clone(), 1);
                id
            }
            None => {
                self.sets.push((names.clone(), 1));
                (self.sets.len() - 1) as u32
            }
        };
        self.set_ids.insert(names, id);
        id
    }

    /// What the store knows of `peer` (its addresses whatever their expiry; `gc` drops expired ones).
    pub fn get(&self, peer: &PeerId) -> Option<PeerRecord> {
        let s = self.find(peer)?;
        let sl = &self.slots[s as usize];
        let mut r = PeerRecord::default();
        for e in entries(self.addr_bytes(sl)) {
            let Ok(a) = Multiaddr::from_bytes(e.bytes) else { continue };
            if e.class & OBSERVED != 0 {
                r.observed_addr = Some(a);
            } else {
                if e.class & CERTIFIED != 0 {
                    r.certified_addrs.push(a.clone());
                }
                r.addrs.push(a);
            }
        }
        r.protocols = self.sets[sl.protos as usize].0.iter().map(|&n| self.strings[n as usize].to_string()).collect();
        r.agent_version = self.string(sl.agent);
        r.protocol_version = self.string(sl.pver);
        r.public_key = self.keys.get(&s).cloned().or_else(|| peer.inline_public_key());
        r.latency = slot_latency(sl);
        Some(r)
    }

    /// `peer`'s addresses not expired at `now`.
    pub fn addrs(&self, peer: &PeerId, now: Instant) -> Vec<Multiaddr> {
        let Some(s) = self.find(peer) else { return Vec::new() };
        let t = secs(now);
        entries(self.addr_bytes(&self.slots[s as usize]))
            .filter(|e| e.class & OBSERVED == 0 && e.expiry > t)
            .filter_map(|e| Multiaddr::from_bytes(e.bytes).ok())
            .collect()
    }

    /// Whether `peer` announced `protocol`.
    pub fn supports(&self, peer: &PeerId, protocol: &str) -> bool {
        let (Some(s), Some(&id)) = (self.find(peer), self.string_ids.get(protocol)) else { return false };
        self.sets[self.slots[s as usize].protos as usize].0.contains(&id)
    }

    /// The peers known, in slot order.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.slots.iter().filter(|s| s.live).filter_map(|s| PeerId::from_bytes(s.id()).ok())
    }

    /// Remembers addresses of `peer` (any `/p2p/..` suffix removed) for `ttl`: a known address gets the
    /// longer of its old and new lifetimes.
    pub fn add_addrs(&mut self, peer: &PeerId, addrs: &[Multiaddr], ttl: AddrTtl, now: Instant, connected: &dyn Fn(&PeerId) -> bool) {
        self.add_addrs_class(peer, addrs, ttl, 0, now, connected);
    }

    fn add_addrs_class(
        &mut self,
        peer: &PeerId,
        addrs: &[Multiaddr],
        ttl: AddrTtl,
        flags: u8,
        now: Instant,
        connected: &dyn Fn(&PeerId) -> bool,
    ) {
        let Some(s) = self.slot(peer, connected) else { return };
        let expiry = ttl.expiry(now);
        let mut buf = self.addr_bytes(&self.slots[s as usize]).to_vec();
        let mut changed = false;
        let per_peer = |b: &[u8]| entries(b).filter(|e| e.class & OBSERVED == 0).count();
        for a in addrs {
            let bytes = a.without_peer_id().to_bytes();
            if bytes.len() > 255 {
                self.stats.addrs_dropped += 1;
                continue;
            }
            // An address already there: extend its life, upgrade its class.
            if let Some(pos) = find_addr(&buf, &bytes) {
                let old = u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("invariant: 4 bytes"));
                if expiry > old {
                    buf[pos..pos + 4].copy_from_slice(&expiry.to_le_bytes());
                }
                if ttl > AddrTtl::from_code(buf[pos + 4] & 0x0f) {
                    buf[pos + 4] = (buf[pos + 4] & !0x0f) | ttl.code();
                }
                buf[pos + 4] |= flags;
                changed = true;
                continue;
            }
            if per_peer(&buf) >= self.limits.max_addrs_per_peer || self.n_addrs >= self.limits.max_addrs {
                self.stats.addrs_dropped += 1;
                continue;
            }
            push_entry(&mut buf, expiry, ttl.code() | flags, &bytes);
            self.n_addrs += 1;
            changed = true;
        }
        if changed {
            self.set_addr_bytes(s, &buf);
        }
    }

    /// A verified signed peer record: its addresses are kept as certified (while connected, as
    /// identify's), if it is newer than the last one taken. Whether it was taken.
    pub fn add_certified(&mut self, rec: &crate::record::PeerRecord, now: Instant, connected: &dyn Fn(&PeerId) -> bool) -> bool {
        let Some(s) = self.slot(&rec.peer, connected) else { return false };
        if rec.seq <= self.slots[s as usize].record_seq {
            return false;
        }
        self.slots[s as usize].record_seq = rec.seq;
        self.add_addrs_class(&rec.peer, &rec.addrs, AddrTtl::Connected, CERTIFIED, now, connected);
        self.dirty.set(s);
        true
    }

    /// Our own address as `peer` saw it.
    fn set_observed(&mut self, s: u32, addr: &Multiaddr) {
        let bytes = addr.to_bytes();
        if bytes.len() > 255 {
            return;
        }
        let mut buf = Vec::new();
        for e in entries(self.addr_bytes(&self.slots[s as usize])).filter(|e| e.class & OBSERVED == 0) {
            push_entry(&mut buf, e.expiry, e.class, e.bytes);
        }
        push_entry(&mut buf, u32::MAX, OBSERVED, &bytes);
        self.set_addr_bytes(s, &buf);
    }

    pub fn set_public_key(&mut self, peer: &PeerId, key: PublicKey, connected: &dyn Fn(&PeerId) -> bool) {
        let Some(s) = self.slot(peer, connected) else { return };
        if peer.inline_public_key().is_none() && peer.matches(&key) {
            self.keys.insert(s, key);
            self.dirty.set(s);
        }
    }

    /// What identify told us (an answer or a push): protocols replace the old ones, listen addresses
    /// are added for as long as we are connected.
    pub fn apply_identify(&mut self, peer: &PeerId, info: &Info, now: Instant, connected: &dyn Fn(&PeerId) -> bool) {
        let Some(s) = self.slot(peer, connected) else { return };
        let mut names = Vec::with_capacity(info.protocols.len().min(self.limits.max_protocols_per_peer));
        for p in &info.protocols {
            if names.len() >= self.limits.max_protocols_per_peer {
                self.stats.protocols_dropped += 1;
                continue;
            }
            match self.intern(p) {
                0 => self.stats.protocols_dropped += 1,
                id if !names.contains(&id) => names.push(id),
                _ => {}
            }
        }
        names.sort_unstable();
        self.dirty.set(s);
        let set = self.intern_set(names);
        let old = std::mem::replace(&mut self.slots[s as usize].protos, set);
        self.release_set(old);
        if let Some(a) = &info.agent_version {
            let id = self.intern(a);
            self.slots[s as usize].agent = id;
        }
        if let Some(v) = &info.protocol_version {
            let id = self.intern(v);
            self.slots[s as usize].pver = id;
        }
        if let Some(k) = &info.public_key {
            self.set_public_key(peer, k.clone(), connected);
        }
        if let Some(o) = &info.observed_addr {
            self.set_observed(s, o);
        }
        self.add_addrs(peer, &info.listen_addrs, AddrTtl::Connected, now, connected);
    }

    /// `peer`'s last connection closed: its connected-class addresses now live `RecentlyConnected`.
    pub fn on_disconnected(&mut self, peer: &PeerId, now: Instant) {
        let Some(s) = self.find(peer) else { return };
        let expiry = AddrTtl::RecentlyConnected.expiry(now);
        let mut buf = Vec::new();
        for e in entries(self.addr_bytes(&self.slots[s as usize])) {
            if e.class & OBSERVED == 0 && AddrTtl::from_code(e.class & 0x0f) == AddrTtl::Connected {
                push_entry(&mut buf, expiry, (e.class & !0x0f) | AddrTtl::RecentlyConnected.code(), e.bytes);
            } else {
                push_entry(&mut buf, e.expiry, e.class, e.bytes);
            }
        }
        self.set_addr_bytes(s, &buf);
    }

    /// `peer`'s round-trip average (`record_latency`), if one was measured.
    pub fn latency(&self, peer: &PeerId) -> Option<Duration> {
        slot_latency(&self.slots[self.find(peer)? as usize])
    }

    /// A round trip to `peer`: the latency EWMA moves a tenth of the way (go's `LatencyEWMASmoothing`).
    pub fn record_latency(&mut self, peer: &PeerId, rtt: Duration) {
        let Some(s) = self.find(peer) else { return };
        self.dirty.set(s);
        let sl = &mut self.slots[s as usize];
        let new = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX).max(1);
        sl.latency_us = if sl.latency_us == 0 { new } else { ((u64::from(sl.latency_us) * 9 + u64::from(new)) / 10).max(1) as u32 };
    }

    /// The changes since the last call, for the persistent store: each changed peer's encoding at
    /// `now` (`unix` = the wall clock's seconds at `now`), then the peers forgotten.
    pub fn take_changes(&mut self, now: Instant, unix: u64) -> Vec<Change> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut out: Vec<Change> = dirty
            .iter()
            .filter(|&s| self.slots[s as usize].live)
            .map(|s| Change { peer: self.slots[s as usize].id().to_vec(), record: Some(self.encode_slot(s, now, unix)) })
            .collect();
        out.extend(self.removed.drain(..).map(|peer| Change { peer, record: None }));
        out
    }

    /// Changes waiting for `take_changes`.
    pub fn pending_changes(&self) -> usize {
        self.dirty.count + self.removed.len()
    }

    /// Slot `s`'s record in the persistent format (version 1): expiries as unix seconds, so a record
    /// outlives the process; connected-class addresses are saved as recently connected.
    fn encode_slot(&self, s: u32, now: Instant, unix: u64) -> Vec<u8> {
        use crate::varint::{encode as v, encode_frame as f};
        let sl = &self.slots[s as usize];
        let t = u64::from(secs(now));
        let mut out = vec![1u8];
        let bytes = self.addr_bytes(sl);
        v(entries(bytes).count() as u64, &mut out);
        for e in entries(bytes) {
            let class = if e.class & OBSERVED == 0 && AddrTtl::from_code(e.class & 0x0f) == AddrTtl::Connected {
                (e.class & !0x0f) | AddrTtl::RecentlyConnected.code()
            } else {
                e.class
            };
            // 0: never expires; else unix seconds (at least 1).
            let exp = match e.expiry {
                u32::MAX if class & 0x0f == AddrTtl::RecentlyConnected.code() => unix + 15 * 60,
                u32::MAX => 0,
                x => (unix + u64::from(x).saturating_sub(t)).max(1),
            };
            v(exp, &mut out);
            out.push(class);
            f(e.bytes, &mut out);
        }
        let names = &self.sets[sl.protos as usize].0;
        v(names.len() as u64, &mut out);
        for &n in names.iter() {
            f(self.strings[n as usize].as_bytes(), &mut out);
        }
        f(self.strings[sl.agent as usize].as_bytes(), &mut out);
        f(self.strings[sl.pver as usize].as_bytes(), &mut out);
        f(&self.keys.get(&s).map(|k| k.encode_protobuf()).unwrap_or_default(), &mut out);
        v(u64::from(sl.latency_us), &mut out);
        v(sl.record_seq, &mut out);
        out
    }

    /// Restores a record `take_changes` handed out (at start, from the persistent store), at `now` (`unix` = the
    /// wall clock's seconds): expired addresses are skipped, caps apply as to any input. A malformed
    /// record is an error and changes nothing.
    pub fn load(&mut self, peer: &[u8], record: &[u8], now: Instant, unix: u64) -> Result<(), crate::DecodeError> {
        use crate::varint::{decode_exact, decode_frame};
        use crate::DecodeError;
        let peer = PeerId::from_bytes(peer)?;
        let mut b = record;
        let take_v = |b: &mut &[u8]| -> Result<u64, DecodeError> {
            let (x, n) = decode_exact(b)?;
            *b = &b[n..];
            Ok(x)
        };
        let take_f = |b: &mut &[u8]| -> Result<Vec<u8>, DecodeError> {
            let (range, n) = decode_frame(b, 1 << 16)?.ok_or(DecodeError::Truncated)?;
            let x = b[range].to_vec();
            *b = &b[n..];
            Ok(x)
        };
        if b.first() != Some(&1) {
            return Err(DecodeError::Invalid("peerstore record version"));
        }
        b = &b[1..];
        let n = take_v(&mut b)?.min(4096);
        let t = u64::from(secs(now));
        let mut addrs: Vec<(u64, u8, Multiaddr)> = Vec::new();
        let mut observed = None;
        for _ in 0..n {
            let exp = take_v(&mut b)?;
            let class = *b.first().ok_or(DecodeError::Truncated)?;
            b = &b[1..];
            let a = Multiaddr::from_bytes(&take_f(&mut b)?).map_err(|_| DecodeError::Invalid("peerstore address"))?;
            if class & OBSERVED != 0 {
                observed = Some(a);
            } else if exp == 0 || exp > unix {
                addrs.push((exp, class, a));
            }
        }
        let np = take_v(&mut b)?.min(4096);
        let mut protocols = Vec::new();
        for _ in 0..np {
            protocols.push(String::from_utf8(take_f(&mut b)?).map_err(|_| DecodeError::Invalid("peerstore protocol"))?);
        }
        let text = |x: Vec<u8>| String::from_utf8(x).ok().filter(|s| !s.is_empty());
        let agent = text(take_f(&mut b)?);
        let pver = text(take_f(&mut b)?);
        let key = take_f(&mut b)?;
        let latency = take_v(&mut b)?;
        let record_seq = take_v(&mut b)?;
        let never = |_: &PeerId| false;
        let info = Info { protocols, agent_version: agent, protocol_version: pver, observed_addr: observed, ..Info::default() };
        self.apply_identify(&peer, &info, now, &never);
        if !key.is_empty() {
            self.set_public_key(&peer, PublicKey::decode_protobuf(&key)?, &never);
        }
        for (exp, class, a) in addrs {
            let ttl = AddrTtl::from_code(class & 0x0f);
            self.add_addrs_class(&peer, std::slice::from_ref(&a), ttl, class & CERTIFIED, now, &never);
            if exp != 0 {
                // The saved expiry, in our clock.
                let rel = u32::try_from(t + (exp - unix)).unwrap_or(u32::MAX - 1);
                self.set_expiry(&peer, &a, rel);
            }
        }
        if let Some(s) = self.find(&peer) {
            let sl = &mut self.slots[s as usize];
            if latency > 0 {
                sl.latency_us = u32::try_from(latency).unwrap_or(u32::MAX);
            }
            sl.record_seq = record_seq;
        }
        // What was just loaded is already stored.
        if let Some(s) = self.find(&peer) {
            self.dirty.clear(s);
        }
        Ok(())
    }

    fn set_expiry(&mut self, peer: &PeerId, a: &Multiaddr, expiry: u32) {
        let Some(s) = self.find(peer) else { return };
        let want = a.to_bytes();
        let mut buf = self.addr_bytes(&self.slots[s as usize]).to_vec();
        if let Some(pos) = find_addr(&buf, &want) {
            buf[pos..pos + 4].copy_from_slice(&expiry.to_le_bytes());
        }
        self.set_addr_bytes(s, &buf);
    }

    /// Drops addresses expired at `now`; returns how many.
    pub fn gc(&mut self, now: Instant) -> usize {
        let t = secs(now);
        let mut removed = 0;
        for s in 0..self.slots.len() as u32 {
            let sl = self.slots[s as usize];
            if !sl.live || sl.addr_len == 0 {
                continue;
            }
            let bytes = self.addr_bytes(&sl);
            if entries(bytes).all(|e| e.class & OBSERVED != 0 || e.expiry > t) {
                continue;
            }
            let mut buf = Vec::with_capacity(bytes.len());
            for e in entries(bytes) {
                if e.class & OBSERVED == 0 && e.expiry <= t {
                    removed += 1;
                } else {
                    push_entry(&mut buf, e.expiry, e.class, e.bytes);
                }
            }
            self.set_addr_bytes(s, &buf);
        }
        self.n_addrs -= removed;
        self.stats.addrs_expired += removed as u64;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn never(_: &PeerId) -> bool {
        false
    }

    fn info(protocols: &[&str], addrs: &[&str]) -> Info {
        Info {
            protocols: protocols.iter().map(|s| s.to_string()).collect(),
            listen_addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            agent_version: Some("go-libp2p/0.41".into()),
            protocol_version: Some("ipfs/0.1.0".into()),
            ..Info::default()
        }
    }

    #[test]
    fn peerstore_round_trips_what_identify_said_and_shares_protocol_sets() {
        let mut ps = Peerstore::new(Limits::default());
        let mut r = crate::rng::from_seed([3; 32]);
        let (a, b) = (Keypair::generate_ed25519(&mut r).peer_id(), Keypair::generate_ed25519(&mut r).peer_id());
        let i = info(&["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"], &["/ip4/1.2.3.4/tcp/4001", "/ip6/::1/udp/4001/quic-v1"]);
        let now = Instant::ZERO;
        ps.apply_identify(&a, &i, now, &never);
        ps.apply_identify(&b, &i, now, &never);
        let ra = ps.get(&a).unwrap();
        assert_eq!(ra.addrs, i.listen_addrs);
        assert_eq!(ra.protocols, i.protocols);
        assert_eq!(ra.agent_version.as_deref(), Some("go-libp2p/0.41"));
        assert_eq!(ra.public_key, a.inline_public_key(), "derived from the peer id, not stored");
        assert_eq!(ps.sets.iter().filter(|(_, n)| *n > 0 && *n != u32::MAX).count(), 1, "one shared set");
        assert!(ps.supports(&b, "/ipfs/ping/1.0.0") && !ps.supports(&b, "/x"));
        // New protocols replace the set; the old one is freed when nobody holds it.
        ps.apply_identify(&a, &info(&["/x/1"], &[]), now, &never);
        ps.apply_identify(&b, &info(&["/x/1"], &[]), now, &never);
        assert_eq!(ps.set_ids.len(), 1);
        assert_eq!(ps.get(&a).unwrap().protocols, vec!["/x/1".to_string()]);
    }

    #[test]
    fn peerstore_addresses_expire_by_ttl_class_and_connected_ones_decay_on_disconnect() {
        let mut ps = Peerstore::new(Limits::default());
        let mut r = crate::rng::from_seed([4; 32]);
        let p = Keypair::generate_ed25519(&mut r).peer_id();
        let t0 = Instant::ZERO;
        let temp: Multiaddr = "/ip4/9.9.9.9/tcp/1".parse().unwrap();
        ps.add_addrs(&p, std::slice::from_ref(&temp), AddrTtl::Temp, t0, &never);
        ps.apply_identify(&p, &info(&[], &["/ip4/1.2.3.4/tcp/4001"]), t0, &never);
        let min = |m: u64| t0 + Duration::from_secs(m * 60);
        assert_eq!(ps.addrs(&p, min(3)).len(), 1, "the temp address lived 2 min");
        assert_eq!(ps.gc(min(3)), 1);
        assert_eq!(ps.num_addrs(), 1);
        ps.on_disconnected(&p, min(3));
        assert_eq!(ps.addrs(&p, min(17)).len(), 1, "15 min after the disconnect");
        assert_eq!(ps.addrs(&p, min(19)).len(), 0);
        // Re-adding a known address keeps the longer life.
        ps.add_addrs(&p, &["/ip4/1.2.3.4/tcp/4001".parse().unwrap()], AddrTtl::Permanent, min(4), &never);
        assert_eq!(ps.addrs(&p, min(10_000)).len(), 1);
        assert_eq!(ps.num_addrs(), 1);
    }

    #[test]
    fn peerstore_caps_hold_and_the_oldest_unconnected_peer_is_evicted() {
        let lim = Limits { max_peers: 3, max_addrs_per_peer: 2, max_protocols_per_peer: 2, max_addrs: 5, max_strings: 4 };
        let mut ps = Peerstore::new(lim);
        let mut r = crate::rng::from_seed([5; 32]);
        let peers: Vec<PeerId> = (0..5).map(|_| Keypair::generate_ed25519(&mut r).peer_id()).collect();
        let addrs: Vec<Multiaddr> = (1..=3).map(|i| format!("/ip4/10.0.0.{i}/tcp/1").parse().unwrap()).collect();
        ps.add_addrs(&peers[0], &addrs, AddrTtl::Address, Instant::ZERO, &never);
        assert_eq!(ps.get(&peers[0]).unwrap().addrs.len(), 2);
        assert_eq!(ps.stats().addrs_dropped, 1);
        ps.apply_identify(&peers[0], &info(&["/a", "/b", "/c"], &[]), Instant::ZERO, &never);
        assert_eq!(ps.get(&peers[0]).unwrap().protocols.len(), 2);
        let keep = peers[1].clone();
        for p in &peers[1..] {
            ps.add_addrs(p, &addrs[..1], AddrTtl::Address, Instant::ZERO, &|x| *x == keep);
        }
        assert_eq!(ps.len(), 3);
        assert!(ps.get(&peers[0]).is_none() && ps.get(&peers[2]).is_none(), "the oldest unconnected went first");
        assert!(ps.get(&keep).is_some(), "connected: kept");
        assert_eq!(ps.stats().evicted, 2);
        assert_eq!(ps.num_addrs(), 3);
    }

    #[test]
    fn peerstore_records_survive_encode_and_load_and_changes_are_journaled() {
        let mut ps = Peerstore::new(Limits::default());
        let mut r = crate::rng::from_seed([8; 32]);
        let p = Keypair::generate_ed25519(&mut r).peer_id();
        let rsa_like = Keypair::generate(crate::KeyType::Ecdsa, &mut r);
        let q = rsa_like.peer_id();
        let t0 = Instant::ZERO + Duration::from_secs(100);
        let unix = 1_800_000_000;
        ps.apply_identify(&p, &info(&["/a/1", "/b/1"], &["/ip4/1.2.3.4/tcp/4001"]), t0, &never);
        ps.add_addrs(&p, &["/ip4/5.6.7.8/tcp/1".parse().unwrap()], AddrTtl::Temp, t0, &never);
        ps.add_addrs(&p, &["/dns4/boot.example/tcp/4001".parse().unwrap()], AddrTtl::Permanent, t0, &never);
        ps.record_latency(&p, Duration::from_millis(42));
        ps.set_public_key(&q, rsa_like.public(), &never);
        let changes = ps.take_changes(t0, unix);
        assert_eq!(changes.len(), 2);
        assert_eq!(ps.pending_changes(), 0);
        // A new process, 60 s later by the wall clock, its own clock starting anew.
        let mut back = Peerstore::new(Limits::default());
        let t1 = Instant::ZERO;
        for c in &changes {
            back.load(&c.peer, c.record.as_ref().unwrap(), t1, unix + 60).unwrap();
        }
        assert_eq!(back.pending_changes(), 0, "loading is not a change");
        let got = back.get(&p).unwrap();
        assert_eq!(got.protocols, vec!["/a/1".to_string(), "/b/1".to_string()]);
        assert_eq!(got.agent_version.as_deref(), Some("go-libp2p/0.41"));
        assert_eq!(got.latency, Some(Duration::from_millis(42)));
        // The temp address (2 min) has 60 s left; the connected one became recently connected (15 min).
        assert_eq!(back.addrs(&p, t1 + Duration::from_secs(59)).len(), 3);
        assert_eq!(back.addrs(&p, t1 + Duration::from_secs(61)).len(), 2);
        assert_eq!(back.addrs(&p, t1 + Duration::from_secs(16 * 60)).len(), 1, "the permanent one stays");
        assert_eq!(back.get(&q).unwrap().public_key, Some(rsa_like.public()), "a key the id does not inline");
        // Removals are journaled too; garbage is refused whole.
        back.remove(&q);
        assert_eq!(back.take_changes(t1, unix), vec![Change { peer: q.to_bytes(), record: None }]);
        assert!(back.load(&p.to_bytes(), &[1, 200], t1, unix).is_err());
        assert!(back.load(&p.to_bytes(), &[9], t1, unix).is_err());
    }

    #[test]
    fn peerstore_slot_is_80_bytes() {
        // The million-peer budget (≤ 200 B per peer) starts here; a field added is a decision.
        assert_eq!(std::mem::size_of::<Slot>(), 80);
    }

    #[test]
    fn peerstore_latency_is_an_ewma() {
        let mut ps = Peerstore::new(Limits::default());
        let p = Keypair::generate_ed25519(&mut crate::rng::from_seed([6; 32])).peer_id();
        ps.add_addrs(&p, &[], AddrTtl::Temp, Instant::ZERO, &never);
        ps.record_latency(&p, Duration::from_millis(100));
        ps.record_latency(&p, Duration::from_millis(200));
        assert_eq!(ps.get(&p).unwrap().latency, Some(Duration::from_millis(110)));
    }
}
