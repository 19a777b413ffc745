//! The resource manager: who may hold a connection, counted in scopes as go-libp2p's rcmgr has them
//! (<https://github.com/libp2p/go-libp2p/tree/master/p2p/host/resource-manager>).
//!
//! - **system**: every connection the node holds, handshaking or established, in either direction;
//! - **transient**: connections still handshaking (their peer is not known yet) and dials in progress.
//!   They have their own small budget, so a crowd of connections that never finish a handshake can fill
//!   the transient scope but never the established budget;
//! - **peer**: the established connections of one peer;
//! - **subnet**: inbound connections per source address block (go: an IPv4 /32 → 8, an IPv6 /56 → 8 and
//!   /48 → 64). Loopback is exempt (as in go); an allowlist of prefixes is exempt too, and when the
//!   system or transient scope is full an allowlisted address is admitted under the `allowlisted_*`
//!   scopes instead (go's behaviour: an operator's own nodes still get in during a flood).
//!
//! A refusal is a typed [`Refusal`] naming the scope and the resource, counted in [`Stats`]. Sans-IO:
//! plain counters, no clock; the node machine calls it on admission, on `Established` and on close,
//! and the QUIC endpoint runs an [`IpLimiter`] over its handshakes (which happen inside quinn-proto,
//! before the node sees the connection).
//!
//! Defaults scale with the machine as go's do ([`Limits::scaled`]); the table is in the README.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The system scope's memory: a budget shared by every connection's muxer, which reserves a stream's
/// receive window from it before granting it (go-yamux does the same through its memory manager).
/// A reservation that does not fit fails: the muxer refuses the stream, or keeps a window from
/// growing, and counts it. Plain atomics, no clock: the simulator's single thread sees the same
/// sequence every run.
#[derive(Debug, Clone)]
pub struct Memory(Arc<MemoryInner>);

#[derive(Debug)]
struct MemoryInner {
    limit: u64,
    used: AtomicU64,
    refused: AtomicU64,
    scope: MemoryScope,
}

#[derive(Debug)]
enum MemoryScope {
    /// The system budget: each peer's share (`u64::MAX`: no peer scopes), the live peer scopes, and
    /// the reservations they refused.
    System { peer_limit: u64, peers: std::sync::Mutex<PeerScopes>, peer_refused: AtomicU64 },
    /// One peer's share: it reserves from the system budget too.
    Peer(Memory),
}

#[derive(Debug, Default)]
struct PeerScopes {
    live: BTreeMap<crate::identity::PeerId, std::sync::Weak<MemoryInner>>,
    /// Dead entries are swept when the map reaches this size.
    sweep_at: usize,
}

impl MemoryInner {
    fn new(limit: u64, scope: MemoryScope) -> MemoryInner {
        MemoryInner { limit, used: AtomicU64::new(0), refused: AtomicU64::new(0), scope }
    }
}

impl Memory {
    /// A system budget of `limit` bytes, without peer scopes.
    pub fn new(limit: u64) -> Self {
        Memory::with_peer_limit(limit, u64::MAX)
    }
    /// A system budget of `limit` bytes in which each peer, over all its connections, may hold at most
    /// `peer_limit` ([`Memory::for_peer`]; go's peer scope): one peer cannot take the budget from the
    /// others.
    pub fn with_peer_limit(limit: u64, peer_limit: u64) -> Self {
        let scope = MemoryScope::System { peer_limit, peers: std::sync::Mutex::default(), peer_refused: AtomicU64::new(0) };
        Memory(Arc::new(MemoryInner::new(limit, scope)))
    }
    /// `peer`'s scope within this budget (the same one for all its connections while any holds it),
    /// or this budget itself when it has no peer limit.
    pub fn for_peer(&self, peer: &crate::identity::PeerId) -> Memory {
        let MemoryScope::System { peer_limit, peers, .. } = &self.0.scope else { return self.clone() };
        if *peer_limit == u64::MAX {
            return self.clone();
        }
        let mut scopes = peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = scopes.live.get(peer).and_then(|w| w.upgrade()) {
            return Memory(live);
        }
        if scopes.live.len() >= scopes.sweep_at {
            scopes.live.retain(|_, w| w.strong_count() > 0);
            scopes.sweep_at = (scopes.live.len() * 2).max(64);
        }
        let child = Arc::new(MemoryInner::new(*peer_limit, MemoryScope::Peer(self.clone())));
        scopes.live.insert(peer.clone(), Arc::downgrade(&child));
        Memory(child)
    }
    /// Reserves `n` bytes if they fit under the limit (a peer's scope: under its own and the system's).
    pub fn try_reserve(&self, n: u64) -> bool {
        let m = &self.0;
        let mut cur = m.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(n).filter(|&x| x <= m.limit) else {
                m.refused.fetch_add(1, Ordering::Relaxed);
                if let MemoryScope::Peer(system) = &m.scope {
                    if let MemoryScope::System { peer_refused, .. } = &system.0.scope {
                        peer_refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return false;
            };
            match m.used.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if let MemoryScope::Peer(system) = &m.scope {
            if !system.try_reserve(n) {
                m.used.fetch_sub(n, Ordering::Relaxed);
                return false;
            }
        }
        true
    }
    /// Returns `n` bytes a `try_reserve` took.
    pub fn release(&self, n: u64) {
        let prev = self.0.used.fetch_sub(n, Ordering::Relaxed);
        debug_assert!(prev >= n, "invariant: released more than reserved");
        if let MemoryScope::Peer(system) = &self.0.scope {
            system.release(n);
        }
    }
    /// Reservations a peer's scope refused (its own limit, not the system's).
    pub fn peer_refused(&self) -> u64 {
        match &self.0.scope {
            MemoryScope::System { peer_refused, .. } => peer_refused.load(Ordering::Relaxed),
            MemoryScope::Peer(_) => 0,
        }
    }
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }
    pub fn limit(&self) -> u64 {
        self.0.limit
    }
    /// Reservations refused so far.
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }
}

/// Bytes held from a [`Memory`] budget for as long as this lives (a connection's security-layer
/// buffers, a QUIC connection's receive window); dropping it gives them back.
#[derive(Debug)]
pub struct Reservation {
    memory: Memory,
    bytes: u64,
}

impl Reservation {
    /// `n` bytes from `memory`, or `None` (counted as refused) if they do not fit.
    pub fn new(memory: &Memory, n: u64) -> Option<Reservation> {
        memory.try_reserve(n).then(|| Reservation { memory: memory.clone(), bytes: n })
    }
    /// `n` more bytes, if they fit.
    pub fn grow(&mut self, n: u64) -> bool {
        let ok = self.memory.try_reserve(n);
        if ok {
            self.bytes += n;
        }
        ok
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// The refusal to report when reserving `n` bytes of `memory` failed: its peer scope's when that
    /// was what had no room, else the system's.
    pub fn refusal(memory: &Memory, n: u64) -> Refusal {
        let mib = |m: &Memory| u32::try_from(m.limit() >> 20).unwrap_or(u32::MAX);
        match &memory.0.scope {
            MemoryScope::Peer(system) if memory.used().saturating_add(n) <= memory.limit() => {
                Refusal { scope: Scope::System, resource: Resource::Memory, limit: mib(system) }
            }
            MemoryScope::Peer(_) => Refusal { scope: Scope::Peer, resource: Resource::Memory, limit: mib(memory) },
            MemoryScope::System { .. } => Refusal { scope: Scope::System, resource: Resource::Memory, limit: mib(memory) },
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.memory.release(self.bytes);
    }
}

/// The budget of one scope. `u32::MAX` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeLimit {
    pub conns_inbound: u32,
    pub conns_outbound: u32,
    pub conns: u32,
    /// File descriptors (one per TCP connection; QUIC connections share the endpoint's socket).
    pub fd: u32,
}

impl ScopeLimit {
    pub const UNLIMITED: ScopeLimit = ScopeLimit { conns_inbound: u32::MAX, conns_outbound: u32::MAX, conns: u32::MAX, fd: u32::MAX };

    /// `base` plus `inc` for every GiB of `mib` MiB (go's `scale`: below 128 MiB only the base).
    fn scale(base: ScopeLimit, inc: ScopeLimit, mib: u64, fd: u32) -> ScopeLimit {
        let mib = if mib > 128 { mib } else { 0 };
        let f = |b: u32, i: u32| b.saturating_add(((i as u64 * mib) >> 10).min(u32::MAX as u64) as u32);
        ScopeLimit {
            conns_inbound: f(base.conns_inbound, inc.conns_inbound),
            conns_outbound: f(base.conns_outbound, inc.conns_outbound),
            conns: f(base.conns, inc.conns),
            fd: fd.max(base.fd),
        }
    }
}

/// One subnet rule: at most `max` inbound connections from each `/prefix_len` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetLimit {
    pub v6: bool,
    pub prefix_len: u8,
    pub max: u32,
}

/// An address block (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => mask(u32::from(a) as u128, 32, self.len) == mask(u32::from(b) as u128, 32, self.len),
            (IpAddr::V6(a), IpAddr::V6(b)) => mask(u128::from(a), 128, self.len) == mask(u128::from(b), 128, self.len),
            _ => false,
        }
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = &'static str;
    /// `ADDR/LEN` or a bare address (a single host).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| "not an IP address")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() { max } else { l.parse().map_err(|_| "bad prefix length")? };
        if len > max {
            return Err("prefix length too long");
        }
        Ok(IpPrefix { addr, len })
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The top `len` of `bits` bits of `v`.
fn mask(v: u128, bits: u8, len: u8) -> u128 {
    let len = len.min(bits);
    if len == 0 {
        0
    } else {
        v >> (bits - len)
    }
}

/// Per-address rules for inbound connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpLimits {
    pub subnets: Vec<SubnetLimit>,
    /// Addresses the subnet rules do not apply to (go: loopback).
    pub exempt: Vec<IpPrefix>,
    /// Addresses the subnet rules do not apply to, which also get the `allowlisted_*` budgets when the
    /// normal ones are full (the operator's own nodes).
    pub allowlist: Vec<IpPrefix>,
}

impl Default for IpLimits {
    /// go-libp2p's: IPv4 /32 → 8; IPv6 /56 → 8 and /48 → 64; loopback exempt; no allowlist.
    fn default() -> Self {
        IpLimits {
            subnets: vec![
                SubnetLimit { v6: false, prefix_len: 32, max: 8 },
                SubnetLimit { v6: true, prefix_len: 56, max: 8 },
                SubnetLimit { v6: true, prefix_len: 48, max: 64 },
            ],
            exempt: vec!["127.0.0.0/8".parse().expect("invariant: literal"), "::1/128".parse().expect("invariant: literal")],
            allowlist: Vec::new(),
        }
    }
}

impl IpLimits {
    /// No per-address rules.
    pub fn none() -> Self {
        IpLimits { subnets: Vec::new(), exempt: Vec::new(), allowlist: Vec::new() }
    }
    pub fn is_allowlisted(&self, ip: IpAddr) -> bool {
        self.allowlist.iter().any(|p| p.contains(ip))
    }
    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.is_allowlisted(ip) || self.exempt.iter().any(|p| p.contains(ip))
    }
}

/// Counts inbound connections per address block against [`IpLimits`].
#[derive(Debug, Clone, Default)]
pub struct IpLimiter {
    limits: Option<IpLimits>,
    /// Per subnet rule: block → connections.
    counts: Vec<BTreeMap<u128, u32>>,
}

impl IpLimiter {
    pub fn new(limits: IpLimits) -> Self {
        let counts = vec![BTreeMap::new(); limits.subnets.len()];
        IpLimiter { limits: Some(limits), counts }
    }
    pub fn limits(&self) -> Option<&IpLimits> {
        self.limits.as_ref()
    }

    fn blocks(&self, ip: IpAddr) -> impl Iterator<Item = (usize, u128, &SubnetLimit)> + '_ {
        let (v, v6) = match ip {
            IpAddr::V4(a) => (u32::from(a) as u128, false),
            IpAddr::V6(a) => (u128::from(a), true),
        };
        let subnets = self.limits.as_ref().map(|l| &l.subnets[..]).unwrap_or(&[]);
        subnets
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.v6 == v6)
            .map(move |(i, r)| (i, mask(v, if v6 { 128 } else { 32 }, r.prefix_len), r))
    }

    /// Counts a connection from `ip`, or names the rule it would break. Exempt addresses are not counted.
    pub fn try_add(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let Some(l) = &self.limits else { return Ok(()) };
        if l.is_exempt(ip) {
            return Ok(());
        }
        let blocks: Vec<(usize, u128, SubnetLimit)> = self.blocks(ip).map(|(i, b, r)| (i, b, *r)).collect();
        for &(i, b, r) in &blocks {
            if self.counts[i].get(&b).copied().unwrap_or(0) >= r.max {
                return Err(Refusal {
                    scope: Scope::Subnet { v6: r.v6, prefix_len: r.prefix_len },
                    resource: Resource::ConnsInbound,
                    limit: r.max,
                });
            }
        }
        for (i, b, _) in blocks {
            *self.counts[i].entry(b).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Uncounts a connection `try_add` admitted from `ip`.
    pub fn remove(&mut self, ip: IpAddr) {
        let Some(l) = &self.limits else { return };
        if l.is_exempt(ip) {
            return;
        }
        let blocks: Vec<(usize, u128)> = self.blocks(ip).map(|(i, b, _)| (i, b)).collect();
        for (i, b) in blocks {
            if let Some(n) = self.counts[i].get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.counts[i].remove(&b);
                }
            }
        }
    }
}

/// Every budget of the resource manager. `Default` is go's base (a node with 128 MiB and 256 file
/// descriptors for libp2p); [`Limits::scaled`] grows it with the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub system: ScopeLimit,
    pub transient: ScopeLimit,
    pub allowlisted_system: ScopeLimit,
    pub allowlisted_transient: ScopeLimit,
    pub peer: ScopeLimit,
    pub ip: IpLimits,
    /// The system scope's memory ([`Memory`]): what all muxers' receive windows together may reserve.
    /// go's table: 128 MiB plus 1 GiB per GiB given to libp2p.
    pub memory: u64,
    /// What one peer's connections together may reserve of it; `None`: a sixteenth of `memory`
    /// ([`Limits::peer_memory`]). go's table gives a peer an eighth at scale (64 MiB plus 128 MiB
    /// per GiB); a sixteenth keeps the 8 identities one IPv4 address may connect as (the subnet
    /// limit) to half the budget, so a Sybil from one address cannot lock others out.
    pub peer_memory: Option<u64>,
    /// Negotiated streams in all (go's system scope: 4,096 inbound, 16,384 outbound and in all, as
    /// much again per GiB).
    pub system_streams: StreamLimit,
    /// One peer's, over all its connections (go: 256 / 512 / 512, plus 128 / 256 / 256 per GiB).
    pub peer_streams: StreamLimit,
    /// One protocol's, over all peers (go: 512 / 2,048 / 2,048, plus 256 / 512 / 512 per GiB).
    pub protocol_streams: StreamLimit,
}

/// Stream limits of one scope. Past them an inbound stream is reset before anyone sees it; one we
/// opened is reset once negotiated and its opener gets `OpenError::Limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimit {
    pub inbound: u32,
    pub outbound: u32,
    /// Both directions together.
    pub total: u32,
}

impl StreamLimit {
    pub const UNLIMITED: StreamLimit = StreamLimit { inbound: u32::MAX, outbound: u32::MAX, total: u32::MAX };
    fn scale(base: [u32; 3], inc: [u32; 3], mib: u64) -> StreamLimit {
        StreamLimit {
            inbound: per_gib(base[0], inc[0], mib),
            outbound: per_gib(base[1], inc[1], mib),
            total: per_gib(base[2], inc[2], mib),
        }
    }
    /// The limit `held` ([inbound, outbound]) reaches with one more stream of direction `d`, if any.
    fn reached(&self, held: [u32; 2], d: Direction) -> Option<(Resource, u32)> {
        let (n, lim, res) = match d {
            Direction::Inbound => (held[0], self.inbound, Resource::StreamsInbound),
            Direction::Outbound => (held[1], self.outbound, Resource::StreamsOutbound),
        };
        if n >= lim {
            Some((res, lim))
        } else if held[0].saturating_add(held[1]) >= self.total {
            Some((Resource::Streams, self.total))
        } else {
            None
        }
    }
}

const SYSTEM_BASE: ScopeLimit = ScopeLimit { conns_inbound: 64, conns_outbound: 128, conns: 128, fd: 256 };
const SYSTEM_INC: ScopeLimit = ScopeLimit { conns_inbound: 64, conns_outbound: 128, conns: 128, fd: 0 };
const TRANSIENT_BASE: ScopeLimit = ScopeLimit { conns_inbound: 32, conns_outbound: 64, conns: 64, fd: 64 };
const TRANSIENT_INC: ScopeLimit = ScopeLimit { conns_inbound: 16, conns_outbound: 32, conns: 32, fd: 0 };
/// go: 8 "so that it matches the number of concurrent dials we may do".
const PEER: ScopeLimit = ScopeLimit { conns_inbound: 8, conns_outbound: 8, conns: 8, fd: 4 };

impl Default for Limits {
    fn default() -> Self {
        Limits::scaled(128 << 20, 256)
    }
}

/// `base` plus `inc` per GiB of `mib` MiB (only above 128 MiB, as go's `scale`).
fn per_gib(base: u32, inc: u32, mib: u64) -> u32 {
    let extra = if mib > 128 { (u64::from(inc) * mib) >> 10 } else { 0 };
    base.saturating_add(extra.min(u64::from(u32::MAX)) as u32)
}

impl Limits {
    /// go-libp2p's defaults for `memory` bytes and `fds` file descriptors given to libp2p (go's
    /// `AutoScale` passes an eighth of the machine's memory and half its descriptor limit): per GiB,
    /// the system scope gains 64 inbound / 128 outbound / 128 connections and the transient scope
    /// 16 / 32 / 32; the system scope may use all `fds`, the transient a quarter, a peer 1/64.
    pub fn scaled(memory: u64, fds: u32) -> Self {
        let mib = memory >> 20;
        let mem = if mib > 128 { (128u64 << 20) + ((mib << 30) >> 10) } else { 128 << 20 };
        let system = ScopeLimit::scale(SYSTEM_BASE, SYSTEM_INC, mib, fds);
        let transient = ScopeLimit::scale(TRANSIENT_BASE, TRANSIENT_INC, mib, fds / 4);
        Limits {
            system,
            transient,
            allowlisted_system: system,
            allowlisted_transient: transient,
            peer: ScopeLimit { fd: (fds / 64).max(PEER.fd), ..PEER },
            ip: IpLimits::default(),
            memory: mem,
            peer_memory: None,
            system_streams: StreamLimit::scale([4096, 16384, 16384], [4096, 16384, 16384], mib),
            peer_streams: StreamLimit::scale([256, 512, 512], [128, 256, 256], mib),
            protocol_streams: StreamLimit::scale([512, 2048, 2048], [256, 512, 512], mib),
        }
    }

    /// No limit at all (tests, the simulator's default).
    pub fn unlimited() -> Self {
        let u = ScopeLimit::UNLIMITED;
        Limits {
            system: u,
            transient: u,
            allowlisted_system: u,
            allowlisted_transient: u,
            peer: u,
            ip: IpLimits::none(),
            memory: u64::MAX,
            peer_memory: Some(u64::MAX),
            system_streams: StreamLimit::UNLIMITED,
            peer_streams: StreamLimit::UNLIMITED,
            protocol_streams: StreamLimit::UNLIMITED,
        }
    }
}

impl Limits {
    /// One peer's share of the memory budget.
    pub fn peer_memory(&self) -> u64 {
        self.peer_memory.unwrap_or(self.memory / 16)
    }
    /// The memory budget these limits describe, with its peer scopes.
    pub fn memory_budget(&self) -> Memory {
        Memory::with_peer_limit(self.memory, self.peer_memory())
    }
}

/// Which budget said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    System,
    Transient,
    AllowlistedSystem,
    AllowlistedTransient,
    Peer,
    /// One protocol's streams, over all peers.
    Protocol,
    /// Inbound connections from one address block.
    Subnet {
        v6: bool,
        prefix_len: u8,
    },
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::System => f.write_str("system"),
            Scope::Transient => f.write_str("transient"),
            Scope::AllowlistedSystem => f.write_str("allowlisted system"),
            Scope::AllowlistedTransient => f.write_str("allowlisted transient"),
            Scope::Peer => f.write_str("peer"),
            Scope::Protocol => f.write_str("protocol"),
            Scope::Subnet { v6, prefix_len } => write!(f, "{} /{prefix_len}", if *v6 { "ipv6" } else { "ipv4" }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    ConnsInbound,
    ConnsOutbound,
    Conns,
    Fd,
    StreamsInbound,
    StreamsOutbound,
    Streams,
    /// The system memory budget ([`Memory`]); its `limit` is in MiB.
    Memory,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::ConnsInbound => "inbound connections",
            Resource::ConnsOutbound => "outbound connections",
            Resource::Conns => "connections",
            Resource::Fd => "file descriptors",
            Resource::StreamsInbound => "inbound streams",
            Resource::StreamsOutbound => "outbound streams",
            Resource::Streams => "streams",
            Resource::Memory => "memory (MiB)",
        })
    }
}

/// A refused connection: which scope, which resource, at what limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{scope} scope: {resource} at limit {limit}")]
pub struct Refusal {
    pub scope: Scope,
    pub resource: Resource,
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// What a scope holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub conns_inbound: u32,
    pub conns_outbound: u32,
    pub fd: u32,
}

impl Usage {
    fn plus(self, o: Usage) -> Usage {
        Usage {
            conns_inbound: self.conns_inbound + o.conns_inbound,
            conns_outbound: self.conns_outbound + o.conns_outbound,
            fd: self.fd + o.fd,
        }
    }
    fn conns(&self) -> u32 {
        self.conns_inbound + self.conns_outbound
    }
    /// Whether one more connection fits under `l`.
    fn check(&self, l: &ScopeLimit, scope: Scope, dir: Direction, fd: bool) -> Result<(), Refusal> {
        let (n, lim, res) = match dir {
            Direction::Inbound => (self.conns_inbound, l.conns_inbound, Resource::ConnsInbound),
            Direction::Outbound => (self.conns_outbound, l.conns_outbound, Resource::ConnsOutbound),
        };
        if n >= lim {
            return Err(Refusal { scope, resource: res, limit: lim });
        }
        if self.conns() >= l.conns {
            return Err(Refusal { scope, resource: Resource::Conns, limit: l.conns });
        }
        if fd && self.fd >= l.fd {
            return Err(Refusal { scope, resource: Resource::Fd, limit: l.fd });
        }
        Ok(())
    }
    fn add(&mut self, dir: Direction, fd: bool, sign: i32) {
        let c = match dir {
            Direction::Inbound => &mut self.conns_inbound,
            Direction::Outbound => &mut self.conns_outbound,
        };
        *c = c.wrapping_add_signed(sign);
        if fd {
            self.fd = self.fd.wrapping_add_signed(sign);
        }
    }
}

/// Refusals by scope (each also logged at debug level by the caller with its connection).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub refused_system: u64,
    pub refused_transient: u64,
    pub refused_peer: u64,
    pub refused_subnet: u64,
    /// Admitted under an allowlisted scope because the normal one was full.
    pub allowlisted_admits: u64,
    /// Streams refused (reset), inbound or outbound: the system's, a peer's, a protocol's budget full.
    pub refused_streams_system: u64,
    pub refused_streams_peer: u64,
    pub refused_streams_protocol: u64,
}

/// One connection's place in the scopes.
#[derive(Debug, Clone)]
struct Held {
    dir: Direction,
    fd: bool,
    /// Counted by the subnet limiter (an inbound one from a non-exempt address).
    ip: Option<IpAddr>,
    /// Counted in the allowlisted scopes instead of system/transient.
    allowlisted: bool,
    /// `None` while transient.
    peer: Option<crate::identity::PeerId>,
}

/// The connection accounting. Keys are the caller's connection ids.
#[derive(Debug, Clone)]
pub struct ResourceManager {
    limits: Limits,
    ips: IpLimiter,
    system: Usage,
    transient: Usage,
    allowlisted_system: Usage,
    allowlisted_transient: Usage,
    peers: BTreeMap<crate::identity::PeerId, Usage>,
    conns: BTreeMap<u64, Held>,
    /// Streams held, by (connection, stream): their peer, protocol and direction.
    streams: BTreeMap<(u64, u32), (crate::identity::PeerId, String, Direction)>,
    /// Streams held in all, per peer and per protocol, [inbound, outbound].
    system_streams: [u32; 2],
    peer_streams: BTreeMap<crate::identity::PeerId, [u32; 2]>,
    protocol_streams: BTreeMap<String, [u32; 2]>,
    stats: Stats,
}

impl ResourceManager {
    pub fn new(limits: Limits) -> Self {
        ResourceManager {
            ips: IpLimiter::new(limits.ip.clone()),
            limits,
            system: Usage::default(),
            transient: Usage::default(),
            allowlisted_system: Usage::default(),
            allowlisted_transient: Usage::default(),
            peers: BTreeMap::new(),
            conns: BTreeMap::new(),
            streams: BTreeMap::new(),
            system_streams: [0, 0],
            peer_streams: BTreeMap::new(),
            protocol_streams: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    /// A stream of `peer` for `protocol` (negotiated) on connection `conn`, opened by the peer
    /// (`Inbound`) or by us: counted in the peer's and the protocol's budgets of its direction, or
    /// refused (reset it) with the scope that was full.
    pub fn open_stream(
        &mut self,
        dir: Direction,
        conn: u64,
        stream: u32,
        peer: &crate::identity::PeerId,
        protocol: &str,
    ) -> Result<(), Refusal> {
        if self.streams.contains_key(&(conn, stream)) {
            return Ok(());
        }
        let d = dir as usize;
        let (np, nq) =
            (self.peer_streams.get(peer).copied().unwrap_or_default(), self.protocol_streams.get(protocol).copied().unwrap_or_default());
        let l = &self.limits;
        for (held, lim, scope) in [
            (self.system_streams, l.system_streams, Scope::System),
            (np, l.peer_streams, Scope::Peer),
            (nq, l.protocol_streams, Scope::Protocol),
        ] {
            if let Some((resource, limit)) = lim.reached(held, dir) {
                match scope {
                    Scope::System => self.stats.refused_streams_system += 1,
                    Scope::Peer => self.stats.refused_streams_peer += 1,
                    _ => self.stats.refused_streams_protocol += 1,
                }
                return Err(Refusal { scope, resource, limit });
            }
        }
        self.system_streams[d] += 1;
        self.peer_streams.entry(peer.clone()).or_default()[d] += 1;
        self.protocol_streams.entry(protocol.to_string()).or_default()[d] += 1;
        self.streams.insert((conn, stream), (peer.clone(), protocol.to_string(), dir));
        Ok(())
    }

    /// A stream `open_stream` counted is gone (any other: nothing happens).
    pub fn close_stream(&mut self, conn: u64, stream: u32) {
        let Some((peer, protocol, dir)) = self.streams.remove(&(conn, stream)) else { return };
        let d = dir as usize;
        self.system_streams[d] -= 1;
        if let Some(n) = self.peer_streams.get_mut(&peer) {
            n[d] -= 1;
            if *n == [0, 0] {
                self.peer_streams.remove(&peer);
            }
        }
        if let Some(n) = self.protocol_streams.get_mut(&protocol) {
            n[d] -= 1;
            if *n == [0, 0] {
                self.protocol_streams.remove(&protocol);
            }
        }
    }

    /// Streams held now by protocol, [inbound, outbound].
    pub fn protocol_streams(&self) -> impl Iterator<Item = (&str, [u32; 2])> {
        self.protocol_streams.iter().map(|(p, n)| (p.as_str(), *n))
    }

    /// Streams held now in all, [inbound, outbound].
    pub fn system_streams(&self) -> [u32; 2] {
        self.system_streams
    }

    /// Streams `peer` holds now, [inbound, outbound].
    pub fn peer_streams(&self, peer: &crate::identity::PeerId) -> [u32; 2] {
        self.peer_streams.get(peer).copied().unwrap_or_default()
    }
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// What the system scope holds (the allowlisted scopes included).
    pub fn system(&self) -> Usage {
        self.system.plus(self.allowlisted_system)
    }
    /// What the transient scope holds (handshakes and dials in progress).
    pub fn transient(&self) -> Usage {
        self.transient.plus(self.allowlisted_transient)
    }
    pub fn peer(&self, p: &crate::identity::PeerId) -> Usage {
        self.peers.get(p).copied().unwrap_or_default()
    }

    fn count(&mut self, r: &Refusal) {
        match r.scope {
            Scope::System | Scope::AllowlistedSystem => self.stats.refused_system += 1,
            Scope::Transient | Scope::AllowlistedTransient => self.stats.refused_transient += 1,
            Scope::Peer => self.stats.refused_peer += 1,
            Scope::Protocol => self.stats.refused_streams_protocol += 1,
            Scope::Subnet { .. } => self.stats.refused_subnet += 1,
        }
    }

    /// A new connection (`Inbound`: accepted from `ip`; `Outbound`: a dial starting), in the transient
    /// scope until [`ResourceManager::set_peer`]. `fd`: it holds a file descriptor of its own.
    pub fn open_conn(&mut self, conn: u64, dir: Direction, ip: Option<IpAddr>, fd: bool) -> Result<(), Refusal> {
        let r = self.try_open(conn, dir, ip, fd);
        if let Err(e) = &r {
            self.count(e);
        }
        r
    }

    fn try_open(&mut self, conn: u64, dir: Direction, ip: Option<IpAddr>, fd: bool) -> Result<(), Refusal> {
        let allowlisted = ip.is_some_and(|ip| self.limits.ip.is_allowlisted(ip));
        let normal = self
            .system
            .check(&self.limits.system, Scope::System, dir, fd)
            .and_then(|()| self.transient.check(&self.limits.transient, Scope::Transient, dir, fd));
        let use_allowlisted = match normal {
            Ok(()) => false,
            Err(e) if !allowlisted => return Err(e),
            Err(_) => {
                self.allowlisted_system.check(&self.limits.allowlisted_system, Scope::AllowlistedSystem, dir, fd)?;
                self.allowlisted_transient.check(&self.limits.allowlisted_transient, Scope::AllowlistedTransient, dir, fd)?;
                true
            }
        };
        let counted_ip = match (dir, ip) {
            (Direction::Inbound, Some(ip)) => {
                self.ips.try_add(ip)?;
                Some(ip)
            }
            _ => None,
        };
        if use_allowlisted {
            self.stats.allowlisted_admits += 1;
            self.allowlisted_system.add(dir, fd, 1);
            self.allowlisted_transient.add(dir, fd, 1);
        } else {
            self.system.add(dir, fd, 1);
            self.transient.add(dir, fd, 1);
        }
        if let Some(old) = self.conns.insert(conn, Held { dir, fd, ip: counted_ip, allowlisted: use_allowlisted, peer: None }) {
            // A reused id would corrupt the counts: undo the old entry's share.
            self.release(old);
        }
        Ok(())
    }

    /// The handshake of `conn` finished with `peer`: it leaves the transient scope for the peer's. A
    /// refusal (the peer's budget is full) leaves it where it was; close it, then [`close_conn`].
    ///
    /// [`close_conn`]: ResourceManager::close_conn
    pub fn set_peer(&mut self, conn: u64, peer: &crate::identity::PeerId) -> Result<(), Refusal> {
        let Some(h) = self.conns.get(&conn) else { return Ok(()) };
        if h.peer.is_some() {
            return Ok(());
        }
        let (dir, fd, allowlisted) = (h.dir, h.fd, h.allowlisted);
        let usage = self.peers.get(peer).copied().unwrap_or_default();
        if let Err(e) = usage.check(&self.limits.peer, Scope::Peer, dir, fd) {
            self.count(&e);
            return Err(e);
        }
        self.peers.entry(peer.clone()).or_default().add(dir, fd, 1);
        if allowlisted {
            self.allowlisted_transient.add(dir, fd, -1);
        } else {
            self.transient.add(dir, fd, -1);
        }
        self.conns.get_mut(&conn).expect("invariant: present").peer = Some(peer.clone());
        Ok(())
    }

    /// `conn` is gone (closed, failed, or refused after `open_conn`): everything it held is released.
    pub fn close_conn(&mut self, conn: u64) {
        if let Some(h) = self.conns.remove(&conn) {
            self.release(h);
        }
        let gone: Vec<u32> = self.streams.range((conn, 0)..=(conn, u32::MAX)).map(|(k, _)| k.1).collect();
        for s in gone {
            self.close_stream(conn, s);
        }
    }

    fn release(&mut self, h: Held) {
        let (sys, tr) = if h.allowlisted {
            (&mut self.allowlisted_system, &mut self.allowlisted_transient)
        } else {
            (&mut self.system, &mut self.transient)
        };
        sys.add(h.dir, h.fd, -1);
        match &h.peer {
            None => tr.add(h.dir, h.fd, -1),
            Some(p) => {
                if let Some(u) = self.peers.get_mut(p) {
                    u.add(h.dir, h.fd, -1);
                    if u.conns() == 0 {
                        self.peers.remove(p);
                    }
                }
            }
        }
        if let Some(ip) = h.ip {
            self.ips.remove(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PeerId;
    use rand_core::SeedableRng;

    fn peer(n: u8) -> PeerId {
        PeerId::random(&mut rand_chacha::ChaCha8Rng::from_seed([n; 32]))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn scaled_limits_match_go_defaults() {
        let base = Limits::default();
        assert_eq!(base.system, ScopeLimit { conns_inbound: 64, conns_outbound: 128, conns: 128, fd: 256 });
        assert_eq!(base.transient.conns_inbound, 32);
        // 24 GiB machine: go gives libp2p an eighth of it (3 GiB) and half of 20,000 descriptors.
        let l = Limits::scaled(3 << 30, 10_000);
        assert_eq!((l.system.conns_inbound, l.system.conns_outbound, l.system.conns, l.system.fd), (256, 512, 512, 10_000));
        assert_eq!((l.transient.conns_inbound, l.transient.conns_outbound, l.transient.conns, l.transient.fd), (80, 160, 160, 2_500));
        assert_eq!(l.peer.conns, 8);
        assert_eq!(base.memory, 128 << 20);
        assert_eq!(l.memory, (128 << 20) + (3 << 30));
    }

    #[test]
    fn inbound_streams_are_counted_per_peer_and_per_protocol() {
        let mut l = Limits::unlimited();
        l.peer_streams.inbound = 3;
        l.protocol_streams.inbound = 4;
        let mut rc = ResourceManager::new(l);
        let (a, b) = (peer(1), peer(2));
        for s in 0..3 {
            rc.open_stream(Direction::Inbound, 1, s, &a, "/x").unwrap();
        }
        let e = rc.open_stream(Direction::Inbound, 1, 9, &a, "/y").unwrap_err();
        assert_eq!((e.scope, e.resource), (Scope::Peer, Resource::StreamsInbound));
        rc.open_stream(Direction::Inbound, 2, 0, &b, "/x").unwrap();
        let e = rc.open_stream(Direction::Inbound, 2, 1, &b, "/x").unwrap_err();
        assert_eq!(e.scope, Scope::Protocol);
        rc.close_stream(1, 0);
        rc.open_stream(Direction::Inbound, 2, 1, &b, "/x").unwrap();
        assert_eq!(rc.peer_streams(&a), [2, 0]);
        // A closed connection takes its streams with it.
        rc.close_conn(1);
        assert_eq!(rc.peer_streams(&a), [0, 0]);
        assert_eq!((rc.stats().refused_streams_peer, rc.stats().refused_streams_protocol), (1, 1));
        let d = Limits::scaled(3 << 30, 10_000);
        assert_eq!((d.peer_streams.inbound, d.protocol_streams.inbound), (256 + 384, 512 + 768));
        assert_eq!(Limits::default().peer_streams, StreamLimit { inbound: 256, outbound: 512, total: 512 });
        assert_eq!(d.system_streams, StreamLimit { inbound: 4 * 4096, outbound: 4 * 16384, total: 4 * 16384 });
    }

    #[test]
    fn outbound_streams_have_their_own_budgets() {
        let mut l = Limits::unlimited();
        l.peer_streams.inbound = 1;
        l.peer_streams.outbound = 2;
        l.protocol_streams.outbound = 3;
        let mut rc = ResourceManager::new(l);
        let (a, b) = (peer(1), peer(2));
        // The inbound budget is full; outbound streams are counted apart.
        rc.open_stream(Direction::Inbound, 1, 100, &a, "/x").unwrap();
        rc.open_stream(Direction::Outbound, 1, 1, &a, "/x").unwrap();
        rc.open_stream(Direction::Outbound, 1, 3, &a, "/x").unwrap();
        let e = rc.open_stream(Direction::Outbound, 1, 5, &a, "/x").unwrap_err();
        assert_eq!((e.scope, e.resource, e.limit), (Scope::Peer, Resource::StreamsOutbound, 2));
        rc.open_stream(Direction::Outbound, 2, 1, &b, "/x").unwrap();
        let e = rc.open_stream(Direction::Outbound, 2, 3, &b, "/x").unwrap_err();
        assert_eq!((e.scope, e.resource), (Scope::Protocol, Resource::StreamsOutbound));
        assert_eq!(rc.peer_streams(&a), [1, 2]);
        assert_eq!(rc.protocol_streams().collect::<Vec<_>>(), vec![("/x", [1, 3])]);
        rc.close_stream(1, 3);
        assert_eq!(rc.peer_streams(&a), [1, 1]);
        rc.close_conn(1);
        rc.close_conn(2);
        assert_eq!(rc.protocol_streams().count(), 0);
        let d = Limits::scaled(3 << 30, 10_000);
        assert_eq!((d.peer_streams.outbound, d.protocol_streams.outbound), (512 + 768, 2048 + 1536));
    }

    #[test]
    fn stream_totals_and_the_system_scope_are_enforced() {
        let mut l = Limits::unlimited();
        l.peer_streams.total = 3;
        l.system_streams.inbound = 4;
        let mut rc = ResourceManager::new(l);
        let (a, b, c) = (peer(1), peer(2), peer(3));
        rc.open_stream(Direction::Inbound, 1, 0, &a, "/x").unwrap();
        rc.open_stream(Direction::Outbound, 1, 1, &a, "/x").unwrap();
        rc.open_stream(Direction::Inbound, 1, 2, &a, "/x").unwrap();
        let e = rc.open_stream(Direction::Outbound, 1, 3, &a, "/x").unwrap_err();
        assert_eq!((e.scope, e.resource, e.limit), (Scope::Peer, Resource::Streams, 3));
        rc.open_stream(Direction::Inbound, 2, 0, &b, "/x").unwrap();
        rc.open_stream(Direction::Inbound, 2, 2, &b, "/x").unwrap();
        let e = rc.open_stream(Direction::Inbound, 3, 0, &c, "/x").unwrap_err();
        assert_eq!((e.scope, e.resource, e.limit), (Scope::System, Resource::StreamsInbound, 4));
        rc.open_stream(Direction::Outbound, 3, 1, &c, "/x").unwrap();
        assert_eq!(rc.system_streams(), [4, 2]);
        rc.close_conn(2);
        rc.open_stream(Direction::Inbound, 3, 0, &c, "/x").unwrap();
        assert_eq!(rc.system_streams(), [3, 2]);
        assert_eq!((rc.stats().refused_streams_system, rc.stats().refused_streams_peer), (1, 1));
    }

    #[test]
    fn a_peer_scope_bounds_one_peer_within_the_system_budget() {
        let sys = Memory::with_peer_limit(100, 30);
        let (a, b) = (sys.for_peer(&peer(1)), sys.for_peer(&peer(2)));
        assert!(a.try_reserve(30));
        assert!(!a.try_reserve(1), "a's own limit");
        let a2 = sys.for_peer(&peer(1));
        assert!(!a2.try_reserve(1), "the same scope for a's next connection");
        assert!(b.try_reserve(30));
        assert_eq!(sys.used(), 60);
        let c = sys.for_peer(&peer(3));
        assert!(c.try_reserve(30));
        let d = sys.for_peer(&peer(4));
        assert!(!d.try_reserve(20), "the system's limit");
        assert_eq!((d.used(), sys.used(), sys.peer_refused(), sys.refused()), (0, 90, 2, 1));
        a.release(30);
        assert_eq!(sys.used(), 60);
        // A scope nobody holds is gone: a new one starts empty.
        drop((a, a2));
        assert_eq!(sys.for_peer(&peer(1)).used(), 0);
        assert_eq!(Memory::new(10).for_peer(&peer(1)).limit(), 10, "no peer scopes");
        let l = Limits::scaled(1 << 30, 256);
        assert_eq!(l.peer_memory(), l.memory / 16);
    }

    #[test]
    fn reservations_give_their_bytes_back_when_dropped() {
        let m = Memory::new(100);
        let mut r = Reservation::new(&m, 60).unwrap();
        assert!(Reservation::new(&m, 50).is_none());
        assert!(!r.grow(50));
        assert!(r.grow(40));
        assert_eq!((r.bytes(), m.used(), m.refused()), (100, 100, 2));
        drop(r);
        assert_eq!(m.used(), 0);
        let e = Reservation::refusal(&Memory::new(3 << 20), 1);
        assert_eq!(e.to_string(), "system scope: memory (MiB) at limit 3");
        let sys = Memory::with_peer_limit(8 << 20, 2 << 20);
        let p = sys.for_peer(&peer(1));
        assert_eq!(Reservation::refusal(&p, 3 << 20).scope, Scope::Peer);
        assert!(sys.try_reserve(7 << 20));
        assert_eq!(Reservation::refusal(&p, 1 << 20).scope, Scope::System);
    }

    #[test]
    fn memory_budget_reserves_up_to_its_limit() {
        let m = Memory::new(100);
        assert!(m.try_reserve(60));
        assert!(!m.try_reserve(41));
        assert!(m.clone().try_reserve(40));
        assert_eq!((m.used(), m.refused()), (100, 1));
        m.release(100);
        assert_eq!(m.used(), 0);
        assert!(!m.try_reserve(u64::MAX));
    }

    #[test]
    fn subnet_limit_refuses_the_ninth_connection_from_one_ipv4_address() {
        let mut rc = ResourceManager::new(Limits::scaled(1 << 30, 1000));
        for i in 0..8 {
            rc.open_conn(i, Direction::Inbound, ip("10.0.0.1"), true).unwrap();
        }
        let e = rc.open_conn(8, Direction::Inbound, ip("10.0.0.1"), true).unwrap_err();
        assert_eq!(e.scope, Scope::Subnet { v6: false, prefix_len: 32 });
        assert_eq!(rc.stats().refused_subnet, 1);
        // Another address, loopback and our own dials are not affected.
        rc.open_conn(9, Direction::Inbound, ip("10.0.0.2"), true).unwrap();
        for i in 10..30 {
            rc.open_conn(i, Direction::Inbound, ip("127.0.0.1"), true).unwrap();
        }
        rc.open_conn(30, Direction::Outbound, ip("10.0.0.1"), true).unwrap();
        // Closing one makes room again.
        rc.close_conn(3);
        rc.open_conn(31, Direction::Inbound, ip("10.0.0.1"), true).unwrap();
    }

    #[test]
    fn ipv6_blocks_count_at_56_and_48() {
        let mut rc = ResourceManager::new(Limits::unlimited());
        rc.limits.ip = IpLimits::default();
        rc.ips = IpLimiter::new(IpLimits::default());
        for i in 0..8 {
            rc.open_conn(i, Direction::Inbound, ip(&format!("2001:db8:0:1::{}", i + 1)), true).unwrap();
        }
        let e = rc.open_conn(100, Direction::Inbound, ip("2001:db8:0:1::ff"), true).unwrap_err();
        assert_eq!(e.scope, Scope::Subnet { v6: true, prefix_len: 56 });
        // Other /56 blocks of the same /48 fill it to 64.
        let mut n = 8;
        'outer: for b in 1..=20u32 {
            for h in 0..8 {
                match rc.open_conn(200 + n as u64, Direction::Inbound, ip(&format!("2001:db8:0:{:x}00::{}", b, h + 1)), true) {
                    Ok(()) => n += 1,
                    Err(e) => {
                        assert_eq!(e.scope, Scope::Subnet { v6: true, prefix_len: 48 });
                        break 'outer;
                    }
                }
            }
        }
        assert_eq!(n, 64);
    }

    #[test]
    fn handshakes_fill_the_transient_scope_not_the_established_budget() {
        let mut rc = ResourceManager::new(Limits { ip: IpLimits::none(), ..Limits::default() });
        let peer = peer(1);
        // 32 inbound handshakes fill the transient scope...
        for i in 0..32 {
            rc.open_conn(i, Direction::Inbound, ip("10.0.0.1"), true).unwrap();
        }
        let e = rc.open_conn(99, Direction::Inbound, ip("10.0.0.2"), true).unwrap_err();
        assert_eq!((e.scope, e.resource), (Scope::Transient, Resource::ConnsInbound));
        // ...one finishing makes room, and established ones no longer count there.
        rc.set_peer(0, &peer).unwrap();
        assert_eq!(rc.transient().conns_inbound, 31);
        assert_eq!(rc.system().conns_inbound, 32);
        rc.open_conn(99, Direction::Inbound, ip("10.0.0.2"), true).unwrap();
        rc.close_conn(0);
        assert_eq!(rc.peer(&peer), Usage::default());
        assert_eq!(rc.system().conns_inbound, 32);
    }

    #[test]
    fn peer_scope_refuses_a_ninth_connection_and_keeps_it_transient() {
        let mut rc = ResourceManager::new(Limits::unlimited());
        rc.limits.peer = PEER;
        let peer = peer(2);
        for i in 0..8 {
            rc.open_conn(i, Direction::Outbound, None, false).unwrap();
            rc.set_peer(i, &peer).unwrap();
        }
        rc.open_conn(8, Direction::Inbound, ip("10.0.0.1"), false).unwrap();
        let e = rc.set_peer(8, &peer).unwrap_err();
        assert_eq!(e.scope, Scope::Peer);
        assert_eq!(rc.transient().conns_inbound, 1);
        rc.close_conn(8);
        assert_eq!(rc.transient(), Usage::default());
        assert_eq!(rc.peer(&peer).conns_outbound, 8);
    }

    #[test]
    fn allowlisted_address_gets_in_when_the_normal_scopes_are_full() {
        let mut l = Limits::default();
        l.transient.conns_inbound = 2;
        l.allowlisted_transient.conns_inbound = 4;
        l.ip.allowlist = vec!["192.0.2.0/24".parse().unwrap()];
        let mut rc = ResourceManager::new(l);
        rc.open_conn(0, Direction::Inbound, ip("10.0.0.1"), true).unwrap();
        rc.open_conn(1, Direction::Inbound, ip("10.0.0.2"), true).unwrap();
        assert!(rc.open_conn(2, Direction::Inbound, ip("10.0.0.3"), true).is_err());
        rc.open_conn(3, Direction::Inbound, ip("192.0.2.7"), true).unwrap();
        assert_eq!(rc.stats().allowlisted_admits, 1);
        rc.close_conn(3);
        assert_eq!(rc.transient().conns_inbound, 2);
    }

    #[test]
    fn ip_prefix_parses_and_matches() {
        let p: IpPrefix = "10.1.0.0/16".parse().unwrap();
        assert!(p.contains("10.1.200.3".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        assert_eq!("10.0.0.1".parse::<IpPrefix>().unwrap().len, 32);
        assert!("10.0.0.0/33".parse::<IpPrefix>().is_err());
        assert!("nope/8".parse::<IpPrefix>().is_err());
        let all: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
    }
}
