#![no_main]
//! The node machine with the Kademlia service (server mode) under arbitrary connection events, stream
//! contents (so kad requests and responses are arbitrary) and commands: never panic; the routing table,
//! the stores and the queries stay within their limits; events stay bounded.
use hyphae_core::conn::{CloseReason, Event, OpenError, Role, StreamId};
use hyphae_core::node::{self, ConnId, Node};
use hyphae_core::kad::{self, service::KadService, Mode};
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
    let kcfg = kad::Config { mode: Mode::Server, ..kad::Config::default() };
    let (max_queries, k) = (kcfg.max_queries, kcfg.k);
    let (max_records, max_keys) = (kcfg.store.max_records, kcfg.store.max_provider_keys);
    n.add_service(Instant::ZERO, Box::new(KadService::new(me.peer_id(), kcfg)));
    let mut m = Fake { data, next: 1 };
    let mut now = Instant::ZERO;
    let conn = ConnId(1);
    n.admit(conn, Role::Dialer, Multiaddr::empty(), None).expect("room for one");
    let _ = n.on_conn_event(now, conn, established(&peer, them), &mut m);
    let protocols = [kad::PROTOCOL_ID, kad::PROTOCOL_ID, identify::PROTOCOL_ID, ping::PROTOCOL_ID];
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
            6 => {
                let mode = [Mode::Client, Mode::Server, Mode::Auto][usize::from(m.byte()) % 3];
                n.with_service::<KadService, _>(now, |s, cx| s.set_mode(cx, mode));
                n.update_protocols(now);
            }
            7 => {
                let key = vec![m.byte(); usize::from(m.byte() % 40)];
                let op = m.byte();
                n.with_service::<KadService, _>(now, |s, cx| {
                    let addr: Multiaddr = "/ip4/10.0.0.2/tcp/4001".parse().expect("literal");
                    s.add_peer(cx, &peer, &[addr]);
                    let _ = match op % 5 {
                        0 => s.bootstrap(cx),
                        1 => s.find_providers(cx, key, 5),
                        2 => s.get_value(cx, key, 2),
                        3 => s.provide(cx, key),
                        _ => s.get_closest_peers(cx, key),
                    };
                });
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
                if let Some(key) = &info.public_key {
                    assert!(peer.matches(key), "identify accepted a key that is not the peer's");
                }
            }
        }
        assert!(n.poll_timeout().is_some() || n.connected_peers().is_empty());
        let s = n.service_mut::<KadService>().expect("registered");
        assert!(s.queries_in_flight() <= max_queries);
        assert!(s.table().bucket_sizes().iter().all(|b| *b <= k));
        assert!(s.store().num_records() <= max_records && s.store().num_provider_keys() <= max_keys);
        assert!(n.stats().events_dropped == 0, "the driver drains every call: nothing dropped");
    }
    assert!(events <= 4 * data.len() + 4);
});
