//! The discrete-event engine: a virtual clock, an event queue ordered by (time, sequence), nodes that are
//! the real sans-IO node machines ([`ByteNode`]: the `Node` the tokio Host runs, with its TCP connection
//! machines and QUIC endpoint; real Noise/TLS, Yamux, QUIC, identify, ping), TCP-like links (reliable,
//! ordered, latency + jitter + bandwidth with serialization delay and queueing), datagram paths (loss,
//! reordering), partitions, crashes and restarts. One seed drives everything.

use crate::metrics::{Counters, Histogram, Phase};
use crate::scenario::{Action, LinkClass, Scenario, Selector};
use hyphae_core::conn::Role;
use hyphae_core::node::{self, ByteNode, ConnId, Event, Input, Output};
use hyphae_core::rng::{self, RngCore};
use hyphae_core::time::{Duration, Instant};
use hyphae_core::{Keypair, Multiaddr, PeerId, Protocol};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};

/// A dial to an unreachable (partitioned) node fails after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many time buckets in the latency-over-time plot (fewer when pings are sparse, so that
/// every bucket spans at least one ping interval).
pub const TIME_BUCKETS: usize = 60;

#[derive(Debug)]
enum Ev {
    Timer {
        node: usize,
        gen: u32,
    },
    Connected {
        link: u64,
        side: usize,
    },
    Deliver {
        link: u64,
        side: usize,
        data: Vec<u8>,
    },
    /// A UDP datagram arriving at `node` (generation `gen`) from `from`.
    Datagram {
        node: usize,
        gen: u32,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Disconnected {
        node: usize,
        gen: u32,
        conn: ConnId,
        reason: &'static str,
    },
    Action(usize),
    Churn {
        n: usize,
        every: Duration,
        until: Instant,
    },
}

struct Scheduled {
    at: Instant,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct SimNode {
    node: Option<ByteNode>,
    gen: u32,
    key: Keypair,
    peer: PeerId,
    ping: Option<Duration>,
    /// Dials over QUIC.
    quic: bool,
    region: usize,
    timer_at: Option<Instant>,
    conns: BTreeMap<ConnId, u64>,
    next_conn: u64,
    /// How many random peers it dials when (re)started by churn.
    degree: usize,
}

struct Link {
    /// (node, conn id at that node, node generation) for side 0 (dialer) and side 1 (listener).
    ends: [(usize, ConnId, u32); 2],
    class: LinkClass,
    /// When the sender's serializer is free again, per direction (index: sending side).
    free_at: [Instant; 2],
    /// Last delivery time per direction: keeps the byte stream ordered under jitter.
    last_at: [Instant; 2],
    up: [bool; 2],
    /// Bytes held by a partition, per sending side (TCP keeps retransmitting; they arrive after heal).
    held: [Vec<Vec<u8>>; 2],
}

/// What a run reports.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub virtual_time: Duration,
    pub events: u64,
    pub trace_hash: u64,
    pub phases: Vec<Phase>,
    pub total: Phase,
    /// RTT histogram per time bucket (for the plot).
    pub rtt_over_time: Vec<Histogram>,
    /// Failed pings per time bucket.
    pub fails_over_time: Vec<u64>,
    pub bucket_ns: u64,
    pub connected_fraction: f64,
}

impl Report {
    pub fn metric(&self, phase: &str, name: &str) -> Option<f64> {
        match name {
            "connected_fraction" => return Some(self.connected_fraction),
            "events" => return Some(self.events as f64),
            _ => {}
        }
        if phase == "total" {
            return self.total.metric(name);
        }
        self.phases.iter().find(|p| p.name == phase)?.metric(name)
    }
}

pub struct Sim {
    sc: Scenario,
    now: Instant,
    seq: u64,
    heap: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    groups: BTreeMap<String, (usize, usize)>,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    rng: rng::Rng,
    seed: u64,
    link_class: LinkClass,
    region_links: BTreeMap<(usize, usize), LinkClass>,
    partitions: Vec<(Vec<bool>, Vec<bool>, bool)>,
    phases: Vec<Phase>,
    rtt_over_time: Vec<Histogram>,
    fails_over_time: Vec<u64>,
    bucket_ns: u64,
    events: u64,
    hash: u64,
    /// Every node runs a QUIC endpoint (some group dials over QUIC); quinn-proto's time base.
    quic_base: Option<std::time::Instant>,
    /// When each (sender, receiver) UDP path's serializer is free again.
    udp_free_at: BTreeMap<(usize, usize), Instant>,
    /// Per-event running hashes, kept when checking determinism.
    pub trace: Option<Vec<u64>>,
    /// Protocol events of every node, kept when `record_events` is on: (time, node, event).
    log: Option<Vec<(Instant, usize, Event)>>,
    /// Progress callback: (virtual ns done, total ns).
    pub progress: Option<Box<dyn FnMut(u64, u64)>>,
}

fn seed32(seed: u64, tag: &[u8], i: u64) -> [u8; 32] {
    // Deterministic child seeds: ChaCha20 keyed by the root seed, stream chosen by (tag, i).
    let mut base = [0u8; 32];
    base[..8].copy_from_slice(&seed.to_le_bytes());
    for (k, b) in tag.iter().enumerate() {
        base[8 + (k % 24)] ^= *b;
    }
    let mut r = rng::from_seed(base);
    r.set_stream(i);
    let mut out = [0u8; 32];
    r.fill_bytes(&mut out);
    out
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The simulated address of node `i`: `/ip4/10.a.b.c/tcp/4001` (never used on a real network).
pub fn node_addr(i: usize) -> Multiaddr {
    Multiaddr::from_tcp(node_socket(i))
}

/// Node `i`'s QUIC address: `/ip4/10.a.b.c/udp/4001/quic-v1`.
pub fn node_quic_addr(i: usize) -> Multiaddr {
    Multiaddr::from_quic(node_socket(i))
}

fn node_socket(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8), 4001))
}

fn socket_node(sa: SocketAddr) -> Option<usize> {
    match sa.ip() {
        std::net::IpAddr::V4(ip) => {
            let o = ip.octets();
            (o[0] == 10).then(|| (usize::from(o[1]) << 16) | (usize::from(o[2]) << 8) | usize::from(o[3]))
        }
        _ => None,
    }
}

fn addr_node(a: &Multiaddr) -> Option<usize> {
    match a.protocols().first()? {
        Protocol::Ip4(ip) => {
            let o = ip.octets();
            (o[0] == 10).then(|| (usize::from(o[1]) << 16) | (usize::from(o[2]) << 8) | usize::from(o[3]))
        }
        _ => None,
    }
}

impl Sim {
    pub fn new(sc: Scenario, seed: u64) -> Sim {
        let mut groups = BTreeMap::new();
        let mut nodes = Vec::new();
        for g in &sc.groups {
            let start = nodes.len();
            for _ in 0..g.count {
                let i = nodes.len() as u64;
                let key = Keypair::generate_ed25519(&mut rng::from_seed(seed32(seed, b"key", i)));
                nodes.push(SimNode {
                    node: None,
                    gen: 0,
                    peer: key.peer_id(),
                    key,
                    ping: g.ping,
                    quic: g.quic,
                    region: usize::MAX,
                    timer_at: None,
                    conns: BTreeMap::new(),
                    next_conn: 1,
                    degree: 0,
                });
            }
            groups.insert(g.name.clone(), (start, nodes.len()));
        }
        let interval = sc.groups.iter().filter_map(|g| g.ping).max().unwrap_or(Duration::from_secs(1)).as_nanos() as u64;
        let dur = sc.duration.as_nanos() as u64;
        let buckets = ((dur / interval.max(1)) as usize).clamp(1, TIME_BUCKETS);
        let bucket_ns = (dur / buckets as u64).max(1);
        let mut sim = Sim {
            now: Instant::ZERO,
            seq: 0,
            heap: BinaryHeap::new(),
            groups,
            links: BTreeMap::new(),
            next_link: 1,
            rng: rng::from_seed(seed32(seed, b"sim", 0)),
            seed,
            link_class: sc.link.clone(),
            region_links: BTreeMap::new(),
            partitions: vec![],
            phases: vec![Phase { name: sc.first_phase.clone(), ..Default::default() }],
            rtt_over_time: vec![Histogram::default(); buckets],
            fails_over_time: vec![0; buckets],
            bucket_ns,
            events: 0,
            hash: 0xcbf29ce484222325,
            quic_base: sc.groups.iter().any(|g| g.quic).then(std::time::Instant::now),
            udp_free_at: BTreeMap::new(),
            trace: None,
            log: None,
            progress: None,
            nodes,
            sc,
        };
        let regions: Vec<(String, Selector)> = sim.sc.regions.clone();
        for (ri, (_, sel)) in regions.iter().enumerate() {
            for i in sim.select(sel) {
                sim.nodes[i].region = ri;
            }
        }
        for (a, b, class) in sim.sc.between.clone() {
            let ia = regions.iter().position(|(n, _)| *n == a).expect("invariant: validated by the parser");
            let ib = regions.iter().position(|(n, _)| *n == b).expect("invariant: validated by the parser");
            sim.region_links.insert((ia.min(ib), ia.max(ib)), class);
        }
        for i in 0..sim.nodes.len() {
            sim.start_node(i);
        }
        for (k, _) in sim.sc.timeline.clone().iter().enumerate() {
            let at = Instant::ZERO + sim.sc.timeline[k].0;
            sim.push(at, Ev::Action(k));
        }
        sim
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled { at, seq: self.seq, ev }));
    }

    fn phase(&mut self) -> &mut Counters {
        &mut self.phases.last_mut().expect("invariant: at least one phase").counters
    }

    fn select(&self, s: &Selector) -> Vec<usize> {
        match s {
            Selector::All => (0..self.nodes.len()).collect(),
            Selector::One(i) => vec![*i],
            Selector::Range(a, b) => (*a..=*b).collect(),
            Selector::Group(g) => match self.groups.get(g) {
                Some((a, b)) => (*a..*b).collect(),
                None => match self.sc.regions.iter().find(|(n, _)| n == g) {
                    // Regions are defined by selectors over groups or ranges; resolve one level.
                    Some((_, sel)) if !matches!(sel, Selector::Group(x) if x == g) => self.select(&sel.clone()),
                    _ => vec![],
                },
            },
        }
    }

    fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let mut cfg = node::Config::new(n.key.clone(), seed32(self.seed, b"node", ((i as u64) << 20) | u64::from(n.gen)));
        cfg.ping_interval = n.ping;
        cfg.listen_addrs = vec![node_addr(i)];
        if let Some(base) = self.quic_base {
            cfg.quic_base = Some(base);
            cfg.listen_addrs.push(node_quic_addr(i));
        }
        n.node = Some(ByteNode::new(cfg, self.now));
        n.timer_at = None;
        self.drain(i);
    }

    fn class_between(&self, a: usize, b: usize) -> LinkClass {
        let (ra, rb) = (self.nodes[a].region, self.nodes[b].region);
        if ra != usize::MAX && rb != usize::MAX && ra != rb {
            if let Some(c) = self.region_links.get(&(ra.min(rb), ra.max(rb))) {
                return c.clone();
            }
        }
        self.link_class.clone()
    }

    fn blocked(&self, from: usize, to: usize) -> bool {
        self.partitions.iter().any(|(a, b, one_way)| (a[from] && b[to]) || (!one_way && b[from] && a[to]))
    }

    /// Feeds one input to node `i` and handles everything it outputs.
    fn input(&mut self, i: usize, input: Input<'_>) {
        let now = self.now;
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.handle_input(now, input);
        }
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].node.as_mut().and_then(|n| n.poll_output()) {
            match out {
                Output::Transmit { conn, data } => self.transmit(i, conn, data),
                Output::Dial { conn, addr } => self.dial(i, conn, addr),
                Output::Close { conn } => self.close(i, conn),
                Output::SendDatagram { to, data } => self.send_datagram(i, to, data),
                Output::Event(e) => self.on_event(i, e),
            }
        }
        let t = self.nodes[i].node.as_mut().and_then(|n| n.poll_timeout());
        if let Some(t) = t {
            let t = t.max(self.now);
            if self.nodes[i].timer_at.is_none_or(|cur| t < cur) {
                self.nodes[i].timer_at = Some(t);
                let gen = self.nodes[i].gen;
                self.push(t, Ev::Timer { node: i, gen });
            }
        }
    }

    fn on_event(&mut self, i: usize, e: Event) {
        let now = self.now;
        if let Some(log) = &mut self.log {
            log.push((now, i, e.clone()));
        }
        match e {
            Event::Connected { .. } => self.phase().connections += 1,
            Event::Disconnected { .. } => self.phase().disconnections += 1,
            Event::DialFailed { .. } => self.phase().dial_failures += 1,
            Event::PingOk { rtt, .. } => {
                let ns = rtt.as_nanos() as u64;
                self.phase().pings_ok += 1;
                self.phases.last_mut().expect("invariant: a phase").rtt.record(ns);
                let b = ((now.as_nanos() / self.bucket_ns) as usize).min(self.rtt_over_time.len() - 1);
                self.rtt_over_time[b].record(ns);
            }
            Event::PingFailed { .. } => {
                self.phase().pings_failed += 1;
                let b = ((now.as_nanos() / self.bucket_ns) as usize).min(self.fails_over_time.len() - 1);
                self.fails_over_time[b] += 1;
            }
            Event::Identified { .. } => self.phase().identifies += 1,
            Event::IdentifyFailed { .. } => self.phase().identify_failures += 1,
            Event::InboundPing { .. } => {}
        }
    }

    fn dial(&mut self, from: usize, conn: ConnId, addr: Multiaddr) {
        self.phase().dials += 1;
        let gen = self.nodes[from].gen;
        let target = addr_node(&addr).filter(|t| *t < self.nodes.len() && *t != from);
        let Some(to) = target else {
            self.push(self.now, Ev::Disconnected { node: from, gen, conn, reason: "no route to host" });
            return;
        };
        let class = self.class_between(from, to);
        if self.blocked(from, to) || self.blocked(to, from) {
            self.push(self.now + CONNECT_TIMEOUT, Ev::Disconnected { node: from, gen, conn, reason: "connect timed out" });
            return;
        }
        if self.nodes[to].node.is_none() {
            self.push(self.now + class.latency * 2, Ev::Disconnected { node: from, gen, conn, reason: "connection refused" });
            return;
        }
        let tn = &mut self.nodes[to];
        let their = ConnId(tn.next_conn);
        tn.next_conn += 1;
        let link = self.next_link;
        self.next_link += 1;
        let lat = class.latency;
        self.links.insert(
            link,
            Link {
                ends: [(from, conn, gen), (to, their, tn.gen)],
                class,
                free_at: [self.now; 2],
                last_at: [self.now; 2],
                up: [true; 2],
                held: [vec![], vec![]],
            },
        );
        self.nodes[from].conns.insert(conn, link);
        self.nodes[to].conns.insert(their, link);
        // TCP: the listener accepts after the SYN arrives, the dialer learns after the SYN-ACK.
        self.push(self.now + lat, Ev::Connected { link, side: 1 });
        self.push(self.now + lat * 2, Ev::Connected { link, side: 0 });
    }

    fn side_of(&self, i: usize, conn: ConnId) -> Option<(u64, usize)> {
        let link = *self.nodes[i].conns.get(&conn)?;
        let l = self.links.get(&link)?;
        let side = if l.ends[0].0 == i && l.ends[0].1 == conn { 0 } else { 1 };
        Some((link, side))
    }

    fn transmit(&mut self, i: usize, conn: ConnId, data: Vec<u8>) {
        let Some((link, side)) = self.side_of(i, conn) else { return };
        let to = self.links[&link].ends[1 - side].0;
        if self.blocked(i, to) {
            self.links.get_mut(&link).expect("invariant: link exists").held[side].push(data);
            return;
        }
        self.send_on(link, side, data);
    }

    fn send_on(&mut self, link: u64, side: usize, data: Vec<u8>) {
        let jitter_draw = self.rng.next_u64();
        let now = self.now;
        let l = self.links.get_mut(&link).expect("invariant: link exists");
        if !l.up[side] {
            return;
        }
        let ser = if l.class.bandwidth_bps == 0 {
            0
        } else {
            (data.len() as u128 * 8 * 1_000_000_000 / u128::from(l.class.bandwidth_bps)) as u64
        };
        let start = l.free_at[side].max(now);
        l.free_at[side] = start + Duration::from_nanos(ser);
        let jitter = if l.class.jitter.is_zero() { 0 } else { jitter_draw % (l.class.jitter.as_nanos() as u64) };
        let at = (l.free_at[side] + l.class.latency + Duration::from_nanos(jitter)).max(l.last_at[side]);
        l.last_at[side] = at;
        self.push(at, Ev::Deliver { link, side: 1 - side, data });
    }

    /// UDP: no connection, no ordering, no retransmission. A partition or a crashed receiver drops the
    /// datagram; `loss` drops it at random; `reorder` holds it back one extra latency.
    fn send_datagram(&mut self, from: usize, to: SocketAddr, data: Vec<u8>) {
        let (loss_draw, reorder_draw, jitter_draw) = (self.rng.next_u64(), self.rng.next_u64(), self.rng.next_u64());
        self.phase().datagrams += 1;
        let Some(dest) = socket_node(to).filter(|d| *d < self.nodes.len()) else {
            self.phase().datagrams_lost += 1;
            return;
        };
        let class = self.class_between(from, dest);
        let unit = |x: u64| (x >> 11) as f64 / (1u64 << 53) as f64;
        if self.blocked(from, dest) || unit(loss_draw) < class.loss {
            self.phase().datagrams_lost += 1;
            return;
        }
        let ser =
            if class.bandwidth_bps == 0 { 0 } else { (data.len() as u128 * 8 * 1_000_000_000 / u128::from(class.bandwidth_bps)) as u64 };
        let free = self.udp_free_at.entry((from, dest)).or_insert(self.now);
        let start = (*free).max(self.now);
        *free = start + Duration::from_nanos(ser);
        let jitter = if class.jitter.is_zero() { 0 } else { jitter_draw % (class.jitter.as_nanos() as u64) };
        let mut at = *free + class.latency + Duration::from_nanos(jitter);
        if unit(reorder_draw) < class.reorder {
            at = at + class.latency;
        }
        let gen = self.nodes[dest].gen;
        self.push(at, Ev::Datagram { node: dest, gen, from: node_socket(from), data });
    }

    fn close(&mut self, i: usize, conn: ConnId) {
        let Some((link, side)) = self.side_of(i, conn) else { return };
        self.nodes[i].conns.remove(&conn);
        let l = self.links.get_mut(&link).expect("invariant: link exists");
        l.up[side] = false;
        let (peer, pconn, pgen) = l.ends[1 - side];
        // FIN after the bytes already on the wire.
        let at = (self.now + l.class.latency).max(l.last_at[side]);
        let both_down = !l.up[1 - side];
        if both_down {
            self.links.remove(&link);
        }
        self.push(at, Ev::Disconnected { node: peer, gen: pgen, conn: pconn, reason: "closed by remote" });
    }

    fn crash(&mut self, i: usize) {
        if self.nodes[i].node.is_none() {
            return;
        }
        self.phase().crashes += 1;
        self.nodes[i].node = None;
        self.nodes[i].gen += 1;
        let conns: Vec<(ConnId, u64)> = std::mem::take(&mut self.nodes[i].conns).into_iter().collect();
        for (_, link) in conns {
            if let Some(l) = self.links.remove(&link) {
                let side = if l.ends[0].0 == i { 0 } else { 1 };
                let (peer, pconn, pgen) = l.ends[1 - side];
                if l.up[1 - side] {
                    self.push(
                        self.now + l.class.latency,
                        Ev::Disconnected { node: peer, gen: pgen, conn: pconn, reason: "connection reset" },
                    );
                }
            }
        }
    }

    fn restart(&mut self, i: usize) {
        if self.nodes[i].node.is_some() {
            return;
        }
        self.phase().restarts += 1;
        self.start_node(i);
        let k = self.nodes[i].degree;
        self.connect_random(i, k);
    }

    fn connect_random(&mut self, i: usize, k: usize) {
        let n = self.nodes.len();
        if n < 2 || self.nodes[i].node.is_none() {
            return;
        }
        self.nodes[i].degree = self.nodes[i].degree.max(k);
        let mut chosen: Vec<usize> = Vec::new();
        let mut tries = 0;
        while chosen.len() < k.min(n - 1) && tries < 20 * k + 20 {
            tries += 1;
            let j = (self.rng.next_u64() % n as u64) as usize;
            if j != i && !chosen.contains(&j) {
                chosen.push(j);
            }
        }
        for j in chosen {
            self.connect(i, j);
        }
    }

    fn connect(&mut self, i: usize, j: usize) {
        let peer = self.nodes[j].peer.clone();
        let now = self.now;
        let addr = if self.nodes[i].quic { node_quic_addr(j) } else { node_addr(j) }.with(Protocol::P2p(peer.clone()));
        let quic = self.nodes[i].quic;
        if let Some(n) = self.nodes[i].node.as_mut() {
            if !n.is_connected(&peer) {
                let _ = n.dial(now, addr);
                if quic {
                    // TCP dials are counted when the node asks for the transport connection.
                    self.phase().dials += 1;
                }
            }
        }
        self.drain(i);
    }

    fn action(&mut self, k: usize) {
        let (_, a) = self.sc.timeline[k].clone();
        match a {
            Action::ConnectRandom { k, who } => {
                for i in self.select(&who) {
                    self.connect_random(i, k);
                }
            }
            Action::Connect { from, to } => {
                for i in self.select(&from) {
                    for j in self.select(&to) {
                        if i != j {
                            self.connect(i, j);
                        }
                    }
                }
            }
            Action::Ping(who) => {
                let now = self.now;
                for i in self.select(&who) {
                    if let Some(n) = self.nodes[i].node.as_mut() {
                        for p in n.connected_peers() {
                            let _ = n.ping(now, &p);
                        }
                    }
                    self.drain(i);
                }
            }
            Action::Partition { a, b, one_way } => {
                let n = self.nodes.len();
                let mut sa = vec![false; n];
                let mut sb = vec![false; n];
                for i in self.select(&a) {
                    sa[i] = true;
                }
                for i in self.select(&b) {
                    sb[i] = true;
                }
                self.partitions.push((sa, sb, one_way));
            }
            Action::Heal => {
                self.partitions.clear();
                let held: Vec<(u64, usize, Vec<Vec<u8>>)> = self
                    .links
                    .iter_mut()
                    .flat_map(|(id, l)| {
                        let h0 = std::mem::take(&mut l.held[0]);
                        let h1 = std::mem::take(&mut l.held[1]);
                        [(*id, 0, h0), (*id, 1, h1)]
                    })
                    .filter(|(_, _, h)| !h.is_empty())
                    .collect();
                for (link, side, msgs) in held {
                    for m in msgs {
                        self.send_on(link, side, m);
                    }
                }
            }
            Action::Crash(who) => {
                for i in self.select(&who) {
                    self.crash(i);
                }
            }
            Action::Restart(who) => {
                for i in self.select(&who) {
                    self.restart(i);
                }
            }
            Action::Churn { n, every, until } => self.push(self.now, Ev::Churn { n, every, until: Instant::ZERO + until }),
            Action::Link(class) => self.link_class = class,
            Action::Phase(name) => {
                let now = self.now.as_nanos();
                if let Some(p) = self.phases.last_mut() {
                    p.end_ns = now;
                }
                self.phases.push(Phase { name, start_ns: now, ..Default::default() });
            }
        }
    }

    fn churn(&mut self, n: usize, every: Duration, until: Instant) {
        // Restart up to n crashed nodes, then crash n random live ones.
        let dead: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].node.is_none()).collect();
        for &i in dead.iter().take(n) {
            self.restart(i);
        }
        let total = self.nodes.len();
        for _ in 0..n {
            let i = (self.rng.next_u64() % total as u64) as usize;
            self.crash(i);
        }
        if self.now + every <= until {
            self.push(self.now + every, Ev::Churn { n, every, until });
        }
    }

    fn note(&mut self, kind: u8, node: usize, conn: u64, data: &[u8]) {
        self.events += 1;
        let mut h = fnv(self.hash, &self.now.as_nanos().to_le_bytes());
        h = fnv(h, &[kind]);
        h = fnv(h, &(node as u64).to_le_bytes());
        h = fnv(h, &conn.to_le_bytes());
        h = fnv(h, data);
        self.hash = h;
        if let Some(t) = &mut self.trace {
            t.push(h);
        }
    }

    /// Runs the scenario to its end and reports.
    pub fn run(mut self) -> Report {
        self.run_inner()
    }

    /// Runs and also returns the running trace hash after every event (for determinism checks).
    pub fn run_traced(mut self) -> (Report, Vec<u64>) {
        self.trace = Some(Vec::new());
        let r = self.run_inner();
        (r, self.trace.take().unwrap_or_default())
    }

    fn run_inner(&mut self) -> Report {
        self.run_until(self.sc.duration);
        self.finish()
    }

    /// Keeps every node's protocol events from now on (query them with [`Sim::events`]).
    pub fn record_events(&mut self) {
        self.log.get_or_insert_with(Vec::new);
    }

    /// The recorded protocol events: (virtual time, node index, event).
    pub fn events(&self) -> &[(Instant, usize, Event)] {
        self.log.as_deref().unwrap_or(&[])
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Node `i`'s counters (None while it is crashed).
    pub fn node_stats(&self, i: usize) -> Option<&node::Stats> {
        self.nodes[i].node.as_ref().map(|n| n.stats())
    }

    /// The peer ID of node `i` (kept across restarts).
    pub fn peer_id(&self, i: usize) -> &PeerId {
        &self.nodes[i].peer
    }

    /// Processes every event up to virtual time `t` (capped at the scenario's duration). Can be called
    /// repeatedly with growing `t`; tests use it to look at the nodes mid-run.
    pub fn run_until(&mut self, t: Duration) {
        let end = Instant::ZERO + t.min(self.sc.duration);
        let total = (Instant::ZERO + self.sc.duration).as_nanos();
        let mut next_progress = self.now.as_nanos();
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.at > end {
                break;
            }
            let Some(Reverse(s)) = self.heap.pop() else { break };
            self.now = s.at;
            if let Some(p) = &mut self.progress {
                if self.now.as_nanos() >= next_progress {
                    p(self.now.as_nanos(), total);
                    next_progress = self.now.as_nanos() + total / 100;
                }
            }
            match s.ev {
                Ev::Timer { node, gen } => {
                    let n = &mut self.nodes[node];
                    if n.gen != gen || n.timer_at != Some(s.at) {
                        continue;
                    }
                    n.timer_at = None;
                    self.note(0, node, 0, &[]);
                    let now = self.now;
                    if let Some(n) = self.nodes[node].node.as_mut() {
                        n.handle_timeout(now);
                    }
                    self.drain(node);
                }
                Ev::Connected { link, side } => {
                    let Some(l) = self.links.get(&link) else { continue };
                    let (node, conn, gen) = l.ends[side];
                    if self.nodes[node].gen != gen {
                        continue;
                    }
                    let remote = node_addr(l.ends[1 - side].0);
                    self.note(1, node, conn.0, &[]);
                    let role = if side == 0 { Role::Dialer } else { Role::Listener };
                    self.input(node, Input::Connected { conn, role, remote_addr: remote });
                }
                Ev::Deliver { link, side, data } => {
                    let Some(l) = self.links.get(&link) else { continue };
                    let (node, conn, gen) = l.ends[side];
                    if self.nodes[node].gen != gen || !l.up[side] {
                        continue;
                    }
                    self.note(2, node, conn.0, &data);
                    let c = self.phase();
                    c.messages += 1;
                    c.bytes += data.len() as u64;
                    self.input(node, Input::Data { conn, data: &data });
                }
                Ev::Datagram { node, gen, from, data } => {
                    if self.nodes[node].gen != gen || self.nodes[node].node.is_none() {
                        self.phase().datagrams_lost += 1;
                        continue;
                    }
                    // QUIC's TLS, connection IDs and tokens all draw from the node's seed: the bytes replay too.
                    self.note(6, node, socket_node(from).unwrap_or(usize::MAX) as u64, &data);
                    let c = self.phase();
                    c.messages += 1;
                    c.bytes += data.len() as u64;
                    self.input(node, Input::Datagram { from, data: &data });
                }
                Ev::Disconnected { node, gen, conn, reason } => {
                    if self.nodes[node].gen != gen {
                        continue;
                    }
                    self.note(3, node, conn.0, reason.as_bytes());
                    if let Some(link) = self.nodes[node].conns.remove(&conn) {
                        if let Some(l) = self.links.get_mut(&link) {
                            let side = if l.ends[0].0 == node && l.ends[0].1 == conn { 0 } else { 1 };
                            l.up[side] = false;
                            if !l.up[1 - side] {
                                self.links.remove(&link);
                            }
                        }
                    }
                    self.input(node, Input::Disconnected { conn, reason });
                }
                Ev::Action(k) => {
                    self.note(4, k, 0, &[]);
                    self.action(k);
                }
                Ev::Churn { n, every, until } => {
                    self.note(5, n, 0, &[]);
                    self.churn(n, every, until);
                }
            }
        }
        self.now = self.now.max(end);
    }

    fn finish(&mut self) -> Report {
        let end = Instant::ZERO + self.sc.duration;
        if let Some(p) = self.phases.last_mut() {
            p.end_ns = end.as_nanos();
        }
        let mut total_phase = Phase { name: "total".into(), start_ns: 0, end_ns: end.as_nanos(), ..Default::default() };
        let phases = std::mem::take(&mut self.phases);
        for p in &phases {
            let c = &p.counters;
            let t = &mut total_phase.counters;
            t.dials += c.dials;
            t.dial_failures += c.dial_failures;
            t.connections += c.connections;
            t.disconnections += c.disconnections;
            t.pings_ok += c.pings_ok;
            t.pings_failed += c.pings_failed;
            t.identifies += c.identifies;
            t.identify_failures += c.identify_failures;
            t.datagrams += c.datagrams;
            t.datagrams_lost += c.datagrams_lost;
            t.messages += c.messages;
            t.bytes += c.bytes;
            t.crashes += c.crashes;
            t.restarts += c.restarts;
            total_phase.rtt.merge(&p.rtt);
        }
        let alive: Vec<&SimNode> = self.nodes.iter().filter(|n| n.node.is_some()).collect();
        let connected = alive.iter().filter(|n| n.node.as_ref().is_some_and(|x| !x.connected_peers().is_empty())).count();
        Report {
            seed: self.seed,
            nodes: self.nodes.len(),
            virtual_time: self.sc.duration,
            events: self.events,
            trace_hash: self.hash,
            phases,
            total: total_phase,
            rtt_over_time: std::mem::take(&mut self.rtt_over_time),
            fails_over_time: std::mem::take(&mut self.fails_over_time),
            bucket_ns: self.bucket_ns,
            connected_fraction: if alive.is_empty() { 0.0 } else { connected as f64 / alive.len() as f64 },
        }
    }

    /// Node `i`'s machine, for tests that look inside.
    pub fn node(&self, i: usize) -> Option<&ByteNode> {
        self.nodes[i].node.as_ref()
    }
}
