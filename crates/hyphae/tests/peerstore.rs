//! The persistent peerstore: a restarted host knows its peers without being told, and the store file
//! survives `kill -9` at any point of its writes with nothing acknowledged lost.

use hyphae::peerdb::PeerDb;
use hyphae::{Host, HostConfig, Stream};
use hyphae_core::node::peerstore::Change;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::TempDir;

/// A host with a data dir meets a peer, closes; a new host on the same dir reaches that peer by its
/// id alone (the saved addresses) and knows its protocols and agent before connecting.
#[tokio::test]
async fn peerstore_restart_reaches_a_known_peer_by_id_alone() {
    let dir = TempDir::new("psdb");
    let server = Host::new(HostConfig::ephemeral()).await.unwrap();
    server.set_stream_handler("/echo/1", |s: Stream| async move {
        let (mut r, mut w) = tokio::io::split(s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let addr = server.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap().remove(0);
    let peer = server.peer_id();
    let mut cfg = HostConfig::ephemeral();
    cfg.data_dir = Some(dir.0.clone());
    let a = Host::new(cfg.clone()).await.unwrap();
    a.connect(&addr).await.unwrap();
    a.identify(&peer).await.unwrap();
    a.close().await;
    drop(a);

    let b = Host::new(cfg).await.unwrap();
    let info = b.peer_info(&peer).expect("known after the restart");
    assert!(info.protocols.iter().any(|p| p == "/echo/1"), "{info:?}");
    assert!(info.agent_version.as_deref().is_some_and(|a| a.starts_with("hyphae/")));
    let s = b.new_stream(&peer, &["/echo/1"]).await.expect("dialed from the saved addresses");
    let (mut r, mut w) = tokio::io::split(s);
    w.write_all(b"again").await.unwrap();
    w.shutdown().await.unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"again");
    assert_eq!(b.known_peers_supporting("/echo/1").len(), 1);
}

/// `kill -9` at random points while a writer commits batches: the file always reopens, and every
/// batch the writer acknowledged (printed after its commit returned) is there, byte for byte.
#[tokio::test]
async fn peerstore_file_survives_kill_9_with_nothing_acknowledged_lost() {
    let dir = TempDir::new("psdb-kill");
    let path = dir.0.join("peerstore.redb");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    eprintln!("kill points from seed {seed}");
    let mut x = seed | 1;
    let mut total_acked = 0;
    for round in 0..12u64 {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["kill_9_writer", "--exact", "--nocapture", "--test-threads", "1"])
            .env("HYPHAE_PSDB_WRITER", format!("{} {round}", path.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        // xorshift: a kill point between 30 and 400 ms into the writes.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let wait = Duration::from_millis(30 + x % 370);
        let reader = tokio::spawn(async move {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s).await;
            s
        });
        tokio::time::sleep(wait).await;
        let pid = child.id().unwrap();
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        let _ = child.wait().await;
        let text = reader.await.unwrap();
        let acked: Vec<u64> = text.split_whitespace().filter_map(|w| w.strip_prefix("ack:")).map(|n| n.parse().unwrap()).collect();
        total_acked += acked.len();
        let db = PeerDb::open(&path).unwrap_or_else(|e| panic!("round {round}: the file does not reopen after kill -9: {e}"));
        let rows: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = db.load_all().unwrap().into_iter().collect();
        for b in &acked {
            for c in batch(round, *b) {
                assert_eq!(rows.get(&c.peer), c.record.as_ref(), "round {round} batch {b}: acknowledged, then lost");
            }
        }
    }
    eprintln!("{total_acked} acknowledged batches over 12 kills, none lost");
    assert!(total_acked > 0);
}

/// Batch `b` of round `r`: 50 peers' records (contents derived from r and b).
fn batch(r: u64, b: u64) -> Vec<Change> {
    (0..50u64)
        .map(|i| {
            // A distinct key per (round, batch, peer): each row is written once.
            let mut peer = vec![0x12, 0x20, r as u8, i as u8];
            peer.extend_from_slice(&b.to_be_bytes());
            peer.extend((0..20u64).map(|j| ((r + b + i + j) % 251) as u8));
            let record: Vec<u8> = (0..(100 + (i % 7) * 40)).map(|j| ((r + b + i + j) % 256) as u8).collect();
            Change { peer, record: Some(record) }
        })
        .collect()
}

/// The writer the kill test runs as a child (only with `HYPHAE_PSDB_WRITER` = "PATH ROUND").
#[test]
fn kill_9_writer() {
    let Ok(spec) = std::env::var("HYPHAE_PSDB_WRITER") else { return };
    let (path, round) = spec.rsplit_once(' ').unwrap();
    let round: u64 = round.parse().unwrap();
    let db = PeerDb::open(std::path::Path::new(path)).unwrap();
    use std::io::Write;
    for b in 0.. {
        db.apply(&batch(round, b)).unwrap();
        // Acknowledged only once the commit returned.
        println!("ack:{b}");
        std::io::stdout().flush().unwrap();
    }
}
