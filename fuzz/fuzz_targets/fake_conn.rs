//! Shared by the node-machine fuzz targets: a connection whose streams return what the fuzzer says.
use hyphae_core::conn::{CloseReason, Event, OpenError, ReadResult, Role, StreamError, StreamId, Streams};
use hyphae_core::node::{self, ConnId, Node};
use hyphae_core::{identify, Duration, Instant, Keypair, Multiaddr};
use std::sync::OnceLock;

/// A connection whose streams return what the fuzzer says.
pub struct Fake<'a> {
    pub data: &'a [u8],
    pub next: u32,
}

impl Fake<'_> {
    pub fn byte(&mut self) -> u8 {
        let (b, rest) = self.data.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.data = rest;
        b
    }
}

impl Streams for Fake<'_> {
    fn open_stream(&mut self, _now: Instant, _p: Vec<String>) -> Result<StreamId, StreamError> {
        self.next += 2;
        Ok(StreamId(self.next))
    }
    fn stream_read(&mut self, _now: Instant, _s: StreamId, buf: &mut [u8]) -> ReadResult {
        match self.byte() % 8 {
            0 => ReadResult::Pending,
            1 => ReadResult::Eof,
            2 => ReadResult::Reset,
            _ => {
                let n = (self.byte() as usize).min(buf.len()).min(self.data.len());
                if n == 0 {
                    return ReadResult::Pending;
                }
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                ReadResult::Data(n)
            }
        }
    }
    fn stream_write(&mut self, _now: Instant, _s: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        // Partial writes too, so the router's per-stream buffers fill and drain.
        Ok(data.len().min(usize::from(self.byte()) * 4))
    }
    fn stream_close(&mut self, _now: Instant, _s: StreamId) {}
    fn stream_reset(&mut self, _now: Instant, _s: StreamId) {}
    fn stream_release(&mut self, _now: Instant, _s: StreamId) {}
    fn close(&mut self, _now: Instant) {}
    fn num_streams(&self) -> usize {
        self.data.len() % 3
    }
}

/// The events a real connection machine reports when it is established.
pub fn established(peer: &hyphae_core::PeerId, key: &Keypair) -> Event {
    Event::Established {
        peer: peer.clone(),
        public_key: Box::new(key.public()),
        security: "/noise".into(),
        muxer: "/yamux/1.0.0".into(),
        early_muxer: true,
        rtt: core::time::Duration::from_millis(40),
    }
}

pub fn keys() -> &'static (Keypair, Keypair) {
    static K: OnceLock<(Keypair, Keypair)> = OnceLock::new();
    K.get_or_init(|| {
        let mut r = hyphae_core::rng::from_seed([7; 32]);
        (Keypair::generate_ed25519(&mut r), Keypair::generate_ed25519(&mut r))
    })
}


/// The one connection both targets drive.
pub const CONN: ConnId = ConnId(1);

/// Admits the connection and establishes it with the second key of [`keys`].
pub fn connect(n: &mut Node, m: &mut Fake<'_>, now: Instant, role: Role) {
    let (_, them) = keys();
    n.admit(CONN, role, Multiaddr::empty(), None).expect("room for one");
    let _ = n.on_conn_event(now, CONN, established(&them.peer_id(), them), m);
}

/// The connection-level steps both targets take, chosen by `op % 9`: stream events (0–4), time passing
/// with timers and flushes (5), a reconnect (8). Returns `false` for the target's own ops (6, 7).
pub fn connection_step(n: &mut Node, m: &mut Fake<'_>, now: &mut Instant, op: u8, protocols: &[&str]) -> bool {
    let s = StreamId(u32::from(m.byte() % 16));
    match op % 9 {
        0 => {
            let protocol = protocols[usize::from(m.byte()) % protocols.len()].to_string();
            let _ = n.on_conn_event(*now, CONN, Event::InboundStream { id: s, protocol }, m);
        }
        1 => {
            let _ = n.on_conn_event(*now, CONN, Event::OutboundReady { id: s, protocol: String::new() }, m);
        }
        2 => {
            let _ = n.on_conn_event(*now, CONN, Event::Readable(s), m);
            let _ = n.on_conn_event(*now, CONN, Event::Writable(s), m);
        }
        3 => {
            let _ = n.on_conn_event(*now, CONN, Event::Reset(s), m);
        }
        4 => {
            let _ = n.on_conn_event(*now, CONN, Event::OutboundFailed { id: s, reason: OpenError::Reset }, m);
        }
        5 => {
            *now = *now + Duration::from_millis(u64::from(m.byte()) * 100);
            n.handle_timeout(*now);
            for id in n.due() {
                n.flush(*now, id, m);
            }
        }
        6 | 7 => return false,
        _ => {
            let _ = n.on_conn_event(*now, CONN, Event::Closed { reason: CloseReason::Remote }, m);
            connect(n, m, *now, Role::Listener);
        }
    }
    true
}

/// Drains the node's events, checking that identify only ever accepts the peer's own key, and that the
/// driver-side invariants hold. Returns how many events there were.
pub fn drain_checked(n: &mut Node) -> usize {
    let peer = keys().1.peer_id();
    let mut events = 0;
    while let Some(e) = n.poll_event() {
        events += 1;
        if let node::Event::Identify(identify::Event::Received { info, .. }) = &e {
            if let Some(k) = &info.public_key {
                assert!(peer.matches(k), "identify accepted a key that is not the peer's");
            }
        }
    }
    assert!(n.poll_timeout().is_some() || n.connected_peers().is_empty());
    assert!(n.stats().events_dropped == 0, "the driver drains every call: nothing dropped");
    events
}
