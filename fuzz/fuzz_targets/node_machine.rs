#![no_main]
//! The node machine (the router with its identify and ping services) under arbitrary connection events
//! and stream contents: never panic; an identify result always names a key that matches the peer; events
//! and queued bytes stay bounded.
use hyphae_core::conn::Role;
use hyphae_core::node::{self, Node};
use hyphae_core::{identify, ping, Duration, Instant};
use libfuzzer_sys::fuzz_target;

#[path = "fake_conn.rs"]
mod fake_conn;
use fake_conn::{connect, connection_step, drain_checked, keys, Fake};

fuzz_target!(|data: &[u8]| {
    let (me, them) = keys();
    let peer = them.peer_id();
    let mut cfg = node::Config::new(me.clone(), [1; 32]);
    cfg.ping.interval = Some(Duration::from_secs(1));
    let mut n = Node::new(cfg, Instant::ZERO);
    let mut m = Fake { data, next: 1 };
    let mut now = Instant::ZERO;
    connect(&mut n, &mut m, now, Role::Dialer);
    let protocols = [identify::PROTOCOL_ID, identify::PUSH_PROTOCOL_ID, ping::PROTOCOL_ID, "/other/1"];
    let mut events = 0usize;
    while !m.data.is_empty() {
        let op = m.byte();
        if !connection_step(&mut n, &mut m, &mut now, op, &protocols) {
            match op % 9 {
                6 => n.set_protocols(now, vec![format!("/p/{}", m.byte())]),
                _ => {
                    let _ = n.ping(now, &peer);
                }
            }
        }
        events += drain_checked(&mut n);
    }
    assert!(events <= 4 * data.len() + 4);
});
