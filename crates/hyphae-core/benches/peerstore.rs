//! The peerstore at a million peers: each with 4 addresses (2 IPv4, 2 IPv6; TCP and QUIC), 12 protocols,
//! an Ed25519 key (inlined in its peer id) and an agent string, as identify tells them. Prints resident
//! and structural bytes per peer, insert and lookup rates. Run:
//! `cargo bench -p hyphae-core --bench peerstore` (PEERS=N to change the count).

use hyphae_core::identify::Info;
use hyphae_core::node::peerstore::{Limits, Peerstore};
use hyphae_core::{Instant, PeerId};
use rand_core::{RngCore, SeedableRng};
use std::time::Instant as Clock;

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0)
        * 1024
}

fn main() {
    let n: usize = std::env::var("PEERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut rng = rand_chacha::ChaCha8Rng::from_seed([7; 32]);
    let protocols: Vec<String> = [
        "/ipfs/id/1.0.0",
        "/ipfs/id/push/1.0.0",
        "/ipfs/ping/1.0.0",
        "/ipfs/kad/1.0.0",
        "/meshsub/1.2.0",
        "/meshsub/1.1.0",
        "/meshsub/1.0.0",
        "/floodsub/1.0.0",
        "/libp2p/autonat/1.0.0",
        "/libp2p/circuit/relay/0.2.0/stop",
        "/libp2p/dcutr",
        "/ipfs/bitswap/1.2.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agents = ["kubo/0.32.1/", "go-libp2p/0.41.0", "rust-libp2p/0.57", "js-libp2p/3.0.2", "hyphae/0.1.0"];
    // Peer ids of Ed25519 keys (identity multihashes of the key protobuf); random key bytes stand for
    // real keys: the store never checks them, and generating a million keys would time the wrong thing.
    let peers: Vec<PeerId> = (0..n)
        .map(|_| {
            let mut pb = vec![0x08, 0x01, 0x12, 0x20];
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            pb.extend_from_slice(&k);
            PeerId::from_public_key_protobuf(&pb)
        })
        .collect();
    let infos: Vec<Info> = (0..n)
        .map(|i| {
            let a = rng.next_u32();
            let b = [rng.next_u64(), rng.next_u64()];
            let v4 = format!("{}.{}.{}.{}", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
            let v6 = format!("2001:db8:{:x}:{:x}::{:x}", b[0] & 0xffff, b[1] & 0xffff, (b[0] >> 16) & 0xffff);
            Info {
                protocols: protocols.clone(),
                listen_addrs: vec![
                    format!("/ip4/{v4}/tcp/4001").parse().unwrap(),
                    format!("/ip4/{v4}/udp/4001/quic-v1").parse().unwrap(),
                    format!("/ip6/{v6}/tcp/4001").parse().unwrap(),
                    format!("/ip6/{v6}/udp/4001/quic-v1").parse().unwrap(),
                ],
                agent_version: Some(agents[i % agents.len()].to_string()),
                protocol_version: Some("ipfs/0.1.0".into()),
                ..Info::default()
            }
        })
        .collect();
    let never = |_: &PeerId| false;
    let before = rss();
    let mut ps = Peerstore::new(Limits { max_peers: n, max_addrs: 4 * n, ..Limits::default() });
    let t = Clock::now();
    for (p, i) in peers.iter().zip(&infos) {
        ps.apply_identify(p, i, Instant::ZERO, &never);
    }
    let insert = t.elapsed();
    let after = rss();
    let t = Clock::now();
    let mut found = 0usize;
    for p in peers.iter().rev() {
        found += ps.supports(p, "/ipfs/kad/1.0.0") as usize;
    }
    let lookup = t.elapsed();
    let t = Clock::now();
    let mut addrs = 0usize;
    for p in peers.iter().take(n / 10) {
        addrs += ps.get(p).map_or(0, |r| r.addrs.len());
    }
    let decode = t.elapsed();
    assert_eq!(found, n);
    assert_eq!(ps.len(), n);
    assert_eq!(addrs, 4 * (n / 10));
    println!("| peers | resident B/peer | structural B/peer | insert /s | lookup (supports) /s | full record decode /s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        (after.saturating_sub(before)) as f64 / n as f64,
        ps.heap_bytes() as f64 / n as f64,
        n as f64 / insert.as_secs_f64(),
        n as f64 / lookup.as_secs_f64(),
        (n / 10) as f64 / decode.as_secs_f64()
    );
}
