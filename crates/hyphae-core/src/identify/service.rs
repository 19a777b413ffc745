//! Identify and identify push as a node service: ask every new connection who it is (with a timeout),
//! answer peers who ask, take their pushes, and push our own info to every connection when our protocols
//! or addresses change (as go-libp2p does).

use super::{Event, Failure, Info, Limits, PROTOCOL_ID, PUSH_PROTOCOL_ID};
use crate::identity::PeerId;
use crate::multiaddr::Multiaddr;
use crate::service::{ConnId, ConnectionEvent, Cx, Event as NodeEvent, LocalInfo, Service, StreamEvent};
use crate::stream::{OpenError, StreamId, Violation, ViolationKind};
use crate::time::{Duration, Instant};
use std::collections::BTreeMap;

const TOKEN_IDENTIFY: u64 = 1;
const TOKEN_PUSH: u64 = 2;

#[derive(Debug, Clone)]
pub struct Config {
    /// Identify every new connection. Default true.
    pub on_connect: bool,
    /// An identify exchange not finished after this long fails. Default 15 s.
    pub timeout: Duration,
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config { on_connect: true, timeout: Duration::from_secs(15), limits: Limits::default() }
    }
}

struct ConnState {
    peer: PeerId,
    addr: Multiaddr,
    /// Our identify request: when it fails, and its stream once negotiated.
    request: Option<(Instant, Option<StreamId>)>,
}

/// Bytes of an identify answer or push being read.
struct Reading {
    buf: Vec<u8>,
    push: bool,
}

impl Reading {
    fn protocol(&self) -> &'static str {
        if self.push {
            PUSH_PROTOCOL_ID
        } else {
            PROTOCOL_ID
        }
    }
}

/// Writes our info on `stream` and lets it go (an answer, or a push with no `observed`).
fn send_info(cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, observed: Option<Multiaddr>) {
    cx.write(conn, stream, &local_info(cx.local, observed).encode());
    cx.finish(conn, stream);
}

pub struct IdentifyService {
    config: Config,
    conns: BTreeMap<ConnId, ConnState>,
    reading: BTreeMap<(ConnId, StreamId), Reading>,
}

impl IdentifyService {
    pub fn new(config: Config) -> Self {
        IdentifyService { config, conns: BTreeMap::new(), reading: BTreeMap::new() }
    }

    fn fail(&mut self, cx: &mut Cx<'_>, conn: ConnId, error: Failure) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.request = None;
        tracing::debug!(peer = %c.peer, %error, "identify failed");
        cx.emit(NodeEvent::Identify(Event::Failed { peer: c.peer.clone(), conn, error }));
    }

    fn finish(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId) {
        let Some(r) = self.reading.remove(&(conn, stream)) else { return };
        cx.release(conn, stream);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !r.push {
            c.request = None;
        }
        let peer = c.peer.clone();
        let outcome = Info::decode_all(&r.buf, &self.config.limits).map_err(Failure::Malformed).and_then(|info| match &info.public_key {
            Some(k) if !peer.matches(k) => Err(Failure::KeyMismatch),
            _ => Ok(info),
        });
        match outcome {
            Ok(info) => cx.emit(NodeEvent::Identify(Event::Received { peer, conn, info: Box::new(info), push: r.push })),
            Err(error) => {
                let kind = match &error {
                    Failure::Malformed(e) => ViolationKind::Malformed(e.clone()),
                    e => ViolationKind::Protocol(e.to_string()),
                };
                cx.violation(Violation { peer: Some(peer.clone()), protocol: r.protocol(), kind });
                if !r.push {
                    cx.emit(NodeEvent::Identify(Event::Failed { peer, conn, error }));
                }
            }
        }
    }
}

/// What we tell peers in identify (`observed`: their address as we see it; not in pushes).
pub fn local_info(local: &LocalInfo, observed: Option<Multiaddr>) -> Info {
    Info {
        protocol_version: Some(local.protocol_version.clone()),
        agent_version: Some(local.agent_version.clone()),
        public_key: Some(local.public_key.clone()),
        listen_addrs: local.listen_addrs.iter().chain(&local.external_addrs).cloned().collect(),
        observed_addr: observed,
        protocols: local.protocols.clone(),
        signed_peer_record: local.signed_peer_record.clone(),
    }
}

impl Service for IdentifyService {
    fn name(&self) -> &'static str {
        "identify"
    }

    fn protocols(&self) -> Vec<String> {
        vec![PROTOCOL_ID.into(), PUSH_PROTOCOL_ID.into()]
    }

    fn on_connection(&mut self, cx: &mut Cx<'_>, ev: ConnectionEvent<'_>) {
        match ev {
            ConnectionEvent::Established { conn, peer, addr, .. } => {
                let mut c = ConnState { peer: peer.clone(), addr: addr.clone(), request: None };
                if self.config.on_connect {
                    cx.open_stream(conn, PROTOCOL_ID, TOKEN_IDENTIFY);
                    c.request = Some((cx.now + self.config.timeout, None));
                }
                self.conns.insert(conn, c);
            }
            ConnectionEvent::Closed { conn, .. } => {
                self.conns.remove(&conn);
                let gone: Vec<_> = self.reading.range((conn, StreamId(0))..=(conn, StreamId(u32::MAX))).map(|(k, _)| *k).collect();
                for k in gone {
                    self.reading.remove(&k);
                }
            }
            ConnectionEvent::Identified { .. } | ConnectionEvent::DialFailed { .. } => {}
        }
    }

    fn on_inbound(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, protocol: &str) {
        if protocol == PUSH_PROTOCOL_ID {
            self.reading.insert((conn, stream), Reading { buf: Vec::new(), push: true });
            return;
        }
        let observed = self.conns.get(&conn).map(|c| c.addr.clone());
        send_info(cx, conn, stream, observed);
    }

    fn on_stream(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>) {
        match ev {
            StreamEvent::Opened { token: TOKEN_PUSH, .. } => send_info(cx, conn, stream, None),
            StreamEvent::Opened { .. } => {
                if let Some((_, s)) = self.conns.get_mut(&conn).and_then(|c| c.request.as_mut()) {
                    *s = Some(stream);
                    self.reading.insert((conn, stream), Reading { buf: Vec::new(), push: false });
                } else {
                    cx.reset_stream(conn, stream);
                }
            }
            StreamEvent::Data(d) => {
                let Some(r) = self.reading.get_mut(&(conn, stream)) else { return };
                let limit = self.config.limits.max_total_len();
                if r.buf.len() + d.len() > limit {
                    let (push, r_len, protocol) = (r.push, r.buf.len(), r.protocol());
                    self.reading.remove(&(conn, stream));
                    cx.reset_stream(conn, stream);
                    let peer = self.conns.get(&conn).map(|c| c.peer.clone());
                    cx.violation(Violation { peer, protocol, kind: ViolationKind::Limit { what: "identify bytes", limit } });
                    if !push {
                        let len = r_len + d.len();
                        self.fail(cx, conn, Failure::Malformed(crate::DecodeError::TooLarge { len, limit }));
                    }
                    return;
                }
                r.buf.extend_from_slice(d);
            }
            StreamEvent::Eof => self.finish(cx, conn, stream),
            StreamEvent::Reset => {
                if let Some(r) = self.reading.remove(&(conn, stream)) {
                    if !r.push {
                        self.fail(cx, conn, Failure::Reset);
                    }
                }
            }
            StreamEvent::Drained => {}
        }
    }

    fn on_open_failed(&mut self, cx: &mut Cx<'_>, conn: ConnId, token: u64, reason: &OpenError) {
        // Only a request still waiting: one that timed out was reported then.
        if token == TOKEN_IDENTIFY && self.conns.get(&conn).is_some_and(|c| c.request.is_some()) {
            self.fail(cx, conn, Failure::Open(reason.clone()));
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.request.map(|(t, _)| t)).min()
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) {
        let late: Vec<(ConnId, Option<StreamId>)> =
            self.conns.iter().filter_map(|(id, c)| c.request.filter(|(t, _)| *t <= cx.now).map(|(_, s)| (*id, s))).collect();
        for (conn, s) in late {
            match s {
                Some(s) => {
                    self.reading.remove(&(conn, s));
                    cx.reset_stream(conn, s);
                }
                None => cx.cancel_open(conn, TOKEN_IDENTIFY),
            }
            self.fail(cx, conn, Failure::Timeout);
        }
    }

    fn on_local_changed(&mut self, cx: &mut Cx<'_>) {
        for conn in self.conns.keys() {
            cx.open_stream(*conn, PUSH_PROTOCOL_ID, TOKEN_PUSH);
        }
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
