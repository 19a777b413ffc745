#![no_main]
//! The node machine (the router with its identify and ping services) under arbitrary connection events
//! and stream contents: never panic; an identify result always names a key that matches the peer; events
//! and queued bytes stay bounded.
use hyphae_core::conn::{CloseReason, Event, OpenError, ReadResult, Role, StreamError, StreamId, Streams};
use hyphae_core::node::{self, ConnId, Node};
use hyphae_core::{identify, ping, Duration, Instant, Keypair, Multiaddr};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A connection whose streams return what the fuzzer says.
struct Fake<'a> {
    data: &'a [u8],
    next: u32,
}

impl Fake<'_> {
    fn byte(&mut self) -> u8 {
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
fn established(peer: &hyphae_core::PeerId, key: &Keypair) -> Event {
    Event::Established {
        peer: peer.clone(),
        public_key: Box::new(key.public()),
        security: "/noise".into(),
        muxer: "/yamux/1.0.0".into(),
        early_muxer: true,
    }
}

fn keys() -> &'static (Keypair, Keypair) {
    static K: OnceLock<(Keypair, Keypair)> = OnceLock::new();
    K.get_or_init(|| {
        let mut r = hyphae_core::rng::from_seed([7; 32]);
        (Keypair::generate_ed25519(&mut r), Keypair::generate_ed25519(&mut r))
    })
}

fuzz_target!(|data: &[u8]| {
    let (me, them) = keys();
    let peer = them.peer_id();
    let mut cfg = node::Config::new(me.clone(), [1; 32]);
    cfg.ping.interval = Some(Duration::from_secs(1));
    let mut n = Node::new(cfg, Instant::ZERO);
    let mut m = Fake { data, next: 1 };
    let mut now = Instant::ZERO;
    let conn = ConnId(1);
    n.admit(conn, Role::Dialer, Multiaddr::empty(), None).expect("room for one");
    let _ = n.on_conn_event(now, conn, established(&peer, them), &mut m);
    let protocols = [identify::PROTOCOL_ID, identify::PUSH_PROTOCOL_ID, ping::PROTOCOL_ID, "/other/1"];
    let mut events = 0usize;
    while !m.data.is_empty() {
        let op = m.byte();
        let s = StreamId(u32::from(m.byte() % 16));
        match op % 9 {
            0 => {
                let protocol = protocols[usize::from(m.byte()) % protocols.len()].to_string();
                let _ = n.on_conn_event(now, conn, Event::InboundStream { id: s, protocol }, &mut m);
            }
            1 => {
                let _ = n.on_conn_event(now, conn, Event::OutboundReady { id: s, protocol: String::new() }, &mut m);
            }
            2 => {
                let _ = n.on_conn_event(now, conn, Event::Readable(s), &mut m);
                let _ = n.on_conn_event(now, conn, Event::Writable(s), &mut m);
            }
            3 => {
                let _ = n.on_conn_event(now, conn, Event::Reset(s), &mut m);
            }
            4 => {
                let _ = n.on_conn_event(now, conn, Event::OutboundFailed { id: s, reason: OpenError::Reset }, &mut m);
            }
            5 => {
                now = now + Duration::from_millis(u64::from(m.byte()) * 100);
                n.handle_timeout(now);
                for id in n.due() {
                    n.flush(now, id, &mut m);
                }
            }
            6 => n.set_protocols(now, vec![format!("/p/{}", m.byte())]),
            7 => {
                let _ = n.ping(now, &peer);
            }
            _ => {
                let _ = n.on_conn_event(now, conn, Event::Closed { reason: CloseReason::Remote }, &mut m);
                n.admit(conn, Role::Listener, Multiaddr::empty(), None).expect("room again");
                let _ = n.on_conn_event(now, conn, established(&peer, them), &mut m);
            }
        }
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
    }
    assert!(events <= 4 * data.len() + 4);
});
