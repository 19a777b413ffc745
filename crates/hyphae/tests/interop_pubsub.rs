//! Gossipsub interop with real peers on 127.0.0.1: go-libp2p-pubsub v0.10 (p2pd `-pubsub`, meshsub 1.1),
//! js-libp2p's @libp2p/gossipsub 17 (meshsub 1.2) and rust-libp2p's gossipsub 0.50 (meshsub 1.3): messages
//! both ways, IDONTWANT both ways (on hyphae's per-peer counters), and hyphae forwarding between
//! implementations in a chain.

mod common;
use common::*;
use hyphae::{Host, HostConfig, Multiaddr, PeerId, Subscription};
use std::time::Duration;

const TOPIC: &str = "hyphae-interop";

async fn host() -> (Host, Multiaddr) {
    let h = Host::new(HostConfig::ephemeral()).await.unwrap();
    let a = h.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    (h, a[0].clone())
}

/// Retries `f` (every 100 ms, up to 15 s) until it holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..150 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: never happened");
}

async fn in_mesh(h: &Host, peers: &[&PeerId]) {
    let what = format!("{} meshes with {peers:?}", h.peer_id());
    until(&what, || async { peers.iter().all(|p| h.pubsub().mesh_peers(TOPIC).contains(p)) }).await;
}

/// A peer's mesh (its `mesh TOPIC` answer) holds every one of `peers`.
async fn peer_meshes(p: &mut PubsubPeer, peers: &[&PeerId]) {
    for _ in 0..150 {
        let l = p.cmd(&format!("mesh {TOPIC}")).await;
        if peers.iter().all(|x| l.contains(&x.to_string())) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never meshed with {peers:?}", p.id);
}

async fn next(s: &mut Subscription, data: &[u8]) -> hyphae::PubsubMessage {
    let r = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let m = s.next().await.expect("subscription open");
            if m.data == data {
                return m;
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("hyphae never got the message of {} bytes", data.len()))
}

#[tokio::test]
async fn go_pubsub_messages_cross_both_ways() {
    init_tracing();
    let Some(go) = P2pd::start(&["-pubsub"]).await else { return };
    let (h, _) = host().await;
    h.connect(&go.addrs[0].with_peer_id(&go.peer_id)).await.unwrap();
    let mut sub = h.pubsub().subscribe(TOPIC);
    let mut gsub = go.subscribe(TOPIC).await.unwrap();
    until("go sees hyphae subscribed", || async { go.pubsub_peers(TOPIC).await.contains(&h.peer_id()) }).await;
    in_mesh(&h, &[&go.peer_id]).await;
    assert_eq!(h.pubsub().peer_stats(&go.peer_id).unwrap().kind, Some(hyphae::core::gossipsub::PeerKind::Meshsub11));

    go.publish(TOPIC, b"from go").await.unwrap();
    let m = next(&mut sub, b"from go").await;
    assert_eq!((m.from.as_ref(), &m.source), (Some(&go.peer_id), &go.peer_id));
    h.pubsub().publish(TOPIC, b"from hyphae".to_vec()).unwrap();
    // go delivers its own messages back to its subscription: skip to ours.
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let m = gsub.next().await;
            if m.data == b"from hyphae" {
                return m;
            }
        }
    })
    .await
    .expect("go got hyphae's message");
    assert_eq!((got.topic.as_str(), got.from), (TOPIC, h.peer_id().to_string()));
    // A 512 KiB message too (go's limit is 1 MiB per RPC).
    let big = vec![0x5a; 512 * 1024];
    h.pubsub().publish(TOPIC, big.clone()).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let m = gsub.next().await;
            if m.data.len() == big.len() {
                return m;
            }
        }
    })
    .await
    .expect("go got the 512 KiB message");
    assert!(got.data == big);
    assert_eq!(h.pubsub().stats().invalid_messages, 0);
}

/// hyphae `a` and `b` and a peer of another implementation `x`, all connected, all subscribed; `b`
/// publishes 4 KiB messages. `x` and `a` both hear them from `b` and tell each other IDONTWANT. Returns
/// what `a` counted of `x`.
async fn idontwant_crosses(mut x: PubsubPeer, kind: hyphae::core::gossipsub::PeerKind) -> hyphae::core::gossipsub::PeerStats {
    let (a, addr_a) = host().await;
    let (b, addr_b) = host().await;
    b.connect(&addr_a).await.unwrap();
    let xa = x.addr.with_peer_id(&x.id);
    a.connect(&xa).await.unwrap();
    b.connect(&xa).await.unwrap();
    let _ = (addr_a, addr_b);
    assert!(x.cmd(&format!("subscribe {TOPIC}")).await.contains("ok"));
    let mut sa = a.pubsub().subscribe(TOPIC);
    let _sb = b.pubsub().subscribe(TOPIC);
    in_mesh(&a, &[&b.peer_id(), &x.id]).await;
    in_mesh(&b, &[&a.peer_id(), &x.id]).await;
    peer_meshes(&mut x, &[&a.peer_id(), &b.peer_id()]).await;
    assert_eq!(a.pubsub().peer_stats(&x.id).unwrap().kind, Some(kind));
    for i in 0..10u8 {
        let data = vec![i; 4096];
        b.pubsub().publish(TOPIC, data.clone()).unwrap();
        assert_eq!(next(&mut sa, &data).await.from, Some(b.peer_id()));
        assert_eq!(x.wait_message(&data).await.from, b.peer_id().to_string());
    }
    let s = a.pubsub().peer_stats(&x.id).unwrap();
    eprintln!("hyphae <-> {}: {s:?}", x.id);
    assert!(s.idontwant_received >= 1, "{} sent no IDONTWANT to hyphae: {s:?}", x.id);
    assert!(s.idontwant_sent >= 1, "hyphae sent no IDONTWANT to {}: {s:?}", x.id);
    assert_eq!(a.pubsub().stats().invalid_messages, 0);
    s
}

#[tokio::test]
async fn js_pubsub_idontwant_crosses_both_ways() {
    init_tracing();
    let Some(js) = PubsubPeer::js().await else { return };
    idontwant_crosses(js, hyphae::core::gossipsub::PeerKind::Meshsub12).await;
}

#[tokio::test]
async fn rust_pubsub_idontwant_crosses_both_ways() {
    init_tracing();
    let Some(rust) = PubsubPeer::rust().await else { return };
    // rust-libp2p's gossipsub 0.50 speaks /meshsub/1.3.0: the extensions message crosses its codec, and
    // its own (advertising neither large-message handling nor the test extension) crosses ours.
    let s = idontwant_crosses(rust, hyphae::core::gossipsub::PeerKind::Meshsub13).await;
    assert_eq!(s.extensions, Some(hyphae::core::gossipsub::Extensions::default()), "{s:?}");
}

/// go – hyphae – js – hyphae – rust, each connected to its neighbours only: hyphae forwards between
/// implementations, both ways along the line.
#[tokio::test]
async fn pubsub_chain_go_hyphae_js_hyphae_rust() {
    init_tracing();
    let Some(go) = P2pd::start(&["-pubsub"]).await else { return };
    let Some(mut js) = PubsubPeer::js().await else { return };
    let Some(mut rust) = PubsubPeer::rust().await else { return };
    let (h1, _) = host().await;
    let (h2, _) = host().await;
    h1.connect(&go.addrs[0].with_peer_id(&go.peer_id)).await.unwrap();
    h1.connect(&js.addr.with_peer_id(&js.id)).await.unwrap();
    h2.connect(&js.addr.with_peer_id(&js.id)).await.unwrap();
    h2.connect(&rust.addr.with_peer_id(&rust.id)).await.unwrap();
    let mut gsub = go.subscribe(TOPIC).await.unwrap();
    assert!(js.cmd(&format!("subscribe {TOPIC}")).await.contains("ok"));
    assert!(rust.cmd(&format!("subscribe {TOPIC}")).await.contains("ok"));
    let _s1 = h1.pubsub().subscribe(TOPIC);
    let _s2 = h2.pubsub().subscribe(TOPIC);
    in_mesh(&h1, &[&go.peer_id, &js.id]).await;
    in_mesh(&h2, &[&js.id, &rust.id]).await;
    peer_meshes(&mut js, &[&h1.peer_id(), &h2.peer_id()]).await;
    peer_meshes(&mut rust, &[&h2.peer_id()]).await;

    go.publish(TOPIC, b"go to rust").await.unwrap();
    let m = rust.wait_message(b"go to rust").await;
    assert_eq!(m.from, go.peer_id.to_string());

    let l = rust.cmd(&format!("publish {TOPIC} {}", hex(b"rust to go"))).await;
    assert!(l.contains("\"id\""), "{l}");
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let m = gsub.next().await;
            if m.data == b"rust to go" {
                return m;
            }
        }
    })
    .await
    .expect("go got rust's message through hyphae, js and hyphae");
    assert_eq!(got.from, rust.id.to_string());
    assert!(js.wait_message(b"rust to go").await.from == rust.id.to_string());
    for h in [&h1, &h2] {
        assert_eq!(h.pubsub().stats().invalid_messages, 0);
    }
}
