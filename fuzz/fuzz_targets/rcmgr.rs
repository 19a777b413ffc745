//! The resource manager under any sequence of opens, handshakes finishing and closes: no panic, no
//! scope above its limit, and everything released once every connection is closed.
#![no_main]
use hyphae_core::rcmgr::{Direction, Limits, ResourceManager, Usage};
use hyphae_core::PeerId;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fuzz_target!(|data: &[u8]| {
    let mut l = Limits::default();
    l.system.conns = 20;
    l.system.conns_inbound = 12;
    l.transient.conns_inbound = 6;
    l.peer.conns = 3;
    l.ip.subnets[0].max = 2;
    l.ip.allowlist = vec!["10.0.0.0/30".parse().unwrap()];
    let peers: Vec<PeerId> = (0..4u8)
        .map(|i| {
            let mut b = vec![0x12, 0x20];
            b.extend([i; 32]);
            PeerId::from_bytes(&b).unwrap()
        })
        .collect();
    let mut rc = ResourceManager::new(l.clone());
    let mut open = std::collections::BTreeSet::new();
    for op in data.chunks(3) {
        let [a, b, c] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
        let conn = (b % 32) as u64;
        match a % 3 {
            0 => {
                let dir = if c & 1 == 0 { Direction::Inbound } else { Direction::Outbound };
                let ip = if c & 2 == 0 {
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, c >> 4))
                } else {
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, (c >> 4) as u16, 0, 0, 0, 1))
                };
                if !open.contains(&conn) && rc.open_conn(conn, dir, Some(ip), c & 4 == 0).is_ok() {
                    open.insert(conn);
                }
            }
            1 => {
                let _ = rc.set_peer(conn, &peers[(c % 4) as usize]);
            }
            _ => {
                rc.close_conn(conn);
                open.remove(&conn);
            }
        }
        let s = rc.system();
        assert!(s.conns_inbound <= l.system.conns_inbound + l.allowlisted_system.conns_inbound);
        for p in &peers {
            let u = rc.peer(p);
            assert!(u.conns_inbound + u.conns_outbound <= l.peer.conns);
        }
    }
    for c in open {
        rc.close_conn(c);
    }
    assert_eq!(rc.system(), Usage::default());
    assert_eq!(rc.transient(), Usage::default());
});
