//! Ping as a node service: answers pings on every connection, pings peers on command or at an interval
//! (one reused stream per connection, one ping in flight), and closes inbound ping streams left idle.

use super::{Echo, Event, Failure, Pinger, PING_SIZE, PROTOCOL_ID};
use crate::identity::PeerId;
use crate::service::{ConnId, ConnectionEvent, Cx, Event as NodeEvent, Service, StreamEvent};
use crate::stream::{OpenError, StreamId};
use crate::time::{Duration, Instant};
use rand_core::RngCore;
use std::collections::BTreeMap;

/// An inbound ping stream without a ping for this long is closed (go-libp2p's ping service does the same).
pub const IDLE: Duration = Duration::from_secs(60);

const TOKEN: u64 = 1;

/// Idle ping streams are swept on a coarse grid of times, so all connections of a node sweep together
/// (one timer firing, not one per stream; a stream closes 60–90 s after its last ping).
fn sweep_after(t: Instant) -> Instant {
    let grid = IDLE.as_nanos() as u64 / 2;
    Instant((t.0 / grid + 1).saturating_mul(grid))
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Ping every connection at this interval; `None`: only on command. Default `None`, as go-libp2p.
    pub interval: Option<Duration>,
    /// A ping without an answer after this long fails. Default 10 s.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { interval: None, timeout: Duration::from_secs(10) }
    }
}

#[derive(Default)]
struct Outbound {
    stream: Option<StreamId>,
    /// The ping stream is being negotiated.
    opening: bool,
    pinger: Pinger,
    /// When the next ping is due.
    next_at: Option<Instant>,
    /// When the ping in flight fails.
    deadline: Option<Instant>,
}

struct ConnState {
    peer: PeerId,
    out: Outbound,
}

pub struct PingService {
    config: Config,
    conns: BTreeMap<ConnId, ConnState>,
    /// Inbound ping streams and when each last carried a ping.
    inbound: BTreeMap<(ConnId, StreamId), (Echo, Instant)>,
    /// When to close inbound streams idle for [`IDLE`] (set while there are any).
    sweep: Option<Instant>,
}

impl PingService {
    pub fn new(config: Config) -> Self {
        PingService { config, conns: BTreeMap::new(), inbound: BTreeMap::new(), sweep: None }
    }

    /// Pings `peer` on its oldest connection at the next `on_timeout` (due at once). Returns that
    /// connection, or `None` when not connected.
    pub fn ping(&mut self, now: Instant, peer: &PeerId) -> Option<ConnId> {
        let (id, c) = self.conns.iter_mut().find(|(_, c)| &c.peer == peer)?;
        c.out.next_at = Some(now);
        Some(*id)
    }

    fn send(c: &mut Outbound, cx: &mut Cx<'_>, conn: ConnId, s: StreamId) {
        let mut payload = [0u8; PING_SIZE];
        cx.rng.fill_bytes(&mut payload);
        let b = c.pinger.start(cx.now, payload);
        cx.write(conn, s, &b);
    }

    fn failed(&mut self, cx: &mut Cx<'_>, conn: ConnId, error: Failure) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.out.deadline = None;
        c.out.next_at = self.config.interval.map(|i| cx.now + i);
        c.out.pinger = Pinger::new();
        cx.emit(NodeEvent::Ping(Event::Failed { peer: c.peer.clone(), conn, error }));
    }

    /// Drops the outbound stream (in use or still being opened): a late answer on it must not be taken
    /// for the answer to the next ping.
    fn drop_outbound(&mut self, cx: &mut Cx<'_>, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if let Some(s) = c.out.stream.take() {
            cx.reset_stream(conn, s);
        }
        if std::mem::take(&mut c.out.opening) {
            cx.cancel_open(conn, TOKEN);
        }
    }
}

impl Service for PingService {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn protocols(&self) -> Vec<String> {
        vec![PROTOCOL_ID.into()]
    }

    fn on_connection(&mut self, cx: &mut Cx<'_>, ev: ConnectionEvent<'_>) {
        match ev {
            ConnectionEvent::Established { conn, peer, .. } => {
                let out = Outbound { next_at: self.config.interval.map(|_| cx.now), ..Outbound::default() };
                self.conns.insert(conn, ConnState { peer: peer.clone(), out });
            }
            ConnectionEvent::Closed { conn, .. } => {
                self.conns.remove(&conn);
                self.inbound.retain(|(c, _), _| *c != conn);
            }
            ConnectionEvent::Identified { .. } | ConnectionEvent::DialFailed { .. } => {}
        }
    }

    fn on_inbound(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, _protocol: &str) {
        self.inbound.insert((conn, stream), (Echo::default(), cx.now));
        self.sweep.get_or_insert(sweep_after(cx.now + IDLE));
        if let Some(c) = self.conns.get(&conn) {
            cx.emit(NodeEvent::Ping(Event::Inbound { peer: c.peer.clone(), conn }));
        }
    }

    fn on_stream(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>) {
        if let Some((echo, last)) = self.inbound.get_mut(&(conn, stream)) {
            match ev {
                StreamEvent::Data(d) => {
                    *last = cx.now;
                    let mut out = Vec::new();
                    echo.handle_input(d, &mut out);
                    if !out.is_empty() {
                        cx.write(conn, stream, &out);
                    }
                }
                StreamEvent::Eof => {
                    self.inbound.remove(&(conn, stream));
                    cx.finish(conn, stream);
                }
                StreamEvent::Reset => {
                    self.inbound.remove(&(conn, stream));
                }
                StreamEvent::Opened { .. } | StreamEvent::Drained => {}
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else { return };
        match ev {
            StreamEvent::Opened { .. } => {
                c.out.opening = false;
                c.out.stream = Some(stream);
                if c.out.deadline.is_some() {
                    Self::send(&mut c.out, cx, conn, stream);
                }
            }
            StreamEvent::Data(d) if c.out.stream == Some(stream) => match c.out.pinger.handle_input(cx.now, d) {
                Ok(Some(rtt)) => {
                    c.out.deadline = None;
                    c.out.next_at = self.config.interval.map(|i| cx.now + i);
                    cx.emit(NodeEvent::Ping(Event::Ok { peer: c.peer.clone(), conn, rtt }));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "bad ping answer");
                    self.drop_outbound(cx, conn);
                    self.failed(cx, conn, Failure::Answer(e));
                }
            },
            StreamEvent::Eof | StreamEvent::Reset if c.out.stream == Some(stream) => {
                let error = if matches!(ev, StreamEvent::Eof) { Failure::Closed } else { Failure::Reset };
                let in_flight = c.out.deadline.is_some();
                self.drop_outbound(cx, conn);
                if in_flight {
                    self.failed(cx, conn, error);
                }
            }
            _ => {}
        }
    }

    fn on_open_failed(&mut self, cx: &mut Cx<'_>, conn: ConnId, _token: u64, reason: &OpenError) {
        // Only an open still wanted: one given up on (timed out) was reported then.
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.out.opening) else { return };
        c.out.opening = false;
        self.failed(cx, conn, Failure::Open(reason.clone()));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut m = self.sweep.map_or(u64::MAX, |t| t.0);
        for c in self.conns.values() {
            for t in [c.out.next_at, c.out.deadline].into_iter().flatten() {
                m = m.min(t.0);
            }
        }
        (m != u64::MAX).then_some(Instant(m))
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.out.deadline.is_some_and(|t| t <= now) || c.out.next_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for conn in ids {
            if self.conns[&conn].out.deadline.is_some_and(|t| t <= now) {
                self.drop_outbound(cx, conn);
                self.failed(cx, conn, Failure::Timeout);
            }
            let c = self.conns.get_mut(&conn).expect("invariant: listed above");
            if c.out.next_at.is_some_and(|t| t <= now) && c.out.deadline.is_none() {
                c.out.next_at = None;
                c.out.deadline = Some(now + self.config.timeout);
                match c.out.stream {
                    Some(s) => Self::send(&mut c.out, cx, conn, s),
                    None if !c.out.opening => {
                        c.out.opening = true;
                        // Lazily: the first ping goes out with the protocol proposal, a round trip
                        // sooner; a peer without ping resets the stream (`Failure::Reset`).
                        cx.open_stream_lazy(conn, PROTOCOL_ID, TOKEN);
                    }
                    None => {}
                }
            }
        }
        if self.sweep.is_some_and(|t| t <= now) {
            let idle: Vec<(ConnId, StreamId)> = self.inbound.iter().filter(|(_, (_, last))| *last + IDLE <= now).map(|(k, _)| *k).collect();
            for (conn, s) in idle {
                self.inbound.remove(&(conn, s));
                cx.finish(conn, s);
            }
            self.sweep = self.inbound.values().map(|(_, last)| sweep_after(*last + IDLE)).min();
        }
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
