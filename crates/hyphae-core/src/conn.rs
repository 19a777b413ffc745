//! One connection as a sans-IO machine: the upgrade pipeline and the streams on top.
//!
//! ```text
//! raw bytes ─ mss(/noise) ─ noise XX ─ [mss(/yamux/1.0.0) unless agreed in the noise payload] ─ yamux
//!                                                                  └ per stream: mss(protocol) ─ app bytes
//! ```
//! The driver feeds socket bytes with `handle_input`, writes what `poll_transmit` returns, handles the
//! events of `poll_event`, and calls `handle_timeout` at `poll_timeout`. Streams are handed out only after
//! their protocol is negotiated. Nothing a peer sends can panic this machine: a violation closes the stream
//! or the connection with a logged reason.

use crate::identity::{Keypair, PeerId};
use crate::mplex::{self, Mplex};
use crate::mss::Negotiator;
use crate::noise::{self, Handshake};
use crate::time::{Duration, Instant};
use crate::tls;
use crate::yamux::{self, Yamux};
use std::collections::{BTreeMap, VecDeque};

use crate::stream::{read_leftover, ReadSink};
pub use crate::stream::{
    CloseReason, ConnEvent as Event, OpenError, ReadResult, Role, StreamError, StreamId, Streams, Violation, ViolationKind,
};

#[derive(Debug, Clone)]
pub struct Limits {
    pub yamux: yamux::Limits,
    pub mplex: mplex::Limits,
    /// Streams still negotiating their protocol at once (beyond: reset). Default 128.
    pub max_negotiating_streams: usize,
    /// Raw bytes buffered before the handshake completes (beyond: close). Default 256 KiB.
    pub max_handshake_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            yamux: yamux::Limits::default(),
            mplex: mplex::Limits::default(),
            max_negotiating_streams: 128,
            max_handshake_buffer: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub keypair: Keypair,
    /// Protocols served on inbound streams.
    pub protocols: Vec<String>,
    pub limits: Limits,
    /// The whole upgrade must finish within this. Default 15 s.
    pub handshake_timeout: Duration,
    /// Offer the muxer inside the Noise handshake (saves a round trip). Default true.
    pub early_muxer_negotiation: bool,
    /// A dialer proposes its first security protocol and sends its first handshake message right behind
    /// the proposal, without waiting for the listener to confirm it (multistream-select's lazy mode, as
    /// rust-libp2p's `V1Lazy`): a round trip less. A listener without that protocol cannot fall back to
    /// the next one on the same connection; the dial fails with [`LAZY_SECURITY_REFUSED`] and the
    /// driver dials again with this off. Default true.
    pub lazy_security: bool,
    /// The node's Noise static key; `None` makes one per connection.
    pub noise_static: Option<std::sync::Arc<noise::StaticKey>>,
    /// Stream muxers in order of preference: `/yamux/1.0.0`, `/mplex/6.7.0`. Default both, Yamux first.
    pub muxers: Vec<String>,
    /// Security protocols in order of preference: `/noise`, `/tls/1.0.0`. Default both, Noise first.
    pub security: Vec<String>,
    /// The node's TLS certificate; `None` makes one per connection.
    pub tls_cert: Option<std::sync::Arc<tls::Certificate>>,
    /// The node's memory budget: yamux reserves each stream's receive window from it
    /// (`rcmgr::Memory`). `None`: only the per-connection limits bound the buffers.
    pub memory: Option<crate::rcmgr::Memory>,
    /// Wall-clock time (unix seconds) when the connection starts: TLS certificate validity is checked
    /// against it. The driver passes it in; the core never reads a clock.
    pub unix_time: i64,
}

impl Config {
    pub fn new(keypair: Keypair) -> Self {
        Config {
            keypair,
            protocols: Vec::new(),
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(15),
            early_muxer_negotiation: true,
            lazy_security: true,
            noise_static: None,
            security: vec![noise::PROTOCOL_ID.into(), tls::PROTOCOL_ID.into()],
            muxers: vec![yamux::PROTOCOL_ID.into(), mplex::PROTOCOL_ID.into()],
            tls_cert: None,
            memory: None,
            unix_time: 0,
        }
    }
}

/// The `stage` of [`CloseReason::Handshake`] when the listener refused the security protocol a dialer
/// proposed lazily ([`Config::lazy_security`]): dial again without it.
pub const LAZY_SECURITY_REFUSED: &str = "lazy security proposal refused";

/// Whether `reason` is that refusal.
pub fn lazy_security_refused(reason: &CloseReason) -> bool {
    matches!(reason, CloseReason::Handshake { stage, .. } if *stage == LAZY_SECURITY_REFUSED)
}

enum Stage {
    SecurityNeg(Negotiator),
    Noise(Box<Handshake>),
    Tls(Box<tls::Session>),
    MuxerNeg(Negotiator),
    Open,
    Closed,
}

struct StreamEntry {
    /// Present while the stream's protocol is being negotiated: the negotiator and bytes read so far.
    neg: Option<(Negotiator, Vec<u8>)>,
    /// Bytes that arrived after negotiation, served before the muxer's buffer.
    prebuf: Vec<u8>,
    outbound: bool,
    /// Opened optimistically (multistream-select's lazy mode): reported ready and writable before the
    /// listener confirmed the protocol; a refusal then shows as a reset.
    lazy: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub streams_negotiation_failed: u64,
}

/// The stream muxer in use. Both expose the same stream API.
enum Muxer {
    Yamux(Yamux),
    Mplex(Mplex),
}

impl Muxer {
    fn open_stream(&mut self) -> Result<StreamId, StreamError> {
        match self {
            Muxer::Yamux(m) => m.open_stream(),
            Muxer::Mplex(m) => m.open_stream(),
        }
    }
    fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        match self {
            Muxer::Yamux(m) => m.write(id, data),
            Muxer::Mplex(m) => m.write(id, data),
        }
    }
    fn read(&mut self, id: StreamId, buf: &mut [u8]) -> ReadResult {
        self.read_to(id, &mut ReadSink::copy(buf))
    }
    fn read_to(&mut self, id: StreamId, sink: &mut ReadSink<'_>) -> ReadResult {
        match self {
            Muxer::Yamux(m) => m.read_to(id, sink),
            Muxer::Mplex(m) => m.read_to(id, sink),
        }
    }
    fn close(&mut self, id: StreamId) {
        match self {
            Muxer::Yamux(m) => m.close(id),
            Muxer::Mplex(m) => m.close(id),
        }
    }
    fn reset(&mut self, id: StreamId) {
        match self {
            Muxer::Yamux(m) => m.reset(id),
            Muxer::Mplex(m) => m.reset(id),
        }
    }
    fn release(&mut self, id: StreamId) {
        match self {
            Muxer::Yamux(m) => m.release(id),
            Muxer::Mplex(m) => m.release(id),
        }
    }
    fn go_away(&mut self, code: u32) {
        if let Muxer::Yamux(m) = self {
            m.go_away(code)
        }
    }
    fn is_output_full(&self) -> bool {
        match self {
            Muxer::Yamux(m) => m.is_output_full(),
            Muxer::Mplex(m) => m.is_output_full(),
        }
    }
    fn output_len(&self) -> usize {
        match self {
            Muxer::Yamux(m) => m.output_len(),
            Muxer::Mplex(m) => m.output_len(),
        }
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match self {
            Muxer::Yamux(m) => m.poll_transmit(),
            Muxer::Mplex(m) => m.poll_transmit(),
        }
    }
    fn poll_event(&mut self) -> Option<yamux::Event> {
        match self {
            Muxer::Yamux(m) => m.poll_event(),
            Muxer::Mplex(m) => m.poll_event(),
        }
    }
    fn handle_input(&mut self, buf: &mut Vec<u8>) -> Result<(), (&'static str, String)> {
        match self {
            Muxer::Yamux(m) => m.handle_input(buf).map_err(|e| (yamux::PROTOCOL_ID, e.to_string())),
            Muxer::Mplex(m) => m.handle_input(buf).map_err(|e| (mplex::PROTOCOL_ID, e.to_string())),
        }
    }
}

/// The established security session.
enum Secure {
    Noise(Box<noise::Transport>),
    Tls(Box<tls::Session>),
}

pub struct Connection {
    role: Role,
    security: String,
    config: Config,
    expected: Option<PeerId>,
    seed: [u8; 32],
    stage: Stage,
    secure: Option<Secure>,
    remote: Option<noise::Remote>,
    muxer: Option<Muxer>,
    raw_in: Vec<u8>,
    plain_in: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    deadline: Option<Instant>,
    streams: BTreeMap<StreamId, StreamEntry>,
    stats: Stats,
    /// The listener's answer to a lazily proposed security protocol, still to come: it precedes the
    /// handshake's bytes on the wire.
    lazy_neg: Option<Negotiator>,
    /// The security layer's buffers ([`SECURE_CHANNEL_MEMORY`]) held from `Config::memory` from the
    /// handshake's start until the connection closes.
    buffers: Option<crate::rcmgr::Reservation>,
    /// The latest time the driver gave (`set_now`), and when our last handshake flight left (before
    /// the connection opened): `Established`'s `rtt` is the one from the other.
    now: Instant,
    last_flight: Instant,
}

/// What one connection's security layer may buffer, reserved from the memory budget before its
/// handshake starts: a Noise frame in and its plaintext (64 KiB each), or rustls' record buffers and
/// the bytes waiting to be encrypted. A node out of memory refuses new connections with
/// `CloseReason::Refused` rather than overcommitting.
pub const SECURE_CHANNEL_MEMORY: u64 = 128 << 10;

impl Connection {
    /// A new connection. `expected`: the peer a dialer means to reach (from `/p2p/`); the handshake fails
    /// if the remote proves another identity. `seed` feeds the Noise RNG.
    pub fn new(role: Role, config: Config, expected: Option<PeerId>, now: Instant, seed: [u8; 32]) -> Self {
        let lazy = (role == Role::Dialer && config.lazy_security).then(|| config.security.first().cloned()).flatten();
        let mut neg = match role {
            Role::Dialer if lazy.is_some() => Negotiator::dialer(lazy.clone()),
            Role::Dialer => Negotiator::dialer(config.security.iter().cloned()),
            Role::Listener => Negotiator::listener(config.security.iter().cloned()),
        };
        let deadline = Some(now + config.handshake_timeout);
        let mut c = Connection {
            role,
            security: String::new(),
            config,
            expected,
            seed,
            // Set below: negotiating, or (lazy) already in the handshake.
            stage: Stage::Closed,
            secure: None,
            remote: None,
            muxer: None,
            raw_in: Vec::new(),
            plain_in: Vec::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            deadline,
            streams: BTreeMap::new(),
            stats: Stats::default(),
            lazy_neg: None,
            buffers: None,
            now,
            last_flight: now,
        };
        if let Some(b) = neg.poll_transmit() {
            c.out.extend(b);
        }
        match lazy {
            // The handshake starts at once; the listener's confirmation is read when it comes.
            Some(p) => {
                c.lazy_neg = Some(neg);
                c.start_security(p);
            }
            None => c.stage = Stage::SecurityNeg(neg),
        }
        c
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn remote_peer(&self) -> Option<&PeerId> {
        self.remote.as_ref().map(|r| &r.peer_id)
    }
    pub fn is_open(&self) -> bool {
        matches!(self.stage, Stage::Open)
    }
    pub fn is_closed(&self) -> bool {
        matches!(self.stage, Stage::Closed)
    }
    pub fn num_streams(&self) -> usize {
        self.streams.len()
    }

    /// Protocols served on inbound streams from now on.
    pub fn set_protocols(&mut self, protocols: Vec<String>) {
        self.config.protocols = protocols;
    }

    fn fail(&mut self, reason: CloseReason) {
        if matches!(self.stage, Stage::Closed) {
            return;
        }
        tracing::debug!(%reason, peer = ?self.remote_peer(), "closing connection");
        if let Some(y) = &mut self.muxer {
            y.go_away(yamux::GOAWAY_PROTOCOL_ERROR);
        }
        self.flush_muxer();
        self.finish_close(reason);
    }

    fn finish_close(&mut self, reason: CloseReason) {
        self.stage = Stage::Closed;
        self.deadline = None;
        self.buffers = None;
        for (id, e) in std::mem::take(&mut self.streams) {
            if e.neg.is_some() && e.outbound {
                self.events.push_back(Event::OutboundFailed { id, reason: OpenError::ConnectionClosed });
            } else if e.neg.is_none() {
                self.events.push_back(Event::Reset(id));
            }
        }
        self.raw_in.clear();
        self.plain_in.clear();
        self.events.push_back(Event::Closed { reason });
    }

    /// Closes gracefully: GoAway, then `Closed`. The driver flushes `poll_transmit` and closes the socket.
    pub fn close(&mut self) {
        if matches!(self.stage, Stage::Closed) {
            return;
        }
        if let Some(y) = &mut self.muxer {
            y.go_away(yamux::GOAWAY_NORMAL);
        }
        self.flush_muxer();
        self.finish_close(CloseReason::Local);
    }

    /// The socket reached EOF or failed.
    pub fn handle_eof(&mut self) {
        if !matches!(self.stage, Stage::Closed) {
            self.finish_close(CloseReason::Remote);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.deadline {
            if now >= d && !self.is_open() {
                self.fail(CloseReason::HandshakeTimeout);
            }
        }
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if matches!(self.stage, Stage::Closed) {
            return;
        }
        self.set_now(now);
        self.stats.bytes_in += data.len() as u64;
        if matches!(self.stage, Stage::Open) {
            return self.input_open(data);
        }
        self.raw_in.extend_from_slice(data);
        let out_before = self.out.len();
        self.advance();
        if !self.is_open() && self.out.len() > out_before {
            self.last_flight = now;
        }
        if !self.is_open() && !self.is_closed() && self.raw_in.len() > self.config.limits.max_handshake_buffer {
            self.fail(CloseReason::Limit("handshake buffer"));
        }
    }

    /// Starts the handshake of security protocol `p` (agreed, or proposed lazily).
    fn start_security(&mut self, p: String) {
        self.security = p.clone();
        if let Some(mem) = self.config.memory.clone() {
            match crate::rcmgr::Reservation::new(&mem, SECURE_CHANNEL_MEMORY) {
                Some(r) => self.buffers = Some(r),
                None => return self.finish_close(CloseReason::Refused(crate::rcmgr::Reservation::refusal(&mem, SECURE_CHANNEL_MEMORY))),
            }
        }
        let muxers: Vec<String> = if self.config.early_muxer_negotiation { self.config.muxers.clone() } else { vec![] };
        if p == tls::PROTOCOL_ID {
            let cert = match &self.config.tls_cert {
                Some(c) => c.clone(),
                None => std::sync::Arc::new(tls::Certificate::generate(
                    &self.config.keypair,
                    self.config.unix_time,
                    &mut crate::rng::from_seed(self.seed),
                )),
            };
            let tls_seed = {
                use rand_core::RngCore;
                let mut r = crate::rng::from_seed(self.seed);
                r.set_stream(0x746c73); // "tls": apart from the streams the noise handshake uses
                let mut s = [0u8; 32];
                r.fill_bytes(&mut s);
                s
            };
            match tls::Session::new(&cert, self.role, self.expected.clone(), &muxers, self.config.unix_time, tls_seed) {
                Ok(mut sess) => {
                    sess.poll_transmit(&mut self.out);
                    self.stage = Stage::Tls(Box::new(sess));
                }
                Err(e) => self.fail(e.into()),
            }
        } else {
            let hs = match &self.config.noise_static {
                Some(k) => Handshake::with_static_key(k, self.role, self.expected.clone(), muxers, self.seed),
                None => Handshake::new(&self.config.keypair, self.role, self.expected.clone(), muxers, self.seed),
            };
            match hs {
                Ok(mut hs) => {
                    if let Some(b) = hs.poll_transmit() {
                        self.out.extend(b);
                    }
                    self.stage = Stage::Noise(Box::new(hs));
                }
                Err(e) => self.fail(e.into()),
            }
        }
    }

    fn advance(&mut self) {
        // A lazily proposed security protocol: the listener's confirmation comes before its handshake bytes.
        if let Some(neg) = &mut self.lazy_neg {
            match neg.handle_input(&mut self.raw_in) {
                Ok(Some(_)) => self.lazy_neg = None,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(security = %self.security, error = %e, "listener refused the lazily proposed security protocol");
                    return self.fail(handshake(LAZY_SECURITY_REFUSED, format!("{}: {e}", self.security)));
                }
            }
        }
        loop {
            match &mut self.stage {
                Stage::SecurityNeg(neg) => {
                    let r = neg.handle_input(&mut self.raw_in);
                    if let Some(b) = neg.poll_transmit() {
                        self.out.extend(b);
                    }
                    match r {
                        Ok(Some(p)) => {
                            self.start_security(p);
                            if matches!(self.stage, Stage::Closed) {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(e) => return self.fail(handshake("security negotiation", e)),
                    }
                }
                Stage::Noise(hs) => {
                    let r = hs.handle_input(&mut self.raw_in);
                    if let Some(b) = hs.poll_transmit() {
                        self.out.extend(b);
                    }
                    match r {
                        Ok(true) => {
                            let Stage::Noise(hs) = std::mem::replace(&mut self.stage, Stage::Closed) else {
                                unreachable!("invariant: stage is noise")
                            };
                            match hs.into_transport() {
                                Ok((t, remote)) => {
                                    self.secure = Some(Secure::Noise(Box::new(t)));
                                    self.secured(remote);
                                }
                                Err(e) => return self.fail(e.into()),
                            }
                        }
                        Ok(false) => return,
                        Err(e) => return self.fail(e.into()),
                    }
                }
                Stage::Tls(sess) => {
                    let r = sess.handle_input(&mut self.raw_in, &mut self.plain_in);
                    sess.poll_transmit(&mut self.out);
                    if let Err(e) = r {
                        return self.fail(e.into());
                    }
                    if sess.is_handshaking() {
                        return;
                    }
                    let remote = match sess.remote() {
                        Ok(r) => r,
                        Err(e) => return self.fail(e.into()),
                    };
                    let Stage::Tls(sess) = std::mem::replace(&mut self.stage, Stage::Closed) else {
                        unreachable!("invariant: stage is tls")
                    };
                    self.secure = Some(Secure::Tls(sess));
                    self.secured(noise::Remote { peer_id: remote.peer_id, public_key: remote.public_key, muxer: remote.muxer });
                }
                Stage::MuxerNeg(_) => {
                    if let Err(e) = self.decrypt() {
                        return self.fail(e);
                    }
                    let Stage::MuxerNeg(neg) = &mut self.stage else { return };
                    let r = neg.handle_input(&mut self.plain_in);
                    let b = neg.poll_transmit();
                    if let Some(b) = b {
                        self.encrypt(&b);
                    }
                    match r {
                        Ok(Some(m)) => self.open(&m, false),
                        Ok(None) => return,
                        Err(e) => return self.fail(handshake("muxer negotiation", e)),
                    }
                }
                Stage::Open => {
                    if let Err(e) = self.decrypt() {
                        return self.fail(e);
                    }
                    let y = self.muxer.as_mut().expect("invariant: open connection has a muxer");
                    if let Err((protocol, detail)) = y.handle_input(&mut self.plain_in) {
                        let peer = self.remote_peer().cloned();
                        return self.fail(CloseReason::Violation(Violation { peer, protocol, kind: ViolationKind::Protocol(detail) }));
                    }
                    self.drain_muxer_events();
                    return;
                }
                Stage::Closed => return,
            }
        }
    }

    /// The security handshake is done: open the muxer, or negotiate it if the handshake did not.
    fn secured(&mut self, remote: noise::Remote) {
        let early = remote.muxer.clone().filter(|m| self.config.muxers.contains(m));
        self.remote = Some(remote);
        if let Some(m) = early {
            self.open(&m, true);
        } else {
            let mut neg = match self.role {
                Role::Dialer => Negotiator::dialer(self.config.muxers.iter().cloned()),
                Role::Listener => Negotiator::listener(self.config.muxers.iter().cloned()),
            };
            let b = neg.poll_transmit();
            self.stage = Stage::MuxerNeg(neg);
            if let Some(b) = b {
                self.encrypt(&b);
            }
        }
    }

    fn open(&mut self, muxer: &str, early: bool) {
        self.stage = Stage::Open;
        self.deadline = None;
        let r = self.remote.as_ref().expect("invariant: remote known after noise");
        // The muxer reserves from the peer's share of the budget (all its connections together).
        let mem = self.config.memory.as_ref().map(|m| m.for_peer(&r.peer_id));
        self.muxer = Some(if muxer == mplex::PROTOCOL_ID {
            let mut m = Mplex::new(self.config.limits.mplex.clone());
            if let Some(mem) = mem {
                m.set_memory(mem);
            }
            Muxer::Mplex(m)
        } else {
            let mut y = Yamux::new(self.role, self.config.limits.yamux.clone());
            if let Some(mem) = mem {
                y.set_memory(mem);
            }
            Muxer::Yamux(y)
        });
        self.events.push_back(Event::Established {
            peer: r.peer_id.clone(),
            public_key: Box::new(r.public_key.clone()),
            security: self.security.clone(),
            muxer: muxer.to_string(),
            early_muxer: early,
            rtt: self.now.saturating_duration_since(self.last_flight),
        });
    }

    /// Input to an open connection, decrypted straight from the driver's buffer: only a frame cut by the
    /// end of `data` is kept in `raw_in` (completed from the front of the next input), so bulk bytes are
    /// not copied into a staging buffer before decryption.
    fn input_open(&mut self, mut data: &[u8]) {
        // Complete the frame a previous input cut, a piece at a time, until `raw_in` is empty.
        while !self.raw_in.is_empty() && !data.is_empty() {
            let take = match self.secure.as_ref() {
                // Up to the end of the cut frame (first its length prefix, then the rest).
                Some(Secure::Noise(_)) => match noise::Transport::frame_len(&self.raw_in) {
                    Some(len) => len.saturating_sub(self.raw_in.len()).max(1),
                    None => 2 - self.raw_in.len(),
                },
                // rustls keeps partial records itself: anything left here is all staged.
                _ => data.len(),
            };
            let take = take.min(data.len());
            self.raw_in.extend_from_slice(&data[..take]);
            data = &data[take..];
            if let Err(e) = self.decrypt() {
                return self.fail(e);
            }
        }
        if self.raw_in.is_empty() && !data.is_empty() {
            let peer = self.remote_peer().cloned();
            let (protocol, (n, r)) = match self.secure.as_mut().expect("invariant: secure channel after the handshake") {
                Secure::Noise(t) => {
                    let (n, r) = t.decrypt_from(data, &mut self.plain_in);
                    (noise::PROTOCOL_ID, (n, r.map_err(|e| e.to_string())))
                }
                Secure::Tls(s) => {
                    let (n, r) = s.handle_input_from(data, &mut self.plain_in);
                    s.poll_transmit(&mut self.out);
                    (tls::PROTOCOL_ID, (n, r.map_err(|e| e.to_string())))
                }
            };
            if let Err(detail) = r {
                return self.fail(CloseReason::Violation(Violation { peer, protocol, kind: ViolationKind::Protocol(detail) }));
            }
            data = &data[n..];
        }
        self.raw_in.extend_from_slice(data);
        // The muxer takes the plaintext (`advance` finds no whole frame left in `raw_in`).
        self.advance();
    }

    fn decrypt(&mut self) -> Result<(), CloseReason> {
        let peer = self.remote_peer().cloned();
        let (protocol, r) = match self.secure.as_mut().expect("invariant: secure channel after the handshake") {
            Secure::Noise(t) => (noise::PROTOCOL_ID, t.decrypt(&mut self.raw_in, &mut self.plain_in).map_err(|e| e.to_string())),
            Secure::Tls(s) => {
                let r = s.handle_input(&mut self.raw_in, &mut self.plain_in).map_err(|e| e.to_string());
                s.poll_transmit(&mut self.out);
                (tls::PROTOCOL_ID, r)
            }
        };
        r.map_err(|detail| CloseReason::Violation(Violation { peer, protocol, kind: ViolationKind::Protocol(detail) }))
    }

    fn encrypt(&mut self, plain: &[u8]) {
        match self.secure.as_mut().expect("invariant: secure channel after the handshake") {
            Secure::Noise(t) => t.encrypt(plain, &mut self.out),
            Secure::Tls(s) => s.encrypt(plain, &mut self.out),
        }
    }

    fn flush_muxer(&mut self) {
        match (&mut self.muxer, &mut self.secure) {
            // Noise copies as it seals: yamux's frames and the static payloads they point at go into
            // the frames straight from where they are.
            (Some(Muxer::Yamux(y)), Some(Secure::Noise(t))) => {
                if let Some(frames) = y.take_pieces() {
                    t.encrypt_pieces(frames.pieces(), frames.len(), &mut self.out);
                }
            }
            (Some(y), _) => {
                if let Some(b) = y.poll_transmit() {
                    self.encrypt(&b);
                }
            }
            (None, _) => {}
        }
    }

    /// Bytes waiting to be taken by `poll_transmit`: the muxer's frames (not yet encrypted) and the
    /// secured bytes. A driver that gates writes on what is not yet on the wire counts these.
    pub fn buffered_output(&self) -> usize {
        self.out.len() + self.muxer.as_ref().map_or(0, Muxer::output_len)
    }

    /// The muxer's outgoing buffer is full: nothing more can be sent until `poll_transmit` is drained
    /// into the socket. A driver stops reading the socket meanwhile (local work before new remote work).
    pub fn is_backed_up(&self) -> bool {
        self.muxer.as_ref().is_some_and(Muxer::is_output_full)
    }

    /// Sends a yamux ping (keep-alive; the answer is not reported). Returns false when the muxer has no
    /// ping (mplex) or the connection is not open.
    pub fn ping(&mut self, opaque: u32) -> bool {
        let open = self.is_open();
        match &mut self.muxer {
            Some(Muxer::Yamux(y)) if open => {
                y.ping(opaque);
                true
            }
            _ => false,
        }
    }

    /// Bytes for the socket. The driver calls this when its socket can take more: writes through
    /// yamux are encrypted here, in as few frames as possible.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.flush_muxer();
        self.drain_muxer_events();
        let out = crate::take_output(&mut self.out)?;
        self.stats.bytes_out += out.len() as u64;
        Some(out)
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Events are waiting: `poll_transmit` can raise some (a stream that becomes writable once the
    /// muxer's buffer went out), so a driver that transmits last asks this before it sleeps.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn drain_muxer_events(&mut self) {
        loop {
            let Some(y) = &mut self.muxer else { return };
            let Some(ev) = y.poll_event() else { return };
            match ev {
                yamux::Event::InboundStream(id) => {
                    let negotiating = self.streams.values().filter(|e| e.neg.is_some()).count();
                    if negotiating >= self.config.limits.max_negotiating_streams {
                        tracing::debug!(stream = %id, "too many streams negotiating; reset");
                        y.reset(id);
                        continue;
                    }
                    let mut neg = Negotiator::listener(self.config.protocols.iter().cloned());
                    if let Some(b) = neg.poll_transmit() {
                        let _ = y.write(id, &b);
                    }
                    self.streams.insert(id, StreamEntry { neg: Some((neg, Vec::new())), prebuf: Vec::new(), outbound: false, lazy: false });
                }
                yamux::Event::Readable(id) => match self.streams.get(&id) {
                    Some(e) if e.neg.is_some() => self.negotiate(id),
                    Some(_) => self.events.push_back(Event::Readable(id)),
                    None => {}
                },
                yamux::Event::Writable(id) => {
                    if matches!(self.streams.get(&id), Some(e) if e.neg.is_none() || e.lazy) {
                        self.events.push_back(Event::Writable(id));
                    }
                }
                yamux::Event::Reset(id) => match self.streams.remove(&id) {
                    Some(e) if e.neg.is_some() && !e.lazy => {
                        if e.outbound {
                            self.events.push_back(Event::OutboundFailed { id, reason: OpenError::Reset });
                        }
                        y.release(id);
                    }
                    Some(e) => {
                        self.streams.insert(id, e);
                        self.events.push_back(Event::Reset(id));
                    }
                    None => {}
                },
                yamux::Event::Pong(_) => {}
                yamux::Event::GoAway(code) => {
                    tracing::debug!(code, "remote sent go away");
                }
            }
        }
    }

    fn negotiate(&mut self, id: StreamId) {
        let y = self.muxer.as_mut().expect("invariant: streams exist only on open connections");
        let Some(entry) = self.streams.get_mut(&id) else { return };
        let Some((neg, buf)) = &mut entry.neg else { return };
        let mut eof = false;
        let mut tmp = [0u8; 1024];
        loop {
            match y.read(id, &mut tmp) {
                ReadResult::Data(n) => buf.extend_from_slice(&tmp[..n]),
                ReadResult::Eof => {
                    eof = true;
                    break;
                }
                ReadResult::Pending | ReadResult::Reset => break,
            }
            if buf.len() > crate::mss::MAX_BUFFERED {
                break;
            }
        }
        let r = neg.handle_input(buf);
        if let Some(b) = neg.poll_transmit() {
            let _ = y.write(id, &b);
        }
        match r {
            Ok(Some(protocol)) => {
                let (_, rest) = entry.neg.take().expect("invariant: negotiating");
                entry.prebuf = rest;
                // A lazy stream was reported ready when it was opened.
                if !entry.lazy {
                    let ev = if entry.outbound { Event::OutboundReady { id, protocol } } else { Event::InboundStream { id, protocol } };
                    self.events.push_back(ev);
                }
                if !entry.prebuf.is_empty() || eof {
                    self.events.push_back(Event::Readable(id));
                }
            }
            Ok(None) if !eof => {}
            Ok(None) | Err(_) => {
                let reason = match r {
                    Err(e) => crate::mss::open_error(e),
                    _ => OpenError::Eof,
                };
                tracing::debug!(stream = %id, %reason, "stream negotiation failed");
                self.stats.streams_negotiation_failed += 1;
                let (outbound, lazy) = (entry.outbound, entry.lazy);
                if lazy {
                    // Its owner holds it as open: a reset, released when the owner releases it.
                    entry.neg = None;
                    y.reset(id);
                    self.events.push_back(Event::Reset(id));
                    return;
                }
                self.streams.remove(&id);
                y.reset(id);
                if outbound {
                    self.events.push_back(Event::OutboundFailed { id, reason });
                }
            }
        }
    }

    /// Opens a stream and negotiates the first of `protocols` the remote supports. Completes with
    /// `OutboundReady` or `OutboundFailed`.
    pub fn open_stream(&mut self, protocols: Vec<String>) -> Result<StreamId, StreamError> {
        if protocols.is_empty() {
            return Err(StreamError::Unknown);
        }
        let Some(y) = &mut self.muxer else { return Err(StreamError::GoingAway) };
        if !matches!(self.stage, Stage::Open) {
            return Err(StreamError::GoingAway);
        }
        let id = y.open_stream()?;
        let mut neg = Negotiator::dialer(protocols);
        if let Some(b) = neg.poll_transmit() {
            let _ = y.write(id, &b);
        }
        self.streams.insert(id, StreamEntry { neg: Some((neg, Vec::new())), prebuf: Vec::new(), outbound: true, lazy: false });
        Ok(id)
    }

    /// Opens a stream for `protocol` optimistically (multistream-select's lazy mode, as rust-libp2p's
    /// `V1Lazy`): `OutboundReady` comes at once and writes go out right behind the proposal, saving the
    /// round trip of the confirmation. If the listener refuses, the stream is reset. For request streams
    /// whose owner treats a reset as a failed request.
    pub fn open_stream_lazy(&mut self, protocol: String) -> Result<StreamId, StreamError> {
        let id = self.open_stream(vec![protocol.clone()])?;
        if let Some(e) = self.streams.get_mut(&id) {
            e.lazy = true;
        }
        self.events.push_back(Event::OutboundReady { id, protocol });
        Ok(id)
    }

    /// The time for the muxer's window growth (yamux measures the round trip and how fast streams are read)
    /// and for the handshake's round trip.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
        if let Some(Muxer::Yamux(y)) = &mut self.muxer {
            y.set_now(now);
        }
    }

    pub fn stream_read(&mut self, id: StreamId, buf: &mut [u8]) -> ReadResult {
        self.stream_read_to(id, &mut ReadSink::copy(buf))
    }

    fn stream_read_to(&mut self, id: StreamId, sink: &mut ReadSink<'_>) -> ReadResult {
        let Some(e) = self.streams.get_mut(&id) else { return ReadResult::Reset };
        if e.neg.is_some() {
            return ReadResult::Pending;
        }
        if let Some(r) = read_leftover(&mut e.prebuf, sink) {
            return r;
        }
        match &mut self.muxer {
            Some(y) => y.read_to(id, sink),
            None => ReadResult::Reset,
        }
    }

    pub fn stream_write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        self.write_to(id, data, None)
    }

    /// As [`Connection::stream_write`], for bytes that live as long as the program. Under Noise, yamux
    /// keeps a view of them and Noise copies them once, into its frames (`flush_muxer`): the copy into
    /// yamux's buffer was ~8% of a TCP+Noise sender's CPU (BENCHMARKS.md). TLS (rustls) takes one
    /// contiguous buffer, so there they are copied into yamux's as any write.
    pub fn stream_write_static(&mut self, id: StreamId, data: &'static [u8]) -> Result<usize, StreamError> {
        self.write_to(id, data, Some(data))
    }

    /// A write of `data`; `keep` is the same bytes when they are static (`stream_write_static`).
    fn write_to(&mut self, id: StreamId, data: &[u8], keep: Option<&'static [u8]>) -> Result<usize, StreamError> {
        match self.streams.get(&id) {
            None => return Err(StreamError::Reset),
            Some(e) if e.neg.is_some() && !e.lazy => return Ok(0),
            _ => {}
        }
        match (&mut self.muxer, &self.secure, keep) {
            (Some(Muxer::Yamux(y)), Some(Secure::Noise(_)), Some(k)) => y.write_static(id, k),
            (Some(m), ..) => m.write(id, data),
            (None, ..) => Err(StreamError::Reset),
        }
    }

    /// Half-closes our side of the stream.
    pub fn stream_close(&mut self, id: StreamId) {
        if let Some(y) = &mut self.muxer {
            y.close(id);
        }
    }

    pub fn stream_reset(&mut self, id: StreamId) {
        self.streams.remove(&id);
        if let Some(y) = &mut self.muxer {
            y.reset(id);
        }
    }

    /// The application dropped its handle.
    pub fn stream_release(&mut self, id: StreamId) {
        self.streams.remove(&id);
        if let Some(y) = &mut self.muxer {
            y.release(id);
        }
    }
}

/// A handshake stage failed with `e`.
fn handshake(stage: &'static str, e: impl std::fmt::Display) -> CloseReason {
    CloseReason::Handshake { stage, detail: e.to_string() }
}

impl From<noise::NoiseError> for CloseReason {
    fn from(e: noise::NoiseError) -> Self {
        match e {
            noise::NoiseError::PeerIdMismatch { expected, actual } => CloseReason::PeerIdMismatch { expected, actual },
            e => handshake(noise::PROTOCOL_ID, e),
        }
    }
}

impl From<tls::TlsError> for CloseReason {
    fn from(e: tls::TlsError) -> Self {
        match e {
            tls::TlsError::PeerIdMismatch { expected, actual } => CloseReason::PeerIdMismatch { expected, actual },
            e => handshake(tls::PROTOCOL_ID, e),
        }
    }
}

impl Streams for Connection {
    fn open_stream(&mut self, _now: Instant, protocols: Vec<String>) -> Result<StreamId, StreamError> {
        Connection::open_stream(self, protocols)
    }
    fn open_stream_lazy(&mut self, _now: Instant, protocol: String) -> Result<StreamId, StreamError> {
        Connection::open_stream_lazy(self, protocol)
    }
    fn stream_read(&mut self, now: Instant, s: StreamId, buf: &mut [u8]) -> ReadResult {
        self.set_now(now);
        Connection::stream_read(self, s, buf)
    }
    fn stream_read_with(&mut self, now: Instant, s: StreamId, buf: &mut [u8], f: &mut dyn FnMut(&[u8]) -> bool) -> ReadResult {
        self.set_now(now);
        self.stream_read_to(s, &mut ReadSink::lend(buf.len(), f))
    }
    fn stream_write(&mut self, _now: Instant, s: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        Connection::stream_write(self, s, data)
    }
    fn stream_write_static(&mut self, _now: Instant, s: StreamId, data: &'static [u8]) -> Result<usize, StreamError> {
        Connection::stream_write_static(self, s, data)
    }
    fn stream_close(&mut self, _now: Instant, s: StreamId) {
        Connection::stream_close(self, s)
    }
    fn stream_reset(&mut self, _now: Instant, s: StreamId) {
        Connection::stream_reset(self, s)
    }
    fn stream_release(&mut self, _now: Instant, s: StreamId) {
        Connection::stream_release(self, s)
    }
    fn close(&mut self, _now: Instant) {
        Connection::close(self)
    }
    fn num_streams(&self) -> usize {
        Connection::num_streams(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) struct Pair {
        pub a: Connection,
        pub b: Connection,
        pub now: Instant,
        pub ev_a: Vec<Event>,
        pub ev_b: Vec<Event>,
    }

    impl Pair {
        fn new(early: bool) -> Pair {
            Self::with_security(early, noise::PROTOCOL_ID)
        }

        fn with_security(early: bool, security: &str) -> Pair {
            Self::with(early, security, yamux::PROTOCOL_ID)
        }

        fn with(early: bool, security: &str, muxer: &str) -> Pair {
            Self::build(|ca, _| {
                ca.early_muxer_negotiation = early;
                ca.security = vec![security.to_string()];
                ca.muxers = vec![muxer.to_string()];
            })
        }

        /// A dialer `a` and a listener `b` (serving `/echo/1`) on default configurations, changed by `tweak`.
        fn build(tweak: impl FnOnce(&mut Config, &mut Config)) -> Pair {
            let mut rng = crate::rng::from_seed([9; 32]);
            let ka = Keypair::generate_ed25519(&mut rng);
            let kb = Keypair::generate_ed25519(&mut rng);
            let mut ca = Config::new(ka);
            ca.unix_time = 1_800_000_000;
            let mut cb = Config::new(kb.clone());
            cb.protocols = vec!["/echo/1".into()];
            cb.unix_time = 1_800_000_000;
            tweak(&mut ca, &mut cb);
            let now = Instant(0);
            Pair {
                a: Connection::new(Role::Dialer, ca, Some(kb.peer_id()), now, [1; 32]),
                b: Connection::new(Role::Listener, cb, None, now, [2; 32]),
                now,
                ev_a: vec![],
                ev_b: vec![],
            }
        }

        fn pump(&mut self) {
            for _ in 0..20 {
                let mut moved = false;
                if let Some(x) = self.a.poll_transmit() {
                    self.b.handle_input(self.now, &x);
                    moved = true;
                }
                if let Some(x) = self.b.poll_transmit() {
                    self.a.handle_input(self.now, &x);
                    moved = true;
                }
                self.ev_a.extend(std::iter::from_fn(|| self.a.poll_event()));
                self.ev_b.extend(std::iter::from_fn(|| self.b.poll_event()));
                if !moved {
                    break;
                }
            }
        }
    }

    /// Flights (one direction's bytes at a time, dialer first) until the listener holds the first bytes
    /// of a stream the dialer opens as soon as it is open.
    fn flights_to_first_stream_bytes(lazy: bool, security: &str) -> usize {
        let mut p = Pair::build(|ca, _| {
            ca.lazy_security = lazy;
            ca.security = vec![security.to_string()];
            ca.muxers = vec![yamux::PROTOCOL_ID.into()];
        });
        let mut opened = false;
        for flight in 1..=10 {
            let (from, to) = if flight % 2 == 1 { (&mut p.a, &mut p.b) } else { (&mut p.b, &mut p.a) };
            if let Some(x) = from.poll_transmit() {
                to.handle_input(p.now, &x);
            }
            p.ev_a.extend(std::iter::from_fn(|| p.a.poll_event()));
            p.ev_b.extend(std::iter::from_fn(|| p.b.poll_event()));
            if !opened && p.a.is_open() {
                let id = p.a.open_stream_lazy("/echo/1".into()).unwrap();
                p.a.stream_write(id, b"hi").unwrap();
                opened = true;
            }
            if p.ev_b.iter().any(|e| matches!(e, Event::InboundStream { .. })) {
                return flight;
            }
        }
        panic!("no stream after 10 flights: {:?} {:?}", p.ev_a, p.ev_b);
    }

    #[test]
    fn conn_lazy_security_saves_a_round_trip_of_the_set_up() {
        // Lazy: proposal + msg1 → confirmation + msg2 → msg3 + stream = 3 flights (1.5 RTTs after TCP's),
        // so the answer is back 3 RTTs after the dial began. Negotiated: 2 flights more.
        assert_eq!(flights_to_first_stream_bytes(true, noise::PROTOCOL_ID), 3);
        assert_eq!(flights_to_first_stream_bytes(false, noise::PROTOCOL_ID), 5);
        // TLS 1.3: ClientHello with the proposal; the dialer's Finished travels with the stream.
        assert_eq!(flights_to_first_stream_bytes(true, tls::PROTOCOL_ID), 3);
    }

    #[test]
    fn conn_lazy_security_refused_fails_with_its_own_reason_and_full_negotiation_falls_back() {
        // Noise and TLS (the defaults) from the dialer, TLS alone at the listener.
        let setup = |lazy: bool| {
            Pair::build(|ca, cb| {
                ca.lazy_security = lazy;
                cb.security = vec![tls::PROTOCOL_ID.into()];
            })
        };
        // Noise first, proposed lazily, to a TLS-only listener.
        let mut p = setup(true);
        p.pump();
        assert!(p.a.is_closed());
        assert!(
            p.ev_a.iter().any(
                |e| matches!(e, Event::Closed { reason: CloseReason::Handshake { stage, .. }, .. } if *stage == LAZY_SECURITY_REFUSED)
            ),
            "{:?}",
            p.ev_a
        );
        // The driver's second dial negotiates in full and lands on TLS.
        let mut p = setup(false);
        p.pump();
        assert!(p.a.is_open() && p.b.is_open(), "{:?} {:?}", p.ev_a, p.ev_b);
        assert_eq!(p.a.security, tls::PROTOCOL_ID);
    }

    /// Regression, bug class of rust-libp2p CVE-2022-23486 ("many small allocations": streams a peer
    /// opens and never negotiates each held state): streams stuck before their multistream-select
    /// header are capped at `max_negotiating_streams` per connection; beyond, the muxer resets them.
    /// Also go-libp2p CVE-2022-23492 (unlimited streams): the muxer's stream limit holds above that.
    #[test]
    fn conn_streams_that_never_negotiate_are_capped_per_connection() {
        for muxer in [yamux::PROTOCOL_ID, mplex::PROTOCOL_ID] {
            let mut p = Pair::with(true, noise::PROTOCOL_ID, muxer);
            p.pump();
            assert!(p.a.is_open() && p.b.is_open());
            // The attacker opens raw muxer streams and never sends a multistream header.
            for _ in 0..2_000 {
                let _ = p.a.muxer.as_mut().unwrap().open_stream();
                if let Some(x) = p.a.poll_transmit() {
                    p.b.handle_input(p.now, &x);
                }
                while p.b.poll_transmit().is_some() {}
            }
            let negotiating = p.b.streams.values().filter(|e| e.neg.is_some()).count();
            assert_eq!(negotiating, Limits::default().max_negotiating_streams, "{muxer}");
            assert!(p.b.streams.len() <= Limits::default().max_negotiating_streams, "{muxer}");
            assert!(p.b.is_open(), "{muxer}: the cap resets streams, it does not kill the connection");
        }
    }

    fn upgrade_and_echo(early: bool) {
        upgrade_and_echo_with(early, noise::PROTOCOL_ID);
    }

    fn upgrade_and_echo_with(early: bool, security: &str) {
        upgrade_and_echo_full(early, security, yamux::PROTOCOL_ID);
    }

    fn upgrade_and_echo_full(early: bool, security: &str, muxer: &str) {
        let mut p = Pair::with(early, security, muxer);
        p.pump();
        assert!(p.a.is_open() && p.b.is_open());
        assert!(
            matches!(&p.ev_a[0], Event::Established { early_muxer, muxer: m, .. } if *early_muxer == early && m == muxer),
            "{:?}",
            p.ev_a[0]
        );
        let id = p.a.open_stream(vec!["/nope".into(), "/echo/1".into()]).unwrap();
        p.a.stream_write(id, b"early?").unwrap(); // refused until negotiated
        p.pump();
        assert!(p.ev_a.contains(&Event::OutboundReady { id, protocol: "/echo/1".into() }));
        // The listener's handle for the stream (equal to ours with yamux, not with mplex).
        let their = p
            .ev_b
            .iter()
            .find_map(|e| if let Event::InboundStream { id, protocol } = e { (protocol == "/echo/1").then_some(*id) } else { None })
            .expect("inbound stream");
        assert_eq!(p.a.stream_write(id, b"ping").unwrap(), 4);
        p.a.stream_close(id);
        p.pump();
        let mut buf = [0u8; 16];
        assert_eq!(p.b.stream_read(their, &mut buf), ReadResult::Data(4));
        assert_eq!(&buf[..4], b"ping");
        assert_eq!(p.b.stream_read(their, &mut buf), ReadResult::Eof);
    }

    /// An open connection decrypts straight from each input; frames cut anywhere by the input's
    /// boundaries (inside a length prefix, a body, a tag) are completed from the next input, and every
    /// byte arrives once, in order, over Noise and TLS.
    #[test]
    fn conn_open_input_cut_at_any_boundary_delivers_every_byte() {
        for security in [noise::PROTOCOL_ID, tls::PROTOCOL_ID] {
            let mut p = Pair::with(true, security, yamux::PROTOCOL_ID);
            p.pump();
            let id = p.a.open_stream_lazy("/echo/1".into()).unwrap();
            let msg: Vec<u8> = (0..600_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut sent = 0;
            let mut got = Vec::new();
            let mut their = None;
            let cuts = [1usize, 1, 2, 3, 17, 65_535, 65_537, 70_001, 5, 131_072, 9];
            let mut k = 0;
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..400 {
                if sent < msg.len() {
                    sent += p.a.stream_write(id, &msg[sent..]).unwrap();
                }
                while let Some(x) = p.a.poll_transmit() {
                    let mut x = &x[..];
                    while !x.is_empty() {
                        let n = cuts[k % cuts.len()].min(x.len());
                        k += 1;
                        p.b.handle_input(p.now, &x[..n]);
                        x = &x[n..];
                    }
                }
                p.ev_b.extend(std::iter::from_fn(|| p.b.poll_event()));
                if their.is_none() {
                    their = p.ev_b.iter().find_map(|e| if let Event::InboundStream { id, .. } = e { Some(*id) } else { None });
                }
                if let Some(t) = their {
                    while let ReadResult::Data(n) = p.b.stream_read(t, &mut buf) {
                        got.extend_from_slice(&buf[..n]);
                    }
                }
                while let Some(x) = p.b.poll_transmit() {
                    p.a.handle_input(p.now, &x);
                }
                p.ev_a.extend(std::iter::from_fn(|| p.a.poll_event()));
                if got.len() == msg.len() {
                    break;
                }
            }
            assert!(p.a.is_open() && p.b.is_open(), "{security}");
            assert_eq!(got.len(), msg.len(), "{security}");
            assert!(got == msg, "{security}: bytes differ");
        }
    }

    /// Two streams write into a small output buffer, with muxer control frames (pings) queued between
    /// the first writes: the buffer fills (`is_backed_up`, writes cut short), `poll_transmit` frees it
    /// and raises `Writable` (the only wake-up: the reader sends no window update), and every byte of
    /// both streams arrives in order, over Noise and TLS.
    #[test]
    fn conn_writes_blocked_by_a_full_output_resume_on_writable_and_keep_order() {
        for security in [noise::PROTOCOL_ID, tls::PROTOCOL_ID] {
            let mut p = Pair::build(|ca, _| {
                ca.security = vec![security.to_string()];
                ca.limits.yamux.max_out_buffer = 40_000;
            });
            p.pump();
            let ids = [p.a.open_stream_lazy("/echo/1".into()).unwrap(), p.a.open_stream_lazy("/echo/1".into()).unwrap()];
            let msgs: Vec<Vec<u8>> = (0..2u32).map(|k| (0..150_000u32).map(|i| (i * (5 + k) + i / 97) as u8).collect()).collect();
            let mut sent = [0usize; 2];
            let mut blocked = [false; 2];
            let (mut refused, mut backed_up, mut resumed) = (0, 0, 0);
            for round in 0..2_000u32 {
                for k in 0..2 {
                    if sent[k] < msgs[k].len() && !blocked[k] {
                        let end = (sent[k] + 25_001).min(msgs[k].len());
                        let n = p.a.stream_write(ids[k], &msgs[k][sent[k]..end]).unwrap();
                        if n < end - sent[k] {
                            // Cut short or refused: wait for `Writable`.
                            refused += 1;
                            blocked[k] = true;
                        }
                        sent[k] += n;
                    }
                    if round < 3 {
                        assert!(p.a.ping(round), "{security}");
                    }
                }
                backed_up += usize::from(p.a.is_backed_up());
                // The socket takes one batch per round, so writes meet a full buffer.
                if let Some(x) = p.a.poll_transmit() {
                    p.b.handle_input(p.now, &x);
                }
                for e in std::iter::from_fn(|| p.a.poll_event()) {
                    if let Event::Writable(id) = e {
                        if let Some(k) = ids.iter().position(|i| *i == id) {
                            resumed += usize::from(blocked[k]);
                            blocked[k] = false;
                        }
                    }
                }
                // `b` reads only at the end: no window update reaches `a`, so only the output buffer going
                // out can wake a blocked writer (both streams fit in yamux's initial 256 KiB window).
                if sent == [150_000; 2] {
                    break;
                }
            }
            while let Some(x) = p.a.poll_transmit() {
                p.b.handle_input(p.now, &x);
            }
            // Streams arrive in the order they were opened.
            let theirs: Vec<StreamId> = std::iter::from_fn(|| p.b.poll_event())
                .filter_map(|e| if let Event::InboundStream { id, .. } = e { Some(id) } else { None })
                .collect();
            let mut buf = vec![0u8; 1 << 16];
            let got: Vec<Vec<u8>> = theirs
                .iter()
                .map(|id| {
                    let mut v = Vec::new();
                    while let ReadResult::Data(n) = p.b.stream_read(*id, &mut buf) {
                        v.extend_from_slice(&buf[..n]);
                    }
                    v
                })
                .collect();
            assert!(p.a.is_open() && p.b.is_open(), "{security}");
            assert!(refused > 0 && backed_up > 0 && resumed > 0, "{security}: {refused} {backed_up} {resumed}");
            assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [150_000, 150_000], "{security}");
            assert!(got == msgs, "{security}: bytes differ");
        }
    }

    #[test]
    fn conn_upgrade_with_early_muxer_then_stream() {
        upgrade_and_echo(true);
    }

    #[test]
    fn conn_upgrade_with_mss_muxer_then_stream() {
        upgrade_and_echo(false);
    }

    #[test]
    fn conn_mplex_over_noise_and_tls() {
        upgrade_and_echo_full(true, noise::PROTOCOL_ID, mplex::PROTOCOL_ID);
        upgrade_and_echo_full(false, noise::PROTOCOL_ID, mplex::PROTOCOL_ID);
        upgrade_and_echo_full(false, tls::PROTOCOL_ID, mplex::PROTOCOL_ID);
    }

    #[test]
    fn conn_tls_with_alpn_muxer_then_stream() {
        upgrade_and_echo_with(true, tls::PROTOCOL_ID);
    }

    #[test]
    fn conn_tls_with_mss_muxer_then_stream() {
        upgrade_and_echo_with(false, tls::PROTOCOL_ID);
    }

    #[test]
    fn conn_unsupported_protocol_fails_stream_not_connection() {
        let mut p = Pair::new(true);
        p.pump();
        let id = p.a.open_stream(vec!["/nope".into()]).unwrap();
        p.pump();
        assert!(p.ev_a.iter().any(|e| matches!(e, Event::OutboundFailed { id: i, .. } if *i == id)));
        assert!(p.a.is_open() && p.b.is_open());
    }

    #[test]
    fn conn_lazy_stream_sends_its_request_with_the_proposal_and_a_refusal_resets_it() {
        let mut p = Pair::new(true);
        p.pump();
        let id = p.a.open_stream_lazy("/echo/1".into()).unwrap();
        // Ready at once, and writable before the listener said anything.
        assert_eq!(p.a.poll_event(), Some(Event::OutboundReady { id, protocol: "/echo/1".into() }));
        assert_eq!(p.a.stream_write(id, b"ping").unwrap(), 4);
        p.a.stream_close(id);
        // One flight carries the proposal and the request: the listener has both after one delivery.
        let x = p.a.poll_transmit().unwrap();
        p.b.handle_input(p.now, &x);
        let their = std::iter::from_fn(|| p.b.poll_event())
            .find_map(|e| if let Event::InboundStream { id, .. } = e { Some(id) } else { None })
            .expect("inbound stream");
        let mut buf = [0u8; 16];
        assert_eq!(p.b.stream_read(their, &mut buf), ReadResult::Data(4));
        assert_eq!(&buf[..4], b"ping");
        p.b.stream_write(their, b"pong").unwrap();
        p.pump();
        // The confirmation is consumed; the answer is read as usual, with no second OutboundReady.
        assert!(!p.ev_a.iter().any(|e| matches!(e, Event::OutboundReady { .. })));
        assert_eq!(p.a.stream_read(id, &mut buf), ReadResult::Data(4));
        assert_eq!(&buf[..4], b"pong");

        // A protocol the listener does not serve: the stream held as open is reset.
        let id = p.a.open_stream_lazy("/nope".into()).unwrap();
        p.a.stream_write(id, b"hello?").unwrap();
        p.pump();
        assert!(p.ev_a.contains(&Event::Reset(id)), "{:?}", p.ev_a);
        assert_eq!(p.a.stream_read(id, &mut buf), ReadResult::Reset);
        p.a.stream_release(id);
        assert!(p.a.is_open() && p.b.is_open());
    }

    #[test]
    fn conn_garbage_closes_with_reason_and_timeout_fires() {
        let mut rng = crate::rng::from_seed([1; 32]);
        let k = Keypair::generate_ed25519(&mut rng);
        let mut c = Connection::new(Role::Listener, Config::new(k.clone()), None, Instant(0), [0; 32]);
        c.handle_input(Instant(1), b"\x05GET /\r\n");
        let evs: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        assert!(matches!(&evs[..], [Event::Closed { .. }]));
        let mut c = Connection::new(Role::Listener, Config::new(k), None, Instant(0), [0; 32]);
        c.handle_timeout(Instant(1));
        assert!(!c.is_closed());
        c.handle_timeout(Instant(0) + Duration::from_secs(15));
        assert!(matches!(c.poll_event(), Some(Event::Closed { reason: CloseReason::HandshakeTimeout })));
    }

    #[test]
    fn conn_wrong_peer_id_fails_handshake() {
        let mut p = Pair::new(true);
        let mut rng = crate::rng::from_seed([77; 32]);
        let other = Keypair::generate_ed25519(&mut rng).peer_id();
        p.a = Connection::new(Role::Dialer, Config::new(Keypair::generate_ed25519(&mut rng)), Some(other), Instant(0), [3; 32]);
        p.pump();
        assert!(p.a.is_closed());
        assert!(p.ev_a.iter().any(|e| matches!(e, Event::Closed { reason: CloseReason::PeerIdMismatch { .. } })));
    }
}
