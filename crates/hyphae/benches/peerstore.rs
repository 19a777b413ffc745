//! The peerstore at a million peers: each with 4 addresses (2 IPv4, 2 IPv6; TCP and QUIC), 12 protocols,
//! an Ed25519 key (inlined in its peer id) and an agent string, as identify tells them. Prints resident
//! and structural bytes per peer, insert and lookup rates, then the persistent store: writing all of
//! them (one transaction), its file size, and loading them into a new peerstore. Run:
//! `cargo bench -p hyphae --bench peerstore` (PEERS=N to change the count).
#[path = "../tests/common/mod.rs"]
mod common;

use hyphae::core::identify::Info;
use hyphae::core::node::peerstore::{Limits, Peerstore};
use hyphae::core::{Instant, PeerId};
use hyphae::peerdb::PeerDb;
use rand_core::{RngCore, SeedableRng};
use std::time::Instant as Clock;

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
    let before = common::rss_bytes("self");
    let mut ps = Peerstore::new(Limits { max_peers: n, max_addrs: 4 * n, ..Limits::default() });
    let t = Clock::now();
    for (p, i) in peers.iter().zip(&infos) {
        ps.apply_identify(p, i, Instant::ZERO, &never);
    }
    let insert = t.elapsed();
    let after = common::rss_bytes("self");
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

    // The persistent store: everything in one durable transaction, then a cold load.
    let dir = std::env::temp_dir().join(format!("hyphae-psbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("peerstore.redb");
    let unix = 1_800_000_000;
    let t = Clock::now();
    let changes = ps.take_changes(Instant::ZERO, unix);
    let encode = t.elapsed();
    let db = PeerDb::open(&path).unwrap();
    let t = Clock::now();
    db.apply(&changes).unwrap();
    let write = t.elapsed();
    drop(db);
    drop(changes);
    let size = std::fs::metadata(&path).unwrap().len();
    let t = Clock::now();
    let db = PeerDb::open(&path).unwrap();
    let rows = db.load_all().unwrap();
    let mut back = Peerstore::new(Limits { max_peers: n, max_addrs: 4 * n, ..Limits::default() });
    for (p, r) in &rows {
        back.load(p, r, Instant::ZERO, unix + 1).unwrap();
    }
    let load = t.elapsed();
    assert_eq!(back.len(), n);
    assert_eq!(back.get(&peers[n / 2]).unwrap().addrs.len(), 4);
    println!();
    println!("| peers | encode | write (one commit) | file size B/peer | cold load (open + read + rebuild) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {n} | {:.2} s | {:.2} s | {:.0} | {:.2} s |",
        encode.as_secs_f64(),
        write.as_secs_f64(),
        size as f64 / n as f64,
        load.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
