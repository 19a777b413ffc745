//! The discrete-event engine: a virtual clock, an event queue ordered by (time, sequence), nodes that are
//! the real sans-IO node machines ([`ByteNode`]: the `Node` the tokio Host runs, with its TCP connection
//! machines and QUIC endpoint; real Noise/TLS, Yamux, QUIC, identify, ping), TCP-like links (reliable,
//! ordered, latency + jitter + bandwidth with serialization delay and queueing), datagram paths (loss,
//! reordering), partitions, crashes and restarts. One seed drives everything; windows of one lookahead
//! run the nodes on several threads with the same result as one.

use crate::dht;
use crate::metrics::{Counters, Histogram, Phase};
use crate::pubsub;
use crate::scenario::{Action, DhtOp, Diversity, LinkClass, Scenario, Selector};
use hyphae_core::autonat::{self, service::AutonatService};
use hyphae_core::conn::CloseReason;
use hyphae_core::conn::Role;
use hyphae_core::kad::{self, service::KadService};
use hyphae_core::node::{self, ByteNode, ConnId, Event, Input, Output};
use hyphae_core::rng::{self, RngCore};
use hyphae_core::time::{Duration, Instant};
use hyphae_core::{identify, ping};
use hyphae_core::{Keypair, Multiaddr, PeerId, Protocol};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};

/// A dial to an unreachable (partitioned) node fails after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many time buckets in the latency-over-time plot (fewer when pings are sparse, so that
/// every bucket spans at least one ping interval).
pub const TIME_BUCKETS: usize = 60;

/// Events for one node. Every one carries the target node's generation: a crash makes the ones in flight
/// to its previous life vanish.
#[derive(Debug)]
enum NodeEv {
    Timer,
    /// A TCP connection is up at this end: the listener (side 1) when the SYN arrives, the dialer (side 0)
    /// after the SYN-ACK.
    Connected {
        link: u64,
        side: usize,
        peer: usize,
        peer_gen: u32,
        class: LinkClass,
    },
    Deliver {
        link: u64,
        data: Vec<u8>,
    },
    /// The remote end closed or reset the connection, or refused it.
    Reset {
        link: u64,
        reason: &'static str,
    },
    /// Our own dial failed before a connection existed.
    DialFailed {
        conn: ConnId,
        reason: &'static str,
    },
    /// Bytes of our own transmits left the uplink (`ByteNode::set_send_limit`).
    Sent {
        len: usize,
    },
    Datagram {
        from: SocketAddr,
        data: Vec<u8>,
    },
    /// The application's verdict (accept) on a gossipsub message, after the node's validation time.
    Validated {
        id: Vec<u8>,
    },
}

/// Events of the whole simulation, run between windows on one thread.
#[derive(Debug)]
enum GlobalEv {
    Action(usize),
    Churn {
        n: usize,
        every: Duration,
        until: Instant,
    },
    /// The next run of a repeating action (`dht OP .. every`, `pubsub publish .. every`; timeline index).
    Repeat(usize),
    /// Node joins the DHT (a spread-out `dht bootstrap`).
    DhtJoin(usize),
}

/// Event order: time, then connection set-up before anything else at the same instant (a dialer learns
/// its connection is up before the listener's first bytes, which can arrive at the same moment), then who
/// created it, then that creator's counter. Nothing depends on the order threads run in, so a run gives
/// the same result with any number of threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    at: Instant,
    late: bool,
    src: u32,
    n: u64,
}

/// Creator id of events made by the global phase (actions, crashes, heals).
const GLOBAL_SRC: u32 = u32::MAX;

struct Scheduled<E> {
    key: Key,
    ev: E,
}
impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key.cmp(&o.key)
    }
}

/// A node event in flight.
struct Msg {
    node: usize,
    gen: u32,
    ev: NodeEv,
}

/// One end of a TCP-like connection, owned by the node at that end (so a node's window of work touches
/// only its own state).
struct End {
    link: u64,
    peer: usize,
    peer_gen: u32,
    class: LinkClass,
    /// When this end's serializer is free again.
    free_at: Instant,
    /// Last delivery time from this end: keeps the byte stream ordered under jitter.
    last_at: Instant,
    /// Bytes held by a partition (TCP keeps retransmitting; they arrive after heal).
    held: Vec<Vec<u8>>,
}

struct SimNode {
    node: Option<ByteNode>,
    gen: u32,
    key: Keypair,
    peer: PeerId,
    ping: Option<Duration>,
    /// Dials over QUIC.
    quic: bool,
    per_peer: Option<usize>,
    /// Runs the Kademlia service in this mode.
    dht: Option<kad::Mode>,
    /// Its lookups' disjoint paths.
    disjoint: usize,
    idle: Option<Duration>,
    autonat: bool,
    /// Runs gossipsub with this IDONTWANT threshold.
    pubsub: Option<usize>,
    /// Its topics (joined again after a restart).
    topics: Vec<String>,
    /// Gossipsub validation time (the application accepts after it).
    validation: Option<Duration>,
    adversary: bool,
    scoring: crate::scenario::Scoring,
    /// The DHT's IP-group filters it runs.
    diversity: crate::scenario::Diversity,
    density: bool,
    optimistic_provide: bool,
    proximity: bool,
    /// A sybil of the eclipse attack.
    eclipse: bool,
    /// How it attacks (kept across restarts).
    attack: hyphae_core::gossipsub::Adversary,
    /// Its DHT operations in flight.
    pending: dht::Pending,
    timer_at: Option<Instant>,
    conns: BTreeMap<ConnId, End>,
    by_link: BTreeMap<u64, ConnId>,
    next_conn: u64,
    next_link: u64,
    /// How many random peers it dials when (re)started by churn.
    degree: usize,
    /// Its uplink (bits per second, 0: none) and when that is free again.
    uplink_bps: u64,
    uplink_queue: usize,
    uplink_free: Instant,
    stagger: Option<usize>,
    near: Option<usize>,
    first_hop: Option<usize>,
    preamble: Option<bool>,
    stagger_nearest: Option<bool>,
    /// Draws for what this node sends (jitter, loss, reordering).
    rng: rng::Rng,
    /// When each UDP path from this node (by receiver) is free again.
    udp_free_at: BTreeMap<usize, Instant>,
    /// Counter for the events this node creates (their order key).
    made: u64,
}

/// The world as nodes see it: per-node liveness and regions, link classes, partitions. Changed only by
/// the global phase, read by every node during a window.
struct World {
    /// Per node: its generation if alive.
    alive: Vec<Option<u32>>,
    regions: Vec<usize>,
    region_links: BTreeMap<(usize, usize), LinkClass>,
    link_class: LinkClass,
    partitions: Vec<(Vec<bool>, Vec<bool>, bool)>,
    /// Per node: inbound connections are refused (the simplest NAT).
    undialable: Vec<bool>,
    /// Public addresses (`addresses public`): per node, its /32 (`0x2a00_0000 | own` or
    /// `0x2a01_0000 | group` for a shared subnet). Empty: 10.x addresses.
    subnets: Vec<u32>,
    /// Nodes listen on TCP (unless every group dials QUIC): a TCP dial to a node that does not is refused.
    tcp: bool,
}

impl World {
    /// Node `i`'s socket address: `10.a.b.c:4001`, or with public addresses
    /// `[2a0X:SSSS:iiii:iiii::1]:4001` (its /32, then its index).
    fn socket(&self, i: usize) -> SocketAddr {
        match self.subnets.get(i) {
            None => node_socket(i),
            Some(sub) => {
                let (s, i) = (*sub, i as u32);
                let ip = std::net::Ipv6Addr::new((s >> 16) as u16, s as u16, (i >> 16) as u16, i as u16, 0, 0, 0, 1);
                SocketAddr::from((ip, 4001))
            }
        }
    }

    fn addr(&self, i: usize) -> Multiaddr {
        Multiaddr::from_tcp(self.socket(i))
    }

    fn quic_addr(&self, i: usize) -> Multiaddr {
        Multiaddr::from_quic(self.socket(i))
    }

    /// The address of node `i` that a node dialing over QUIC (`quic`) or TCP uses.
    fn dial_addr(&self, i: usize, quic: bool) -> Multiaddr {
        if quic {
            self.quic_addr(i)
        } else {
            self.addr(i)
        }
    }
}

/// What the nodes of one window may read: nothing in it changes until the window ends.
struct Ctx<'a> {
    w: &'a World,
    /// The window's end: events before it for the same node are run within the window.
    end: Instant,
}

impl Ctx<'_> {
    fn class_between(&self, a: usize, b: usize) -> LinkClass {
        let (ra, rb) = (self.w.regions[a], self.w.regions[b]);
        if ra != usize::MAX && rb != usize::MAX && ra != rb {
            if let Some(c) = self.w.region_links.get(&(ra.min(rb), ra.max(rb))) {
                return c.clone();
            }
        }
        self.w.link_class.clone()
    }

    fn blocked(&self, from: usize, to: usize) -> bool {
        self.w.partitions.iter().any(|(a, b, one_way)| (a[from] && b[to]) || (!one_way && b[from] && a[to]))
    }
}

/// What a node's work produced besides its own state: events for others, metrics, trace records.
#[derive(Default)]
struct Out {
    msgs: Vec<Scheduled<Msg>>,
    counters: Counters,
    /// (time, rtt) of every successful ping; times of failed ones.
    rtts: Vec<(u64, u64)>,
    fails: Vec<u64>,
    /// Finished DHT operations.
    dht: Vec<dht::Sample>,
    /// Gossipsub deliveries: (time, node, message id).
    pubsub: Vec<(Instant, usize, Vec<u8>)>,
    /// (time, node, event hash) of every delivered event, in each node's processing order.
    trace: Vec<(Instant, usize, u64)>,
    log: Option<Vec<(Instant, usize, Event)>>,
}

/// One node's share of a window: its state, and its events (kept in order in a small local heap, because
/// its own timers may fire within the window).
struct NodeWork<'a> {
    i: usize,
    n: &'a mut SimNode,
    local: BinaryHeap<Reverse<Scheduled<NodeEv>>>,
    now: Instant,
}

impl NodeWork<'_> {
    /// Schedules an event for node `to`: kept here if it is ours and due within the window.
    fn send(&mut self, ctx: &Ctx<'_>, out: &mut Out, at: Instant, to: usize, gen: u32, ev: NodeEv) {
        self.n.made += 1;
        let key = Key { at, late: !matches!(ev, NodeEv::Connected { .. }), src: self.i as u32, n: self.n.made };
        if to == self.i && gen == self.n.gen && at < ctx.end {
            self.local.push(Reverse(Scheduled { key, ev }));
        } else {
            out.msgs.push(Scheduled { key, ev: Msg { node: to, gen, ev } });
        }
    }

    fn note(&self, out: &mut Out, kind: u8, conn: u64, data: &[u8]) {
        let mut head = [0u8; 25];
        head[..8].copy_from_slice(&self.now.as_nanos().to_le_bytes());
        head[8] = kind;
        head[9..17].copy_from_slice(&(self.i as u64).to_le_bytes());
        head[17..].copy_from_slice(&conn.to_le_bytes());
        let h = fnv(fnv(0xcbf29ce484222325, &head), data);
        out.trace.push((self.now, self.i, h));
    }

    /// Runs the node's events in order until none is left before the window's end.
    fn run(&mut self, ctx: &Ctx<'_>, out: &mut Out) {
        while let Some(Reverse(s)) = self.local.pop() {
            self.now = s.key.at;
            self.handle(ctx, out, s.key.at, s.ev);
        }
    }

    fn handle(&mut self, ctx: &Ctx<'_>, out: &mut Out, at: Instant, ev: NodeEv) {
        match ev {
            NodeEv::Timer => {
                if self.n.timer_at != Some(at) {
                    return;
                }
                self.n.timer_at = None;
                self.note(out, 0, 0, &[]);
                if let Some(n) = self.n.node.as_mut() {
                    n.handle_timeout(at);
                }
                self.drain(ctx, out);
            }
            NodeEv::Connected { link, side: 1, peer, peer_gen, class } => {
                if self.n.node.is_none() {
                    let at = self.now + class.latency;
                    self.send(ctx, out, at, peer, peer_gen, NodeEv::Reset { link, reason: "connection refused" });
                    return;
                }
                let conn = ConnId(self.n.next_conn);
                self.n.next_conn += 1;
                let now = self.now;
                self.n.conns.insert(conn, End { link, peer, peer_gen, class, free_at: now, last_at: now, held: vec![] });
                self.n.by_link.insert(link, conn);
                self.note(out, 1, conn.0, &[]);
                self.input(ctx, out, Input::Connected { conn, role: Role::Listener, remote_addr: ctx.w.addr(peer) });
            }
            NodeEv::Connected { link, .. } => {
                let Some(&conn) = self.n.by_link.get(&link) else { return };
                let peer = self.n.conns[&conn].peer;
                self.note(out, 1, conn.0, &[]);
                self.input(ctx, out, Input::Connected { conn, role: Role::Dialer, remote_addr: ctx.w.addr(peer) });
            }
            NodeEv::Deliver { link, data } => {
                let Some(&conn) = self.n.by_link.get(&link) else { return };
                self.note(out, 2, conn.0, &data);
                out.counters.messages += 1;
                out.counters.bytes += data.len() as u64;
                self.input(ctx, out, Input::Data { conn, data: &data });
            }
            NodeEv::Reset { link, reason } => {
                let Some(conn) = self.n.by_link.remove(&link) else { return };
                self.n.conns.remove(&conn);
                self.note(out, 3, conn.0, reason.as_bytes());
                self.input(ctx, out, Input::Disconnected { conn, reason: CloseReason::Lost(reason.into()) });
            }
            NodeEv::DialFailed { conn, reason } => {
                self.note(out, 3, conn.0, reason.as_bytes());
                self.input(ctx, out, Input::Disconnected { conn, reason: CloseReason::Lost(reason.into()) });
            }
            NodeEv::Datagram { from, data } => {
                if self.n.node.is_none() {
                    out.counters.datagrams_lost += 1;
                    return;
                }
                // An undialable node's NAT lets in datagrams only from peers it sent to first.
                if ctx.w.undialable[self.i] && !socket_node(from).is_some_and(|f| self.n.udp_free_at.contains_key(&f)) {
                    out.counters.datagrams_lost += 1;
                    return;
                }
                // QUIC's TLS, connection IDs and tokens all draw from the node's seed: the bytes replay too.
                self.note(out, 6, socket_node(from).unwrap_or(usize::MAX) as u64, &data);
                out.counters.messages += 1;
                out.counters.bytes += data.len() as u64;
                self.input(ctx, out, Input::Datagram { from, data: &data });
            }
            NodeEv::Sent { len } => {
                self.input(ctx, out, Input::Sent { len });
            }
            NodeEv::Validated { id } => {
                self.note(out, 7, 0, &id);
                let now = self.now;
                if let Some(n) = self.n.node.as_mut() {
                    let id: hyphae_core::gossipsub::MessageId = id.into();
                    n.with_service::<hyphae_core::gossipsub::service::GossipsubService, _>(now, |g, cx| {
                        g.report_validation(cx, &id, hyphae_core::gossipsub::Acceptance::Accept)
                    });
                }
                self.drain(ctx, out);
            }
        }
    }

    /// Feeds one input to the node and handles everything it outputs.
    fn input(&mut self, ctx: &Ctx<'_>, out: &mut Out, input: Input<'_>) {
        let now = self.now;
        if let Some(n) = self.n.node.as_mut() {
            n.handle_input(now, input);
        }
        self.drain(ctx, out);
    }

    fn drain(&mut self, ctx: &Ctx<'_>, out: &mut Out) {
        while let Some(o) = self.n.node.as_mut().and_then(|n| n.poll_output()) {
            match o {
                Output::Transmit { conn, data } => self.transmit(ctx, out, conn, data),
                Output::Dial { conn, addr } => self.dial(ctx, out, conn, addr),
                Output::Close { conn } => self.close(ctx, out, conn),
                Output::SendDatagram { to, data } => self.send_datagram(ctx, out, to, data),
                Output::Event(e) => {
                    if let (Event::Gossipsub(hyphae_core::gossipsub::Event::Validate { id, .. }), Some(d)) = (&e, self.n.validation) {
                        let (i, gen, at) = (self.i, self.n.gen, self.now + d);
                        self.send(ctx, out, at, i, gen, NodeEv::Validated { id: id.to_vec() });
                    }
                    self.on_event(out, e)
                }
            }
        }
        let t = self.n.node.as_mut().and_then(|n| n.poll_timeout());
        if let Some(t) = t {
            let t = t.max(self.now);
            if self.n.timer_at.is_none_or(|cur| t < cur) {
                self.n.timer_at = Some(t);
                let (i, gen) = (self.i, self.n.gen);
                self.send(ctx, out, t, i, gen, NodeEv::Timer);
            }
        }
    }

    fn on_event(&mut self, out: &mut Out, e: Event) {
        let now = self.now;
        let c = &mut out.counters;
        match &e {
            Event::Connected { .. } => c.connections += 1,
            Event::Disconnected { .. } => c.disconnections += 1,
            Event::DialFailed { .. } => c.dial_failures += 1,
            Event::Ping(ping::Event::Ok { rtt, .. }) => {
                c.pings_ok += 1;
                out.rtts.push((now.as_nanos(), rtt.as_nanos() as u64));
            }
            Event::Ping(ping::Event::Failed { .. }) => {
                c.pings_failed += 1;
                out.fails.push(now.as_nanos());
            }
            Event::Identify(identify::Event::Received { .. }) => c.identifies += 1,
            Event::Identify(identify::Event::Failed { .. }) => c.identify_failures += 1,
            Event::Kad(k) => out.dht.extend(self.n.pending.on_event(now, k)),
            Event::Gossipsub(hyphae_core::gossipsub::Event::Message { id, .. }) => out.pubsub.push((now, self.i, id.to_vec())),

            _ => {}
        }
        if let Some(log) = &mut out.log {
            log.push((now, self.i, e));
        }
    }

    fn dial(&mut self, ctx: &Ctx<'_>, out: &mut Out, conn: ConnId, addr: Multiaddr) {
        out.counters.dials += 1;
        let (now, me, gen) = (self.now, self.i, self.n.gen);
        let target = addr_node(&addr).filter(|t| *t < ctx.w.alive.len() && *t != me);
        let Some(to) = target else {
            self.send(ctx, out, now, me, gen, NodeEv::DialFailed { conn, reason: "no route to host" });
            return;
        };
        let class = ctx.class_between(me, to);
        if ctx.blocked(me, to) || ctx.blocked(to, me) {
            self.send(ctx, out, now + CONNECT_TIMEOUT, me, gen, NodeEv::DialFailed { conn, reason: "connect timed out" });
            return;
        }
        let Some(to_gen) = ctx.w.alive[to].filter(|_| ctx.w.tcp && !ctx.w.undialable[to]) else {
            self.send(ctx, out, now + class.latency * 2, me, gen, NodeEv::DialFailed { conn, reason: "connection refused" });
            return;
        };
        let link = ((me as u64) << 32) | self.n.next_link;
        self.n.next_link += 1;
        let lat = class.latency;
        self.n.conns.insert(conn, End { link, peer: to, peer_gen: to_gen, class: class.clone(), free_at: now, last_at: now, held: vec![] });
        self.n.by_link.insert(link, conn);
        // TCP: the listener accepts after the SYN arrives, the dialer learns after the SYN-ACK.
        self.send(ctx, out, now + lat, to, to_gen, NodeEv::Connected { link, side: 1, peer: me, peer_gen: gen, class: class.clone() });
        self.send(ctx, out, now + lat * 2, me, gen, NodeEv::Connected { link, side: 0, peer: to, peer_gen: to_gen, class });
    }

    fn transmit(&mut self, ctx: &Ctx<'_>, out: &mut Out, conn: ConnId, data: Vec<u8>) {
        let len = data.len();
        match self.n.conns.get_mut(&conn) {
            Some(e) if ctx.blocked(self.i, e.peer) => e.held.push(data),
            Some(_) => return self.send_on(ctx, out, conn, data, true),
            None => {}
        }
        // Bytes that never reach the uplink (gone, or held by a partition: the kernel took them) leave the
        // node's send budget at once.
        if self.n.uplink_bps > 0 {
            let (i, gen, now) = (self.i, self.n.gen, self.now);
            self.send(ctx, out, now, i, gen, NodeEv::Sent { len });
        }
    }

    /// Sends bytes on a TCP-like link as the network would: in segments of at most `SEGMENT` bytes, each
    /// arriving once it has been serialized, so the head of a large write arrives before its tail (what
    /// lets a small control message written ahead of a large one overtake it, as on a real path).
    fn send_on(&mut self, ctx: &Ctx<'_>, out: &mut Out, conn: ConnId, data: Vec<u8>, report_sent: bool) {
        const SEGMENT: usize = 16 * 1024;
        let now = self.now;
        let bandwidth = match self.n.conns.get(&conn) {
            Some(e) => e.class.bandwidth_bps,
            None => return,
        };
        let uplink = self.n.uplink_bps;
        let len = data.len();
        let parts: Vec<Vec<u8>> = if data.len() <= SEGMENT || (bandwidth == 0 && uplink == 0) {
            vec![data]
        } else {
            data.chunks(SEGMENT).map(<[u8]>::to_vec).collect()
        };
        for part in parts {
            let jitter_draw = self.n.rng.next_u64();
            let Some(e) = self.n.conns.get_mut(&conn) else { return };
            // With an uplink, one serializer for all of the node's connections, at its rate.
            let (free, rate) = if uplink > 0 { (&mut self.n.uplink_free, uplink) } else { (&mut e.free_at, e.class.bandwidth_bps) };
            let at = arrival(&e.class, rate, free, now, part.len(), jitter_draw).max(e.last_at);
            e.last_at = at;
            let (peer, peer_gen, link) = (e.peer, e.peer_gen, e.link);
            self.send(ctx, out, at, peer, peer_gen, NodeEv::Deliver { link, data: part });
        }
        if uplink > 0 && report_sent {
            let (i, gen, at) = (self.i, self.n.gen, self.n.uplink_free);
            self.send(ctx, out, at, i, gen, NodeEv::Sent { len });
        }
    }

    fn close(&mut self, ctx: &Ctx<'_>, out: &mut Out, conn: ConnId) {
        let Some(e) = self.n.conns.remove(&conn) else { return };
        self.n.by_link.remove(&e.link);
        // FIN after the bytes already on the wire.
        let at = (self.now + e.class.latency).max(e.last_at);
        self.send(ctx, out, at, e.peer, e.peer_gen, NodeEv::Reset { link: e.link, reason: "closed by remote" });
    }

    /// UDP: no connection, no ordering, no retransmission. A partition or a crashed receiver drops the
    /// datagram; `loss` drops it at random; `reorder` holds it back one extra latency.
    fn send_datagram(&mut self, ctx: &Ctx<'_>, out: &mut Out, to: SocketAddr, data: Vec<u8>) {
        let (loss_draw, reorder_draw, jitter_draw) = (self.n.rng.next_u64(), self.n.rng.next_u64(), self.n.rng.next_u64());
        out.counters.datagrams += 1;
        let Some(dest) = socket_node(to).filter(|d| *d < ctx.w.alive.len()) else {
            out.counters.datagrams_lost += 1;
            return;
        };
        let class = ctx.class_between(self.i, dest);
        let unit = |x: u64| (x >> 11) as f64 / (1u64 << 53) as f64;
        let Some(dest_gen) = ctx.w.alive[dest] else {
            out.counters.datagrams_lost += 1;
            return;
        };
        if ctx.blocked(self.i, dest) || unit(loss_draw) < class.loss {
            out.counters.datagrams_lost += 1;
            return;
        }
        let now = self.now;
        let free = self.n.udp_free_at.entry(dest).or_insert(now);
        let mut at = arrival(&class, class.bandwidth_bps, free, now, data.len(), jitter_draw);
        if unit(reorder_draw) < class.reorder {
            at = at + class.latency;
        }
        let from = ctx.w.socket(self.i);
        self.send(ctx, out, at, dest, dest_gen, NodeEv::Datagram { from, data });
    }
}

/// Eclipse sybils get IDs closer to the target key than every other node's: the attacker generates keys
/// until one beats the closest honest ID (about 2·N key generations per sybil in a network of N).
fn grind_sybils(nodes: &mut [SimNode], seed: u64) {
    if !nodes.iter().any(|n| n.eclipse) {
        return;
    }
    let target = kad::Key::from_bytes(&dht::target_key());
    let Some(closest) = nodes.iter().filter(|n| !n.eclipse).map(|n| kad::Key::from_peer(&n.peer).distance(&target)).min() else {
        return;
    };
    for (i, n) in nodes.iter_mut().enumerate().filter(|(_, n)| n.eclipse) {
        for attempt in 0u64.. {
            let key = Keypair::generate_ed25519(&mut rng::from_seed(seed32(seed, b"sybil", ((i as u64) << 32) | attempt)));
            if kad::Key::from_peer(&key.peer_id()).distance(&target) < closest {
                n.peer = key.peer_id();
                n.key = key;
                break;
            }
        }
    }
}

/// When `len` bytes sent at `now` arrive: they wait for the sender's serializer (free again at
/// `*free_at`, which moves on by their serialization time at `bandwidth_bps`: the link's own or the
/// node's uplink), then cross the link's latency plus a jitter
/// drawn from `jitter_draw`. Shared by TCP-like links and datagram paths.
fn arrival(class: &LinkClass, bandwidth_bps: u64, free_at: &mut Instant, now: Instant, len: usize, jitter_draw: u64) -> Instant {
    let ser = if bandwidth_bps == 0 { 0 } else { (len as u128 * 8 * 1_000_000_000 / u128::from(bandwidth_bps)) as u64 };
    *free_at = (*free_at).max(now) + Duration::from_nanos(ser);
    let jitter = if class.jitter.is_zero() { 0 } else { jitter_draw % (class.jitter.as_nanos() as u64) };
    *free_at + class.latency + Duration::from_nanos(jitter)
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
    /// Live nodes running the DHT at the end, how many of them serve, and the mean routing-table size
    /// of the servers.
    pub dht_nodes: usize,
    pub dht_servers: usize,
    pub dht_table_mean: f64,
    /// The mean round trip measured for routing-table peers (`kad::table::Entry::rtt`; honest nodes'
    /// tables, the peers with a measurement): how near the tables lean (`proximity=on`).
    pub dht_table_rtt_ms: f64,
    /// Routing-table peers replaced by a clearly nearer one (`proximity=on`), per DHT node.
    pub dht_replaced_nearer: f64,
    /// Of honest nodes' lookups (nodes alive at the end): the fraction the density check widened, and
    /// the peers lookups left out by the per-group limit, per lookup.
    pub dht_widened: f64,
    pub dht_diversity_rejected: f64,
    /// Gossipsub traffic over the whole run (the nodes alive at the end).
    pub pubsub: pubsub::Traffic,
}

impl Report {
    pub fn metric(&self, phase: &str, name: &str) -> Option<f64> {
        match name {
            "connected_fraction" => return Some(self.connected_fraction),
            "dht_servers" => return Some(self.dht_servers as f64),
            "dht_table_mean" => return Some(self.dht_table_mean),
            "dht_table_rtt_ms" => return Some(self.dht_table_rtt_ms),
            "dht_replaced_nearer" => return Some(self.dht_replaced_nearer),
            "dht_widened" => return Some(self.dht_widened),
            "dht_diversity_rejected" => return Some(self.dht_diversity_rejected),
            "events" => return Some(self.events as f64),
            t if pubsub::Traffic::NAMES.contains(&t) => return self.pubsub.metric(t),
            _ => {}
        }
        if phase == "total" {
            return self.total.metric(name);
        }
        self.phases.iter().find(|p| p.name == phase)?.metric(name)
    }
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

/// The trace hash: FNV-1a's idea over 8-byte words (every delivered message is hashed, so a byte at a
/// time was a visible share of the run). Not cryptographic; it only has to notice a divergence.
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    const P: u64 = 0x100000001b3;
    let mut h = (h ^ bytes.len() as u64).wrapping_mul(P);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("invariant: 8-byte chunk"));
        h = (h ^ w).wrapping_mul(P).rotate_left(23);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    (h ^ u64::from_le_bytes(tail)).wrapping_mul(P).rotate_left(23)
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
        std::net::IpAddr::V6(ip) => {
            let s = ip.segments();
            (s[0] == 0x2a00 || s[0] == 0x2a01).then(|| ((usize::from(s[2])) << 16) | usize::from(s[3]))
        }
    }
}

fn addr_node(a: &Multiaddr) -> Option<usize> {
    a.socket_addr().and_then(|(sa, _)| socket_node(sa))
}

pub struct Sim {
    sc: Scenario,
    now: Instant,
    /// Node events, and the global ones (actions, churn) that run between windows.
    heap: BinaryHeap<Reverse<Scheduled<Msg>>>,
    global: BinaryHeap<Reverse<Scheduled<GlobalEv>>>,
    global_made: u64,
    nodes: Vec<SimNode>,
    /// Read-only during a window.
    world: World,
    peers: Vec<PeerId>,
    groups: BTreeMap<String, (usize, usize)>,
    rng: rng::Rng,
    seed: u64,
    /// The smallest one-way latency any link has had: no node's output reaches another node sooner, so a
    /// window this long can run every node in parallel (conservative parallel simulation).
    lookahead: Duration,
    phases: Vec<Phase>,
    rtt_over_time: Vec<Histogram>,
    fails_over_time: Vec<u64>,
    bucket_ns: u64,
    events: u64,
    hash: u64,
    /// Every node runs a QUIC endpoint (some group dials over QUIC); quinn-proto's time base.
    quic_base: Option<std::time::Instant>,
    /// Worker threads for windows (results do not depend on it).
    threads: usize,
    /// Windows with fewer node events run on the calling thread (a thread hand-off costs more).
    parallel_min: usize,
    /// Per-event running hashes, kept when checking determinism.
    pub trace: Option<Vec<u64>>,
    /// Protocol events of every node, kept when `record_events` is on: (time, node, event).
    log: Option<Vec<(Instant, usize, Event)>>,
    /// Progress callback: (virtual ns done, total ns).
    pub progress: Option<Box<dyn FnMut(u64, u64)>>,
    /// The nodes DHT nodes join through (the last `dht bootstrap ... via`), for restarted nodes.
    dht_via: Vec<usize>,
    /// Messages published so far, by id.
    published: BTreeMap<Vec<u8>, pubsub::Record>,
    /// When each key (`dht::key(i)`) was provided.
    provided: Vec<Instant>,
    /// The eclipse attack's sybils, with their addresses (every sybil answers with these).
    sybils: Vec<kad::PeerInfo>,
}

/// Default for [`Sim::set_parallel_min_events`].
const PARALLEL_MIN_EVENTS: usize = 256;

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
                    per_peer: g.per_peer,
                    dht: g.dht,
                    disjoint: g.disjoint,
                    idle: g.idle,
                    autonat: g.autonat,
                    pubsub: g.pubsub,
                    topics: Vec::new(),
                    validation: g.validation,
                    adversary: g.adversary,
                    scoring: g.scoring,
                    diversity: g.diversity,
                    density: g.density,
                    optimistic_provide: g.optimistic_provide,
                    proximity: g.proximity,
                    eclipse: g.eclipse,
                    attack: hyphae_core::gossipsub::Adversary::Honest,
                    pending: dht::Pending::default(),
                    timer_at: None,
                    conns: BTreeMap::new(),
                    by_link: BTreeMap::new(),
                    next_conn: 1,
                    next_link: 1,
                    degree: 0,
                    uplink_bps: g.uplink_bps,
                    uplink_queue: g.uplink_queue,
                    stagger: g.stagger,
                    near: g.near,
                    first_hop: g.first_hop,
                    preamble: g.preamble,
                    stagger_nearest: g.stagger_nearest,
                    uplink_free: Instant::ZERO,
                    rng: rng::from_seed(seed32(seed, b"link", i)),
                    udp_free_at: BTreeMap::new(),
                    made: 0,
                });
            }
            groups.insert(g.name.clone(), (start, nodes.len()));
        }
        grind_sybils(&mut nodes, seed);
        let subnets: Vec<u32> = if sc.public_addresses {
            let group_of = sc.groups.iter().enumerate().flat_map(|(gi, g)| std::iter::repeat_n((gi, g.shared_subnet), g.count));
            group_of
                .enumerate()
                .map(|(i, (gi, shared))| if shared { 0x2a01_0000 | gi as u32 } else { 0x2a00_0000 | (i as u32 & 0xffff) })
                .collect()
        } else {
            Vec::new()
        };
        let interval = sc.groups.iter().filter_map(|g| g.ping).max().unwrap_or(Duration::from_secs(1)).as_nanos() as u64;
        let dur = sc.duration.as_nanos() as u64;
        let buckets = ((dur / interval.max(1)) as usize).clamp(1, TIME_BUCKETS);
        let bucket_ns = (dur / buckets as u64).max(1);
        let threads = std::env::var("HYPHAE_SIM_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(8))
            .max(1);
        let n = nodes.len();
        let mut sim = Sim {
            now: Instant::ZERO,
            heap: BinaryHeap::new(),
            global: BinaryHeap::new(),
            global_made: 0,
            world: World {
                alive: vec![None; n],
                regions: vec![usize::MAX; n],
                region_links: BTreeMap::new(),
                link_class: sc.link.clone(),
                partitions: vec![],
                undialable: sc.groups.iter().flat_map(|g| std::iter::repeat_n(g.undialable, g.count)).collect(),
                subnets,
                tcp: sc.groups.iter().any(|g| !g.quic),
            },
            peers: nodes.iter().map(|x| x.peer.clone()).collect(),
            groups,
            rng: rng::from_seed(seed32(seed, b"sim", 0)),
            seed,
            lookahead: sc.link.latency,
            phases: vec![Phase { name: sc.first_phase.clone(), ..Default::default() }],
            rtt_over_time: vec![Histogram::default(); buckets],
            fails_over_time: vec![0; buckets],
            bucket_ns,
            events: 0,
            hash: 0xcbf29ce484222325,
            quic_base: sc.groups.iter().any(|g| g.quic).then(std::time::Instant::now),
            threads,
            parallel_min: PARALLEL_MIN_EVENTS,
            trace: None,
            log: None,
            progress: None,
            dht_via: Vec::new(),
            published: BTreeMap::new(),
            provided: Vec::new(),
            sybils: Vec::new(),
            nodes,
            sc,
        };
        let regions: Vec<(String, Selector)> = sim.sc.regions.clone();
        // A region named again adds nodes to it: every statement of one name maps to its first index.
        for (name, sel) in &regions {
            let ri = regions.iter().position(|(n, _)| n == name).expect("invariant: its own entry");
            for i in sim.select(sel) {
                sim.world.regions[i] = ri;
            }
        }
        for (a, b, class) in sim.sc.between.clone() {
            let ia = regions.iter().position(|(n, _)| *n == a).expect("invariant: validated by the parser");
            let ib = regions.iter().position(|(n, _)| *n == b).expect("invariant: validated by the parser");
            sim.lookahead = sim.lookahead.min(class.latency);
            sim.world.region_links.insert((ia.min(ib), ia.max(ib)), class);
        }
        sim.sybils = (0..sim.nodes.len())
            .filter(|i| sim.nodes[*i].eclipse)
            .map(|i| kad::PeerInfo { peer: sim.peers[i].clone(), addrs: vec![sim.world.dial_addr(i, sim.nodes[i].quic)] })
            .collect();
        for i in 0..sim.nodes.len() {
            sim.start_node(i);
        }
        for k in 0..sim.sc.timeline.len() {
            let at = Instant::ZERO + sim.sc.timeline[k].0;
            sim.push_global(at, GlobalEv::Action(k));
        }
        sim
    }

    /// Worker threads for the parallel windows (default: the machine's cores, at most 8, or
    /// `HYPHAE_SIM_THREADS`). The results are the same for any number.
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    /// Windows with fewer node events than this run on the calling thread (default 256: below that a
    /// thread hand-off costs more than it saves). Tests set 1 to exercise the threads on small runs.
    pub fn set_parallel_min_events(&mut self, n: usize) {
        self.parallel_min = n.max(1);
    }

    /// The order key of an event the global phase makes.
    fn global_key(&mut self, at: Instant) -> Key {
        self.global_made += 1;
        Key { at, late: true, src: GLOBAL_SRC, n: self.global_made }
    }

    fn push_global(&mut self, at: Instant, ev: GlobalEv) {
        let key = self.global_key(at);
        self.global.push(Reverse(Scheduled { key, ev }));
    }

    /// A reset of `link` for node `node` (generation `gen`), made by the global phase.
    fn push_reset(&mut self, at: Instant, node: usize, gen: u32, link: u64, reason: &'static str) {
        let key = self.global_key(at);
        self.heap.push(Reverse(Scheduled { key, ev: Msg { node, gen, ev: NodeEv::Reset { link, reason } } }));
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
                // Regions are defined by selectors over groups or ranges (one or more statements of the
                // same name); resolve one level.
                None => self
                    .sc
                    .regions
                    .iter()
                    .filter(|(n, sel)| n == g && !matches!(sel, Selector::Group(x) if x == g))
                    .flat_map(|(_, sel)| self.select(&sel.clone()))
                    .collect(),
            },
        }
    }

    /// Runs `f` on node `i` in the global phase (between windows), then files what it produced.
    fn with_node(&mut self, i: usize, f: impl FnOnce(&Ctx<'_>, &mut NodeWork<'_>, &mut Out)) {
        let mut out = Out { log: self.log.as_ref().map(|_| Vec::new()), ..Default::default() };
        {
            let ctx = Ctx { w: &self.world, end: self.now };
            let mut w = NodeWork { i, n: &mut self.nodes[i], local: BinaryHeap::new(), now: self.now };
            f(&ctx, &mut w, &mut out);
        }
        self.file(vec![out]);
    }

    fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let mut cfg = node::Config::new(n.key.clone(), seed32(self.seed, b"node", ((i as u64) << 20) | u64::from(n.gen)));
        cfg.ping.interval = n.ping;
        // The simulator's nodes keep the budgets they had before the resource manager (1,024 connections,
        // 8 per peer, no per-subnet rule: a NAT box puts many nodes behind one address), so the
        // scenarios' numbers do not move; a scenario that studies the limits sets its own.
        let mut rl = hyphae_core::rcmgr::Limits::unlimited();
        rl.system.conns = 1024;
        rl.peer.conns = n.per_peer.map_or(8, |p| p as u32);
        cfg.limits.resources = rl;
        cfg.limits.idle_timeout = n.idle;
        // A node listens on the transports the scenario's groups dial (TCP unless every group dials QUIC).
        cfg.listen_addrs = if self.world.tcp { vec![self.world.addr(i)] } else { Vec::new() };
        if let Some(base) = self.quic_base {
            cfg.quic_base = Some(base);
            cfg.listen_addrs.push(self.world.quic_addr(i));
        }
        let mut bn = ByteNode::new(cfg, self.now);
        if n.uplink_bps > 0 {
            bn.set_send_limit(Some(n.uplink_queue));
            n.uplink_free = self.now;
        }
        if let Some(mode) = n.dht {
            let mut kc = kad::Config {
                mode,
                disjoint_paths: n.disjoint,
                density_check: n.density,
                optimistic_provide: n.optimistic_provide,
                proximity: n.proximity,
                ..kad::Config::default()
            };
            match n.diversity {
                Diversity::Off => {
                    kc.max_per_group = usize::MAX;
                    kc.max_per_group_per_bucket = usize::MAX;
                    kc.lookup_max_per_group = 0;
                }
                Diversity::Table => kc.lookup_max_per_group = 0,
                Diversity::Lookup => {}
            }
            if n.eclipse {
                kc.adversary = Some(kad::Eclipse { key: dht::target_key(), sybils: self.sybils.clone() });
            }
            bn.add_service(self.now, Box::new(KadService::new(n.peer.clone(), kc)));
        }
        if let Some(threshold) = n.pubsub {
            // Sequence numbers start anew with each life of the node (ids must not repeat after a restart).
            use crate::scenario::Scoring;
            use hyphae_core::gossipsub::score;
            let score = match n.scoring {
                Scoring::Off => None,
                Scoring::On => Some(score::Params::default()),
                Scoring::Strict => {
                    Some(score::Params { default_topic: Some(score::TopicParams::with_mesh_deliveries(3.0)), ..score::Params::default() })
                }
            };
            let pc = hyphae_core::gossipsub::Config {
                idontwant_threshold: threshold,
                stagger: n.stagger.unwrap_or(hyphae_core::gossipsub::Config::default().stagger),
                stagger_nearest: n.stagger_nearest.unwrap_or(hyphae_core::gossipsub::Config::default().stagger_nearest),
                d_near: n.near.unwrap_or(hyphae_core::gossipsub::Config::default().d_near),
                large_messages: n.preamble.unwrap_or(hyphae_core::gossipsub::Config::default().large_messages),
                first_seqno: (u64::from(n.gen) << 40) | 1,
                score,
                adversary: n.attack,
                flood_first_hop: n.first_hop.unwrap_or(hyphae_core::gossipsub::Config::default().flood_first_hop),
                ..hyphae_core::gossipsub::Config::default()
            };
            bn.add_service(self.now, Box::new(hyphae_core::gossipsub::service::GossipsubService::new(pc, &n.key, self.now)));
        }
        if n.autonat {
            // Every node serves (one behind a NAT can still dial out); simulated addresses are private.
            let ac = autonat::Config { server: true, allow_private: true, ..autonat::Config::default() };
            bn.add_service(self.now, Box::new(AutonatService::new(ac)));
        }
        n.node = Some(bn);
        n.pending = dht::Pending::default();
        n.timer_at = None;
        self.world.alive[i] = Some(n.gen);
        let topics = n.topics.clone();
        let validation = n.validation.is_some();
        let now = self.now;
        self.with_node(i, |ctx, w, out| {
            if let Some(n) = w.n.node.as_mut() {
                for t in &topics {
                    pubsub::subscribe(n, now, t, validation);
                }
            }
            w.drain(ctx, out)
        });
    }

    fn crash(&mut self, i: usize) {
        if self.nodes[i].node.is_none() {
            return;
        }
        self.phase().crashes += 1;
        let n = &mut self.nodes[i];
        n.node = None;
        n.gen += 1;
        n.timer_at = None;
        n.by_link.clear();
        let ends: Vec<End> = std::mem::take(&mut n.conns).into_values().collect();
        self.world.alive[i] = None;
        for e in ends {
            self.push_reset(self.now + e.class.latency, e.peer, e.peer_gen, e.link, "connection reset");
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
        if self.nodes[i].dht.is_some() && !self.dht_via.is_empty() {
            self.dht_bootstrap(i);
        }
    }

    /// Node `i` joins the DHT through 3 random nodes of `dht_via`.
    fn dht_bootstrap(&mut self, i: usize) {
        let mut via = Vec::new();
        for _ in 0..10 {
            let j = self.dht_via[(self.rng.next_u64() % self.dht_via.len() as u64) as usize];
            if j != i && !via.iter().any(|(p, _)| p == &self.peers[j]) {
                // Over the dialing node's transport: a QUIC-only world has no TCP listener to reach.
                via.push((self.peers[j].clone(), self.world.dial_addr(j, self.nodes[i].quic)));
            }
            if via.len() == 3 {
                break;
            }
        }
        if !via.is_empty() {
            self.dht_command(i, dht::Command::Bootstrap(via));
        }
    }

    fn dht_command(&mut self, i: usize, cmd: dht::Command) {
        self.with_node(i, |ctx, w, out| {
            let now = w.now;
            let pending = &mut w.n.pending;
            if let Some(n) = w.n.node.as_mut() {
                out.dht.extend(dht::run(n, pending, now, cmd));
            }
            w.drain(ctx, out);
        });
    }

    /// `n` operations by random live DHT nodes of `by`.
    fn dht_ops(&mut self, op: DhtOp, n: usize, by: &Selector, target: bool) {
        let who: Vec<usize> =
            self.select(by).into_iter().filter(|i| self.nodes[*i].node.is_some() && self.nodes[*i].dht.is_some()).collect();
        let servers: Vec<usize> =
            (0..self.nodes.len()).filter(|i| self.nodes[*i].node.is_some() && self.nodes[*i].dht == Some(kad::Mode::Server)).collect();
        if who.is_empty() {
            return;
        }
        for _ in 0..n {
            let i = who[(self.rng.next_u64() % who.len() as u64) as usize];
            let cmd = match op {
                DhtOp::Bootstrap | DhtOp::FindTarget => continue,
                DhtOp::Provide if target => dht::Command::Provide(dht::target_key()),
                DhtOp::FindProviders if target => dht::Command::FindTarget,
                DhtOp::Provide => {
                    self.provided.push(self.now);
                    dht::Command::Provide(dht::key(self.provided.len() as u64 - 1))
                }
                DhtOp::FindProviders => {
                    // Keys whose provide had time to finish (it takes about a second).
                    let ready = self.provided.partition_point(|t| *t + dht::PROVIDE_SETTLE <= self.now) as u64;
                    if ready == 0 {
                        continue;
                    }
                    dht::Command::FindProviders(dht::key(self.rng.next_u64() % ready))
                }
                DhtOp::FindPeer => {
                    let Some(&j) = servers.get((self.rng.next_u64() % servers.len().max(1) as u64) as usize).filter(|j| **j != i) else {
                        continue;
                    };
                    dht::Command::FindPeer(self.peers[j].clone())
                }
            };
            self.dht_command(i, cmd);
        }
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
            self.connect(i, j, false);
        }
    }

    /// Dials `j` from `i`: only if not connected yet, unless `new`.
    fn connect(&mut self, i: usize, j: usize, new: bool) {
        let peer = self.peers[j].clone();
        let addr = self.world.dial_addr(j, self.nodes[i].quic).with(Protocol::P2p(peer.clone()));
        self.with_node(i, |ctx, w, out| {
            let now = w.now;
            let quic = w.n.quic;
            if let Some(n) = w.n.node.as_mut() {
                if new || !n.is_connected(&peer) {
                    let _ = n.dial(now, addr);
                    if quic {
                        // TCP dials are counted when the node asks for the transport connection.
                        out.counters.dials += 1;
                    }
                }
            }
            w.drain(ctx, out);
        });
    }

    fn action(&mut self, k: usize) {
        let (_, a) = self.sc.timeline[k].clone();
        match a {
            Action::ConnectRandom { k, who } => {
                for i in self.select(&who) {
                    self.connect_random(i, k);
                }
            }
            Action::Connect { from, to, new } => {
                for i in self.select(&from) {
                    for j in self.select(&to) {
                        if i != j {
                            self.connect(i, j, new);
                        }
                    }
                }
            }
            Action::Ping(who) => {
                for i in self.select(&who) {
                    self.with_node(i, |ctx, w, out| {
                        let now = w.now;
                        if let Some(n) = w.n.node.as_mut() {
                            for p in n.connected_peers() {
                                let _ = n.ping(now, &p);
                            }
                        }
                        w.drain(ctx, out);
                    });
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
                self.world.partitions.push((sa, sb, one_way));
            }
            Action::Heal => {
                self.world.partitions.clear();
                for i in 0..self.nodes.len() {
                    let held: Vec<(ConnId, Vec<Vec<u8>>)> = self.nodes[i]
                        .conns
                        .iter_mut()
                        .filter(|(_, e)| !e.held.is_empty())
                        .map(|(c, e)| (*c, std::mem::take(&mut e.held)))
                        .collect();
                    if held.is_empty() {
                        continue;
                    }
                    self.with_node(i, |ctx, w, out| {
                        for (conn, msgs) in held {
                            for m in msgs {
                                // Their `Sent` went when the partition took them.
                                w.send_on(ctx, out, conn, m, false);
                            }
                        }
                    });
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
            Action::Churn { n, every, until } => self.push_global(self.now, GlobalEv::Churn { n, every, until: Instant::ZERO + until }),
            Action::Link(class) => {
                self.lookahead = self.lookahead.min(class.latency);
                self.world.link_class = class;
            }
            Action::DhtBootstrap { who, via, over } => {
                self.dht_via = self.select(&via);
                let who: Vec<usize> = self.select(&who).into_iter().filter(|i| self.nodes[*i].dht.is_some()).collect();
                let n = who.len().max(1) as u64;
                for (k, i) in who.into_iter().enumerate() {
                    match over {
                        Some(d) => {
                            let at = self.now + Duration::from_nanos(d.as_nanos() as u64 / n * k as u64);
                            self.push_global(at, GlobalEv::DhtJoin(i));
                        }
                        None if self.nodes[i].node.is_some() => self.dht_bootstrap(i),
                        None => {}
                    }
                }
            }
            Action::Dht { .. } | Action::PubsubPublish { .. } => self.run_repeating(k),
            Action::PubsubSubscribe { who, topic } => {
                for i in self.select(&who) {
                    if self.nodes[i].pubsub.is_none() || self.nodes[i].topics.contains(&topic) {
                        continue;
                    }
                    self.nodes[i].topics.push(topic.clone());
                    if self.nodes[i].node.is_some() {
                        let now = self.now;
                        let validation = self.nodes[i].validation.is_some();
                        self.with_node(i, |ctx, w, out| {
                            if let Some(n) = w.n.node.as_mut() {
                                pubsub::subscribe(n, now, &topic, validation);
                            }
                            w.drain(ctx, out);
                        });
                    }
                }
            }
            Action::PubsubAttack { who, mode } => {
                for i in self.select(&who) {
                    if self.nodes[i].pubsub.is_none() {
                        continue;
                    }
                    self.nodes[i].attack = mode;
                    let now = self.now;
                    self.with_node(i, |ctx, w, out| {
                        if let Some(n) = w.n.node.as_mut() {
                            n.with_service::<hyphae_core::gossipsub::service::GossipsubService, _>(now, |g, _| g.set_adversary(mode));
                        }
                        w.drain(ctx, out);
                    });
                }
            }
            Action::Phase(name) => {
                let now = self.now.as_nanos();
                if let Some(p) = self.phases.last_mut() {
                    p.end_ns = now;
                }
                self.phases.push(Phase { name, start_ns: now, ..Default::default() });
            }
        }
    }

    /// Runs the operation of timeline action `k` (`dht OP ..` or `pubsub publish ..`) and, when it repeats,
    /// schedules its next run while that falls before its `until`.
    fn run_repeating(&mut self, k: usize) {
        let every = match self.sc.timeline[k].1.clone() {
            Action::Dht { op, n, by, every, target } => {
                self.dht_ops(op, n, &by, target);
                every
            }
            Action::PubsubPublish { n, by, topic, size, every } => {
                self.publish(n, &by, &topic, size);
                every
            }
            _ => None,
        };
        if let Some((e, until)) = every {
            if self.now + e <= Instant::ZERO + until {
                self.push_global(self.now + e, GlobalEv::Repeat(k));
            }
        }
    }

    /// `n` messages of `size` bytes on `topic`, each by a random live gossipsub node of `by`.
    fn publish(&mut self, n: usize, by: &Selector, topic: &str, size: usize) {
        let who: Vec<usize> = self
            .select(by)
            .into_iter()
            .filter(|i| self.nodes[*i].node.is_some() && self.nodes[*i].pubsub.is_some() && !self.nodes[*i].adversary)
            .collect();
        if who.is_empty() {
            return;
        }
        // Who should hear it: the topic's live subscribers; the shortest paths over today's connections.
        let adj: Vec<Vec<(usize, u64)>> = self
            .nodes
            .iter()
            .map(|x| {
                if x.node.is_none() {
                    Vec::new()
                } else {
                    x.conns.values().map(|e| (e.peer, e.class.latency.as_nanos() as u64)).collect()
                }
            })
            .collect();
        let phase = self.phases.len() - 1;
        for _ in 0..n {
            let i = who[(self.rng.next_u64() % who.len() as u64) as usize];
            let expected = (0..self.nodes.len())
                .filter(|j| {
                    *j != i
                        && self.nodes[*j].node.is_some()
                        && !self.nodes[*j].adversary
                        && self.nodes[*j].topics.iter().any(|t| t == topic)
                })
                .count() as u64;
            let dist = std::sync::Arc::new(pubsub::shortest_paths(&adj, i));
            let mut data = vec![0u8; size.max(8)];
            data[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
            let now = self.now;
            let mut id = None;
            self.with_node(i, |ctx, w, out| {
                if let Some(n) = w.n.node.as_mut() {
                    id = pubsub::publish(n, now, topic, data);
                }
                w.drain(ctx, out);
            });
            let p = &mut self.phases[phase].pubsub;
            p.published += 1;
            p.expected += expected;
            match id {
                Some(id) => {
                    let reached = vec![false; self.nodes.len()];
                    self.published.insert(id, pubsub::Record { at: now, phase, dist, reached });
                }
                None => p.publish_failed += 1,
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
            self.push_global(self.now + every, GlobalEv::Churn { n, every, until });
        }
    }

    /// A global event's record in the trace.
    fn note_global(&mut self, kind: u8, what: u64) {
        let mut h = fnv(0xcbf29ce484222325, &self.now.as_nanos().to_le_bytes());
        h = fnv(h, &[kind]);
        h = fnv(h, &what.to_le_bytes());
        self.fold_trace(h);
    }

    fn fold_trace(&mut self, h: u64) {
        self.events += 1;
        self.hash = fnv(self.hash, &h.to_le_bytes());
        if let Some(t) = &mut self.trace {
            t.push(self.hash);
        }
    }

    /// Files what a window (or a global step) produced: events into the queue, metrics into the current
    /// phase, trace records in (time, node) order into the running hash.
    fn file(&mut self, outs: Vec<Out>) {
        let mut trace: Vec<(Instant, usize, u64)> = Vec::new();
        let mut log: Vec<(Instant, usize, Event)> = Vec::new();
        for o in outs {
            for m in o.msgs {
                self.heap.push(Reverse(m));
            }
            let bucket_ns = self.bucket_ns;
            let nb = self.rtt_over_time.len();
            {
                let p = self.phases.last_mut().expect("invariant: a phase");
                p.counters.add(&o.counters);
                for d in &o.dht {
                    p.dht.record(d);
                }
                for (_, rtt) in &o.rtts {
                    p.rtt.record(*rtt);
                }
            }
            for (at, node, id) in &o.pubsub {
                if let Some(r) = self.published.get_mut(id).filter(|_| !self.nodes[*node].adversary) {
                    if !std::mem::replace(&mut r.reached[*node], true) {
                        self.phases[r.phase].pubsub.delivery(at.saturating_duration_since(r.at).as_nanos() as u64, r.dist[*node]);
                    }
                }
            }
            for (at, rtt) in o.rtts {
                self.rtt_over_time[((at / bucket_ns) as usize).min(nb - 1)].record(rtt);
            }
            for at in o.fails {
                self.fails_over_time[((at / bucket_ns) as usize).min(nb - 1)] += 1;
            }
            trace.extend(o.trace);
            if let Some(l) = o.log {
                log.extend(l);
            }
        }
        // Stable: each node's records keep their processing order.
        trace.sort_by_key(|(at, node, _)| (*at, *node));
        for (_, _, h) in trace {
            self.fold_trace(h);
        }
        if let Some(l) = &mut self.log {
            log.sort_by_key(|(at, node, _)| (*at, *node));
            l.extend(log);
        }
    }

    /// Runs every node event before `end`: each node's share on its own, the nodes split across threads.
    fn window(&mut self, end: Instant) {
        let mut per_node: BTreeMap<usize, Vec<Scheduled<NodeEv>>> = BTreeMap::new();
        let mut count = 0usize;
        let mut lost = 0u64;
        while self.heap.peek().is_some_and(|Reverse(s)| s.key.at < end) {
            let Some(Reverse(s)) = self.heap.pop() else { break };
            let Msg { node, gen, ev } = s.ev;
            if self.nodes[node].gen != gen {
                match ev {
                    NodeEv::Datagram { .. } => lost += 1,
                    // A SYN to a host that crashed (or restarted) since the dial: refused, as a restarted
                    // host's RST would say (the dialer must not wait for a handshake timeout).
                    NodeEv::Connected { link, side: 1, peer, peer_gen, class } => {
                        self.push_reset(s.key.at + class.latency, peer, peer_gen, link, "connection refused");
                    }
                    _ => {}
                }
                continue;
            }
            per_node.entry(node).or_default().push(Scheduled { key: s.key, ev });
            count += 1;
        }
        self.phase().datagrams_lost += lost;
        if per_node.is_empty() {
            return;
        }
        let ctx = Ctx { w: &self.world, end };
        let logging = self.log.is_some();
        let threads = if count < self.parallel_min { 1 } else { self.threads.min(per_node.len()) };
        let run_chunk = |nodes: &mut [SimNode], offset: usize, work: Vec<(usize, Vec<Scheduled<NodeEv>>)>| -> Out {
            let mut out = Out { log: logging.then(Vec::new), ..Default::default() };
            for (i, evs) in work {
                let mut w = NodeWork { i, n: &mut nodes[i - offset], local: evs.into_iter().map(Reverse).collect(), now: Instant::ZERO };
                w.run(&ctx, &mut out);
            }
            out
        };
        let outs: Vec<Out> = if threads <= 1 {
            vec![run_chunk(&mut self.nodes, 0, per_node.into_iter().collect())]
        } else {
            // Contiguous node ranges, one per thread, cut so each gets about the same number of events.
            let mut chunks: Vec<Vec<(usize, Vec<Scheduled<NodeEv>>)>> = vec![Vec::new()];
            let per = count.div_ceil(threads);
            let mut in_chunk = 0;
            for (i, evs) in per_node {
                if in_chunk >= per && chunks.len() < threads {
                    chunks.push(Vec::new());
                    in_chunk = 0;
                }
                in_chunk += evs.len();
                chunks.last_mut().expect("invariant: one chunk at least").push((i, evs));
            }
            let mut rest: &mut [SimNode] = &mut self.nodes;
            let mut offset = 0;
            let mut parts = Vec::new();
            let nchunks = chunks.len();
            for (k, chunk) in chunks.into_iter().enumerate() {
                // This chunk owns nodes [offset, next chunk's first node).
                let upto = if k + 1 < nchunks { chunk.last().map_or(offset, |(i, _)| i + 1) } else { offset + rest.len() };
                let (mine, tail) = rest.split_at_mut(upto - offset);
                parts.push((mine, offset, chunk));
                rest = tail;
                offset = upto;
            }
            let run_chunk = &run_chunk;
            let mut parts = parts.into_iter();
            let (first_nodes, first_off, first_work) = parts.next().expect("invariant: one chunk at least");
            std::thread::scope(|s| {
                let handles: Vec<_> = parts.map(|(nodes, off, work)| s.spawn(move || run_chunk(nodes, off, work))).collect();
                // The calling thread takes the first share itself.
                let mut outs = vec![run_chunk(first_nodes, first_off, first_work)];
                outs.extend(handles.into_iter().map(|h| h.join().expect("invariant: a node's work does not panic")));
                outs
            })
        };
        self.file(outs);
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

    /// The recorded protocol events: (virtual time, node index, event), in (time, node) order.
    pub fn events(&self) -> &[(Instant, usize, Event)] {
        self.log.as_deref().unwrap_or(&[])
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Node `i`'s counters (None while it is crashed).
    pub fn node_stats(&self, i: usize) -> Option<node::Stats> {
        self.nodes[i].node.as_ref().map(|n| n.stats())
    }

    /// The peer ID of node `i` (kept across restarts).
    pub fn peer_id(&self, i: usize) -> &PeerId {
        &self.nodes[i].peer
    }

    /// Processes every event up to virtual time `t` (capped at the scenario's duration). Can be called
    /// repeatedly with growing `t`; tests use it to look at the nodes mid-run.
    ///
    /// The engine alternates global steps (timeline actions, churn; one thread) with windows: all node
    /// events from the earliest pending one up to one lookahead (the smallest link latency) later, or to
    /// the next global event. Within a window no node's output can reach another node, so the nodes run
    /// independently, split across threads; what they send is queued for later windows.
    pub fn run_until(&mut self, t: Duration) {
        let end = Instant::ZERO + t.min(self.sc.duration);
        let total = (Instant::ZERO + self.sc.duration).as_nanos();
        let mut next_progress = self.now.as_nanos();
        loop {
            let tn = self.heap.peek().map(|Reverse(s)| s.key.at);
            let tg = self.global.peek().map(|Reverse(s)| s.key.at);
            let next = match (tn, tg) {
                (None, None) => break,
                (Some(a), None) | (None, Some(a)) => a,
                (Some(a), Some(b)) => a.min(b),
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if let Some(p) = &mut self.progress {
                if self.now.as_nanos() >= next_progress {
                    p(self.now.as_nanos(), total);
                    next_progress = self.now.as_nanos() + total / 100;
                }
            }
            if tg.is_some_and(|g| tn.is_none_or(|n| g <= n)) {
                let Some(Reverse(s)) = self.global.pop() else { break };
                match s.ev {
                    GlobalEv::Action(k) => {
                        self.note_global(4, k as u64);
                        self.action(k);
                    }
                    GlobalEv::Churn { n, every, until } => {
                        self.note_global(5, n as u64);
                        self.churn(n, every, until);
                    }
                    GlobalEv::DhtJoin(i) => {
                        self.note_global(7, i as u64);
                        if self.nodes[i].node.is_some() {
                            self.dht_bootstrap(i);
                        }
                    }
                    GlobalEv::Repeat(k) => {
                        let kind = if matches!(self.sc.timeline[k].1, Action::Dht { .. }) { 6 } else { 8 };
                        self.note_global(kind, k as u64);
                        self.run_repeating(k);
                    }
                }
                continue;
            }
            let lookahead = self.lookahead.max(Duration::from_nanos(1));
            let mut wend = next + lookahead;
            if let Some(g) = tg {
                wend = wend.min(g);
            }
            wend = wend.min(end + Duration::from_nanos(1));
            self.window(wend);
        }
        self.now = self.now.max(end);
    }

    fn finish(&mut self) -> Report {
        let end = Instant::ZERO + self.sc.duration;
        if let Some(p) = self.phases.last_mut() {
            p.end_ns = end.as_nanos();
        }
        let phases = std::mem::take(&mut self.phases);
        let over_time = (std::mem::take(&mut self.rtt_over_time), std::mem::take(&mut self.fails_over_time));
        self.report(end, phases, over_time)
    }

    /// The report of the run so far (after [`Sim::run_until`]): every phase up to now, the current one
    /// ending now; lookups and deliveries still in flight are not in it yet. Taking it changes nothing
    /// in the run. What `hyphae sim --report-every` prints: a long run's figures before it ends.
    pub fn report_so_far(&mut self) -> Report {
        let mut phases = self.phases.clone();
        if let Some(p) = phases.last_mut() {
            p.end_ns = self.now.as_nanos();
        }
        let over_time = (self.rtt_over_time.clone(), self.fails_over_time.clone());
        let mut r = self.report(self.now, phases, over_time);
        r.virtual_time = self.now.saturating_duration_since(Instant::ZERO);
        r
    }

    fn report(&mut self, end: Instant, phases: Vec<Phase>, over_time: (Vec<Histogram>, Vec<u64>)) -> Report {
        let mut total_phase = Phase { name: "total".into(), start_ns: 0, end_ns: end.as_nanos(), ..Default::default() };
        for p in &phases {
            total_phase.counters.add(&p.counters);
            total_phase.rtt.merge(&p.rtt);
            total_phase.dht.add(&p.dht);
            total_phase.pubsub.add(&p.pubsub);
        }
        let mut traffic = pubsub::Traffic::default();
        for n in self.nodes.iter_mut().filter(|n| !n.adversary) {
            if let Some((s, degree)) = n.node.as_mut().and_then(pubsub::stats) {
                traffic.add(&s, degree);
            }
        }
        let tables: Vec<(usize, bool)> = self.nodes.iter_mut().filter_map(|n| n.node.as_mut().and_then(dht::table)).collect();
        let servers = tables.iter().filter(|(_, s)| *s).count();
        let table_mean =
            if servers == 0 { 0.0 } else { tables.iter().filter(|(_, s)| *s).map(|(n, _)| *n).sum::<usize>() as f64 / servers as f64 };
        let (mut started, mut widened, mut rejected, mut nearer) = (0u64, 0u64, 0u64, 0u64);
        let (mut rtt_sum, mut rtt_n) = (0.0, 0usize);
        for k in self.nodes.iter_mut().filter(|n| !n.adversary).filter_map(|n| n.node.as_mut().and_then(dht::kad)) {
            let s = k.stats();
            started += s.queries_started;
            widened += s.lookups_widened;
            rejected += s.lookup_rejected_diversity;
            nearer += s.table_replaced_nearer;
            for r in k.table().iter().filter_map(|e| e.rtt) {
                rtt_sum += r.as_secs_f64() * 1e3;
                rtt_n += 1;
            }
        }
        let per_lookup = |x: u64| if started == 0 { 0.0 } else { x as f64 / started as f64 };
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
            rtt_over_time: over_time.0,
            fails_over_time: over_time.1,
            bucket_ns: self.bucket_ns,
            connected_fraction: if alive.is_empty() { 0.0 } else { connected as f64 / alive.len() as f64 },
            dht_nodes: tables.len(),
            dht_servers: servers,
            dht_table_mean: table_mean,
            dht_table_rtt_ms: if rtt_n == 0 { 0.0 } else { rtt_sum / rtt_n as f64 },
            dht_replaced_nearer: if tables.is_empty() { 0.0 } else { nearer as f64 / tables.len() as f64 },
            dht_widened: per_lookup(widened),
            dht_diversity_rejected: per_lookup(rejected),
            pubsub: traffic,
        }
    }

    /// Node `i`'s machine, for tests that look inside.
    pub fn node(&self, i: usize) -> Option<&ByteNode> {
        self.nodes[i].node.as_ref()
    }
}
