//! A driver for tests: N [`ByteNode`]s over in-memory links with a fixed one-way latency, on explicit
//! time (quinn-proto's `Pair`, generalised). Node `i` lives at `10.0.0.(i+1)`, TCP and QUIC on port 4001;
//! a dial to that address reaches it. Protocol tests (node services now, kad and gossipsub next) build
//! their networks with it; the simulator is the same idea at scale, with faults.
//!
//! Compiled for this crate's tests and, with the `testing` feature, for other crates' tests.

use crate::identity::{Keypair, PeerId};
use crate::multiaddr::{Multiaddr, Protocol};
use crate::node::{ByteNode, Config, ConnId, Event, Input, Output};
use crate::rng;
use crate::stream::Role;
use crate::time::{Duration, Instant};
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::collections::BTreeMap;

/// Bytes or a datagram on their way.
struct Flight {
    at: Instant,
    to: usize,
    /// `None` for a datagram.
    conn: Option<ConnId>,
    from: SocketAddr,
    data: Vec<u8>,
    /// The sender closed the connection: after the bytes sent before it, the receiver sees the end.
    eof: bool,
}

pub struct Net {
    pub nodes: Vec<ByteNode>,
    /// Every event each node reported, in order.
    pub events: Vec<Vec<Event>>,
    /// Nodes whose inbound connections are refused (the simplest NAT).
    pub undialable: std::collections::BTreeSet<usize>,
    /// Nodes that others see at another address than their own (a NAT's mapping, say); dials to that
    /// address reach them (a forwarded port).
    pub observed_as: BTreeMap<usize, Multiaddr>,
    pub now: Instant,
    pub latency: Duration,
    /// QUIC datagrams that reach a node from one sender at one instant go in as one batch
    /// (`Input::Datagrams`, as a receive with GRO does), not one at a time.
    pub batch_datagrams: bool,
    inflight: Vec<Flight>,
    /// (node, its connection) → (the other node, its end of the connection).
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    next_accept: u64,
}

/// The socket address of node `i`.
pub fn socket(i: usize) -> SocketAddr {
    let i = u8::try_from(i + 1).expect("invariant: at most 254 test nodes");
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 4001)
}

fn node_of(ip: IpAddr) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [10, 0, 0] && v4.octets()[3] > 0 => Some(usize::from(v4.octets()[3]) - 1),
        _ => None,
    }
}

impl Net {
    /// `n` nodes with keys and seeds from a fixed seed; `configure` adjusts each node's config (for QUIC,
    /// set `quic_base`: the test, being the driver, reads the clock for it). One-way latency 10 ms.
    pub fn new(n: usize, configure: impl Fn(usize, &mut Config)) -> Net {
        let mut r = rng::from_seed([5; 32]);
        let nodes = (0..n)
            .map(|i| {
                let mut c = Config::new(Keypair::generate_ed25519(&mut r), [u8::try_from(i + 1).unwrap_or(255); 32]);
                c.listen_addrs = vec![Multiaddr::from_tcp(socket(i))];
                configure(i, &mut c);
                ByteNode::new(c, Instant(0))
            })
            .collect();
        Net {
            nodes,
            events: vec![Vec::new(); n],
            undialable: Default::default(),
            observed_as: BTreeMap::new(),
            now: Instant(0),
            latency: Duration::from_millis(10),
            batch_datagrams: false,
            inflight: Vec::new(),
            links: BTreeMap::new(),
            next_accept: 1,
        }
    }

    pub fn peer_id(&self, i: usize) -> PeerId {
        self.nodes[i].peer_id().clone()
    }

    /// Node `i`'s TCP address with its peer id.
    pub fn addr(&self, i: usize) -> Multiaddr {
        Multiaddr::from_tcp(socket(i)).with(Protocol::P2p(self.peer_id(i)))
    }

    /// Node `i`'s QUIC address with its peer id.
    pub fn quic_addr(&self, i: usize) -> Multiaddr {
        Multiaddr::from_quic(socket(i)).with(Protocol::P2p(self.peer_id(i)))
    }

    /// Node `from` dials `addr` now.
    pub fn dial(&mut self, from: usize, addr: Multiaddr) -> ConnId {
        let now = self.now;
        self.nodes[from].dial(now, addr).expect("room for a dial")
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Runs until `end`: delivers what is in flight and fires timers, in time order.
    pub fn run_until(&mut self, end: Instant) {
        loop {
            for i in 0..self.nodes.len() {
                self.drain(i);
            }
            let next_msg = self.inflight.iter().map(|m| m.at).min();
            let next_timer = self.nodes.iter_mut().filter_map(|n| n.poll_timeout()).min();
            let Some(t) = [next_msg, next_timer].into_iter().flatten().min() else {
                self.now = end;
                return;
            };
            if t > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(t);
            if next_msg == Some(t) {
                let pos = self.inflight.iter().position(|m| m.at == t).expect("invariant: found above");
                let f = self.inflight.remove(pos);
                let now = self.now;
                match f.conn {
                    Some(conn) if f.eof => {
                        let reason = crate::stream::CloseReason::Remote;
                        self.nodes[f.to].handle_input(now, Input::Disconnected { conn, reason });
                    }
                    Some(conn) => self.nodes[f.to].handle_input(now, Input::Data { conn, data: &f.data }),
                    None if self.batch_datagrams => {
                        // The rest of this instant's datagrams from that sender to that node, in order, up
                        // to the first that does not fit a GRO batch (a longer one; a shorter one ends it).
                        let stride = f.data.len().max(1);
                        let mut data = f.data;
                        while data.len().is_multiple_of(stride) {
                            let same = |m: &Flight| m.at == t && m.conn.is_none() && m.to == f.to && m.from == f.from;
                            let Some(p) = self.inflight.iter().position(same) else { break };
                            if self.inflight[p].data.len() > stride {
                                break;
                            }
                            data.extend_from_slice(&self.inflight.remove(p).data);
                        }
                        self.nodes[f.to].handle_input(now, Input::Datagrams { from: f.from, data: &data, stride });
                    }
                    None => self.nodes[f.to].handle_input(now, Input::Datagram { from: f.from, data: &f.data }),
                }
            } else {
                let now = self.now;
                for n in &mut self.nodes {
                    if n.poll_timeout().is_some_and(|d| d <= now) {
                        n.handle_timeout(now);
                    }
                }
            }
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(o) = self.nodes[i].poll_output() {
            let at = self.now + self.latency;
            match o {
                Output::Transmit { conn, data } => {
                    if let Some(&(to, their)) = self.links.get(&(i, conn)) {
                        self.inflight.push(Flight { at, to, conn: Some(their), from: socket(i), data, eof: false });
                    }
                }
                Output::SendDatagram { to, data } => {
                    if let Some(j) = node_of(to.ip()) {
                        self.inflight.push(Flight { at, to: j, conn: None, from: socket(i), data, eof: false });
                    }
                }
                Output::Dial { conn, addr } => {
                    let now = self.now;
                    // A node's `observed_as` address leads to it too (a NAT's forwarded port).
                    let forwarded = |sa: SocketAddr| {
                        self.observed_as.iter().find(|(_, a)| a.socket_addr().is_some_and(|(x, _)| x == sa)).map(|(i, _)| *i)
                    };
                    let target = addr
                        .socket_addr()
                        .and_then(|(sa, _)| node_of(sa.ip()).or_else(|| forwarded(sa)))
                        .filter(|j| *j < self.nodes.len() && *j != i && !self.undialable.contains(j));
                    match target {
                        Some(j) => {
                            // A connection after one round trip is simplified to at once: tests time protocols.
                            let theirs = ConnId(self.next_accept);
                            self.next_accept += 1;
                            self.links.insert((i, conn), (j, theirs));
                            self.links.insert((j, theirs), (i, conn));
                            self.nodes[i].handle_input(
                                now,
                                Input::Connected {
                                    conn,
                                    role: Role::Dialer,
                                    remote_addr: addr
                                        .socket_addr()
                                        .map_or_else(|| Multiaddr::from_tcp(socket(j)), |(sa, _)| Multiaddr::from_tcp(sa)),
                                },
                            );
                            self.nodes[j].handle_input(
                                now,
                                Input::Connected {
                                    conn: theirs,
                                    role: Role::Listener,
                                    remote_addr: self.observed_as.get(&i).cloned().unwrap_or_else(|| Multiaddr::from_tcp(socket(i))),
                                },
                            );
                            self.drain(j);
                        }
                        None => {
                            let reason = crate::stream::CloseReason::Lost("no route to host".into());
                            self.nodes[i].handle_input(now, Input::Disconnected { conn, reason });
                        }
                    }
                }
                Output::Close { conn } => {
                    if let Some((j, theirs)) = self.links.remove(&(i, conn)) {
                        self.links.remove(&(j, theirs));
                        self.inflight.push(Flight { at, to: j, conn: Some(theirs), from: socket(i), data: Vec::new(), eof: true });
                    }
                }
                Output::Event(e) => self.events[i].push(e),
            }
        }
    }
}
