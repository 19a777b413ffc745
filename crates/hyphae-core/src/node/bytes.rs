//! [`ByteNode`]: a [`Node`] together with the connection machines it runs over (TCP-like byte streams and
//! a QUIC endpoint), behind one bytes-in/bytes-out API: what a single-threaded driver (the simulator,
//! tests, fuzzing) runs. The node machine, its services and its policy are the very ones the tokio Host
//! runs; only the ownership of the connection machines differs.

use super::{ApiError, ConnId, Event, Node, Stats};
use crate::conn::{self, Connection};
use crate::identity::PeerId;
use crate::multiaddr::Multiaddr;
use crate::quic::{self, ConnStreams};
use crate::rng::{self, RngCore};
use crate::stream::{CloseReason, ConnEvent, Role, Streams};
use crate::time::Instant;
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug)]
pub enum Input<'a> {
    /// A transport connection is up: one the node asked for with `Output::Dial` (role Dialer), or an
    /// accepted one under a fresh id chosen by the driver (role Listener).
    Connected {
        conn: ConnId,
        role: Role,
        remote_addr: Multiaddr,
    },
    Data {
        conn: ConnId,
        data: &'a [u8],
    },
    /// The transport connection ended, or a dial failed.
    Disconnected {
        conn: ConnId,
        reason: CloseReason,
    },
    /// A UDP datagram for the QUIC endpoint.
    Datagram {
        from: core::net::SocketAddr,
        data: &'a [u8],
    },
    /// Datagrams from one sender of `stride` bytes each, back to back (the last may be shorter), handled
    /// together before the endpoint runs its connections: what one receive with GRO gives the tokio
    /// driver.
    Datagrams {
        from: core::net::SocketAddr,
        data: &'a [u8],
        stride: usize,
    },
    /// `len` bytes of earlier `Output::Transmit`s have left this machine (a driver that set a send limit
    /// reports every transmitted byte this way, whether or not its connection still exists).
    Sent {
        len: usize,
    },
}

#[derive(Debug, Clone)]
pub enum Output {
    Transmit {
        conn: ConnId,
        data: Vec<u8>,
    },
    /// Open a transport connection; answer with `Input::Connected` or `Input::Disconnected`.
    Dial {
        conn: ConnId,
        addr: Multiaddr,
    },
    /// Close the transport connection after sending what was transmitted before.
    Close {
        conn: ConnId,
    },
    /// A UDP datagram from the QUIC endpoint.
    SendDatagram {
        to: core::net::SocketAddr,
        data: Vec<u8>,
    },
    Event(Event),
}

/// The QUIC side of a [`ByteNode`]: one endpoint (one UDP socket) and the ids of its connections.
struct QuicSide {
    ep: quic::Endpoint,
    ids: BTreeMap<quic::QuicConnId, ConnId>,
    rev: BTreeMap<ConnId, quic::QuicConnId>,
}

pub struct ByteNode {
    node: Node,
    noise_static: std::sync::Arc<crate::noise::StaticKey>,
    /// TCP-like connections; `None` while our dial is in progress. Boxed: a `Connection` is ~1.6 KiB
    /// and B-tree nodes with ascending keys stay about half full, so unboxed each one cost as much again
    /// in empty slots (a simulation holds millions).
    conns: BTreeMap<ConnId, Option<Box<Connection>>>,
    quic: Option<QuicSide>,
    out: VecDeque<Output>,
    /// See [`ByteNode::set_send_limit`].
    send_limit: Option<usize>,
    /// Bytes transmitted on TCP-like connections and not yet reported `Sent`.
    unsent: usize,
}

impl ByteNode {
    pub fn new(config: super::Config, now: Instant) -> Self {
        let mut node = Node::new(config, now);
        let seed = node.child_seed();
        let noise_static = std::sync::Arc::new(
            crate::noise::StaticKey::generate(&node.config.keypair, seed).expect("invariant: x25519 key generation cannot fail"),
        );
        let quic = node.config.quic_base.map(|base| {
            let mut r = rng::from_seed(node.child_seed());
            let cfg = &node.config;
            let cert = std::sync::Arc::new(crate::tls::Certificate::generate(&cfg.keypair, cfg.unix_time, &mut r));
            let mut seed = [0u8; 32];
            r.fill_bytes(&mut seed);
            let qc = quic::Config {
                keypair: cfg.keypair.clone(),
                cert,
                protocols: node.protocols(),
                unix_time: cfg.unix_time,
                seed,
                base,
                max_streams: quic::DEFAULT_MAX_STREAMS,
                max_connections: cfg.limits.resources.system.conns as usize,
                max_inbound_handshakes: cfg.limits.resources.transient.conns_inbound as usize,
                ip_limits: cfg.limits.resources.ip.clone(),
                max_datagrams: 1,
                stream_window: quic::DEFAULT_STREAM_WINDOW,
                connection_window: quic::DEFAULT_CONNECTION_WINDOW,
                congestion: Default::default(),
                memory: None,
            };
            let ep = quic::Endpoint::new(qc).expect("invariant: our own TLS configuration is valid");
            QuicSide { ep, ids: BTreeMap::new(), rev: BTreeMap::new() }
        });
        ByteNode { node, noise_static, conns: BTreeMap::new(), quic, out: VecDeque::new(), send_limit: None, unsent: 0 }
    }

    /// Models a node behind one uplink: while `limit` bytes or more of its `Output::Transmit`s (all
    /// TCP-like connections together) have not been reported `Input::Sent`, what services write waits in
    /// the node machine (so `StreamEvent::Drained` means "on its way out", and a service's own queue, with
    /// its priorities and cancellations, holds the backlog). `None` (the default): every write goes
    /// straight to its connection, and `Input::Sent` is not needed.
    pub fn set_send_limit(&mut self, limit: Option<usize>) {
        self.send_limit = limit;
    }

    fn send_gated(&self) -> bool {
        self.send_limit.is_some_and(|l| self.unsent >= l)
    }

    pub fn node(&self) -> &Node {
        &self.node
    }
    /// The node machine, for commands (`add_service`, `with_service`). Call [`ByteNode::handle_timeout`]
    /// afterwards so what they queued goes out.
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }
    pub fn peer_id(&self) -> &PeerId {
        self.node.peer_id()
    }
    pub fn stats(&self) -> Stats {
        self.node.stats()
    }
    pub fn num_connections(&self) -> usize {
        self.node.num_connections()
    }
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.node.connected_peers()
    }
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.node.is_connected(peer)
    }

    fn conn_config(&self) -> conn::Config {
        let cfg = &self.node.config;
        let mut c = conn::Config::new(cfg.keypair.clone());
        c.protocols = self.node.protocols();
        c.limits = cfg.conn_limits.clone();
        c.handshake_timeout = cfg.handshake_timeout;
        c.noise_static = Some(self.noise_static.clone());
        c
    }

    /// Serves (and announces) `protocols` besides the node's own; connected peers get an identify push.
    pub fn set_protocols(&mut self, now: Instant, protocols: Vec<String>) {
        self.node.set_protocols(now, protocols);
        self.protocols_changed(now);
    }

    /// Registers a service (see [`Node::add_service`]); its protocols are served from now on.
    pub fn add_service(&mut self, now: Instant, service: Box<dyn super::Service>) -> super::ServiceId {
        let id = self.node.add_service(now, service);
        self.protocols_changed(now);
        id
    }

    /// Services' protocol lists changed (see [`Node::update_protocols`]).
    pub fn update_protocols(&mut self, now: Instant) {
        self.node.update_protocols(now);
        self.protocols_changed(now);
    }

    /// The connection machines negotiate what the node serves now; what the services did about the
    /// change (identify pushes) goes out.
    fn protocols_changed(&mut self, now: Instant) {
        let all = self.node.protocols();
        for m in self.conns.values_mut().flatten() {
            m.set_protocols(all.clone());
        }
        if let Some(q) = self.quic.as_mut() {
            q.ep.set_protocols(all);
        }
        self.handle_timeout(now);
    }

    /// Runs a command on the service of type `T` (see [`Node::with_service`]); what it queued goes out now.
    pub fn with_service<T: super::Service, R>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut T, &mut crate::service::Cx<'_>) -> R,
    ) -> Option<R> {
        let r = self.node.with_service(now, f);
        self.handle_timeout(now);
        r
    }

    /// Dials `addr` (its `/p2p/<id>` is verified). Outcome: `Event::Connected` or `Event::DialFailed`.
    pub fn dial(&mut self, now: Instant, addr: Multiaddr) -> Result<ConnId, ApiError> {
        let id = self.node.dial(addr.clone())?;
        self.start_dial(now, id, addr);
        Ok(id)
    }

    fn start_dial(&mut self, now: Instant, id: ConnId, addr: Multiaddr) {
        if let Some(sa) = addr.quic_socket_addr() {
            let Some(q) = self.quic.as_mut() else {
                self.node.on_dial_failed(now, id, CloseReason::Lost("no QUIC endpoint".into()));
                self.drain_node(now);
                return;
            };
            match q.ep.dial(now, sa, addr.peer_id()) {
                Ok(qc) => {
                    q.ids.insert(qc, id);
                    q.rev.insert(id, qc);
                }
                Err(e) => self.node.on_dial_failed(now, id, CloseReason::Lost(e.to_string())),
            }
            self.pump_quic(now);
            return;
        }
        self.conns.insert(id, None);
        self.out.push_back(Output::Dial { conn: id, addr });
    }

    /// Pings `peer` now on one of its connections.
    pub fn ping(&mut self, now: Instant, peer: &PeerId) -> Result<(), ApiError> {
        self.node.ping(now, peer)?;
        self.handle_timeout(now);
        Ok(())
    }

    /// Closes every connection to `peer`.
    pub fn disconnect(&mut self, now: Instant, peer: &PeerId) {
        for id in self.node.connections_to(peer) {
            if let Some(Some(m)) = self.conns.get_mut(&id) {
                m.close();
                self.pump(now, id);
            } else if let Some(q) = self.quic.as_mut() {
                if let Some(qc) = q.rev.get(&id) {
                    q.ep.close(now, *qc);
                }
            }
        }
        self.pump_quic(now);
    }

    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Connected { conn, role, remote_addr } => {
                // A dial of ours still waiting for its transport; anything else is a new accepted one.
                if role == Role::Dialer && !matches!(self.conns.get(&conn), Some(None)) {
                    return;
                }
                if self.node.on_transport_up(conn, role, remote_addr).is_err() {
                    self.out.push_back(Output::Close { conn });
                    return;
                }
                let seed = self.node.child_seed();
                let cfg = self.conn_config();
                let expected = self.node.expected_peer(conn).cloned();
                self.conns.insert(conn, Some(Box::new(Connection::new(role, cfg, expected, now, seed))));
                self.pump(now, conn);
            }
            Input::Data { conn, data } => {
                if let Some(Some(m)) = self.conns.get_mut(&conn) {
                    m.handle_input(now, data);
                    self.pump(now, conn);
                }
            }
            Input::Disconnected { conn, reason } => match self.conns.get_mut(&conn) {
                Some(Some(m)) => {
                    m.handle_eof();
                    self.pump(now, conn);
                }
                Some(None) => {
                    self.conns.remove(&conn);
                    self.node.on_dial_failed(now, conn, reason);
                    self.drain_node(now);
                }
                None => {}
            },
            Input::Datagram { from, data } => {
                if let Some(q) = self.quic.as_mut() {
                    q.ep.handle_datagram(now, from, data);
                    self.pump_quic(now);
                }
            }
            Input::Datagrams { from, data, stride } => {
                if let Some(q) = self.quic.as_mut() {
                    q.ep.handle_datagrams(now, from, data, stride);
                    self.pump_quic(now);
                }
            }
            Input::Sent { len } => {
                self.unsent = self.unsent.saturating_sub(len);
                self.flush_node(now);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, m)| m.as_ref().and_then(|m| m.poll_timeout()).is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(Some(m)) = self.conns.get_mut(&id) {
                m.handle_timeout(now);
            }
            self.pump(now, id);
        }
        if let Some(q) = self.quic.as_mut() {
            if q.ep.poll_timeout().is_some_and(|t| t <= now) {
                q.ep.handle_timeout(now);
            }
        }
        self.node.handle_timeout(now);
        self.flush_node(now);
        self.pump_quic(now);
    }

    /// Lends the node every connection it queued stream operations for, and starts the dials it asked for.
    fn flush_node(&mut self, now: Instant) {
        for id in self.node.due() {
            let qc = self.quic.as_ref().and_then(|q| q.rev.get(&id).copied());
            // Behind a full uplink a TCP-like connection's writes wait (they stay due).
            if qc.is_none() && self.send_gated() {
                continue;
            }
            match (qc, self.quic.as_mut(), self.conns.get_mut(&id)) {
                (Some(qc), Some(q), _) => self.node.flush(now, id, &mut ConnStreams { ep: &mut q.ep, conn: qc }),
                (None, _, Some(Some(m))) => self.node.flush(now, id, &mut **m),
                _ => {}
            }
            self.pump(now, id);
        }
        self.drain_node(now);
    }

    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|m| m.as_ref().and_then(|m| m.poll_timeout())).min();
        let quic = self.quic.as_mut().and_then(|q| q.ep.poll_timeout());
        // Stream operations held back by a full uplink wait for `Input::Sent`, not for a timer.
        let node = if self.send_gated() { self.node.poll_timeout_holding_outbox() } else { self.node.poll_timeout() };
        [conns, quic, node].into_iter().flatten().min()
    }

    /// Runs the QUIC endpoint after any input: its events go to the node machine (which may write on its
    /// streams, so the endpoint runs again), then its datagrams go out.
    fn pump_quic(&mut self, now: Instant) {
        let Some(q) = self.quic.as_mut() else { return };
        loop {
            q.ep.flush(now);
            let Some(ev) = q.ep.poll_event() else { break };
            if let quic::Event::Established { conn, remote, role, .. } = &ev {
                let id = q.ids.get(conn).copied().unwrap_or_else(|| self.node.next_conn_id());
                if self.node.on_transport_up(id, *role, Multiaddr::from_quic(*remote)).is_err() {
                    q.ep.close(now, *conn);
                    continue;
                }
                q.ids.insert(*conn, id);
                q.rev.insert(id, *conn);
            }
            let (qc, cev) = ev.into_conn_event();
            let Some(&id) = q.ids.get(&qc) else { continue };
            if matches!(cev, ConnEvent::Closed { .. }) {
                q.ids.remove(&qc);
                q.rev.remove(&id);
            }
            let mut m = ConnStreams { ep: &mut q.ep, conn: qc };
            if let Some(ConnEvent::InboundStream { id: s, .. }) = self.node.on_conn_event(now, id, cev, &mut m) {
                // Nobody serves it here: refuse.
                m.stream_reset(now, s);
            }
        }
        while let Some(t) = q.ep.poll_transmit() {
            self.out.push_back(Output::SendDatagram { to: t.to, data: t.data });
        }
        self.drain_node(now);
    }

    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Starts the dials the node asked for and passes on what it reported.
    fn drain_node(&mut self, now: Instant) {
        while let Some(d) = self.node.poll_dial() {
            self.start_dial(now, d.conn, d.addr);
        }
        while let Some(e) = self.node.poll_event() {
            self.out.push_back(Output::Event(e));
        }
    }

    /// Drains one connection's machine: its events go to the node machine (which may write), then its
    /// bytes go out.
    /// Repeats while transmitting raised events (a writer blocked on the muxer's full buffer is told it
    /// may write again), as the Host's write loop does; otherwise such a writer would wait for the next
    /// input, which on a one-way transfer may never come.
    fn pump(&mut self, now: Instant, id: ConnId) {
        loop {
            loop {
                let Some(Some(m)) = self.conns.get_mut(&id) else { return };
                let Some(ev) = m.poll_event() else { break };
                if let Some(ConnEvent::InboundStream { id: s, .. }) = self.node.on_conn_event(now, id, ev, &mut **m) {
                    // Nobody serves it here: refuse.
                    m.stream_reset(s);
                }
            }
            self.drain_node(now);
            let Some(Some(m)) = self.conns.get_mut(&id) else { return };
            let sent = m
                .poll_transmit()
                .map(|data| {
                    if self.send_limit.is_some() {
                        self.unsent += data.len();
                    }
                    self.out.push_back(Output::Transmit { conn: id, data });
                })
                .is_some();
            if m.is_closed() {
                self.conns.remove(&id);
                self.out.push_back(Output::Close { conn: id });
                return;
            }
            if !sent || !m.has_events() {
                return;
            }
        }
    }
}
