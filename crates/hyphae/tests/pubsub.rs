//! `host.pubsub()` between hyphae hosts on loopback (interop with go, js and rust is in interop_pubsub.rs).

use hyphae::{Host, HostConfig, KeyType, Keypair, Multiaddr, PeerId};
use std::time::Duration;

async fn host(ty: KeyType) -> (Host, Multiaddr) {
    let h = Host::new(HostConfig::new(Keypair::generate(ty, &mut rand_core::OsRng))).await.unwrap();
    let a = h.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    (h, a[0].clone())
}

/// Waits until `h` knows `n` peers subscribed to `topic`.
async fn subscribers(h: &Host, topic: &str, n: usize) {
    for _ in 0..200 {
        if h.pubsub().peers(Some(topic)).len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never saw {n} subscribers of {topic}", h.peer_id());
}

async fn next(s: &mut hyphae::Subscription) -> hyphae::PubsubMessage {
    tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("a message within 10 s").expect("subscription open")
}

#[tokio::test]
async fn pubsub_messages_cross_a_line_of_three_hosts_signed_by_their_author() {
    // a – b – c: c hears a only through b's forwarding. RSA for b: its key travels in `key`.
    let (a, _) = host(KeyType::Ed25519).await;
    let (b, addr_b) = host(KeyType::Rsa).await;
    let (c, _) = host(KeyType::Secp256k1).await;
    a.connect(&addr_b).await.unwrap();
    c.connect(&addr_b).await.unwrap();
    let mut sa = a.pubsub().subscribe("chat");
    let mut sb = b.pubsub().subscribe("chat");
    let mut sc = c.pubsub().subscribe("chat");
    subscribers(&b, "chat", 2).await;
    subscribers(&a, "chat", 1).await;
    subscribers(&c, "chat", 1).await;
    // Wait for the mesh (grafts go out at once on subscribe, and on the first heartbeat).
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.pubsub().publish("chat", b"from a".to_vec()).unwrap();
    let m = next(&mut sc).await;
    assert_eq!((m.data.as_slice(), m.from.as_ref(), &m.source), (&b"from a"[..], Some(&a.peer_id()), &b.peer_id()));
    assert_eq!(next(&mut sb).await.data, b"from a");
    b.pubsub().publish("chat", b"from b".to_vec()).unwrap();
    assert_eq!(next(&mut sa).await.from, Some(b.peer_id()));
    assert_eq!(next(&mut sc).await.from, Some(b.peer_id()));
    c.pubsub().publish("chat", vec![7u8; 100_000]).unwrap();
    assert_eq!(next(&mut sa).await.data.len(), 100_000);
    // Nobody hears its own message, and each message arrives once.
    assert_eq!(next(&mut sb).await.data.len(), 100_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sa.next_now().is_none() && sb.next_now().is_none() && sc.next_now().is_none());
    assert_eq!(b.pubsub().stats().invalid_messages, 0);
    assert_eq!(b.pubsub().mesh_peers("chat").len(), 2);
}

#[tokio::test]
async fn pubsub_publish_without_subscribers_fails_and_unsubscribe_leaves_the_mesh() {
    let (a, _) = host(KeyType::Ed25519).await;
    let (b, addr_b) = host(KeyType::Ed25519).await;
    let err = a.pubsub().publish("t", b"x".to_vec()).unwrap_err();
    assert!(matches!(err, hyphae::Error::Publish(hyphae::core::gossipsub::PublishError::InsufficientPeers)), "{err}");
    a.connect(&addr_b).await.unwrap();
    let _sa = a.pubsub().subscribe("t");
    let _sb = b.pubsub().subscribe("t");
    subscribers(&a, "t", 1).await;
    for _ in 0..100 {
        if a.pubsub().mesh_peers("t") == vec![b.peer_id()] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(a.pubsub().mesh_peers("t"), vec![b.peer_id()]);
    assert!(b.pubsub().unsubscribe("t"));
    let gone = |h: &Host, p: &PeerId| !h.pubsub().peers(Some("t")).contains(p);
    for _ in 0..100 {
        if gone(&a, &b.peer_id()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone(&a, &b.peer_id()) && a.pubsub().mesh_peers("t").is_empty());
    assert_eq!(b.pubsub().topics(), Vec::<String>::new());
}

#[tokio::test]
async fn pubsub_a_validator_decides_what_is_delivered_and_forwarded() {
    // a – b – c: b validates (slowly, as a task); what it rejects or ignores reaches neither b's
    // subscription nor c.
    let (a, _) = host(KeyType::Ed25519).await;
    let (b, addr_b) = host(KeyType::Ed25519).await;
    let (c, _) = host(KeyType::Ed25519).await;
    a.connect(&addr_b).await.unwrap();
    c.connect(&addr_b).await.unwrap();
    b.pubsub().set_validator("v", |m: hyphae::PubsubMessage| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        match m.data.as_slice() {
            b"bad" => hyphae::Acceptance::Reject,
            b"old" => hyphae::Acceptance::Ignore,
            _ => hyphae::Acceptance::Accept,
        }
    });
    let _sa = a.pubsub().subscribe("v");
    let mut sb = b.pubsub().subscribe("v");
    let mut sc = c.pubsub().subscribe("v");
    subscribers(&b, "v", 2).await;
    subscribers(&a, "v", 1).await;
    subscribers(&c, "v", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for d in [&b"bad"[..], b"old", b"good"] {
        a.pubsub().publish("v", d.to_vec()).unwrap();
    }
    assert_eq!(next(&mut sb).await.data, b"good");
    assert_eq!(next(&mut sc).await.data, b"good");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sb.next_now().is_none() && sc.next_now().is_none());
    let s = b.pubsub().stats();
    assert_eq!((s.validation_accepted, s.validation_rejected, s.validation_ignored), (1, 1, 1));
}

/// The value of a metric line `name` (no labels) in `host.metrics_text()`.
fn metric(h: &Host, name: &str) -> f64 {
    let text = h.metrics_text();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The value of metric `name` once `done` holds for it, or its last value after `tries` looks 10 ms apart.
async fn metric_until(h: &Host, name: &str, tries: u32, done: impl Fn(f64) -> bool) -> f64 {
    let mut v = metric(h, name);
    for _ in 1..tries {
        if done(v) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        v = metric(h, name);
    }
    v
}

/// `HostConfig::send_limit`: a subscriber that stops reading its socket does not hold the others behind
/// a publisher's 32 KiB send gate — once its socket has taken nothing for 100 ms its connection stops
/// counting, and the other subscriber gets every large message while the stuck one is still frozen (on
/// a fresh connection TCP's window, not yamux's, is what fills: the socket itself stops taking bytes).
/// Then, everyone reading, every message arrives, the gate closed on the way, and nothing stays counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_send_gate_passes_large_messages_and_a_stuck_peer_does_not_hold_the_rest() {
    // b runs on its own one-thread runtime, which the test blocks to stop it reading its sockets.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (freeze_tx, freeze_rx) = std::sync::mpsc::channel::<()>();
    let (thaw_tx, thaw_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let b_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (b, addr) = host(KeyType::Ed25519).await;
            let mut sub = b.pubsub().subscribe("blocks");
            addr_tx.send(addr).unwrap();
            let drain = |sub: &mut hyphae::Subscription| while sub.next_now().is_some() {};
            while freeze_rx.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                drain(&mut sub);
            }
            // Frozen: nothing on this runtime runs (its socket readers included) until thawed.
            thaw_rx.recv_timeout(Duration::from_secs(60)).unwrap();
            while stop_rx.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                drain(&mut sub);
            }
            b.close().await;
        });
    });
    let addr_b = tokio::task::spawn_blocking(move || addr_rx.recv().unwrap()).await.unwrap();
    let mut cfg = HostConfig::new(Keypair::generate(KeyType::Ed25519, &mut rand_core::OsRng));
    cfg.send_limit = Some(32 << 10);
    let a = Host::new(cfg).await.unwrap();
    let (c, addr_c) = host(KeyType::Ed25519).await;
    a.connect(&addr_b).await.unwrap();
    a.connect(&addr_c).await.unwrap();
    let mut sc = c.pubsub().subscribe("blocks");
    subscribers(&a, "blocks", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // b stops reading; 40 × 200 kB, far more than its socket takes: c still gets all of it.
    freeze_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..40u8 {
        a.pubsub().publish("blocks", vec![i; 200_000]).unwrap();
    }
    for i in 0..40u8 {
        assert_eq!(next(&mut sc).await.data, vec![i; 200_000], "c gets every message while b is frozen");
    }
    // c can finish before b's writer has waited out the 100 ms (a's flushes may reach c's connection
    // first): b's stall is counted once its socket has taken nothing for that long, so wait for it.
    let stalls = metric_until(&a, "hyphae_send_gate_stalls_total", 300, |v| v >= 1.0).await;
    assert!(stalls >= 1.0, "{}", a.metrics_text());
    assert!(metric(&a, "hyphae_send_gate_closed_total") >= 1.0, "{}", a.metrics_text());

    // Everyone reads again: more messages arrive and, once all is out, nothing stays counted.
    thaw_tx.send(()).unwrap();
    for i in 0..4u8 {
        a.pubsub().publish("blocks", vec![100 + i; 200_000]).unwrap();
    }
    for i in 0..4u8 {
        assert_eq!(next(&mut sc).await.data[0], 100 + i);
    }
    let unsent = metric_until(&a, "hyphae_send_gate_unsent_bytes", 500, |v| v == 0.0).await;
    assert_eq!(unsent, 0.0, "{}", a.metrics_text());
    stop_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || b_thread.join().unwrap()).await.unwrap();
}

/// The latency-aware mesh on real hosts: pings (`HostConfig::ping_interval`) reach the peerstore, and
/// gossipsub reads each peer's round trip from there before its heartbeat (`PeerStats::rtt`).
#[tokio::test]
async fn pubsub_round_trips_from_ping_reach_the_mesh() {
    let config = || HostConfig {
        ping_interval: Some(Duration::from_millis(100)),
        ..HostConfig::new(Keypair::generate(KeyType::Ed25519, &mut rand_core::OsRng))
    };
    let a = Host::new(config()).await.unwrap();
    let b = Host::new(config()).await.unwrap();
    let addr_b = b.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap()[0].clone();
    a.connect(&addr_b).await.unwrap();
    let _sa = a.pubsub().subscribe("t");
    let _sb = b.pubsub().subscribe("t");
    subscribers(&a, "t", 1).await;
    let mut rtt = None;
    for _ in 0..100 {
        rtt = a.pubsub().peer_stats(&b.peer_id()).and_then(|s| s.rtt);
        if rtt.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rtt = rtt.expect("a round trip within 5 s (heartbeat 1 s, pings every 100 ms)");
    assert!(rtt < Duration::from_secs(1), "loopback round trip {rtt:?}");
    assert_eq!(a.pubsub().mesh_peers("t"), vec![b.peer_id()]);
}
