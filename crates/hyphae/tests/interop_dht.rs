//! Kademlia interop with real peers, both directions: go-libp2p-kad-dht v0.25 (p2pd `-dhtServer`), and
//! (below) js-libp2p and rust-libp2p. A mixed network on 127.0.0.1; hyphae nodes pinned to server mode
//! (AutoNAT, which would confirm them public, cannot on loopback).

mod common;
use common::*;
use hyphae::core::kad::{store, Mode};
use hyphae::{Host, HostConfig, KeyType, Keypair, Multiaddr, PeerId};
use std::time::Duration;

async fn dht_host(ty: KeyType) -> (Host, Multiaddr) {
    let mut c = HostConfig::new(Keypair::generate(ty, &mut rand_core::OsRng));
    c.dht.mode = Mode::Server;
    let h = Host::new(c).await.unwrap();
    let a = h.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    (h, a[0].clone())
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f).await.unwrap_or_else(|_| panic!("{what} took over 30 s"))
}

/// A sha2-256 multihash (= CIDv0 bytes): the provider key all three implementations accept.
fn cid(seed: u8) -> Vec<u8> {
    let mut k = vec![0x12, 0x20];
    k.extend_from_slice(&[seed; 32]);
    k
}

// ---------------- go-libp2p ----------------

/// hyphae asks: two go nodes join through a hyphae node, go2 provides and puts a /pk record, the hyphae
/// node leaves, and a new hyphae node joining through go1 finds go2, its provider record and its record
/// — from go nodes only.
#[tokio::test]
async fn go_dht_hyphae_finds_go_peer_provider_and_record() {
    init_tracing();
    let Some(go1) = P2pd::start(&["-dhtServer"]).await else { return };
    let Some(go2) = P2pd::start(&["-dhtServer"]).await else { return };
    let (h0, a0) = dht_host(KeyType::Ed25519).await;
    go1.connect(&h0.peer_id(), &[a0.without_peer_id()]).await.unwrap();
    go2.connect(&h0.peer_id(), &[a0.without_peer_id()]).await.unwrap();
    let c = cid(1);
    // go adds a peer to its table only after its own check: retry until the provide went out.
    eventually("go2 provides", || async {
        go2.dht(dht_op::PROVIDE, DhtReq { cid: Some(&c), timeout: Some(10), ..Default::default() }).await.ok()
    })
    .await;
    let kp = Keypair::generate(KeyType::Rsa, &mut rand_core::OsRng);
    let key = store::pk_key(&kp.peer_id());
    let value = kp.public().encode_protobuf();
    go2.dht(dht_op::PUT_VALUE, DhtReq { key: Some(&key), value: Some(&value), timeout: Some(10), ..Default::default() }).await.unwrap();
    h0.close().await;

    let (h, _) = dht_host(KeyType::Ed25519).await;
    let boot = go1.addrs[0].with_peer_id(&go1.peer_id);
    within("bootstrap", h.dht().bootstrap(std::slice::from_ref(&boot))).await.unwrap();
    let found = within("find_peer", h.dht().find_peer(&go2.peer_id)).await.unwrap();
    assert!(found.addrs.iter().any(|a| go2.addrs.contains(a)), "{:?} vs {:?}", found.addrs, go2.addrs);
    // go2's PROVIDE may have reached only h0 (gone now) while go1 was still checking go2 before
    // taking it into its table (under load, seconds): ask again until go's tables settle.
    let provs = eventually("find_providers", || async {
        within("find_providers", h.dht().find_providers(&c, 1, |_| {})).await.ok().filter(|v| !v.is_empty())
    })
    .await;
    assert_eq!(provs.first().map(|p| &p.peer), Some(&go2.peer_id));
    let got = within("get_public_key", h.dht().get_public_key(&kp.peer_id())).await.unwrap();
    assert_eq!(got, kp.public());
    let closest = within("closest", h.dht().get_closest_peers(b"some key")).await.unwrap();
    let ids: Vec<&PeerId> = closest.iter().map(|p| &p.peer).collect();
    assert!(ids.contains(&&go1.peer_id) && ids.contains(&&go2.peer_id), "{ids:?}");
}

/// go asks: hyphae nodes form the DHT; go joins through one and finds the other, its provider record
/// and its /pk record — go only keeps a peer whose FIND_NODE(itself) answers, so this also proves that.
#[tokio::test]
async fn go_dht_go_finds_hyphae_peer_provider_and_record() {
    init_tracing();
    let (h1, a1) = dht_host(KeyType::Ed25519).await;
    let (h2, _) = dht_host(KeyType::Ed25519).await;
    within("bootstrap", h2.dht().bootstrap(std::slice::from_ref(&a1))).await.unwrap();
    let c = cid(2);
    within("provide", h2.dht().provide(&c)).await.unwrap();
    let kp = Keypair::generate(KeyType::Rsa, &mut rand_core::OsRng);
    let key = store::pk_key(&kp.peer_id());
    let value = kp.public().encode_protobuf();
    within("put", h2.dht().put_value(&key, &value)).await.unwrap();

    let Some(go) = P2pd::start(&["-dhtServer"]).await else { return };
    go.connect(&h1.peer_id(), &[a1.without_peer_id()]).await.unwrap();
    let h2_id = h2.peer_id();
    let found = eventually("go finds h2", || async {
        let v = go.dht(dht_op::FIND_PEER, DhtReq { peer: Some(&h2_id), timeout: Some(5), ..Default::default() }).await.ok()?;
        v.into_iter().find_map(|x| x.peer)
    })
    .await;
    assert_eq!(found.0, h2_id);
    assert!(!found.1.is_empty());
    let provs =
        go.dht(dht_op::FIND_PROVIDERS, DhtReq { cid: Some(&c), count: Some(1), timeout: Some(10), ..Default::default() }).await.unwrap();
    assert_eq!(provs.iter().filter_map(|p| p.peer.as_ref()).map(|p| &p.0).next(), Some(&h2_id), "{provs:?}");
    let v = go.dht(dht_op::GET_VALUE, DhtReq { key: Some(&key), timeout: Some(10), ..Default::default() }).await.unwrap();
    assert_eq!(v.first().and_then(|x| x.value.clone()), Some(value));
    let closest =
        go.dht(dht_op::GET_CLOSEST_PEERS, DhtReq { key: Some(b"some key"), timeout: Some(10), ..Default::default() }).await.unwrap();
    let ids: Vec<PeerId> = closest.iter().filter_map(|x| x.value.as_deref().and_then(|b| PeerId::from_bytes(b).ok())).collect();
    assert!(ids.contains(&h1.peer_id()) && ids.contains(&h2_id), "{ids:?}");
}

/// IPNS records (ipfs/specs ipns-record) both ways with go, whose DHT validates `/ipns/` records
/// (go-ipns): go stores what hyphae publishes — an Ed25519 name (key inlined in the id) and an RSA one
/// (key inside the record) — answers GET_VALUE with it, keeps the higher sequence when hyphae
/// republishes, and refuses a record signed by another key; a second hyphae node resolves the name
/// through go alone and validates what go serves.
#[tokio::test]
async fn go_dht_stores_and_serves_hyphae_ipns_records() {
    use hyphae::core::kad::ipns;
    init_tracing();
    let (h1, a1) = dht_host(KeyType::Ed25519).await;
    let Some(go) = P2pd::start(&["-dhtServer"]).await else { return };
    go.connect(&h1.peer_id(), &[a1.without_peer_id()]).await.unwrap();
    let name = h1.peer_id();
    let key = ipns::key(&name);
    let hour = Duration::from_secs(3600);
    // go joins h1's table once identify says it serves kad: until then a put stores nowhere.
    eventually("go stores hyphae's record", || async {
        h1.dht().publish_ipns(b"/ipfs/bafkqaddwgevxmmraojswg33smq", 1, hour).await.ok().filter(|n| *n >= 1)
    })
    .await;
    let now = || i128::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()).unwrap();
    let served = |v: Vec<DhtValue>| v.into_iter().find_map(|x| x.value).and_then(|b| ipns::validate(&name, &b, now()).ok());
    let got = go.dht(dht_op::GET_VALUE, DhtReq { key: Some(&key), timeout: Some(10), ..Default::default() }).await.unwrap();
    let r = served(got).expect("go serves a valid record");
    assert_eq!((r.value.as_slice(), r.sequence), (&b"/ipfs/bafkqaddwgevxmmraojswg33smq"[..], 1));
    // A republish with a higher sequence replaces it at go.
    within("republish", h1.dht().publish_ipns(b"/ipfs/bafkqaaa", 2, hour)).await.unwrap();
    let got = go.dht(dht_op::GET_VALUE, DhtReq { key: Some(&key), timeout: Some(10), ..Default::default() }).await.unwrap();
    assert_eq!(served(got).map(|r| r.sequence), Some(2));
    // A record under h1's name signed by another key: go's validator refuses it.
    let other = Keypair::generate(KeyType::Ed25519, &mut rand_core::OsRng);
    let mut forged = ipns::create(&other, b"/ipfs/evil", 9, now() + 3_600_000_000_000, 1);
    assert!(go
        .dht(dht_op::PUT_VALUE, DhtReq { key: Some(&key), value: Some(&forged), timeout: Some(5), ..Default::default() })
        .await
        .is_err());
    // An RSA name: its public key travels inside the record.
    let rsa = Keypair::generate(KeyType::Rsa, &mut rand_core::OsRng);
    let rsa_key = ipns::key(&rsa.peer_id());
    forged = ipns::create(&rsa, b"/ipfs/rsa", 5, now() + 3_600_000_000_000, 1);
    within("put rsa", h1.dht().put_value(&rsa_key, &forged)).await.unwrap();
    let got = go.dht(dht_op::GET_VALUE, DhtReq { key: Some(&rsa_key), timeout: Some(10), ..Default::default() }).await.unwrap();
    let rsa_served = got.into_iter().find_map(|x| x.value).expect("go serves the RSA record");
    assert_eq!(ipns::validate(&rsa.peer_id(), &rsa_served, now()).map(|r| r.sequence), Ok(5));

    // A new hyphae node that knows only go resolves h1's name through it.
    let (h3, _) = dht_host(KeyType::Ed25519).await;
    let go_addr = go.addrs[0].clone().with_peer_id(&go.peer_id);
    within("bootstrap via go", h3.dht().bootstrap(&[go_addr])).await.unwrap();
    let r = within("resolve", h3.dht().resolve_ipns(&name, 1)).await.unwrap();
    assert_eq!((r.value.as_slice(), r.sequence), (&b"/ipfs/bafkqaaa"[..], 2));
}

// ---------------- js-libp2p and rust-libp2p (driven line by line) ----------------

/// hyphae asks: two peers of the other implementation join through a hyphae node and each other; the
/// second provides and puts a /pk record; the hyphae node leaves; a new hyphae node joining through the
/// first finds the second, its provider record and its record.
async fn hyphae_asks(mut p1: DhtPeer, mut p2: DhtPeer, put_record: bool) {
    let (h0, a0) = dht_host(KeyType::Ed25519).await;
    p1.cmd_ok(&format!("connect {a0}")).await;
    p2.cmd_ok(&format!("connect {a0}")).await;
    p2.cmd_ok(&format!("connect {}/p2p/{}", p1.addr, p1.id)).await;
    let c = cid(3);
    p2.cmd_ok(&format!("provide {}", hex(&c))).await;
    let kp = Keypair::generate(KeyType::Rsa, &mut rand_core::OsRng);
    let key = store::pk_key(&kp.peer_id());
    let value = kp.public().encode_protobuf();
    if put_record {
        p2.cmd_ok(&format!("put {} {}", hex(&key), hex(&value))).await;
    }
    h0.close().await;

    let (h, _) = dht_host(KeyType::Ed25519).await;
    let boot = p1.addr.with_peer_id(&p1.id);
    within("bootstrap", h.dht().bootstrap(std::slice::from_ref(&boot))).await.unwrap();
    let found = within("find_peer", h.dht().find_peer(&p2.id)).await.unwrap();
    assert!(found.addrs.contains(&p2.addr), "{:?} vs {}", found.addrs, p2.addr);
    let provs = within("find_providers", h.dht().find_providers(&c, 1, |_| {})).await.unwrap();
    assert_eq!(provs.first().map(|p| &p.peer), Some(&p2.id));
    if put_record {
        let got = within("get_public_key", h.dht().get_public_key(&kp.peer_id())).await.unwrap();
        assert_eq!(got, kp.public());
    }
    let closest = within("closest", h.dht().get_closest_peers(b"some key")).await.unwrap();
    let ids: Vec<&PeerId> = closest.iter().map(|p| &p.peer).collect();
    assert!(ids.contains(&&p1.id) && ids.contains(&&p2.id), "{ids:?}");
}

/// The other asks: hyphae nodes form the DHT (one provides, one stores a /pk record); the other
/// implementation's peer joins through one and finds the other, the provider and the record.
async fn other_asks(mut p: DhtPeer) {
    let (h1, a1) = dht_host(KeyType::Ed25519).await;
    let (h2, a2) = dht_host(KeyType::Ed25519).await;
    within("bootstrap", h2.dht().bootstrap(std::slice::from_ref(&a1))).await.unwrap();
    let c = cid(4);
    within("provide", h2.dht().provide(&c)).await.unwrap();
    let kp = Keypair::generate(KeyType::Rsa, &mut rand_core::OsRng);
    let key = store::pk_key(&kp.peer_id());
    let value = kp.public().encode_protobuf();
    within("put", h2.dht().put_value(&key, &value)).await.unwrap();

    p.cmd_ok(&format!("connect {a1}")).await;
    let h2_id = h2.peer_id();
    let r = p.cmd_ok(&format!("find-peer {h2_id}")).await;
    assert!(r.contains(&a2.without_peer_id().to_string()), "{r}");
    let r = p.cmd_ok(&format!("find-providers {}", hex(&c))).await;
    assert!(r.contains(&h2_id.to_string()), "{r}");
    let r = p.cmd_ok(&format!("get {}", hex(&key))).await;
    assert_eq!(json_field(&r, "value").map(unhex), Some(value), "{r}");
    let r = p.cmd_ok(&format!("closest {}", hex(b"some key"))).await;
    assert!(r.contains(&h1.peer_id().to_string()) && r.contains(&h2_id.to_string()), "{r}");
}

#[tokio::test]
async fn js_dht_hyphae_finds_js_peer_provider_and_record() {
    init_tracing();
    let Some(p1) = DhtPeer::js().await else { return };
    let Some(p2) = DhtPeer::js().await else { return };
    hyphae_asks(p1, p2, true).await;
}

#[tokio::test]
async fn js_dht_js_finds_hyphae_peer_provider_and_record() {
    init_tracing();
    let Some(p) = DhtPeer::js().await else { return };
    other_asks(p).await;
}

#[tokio::test]
async fn rust_dht_hyphae_finds_rust_peer_provider_and_record() {
    init_tracing();
    let Some(p1) = DhtPeer::rust().await else { return };
    let Some(p2) = DhtPeer::rust().await else { return };
    hyphae_asks(p1, p2, true).await;
}

#[tokio::test]
async fn rust_dht_rust_finds_hyphae_peer_provider_and_record() {
    init_tracing();
    let Some(p) = DhtPeer::rust().await else { return };
    other_asks(p).await;
}

/// Client by default, as a real peer sees it: js-libp2p's identify of a default hyphae node lacks
/// `/ipfs/kad/1.0.0`; of a server-mode node it has it.
#[tokio::test]
async fn js_sees_hyphae_announce_kad_only_in_server_mode() {
    init_tracing();
    let Some(mut js) = js_peer(&["listen"]) else { return };
    let line = wait_line(&mut js, "peerId", "js listen").await;
    let (js_id, js_addr) = listen_line(&line).expect("js listen line");
    for (mode, announced) in [(None, false), (Some(Mode::Server), true)] {
        let mut c = HostConfig::ephemeral();
        if let Some(m) = mode {
            c.dht.mode = m;
        }
        let h = Host::new(c).await.unwrap();
        h.connect(&js_addr.with_peer_id(&js_id)).await.unwrap();
        let me = h.peer_id().to_string();
        let l = loop {
            let l = wait_line(&mut js, "\"identify\"", "js identify").await;
            if l.contains(&me) {
                break l;
            }
        };
        assert_eq!(l.contains("/ipfs/kad/1.0.0"), announced, "{mode:?}: {l}");
        h.close().await;
    }
}

/// IPNS records with js-ipns (the `ipns` package of js-libp2p and Helia), both ways and for an
/// Ed25519 and an RSA name: hyphae validates the records js creates (V1+V2, js's DAG-CBOR), and js's
/// validator accepts the ones hyphae creates.
#[tokio::test]
async fn js_ipns_records_validate_both_ways() {
    use hyphae::core::kad::ipns;
    let Some(_) = peer_path("interop/js/node_modules/ipns") else { return };
    let js = |args: Vec<String>| async move {
        let out = node_script("interop/js", "ipns.mjs").args(args).output().await.unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let unhex = |s: &str| (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<u8>>();
    let now = i128::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()).unwrap();
    let dir = TempDir::new("ipns");
    for ty in [KeyType::Ed25519, KeyType::Rsa] {
        let k = Keypair::generate(ty, &mut rand_core::OsRng);
        let file = dir.0.join(format!("{ty:?}.key"));
        std::fs::write(&file, k.encode_protobuf()).unwrap();
        let value = "/ipfs/bafkqaddwgevxmmraojswg33smq";
        let out = js(vec!["create".into(), file.display().to_string(), value.into(), "7".into()]).await;
        let rec = ipns::validate(&k.peer_id(), &unhex(&out), now).unwrap_or_else(|e| panic!("{ty:?}: js's record: {e} ({out})"));
        assert_eq!((rec.value.as_slice(), rec.sequence), (value.as_bytes(), 7), "{ty:?}");
        let ours = ipns::create(&k, value.as_bytes(), 3, now + 3_600_000_000_000, ipns::DEFAULT_TTL_NANOS);
        let out = js(vec!["validate".into(), hex(&ipns::key(&k.peer_id())), hex(&ours)]).await;
        assert_eq!(out, format!("ok 3 {value}"), "{ty:?}: js validates hyphae's record");
        // And js refuses ours when it is signed by another key.
        let other = Keypair::generate(KeyType::Ed25519, &mut rand_core::OsRng);
        let forged = ipns::create(&other, value.as_bytes(), 3, now + 3_600_000_000_000, 1);
        let out = js(vec!["validate".into(), hex(&ipns::key(&k.peer_id())), hex(&forged)]).await;
        assert!(out.starts_with("error"), "{ty:?}: {out}");
    }
}
