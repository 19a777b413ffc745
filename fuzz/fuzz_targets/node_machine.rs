#![no_main]
//! The node machine (the router with its identify and ping services) under arbitrary connection events
//! and stream contents: never panic; an identify result always names a key that matches the peer; events
//! and queued bytes stay bounded.
use hyphae_core::conn::{CloseReason, Event, OpenError, Role, StreamId};
use hyphae_core::node::{self, ConnId, Node};
use hyphae_core::{identify, ping, Duration, Instant, Multiaddr};
use libfuzzer_sys::fuzz_target;

#[path = "fake_conn.rs"]
mod fake_conn;
use fake_conn::{established, keys, Fake};

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
