#![no_main]
//! The node machine with the Kademlia service (server mode) under arbitrary connection events, stream
//! contents (so kad requests and responses are arbitrary) and commands: never panic; the routing table,
//! the stores and the queries stay within their limits; events stay bounded.
use hyphae_core::conn::Role;
use hyphae_core::node::{self, Node};
use hyphae_core::kad::{self, service::KadService, Mode};
use hyphae_core::{identify, ping, Duration, Instant, Multiaddr};
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
    let kcfg = kad::Config { mode: Mode::Server, ..kad::Config::default() };
    let (max_queries, k) = (kcfg.max_queries, kcfg.k);
    let (max_records, max_keys) = (kcfg.store.max_records, kcfg.store.max_provider_keys);
    n.add_service(Instant::ZERO, Box::new(KadService::new(me.peer_id(), kcfg)));
    let mut m = Fake { data, next: 1 };
    let mut now = Instant::ZERO;
    connect(&mut n, &mut m, now, Role::Dialer);
    let protocols = [kad::PROTOCOL_ID, kad::PROTOCOL_ID, identify::PROTOCOL_ID, ping::PROTOCOL_ID];
    let mut events = 0usize;
    while !m.data.is_empty() {
        let op = m.byte();
        if !connection_step(&mut n, &mut m, &mut now, op, &protocols) {
            match op % 9 {
                6 => {
                    let mode = [Mode::Client, Mode::Server, Mode::Auto][usize::from(m.byte()) % 3];
                    n.with_service::<KadService, _>(now, |s, cx| s.set_mode(cx, mode));
                    n.update_protocols(now);
                }
                _ => {
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
            }
        }
        events += drain_checked(&mut n);
        let s = n.service_mut::<KadService>().expect("registered");
        assert!(s.queries_in_flight() <= max_queries);
        assert!(s.table().bucket_sizes().iter().all(|b| *b <= k));
        assert!(s.store().num_records() <= max_records && s.store().num_provider_keys() <= max_keys);
    }
    assert!(events <= 4 * data.len() + 4);
});
