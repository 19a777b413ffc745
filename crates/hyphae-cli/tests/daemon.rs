//! `hyphae daemon`, the p2pd-compatible daemon: Python's `p2pclient` 0.3.0 drives it unchanged (against
//! another hyphae daemon and against go's p2pd), p2pd's command line works as go's, and bad control
//! input gets an error without harming the daemon.

#[path = "../../hyphae/tests/common/mod.rs"]
mod common;
use common::{P2pd, TempDir};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_hyphae");

async fn hyphae_daemon() -> P2pd {
    P2pd::start_bin(Path::new(BIN), None, "/ip4/127.0.0.1/tcp/0", &[]).await
}

async fn hyphae_daemon_dht_pubsub() -> P2pd {
    P2pd::start_bin(Path::new(BIN), None, "/ip4/127.0.0.1/tcp/0", &["-dhtServer", "-pubsub"]).await
}

/// Runs interop/python/daemon_client.py on two control sockets; its `ok` lines.
async fn p2pclient(a: &P2pd, b: &P2pd, b_handler: bool) -> Option<String> {
    p2pclient_with(a, b, b_handler, false).await
}

async fn p2pclient_with(a: &P2pd, b: &P2pd, b_handler: bool, dht_pubsub: bool) -> Option<String> {
    let py = common::peer_path("interop/.peers/venv/bin/python")?;
    let script = common::repo_root().join("interop/python/daemon_client.py");
    let work = TempDir::new("p2pclient");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(py)
            .arg(script)
            .arg(&a.sock)
            .arg(&b.sock)
            .arg(&work.0)
            .arg(if b_handler { "1" } else { "0" })
            .arg(if dht_pubsub { "dht-pubsub" } else { "" })
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("p2pclient finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "p2pclient failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    Some(stdout)
}

#[tokio::test]
async fn daemon_p2pclient_drives_two_hyphae_daemons_unchanged() {
    let (a, b) = (hyphae_daemon().await, hyphae_daemon().await);
    let Some(out) = p2pclient(&a, &b, true).await else { return };
    for step in ["ok identify", "ok connect list_peers", "ok stream a->b", "ok stream b->a", "ok connmgr", "ok disconnect"] {
        assert!(out.contains(step), "{step} missing:\n{out}");
    }
    assert!(out.contains(&a.peer_id.to_string()) && out.contains(&b.peer_id.to_string()), "{out}");
}

/// A hyphae daemon and go's p2pd, one p2pclient driving both: connect, list peers, go opening a stream
/// to a handler served through hyphae's daemon, connmgr, disconnect.
#[tokio::test]
async fn daemon_p2pclient_drives_hyphae_against_go_p2pd() {
    let Some(go) = P2pd::start(&[]).await else { return };
    let a = hyphae_daemon().await;
    let Some(out) = p2pclient(&a, &go, false).await else { return };
    for step in ["ok identify", "ok connect list_peers", "ok stream b->a", "ok connmgr", "ok disconnect"] {
        assert!(out.contains(step), "{step} missing:\n{out}");
    }
}

/// DHT (peer routing, records, content routing) and pubsub through two hyphae daemons, by p2pclient.
#[tokio::test]
async fn daemon_p2pclient_dht_and_pubsub_between_hyphae_daemons() {
    let (a, b) = (hyphae_daemon_dht_pubsub().await, hyphae_daemon_dht_pubsub().await);
    let Some(out) = p2pclient_with(&a, &b, true, true).await else { return };
    for step in ["ok dht find_peer", "ok dht put_value", "ok dht provide", "ok pubsub"] {
        assert!(out.contains(step), "{step} missing:\n{out}");
    }
}

/// The same against go's p2pd (-dhtServer -pubsub) as the other side.
#[tokio::test]
async fn daemon_p2pclient_dht_and_pubsub_hyphae_against_go() {
    let Some(go) = P2pd::start(&["-dhtServer", "-pubsub"]).await else { return };
    let a = hyphae_daemon_dht_pubsub().await;
    let Some(out) = p2pclient_with(&a, &go, false, true).await else { return };
    for step in ["ok dht find_peer", "ok dht put_value", "ok dht provide", "ok pubsub"] {
        assert!(out.contains(step), "{step} missing:\n{out}");
    }
}

/// The Rust control client of the interop tests (written against go's p2pd) drives hyphae's too.
#[tokio::test]
async fn daemon_control_client_of_the_go_tests_works_against_hyphae() {
    let (a, b) = (hyphae_daemon().await, hyphae_daemon().await);
    a.connect(&b.peer_id, &b.addrs).await.expect("connect");
    assert!(a.list_peers().await.contains(&b.peer_id));
    // The listener lists the connection once its side of the handshake is done: a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !b.list_peers().await.contains(&a.peer_id) {
        assert!(std::time::Instant::now() < deadline, "b never listed a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Garbage, a truncated request and an oversized length prefix: an ERROR answer or a closed control
/// connection, and the daemon goes on serving.
#[tokio::test]
async fn daemon_bad_control_input_is_answered_and_harms_nothing() {
    let d = hyphae_daemon().await;
    let cases: [&[u8]; 3] = [&[0x03, 0xff, 0xff, 0xff], &[0x0a, 0x08], &[0xff, 0xff, 0xff, 0xff, 0x0f]];
    for bad in cases {
        let mut s = tokio::net::UnixStream::connect(&d.sock).await.unwrap();
        s.write_all(bad).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back)).await.expect("answered or closed").unwrap();
        if !back.is_empty() {
            // Response{type: ERROR (1), error{msg}}: field 1 = 1.
            assert_eq!(&back[1..3], &[0x08, 0x01], "{back:?}");
        }
    }
    let other = hyphae_daemon().await;
    d.connect(&other.peer_id, &other.addrs).await.expect("still serving");
}

/// p2pd's command line: Go flag syntax, go's error for an unknown flag, a clear line for a feature
/// hyphae does not have, never a silent no-op; -b without -bootstrapPeers refuses to reach a public
/// default.
#[tokio::test]
async fn daemon_command_line_is_p2pds() {
    let out = tokio::process::Command::new(BIN).args(["daemon", "-bogus"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("flag provided but not defined: -bogus"));
    let out = tokio::process::Command::new(BIN).args(["daemon", "-b"]).output().await.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("-bootstrapPeers"));
    let out = tokio::process::Command::new(BIN).args(["daemon", "-connLo"]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("flag needs an argument: -connLo"));
    let d = P2pd::start_bin(Path::new(BIN), None, "/ip4/127.0.0.1/tcp/0", &["-natPortMap", "-connManager", "-connLo=10", "--connHi", "20"])
        .await;
    assert!(d.sock.exists());
    let pid = d.child.id().unwrap();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let sock = d.sock.clone();
    let mut d = d;
    let st = tokio::time::timeout(Duration::from_secs(10), d.child.wait()).await.unwrap().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!sock.exists(), "SIGTERM removes the control socket");
}

/// @libp2p/daemon-client (js) drives two hyphae daemons through what @libp2p/interop does not call:
/// identify, connect and listPeers, DHT getClosestPeers and getPublicKey, pubsub getTopics,
/// getSubscribers, publish and subscribe (`interop/js-interop/client.mjs`).
#[tokio::test]
async fn daemon_js_client_drives_two_hyphae_daemons() {
    let Some(_) = common::peer_path("interop/js-interop/node_modules/@libp2p/daemon-client") else {
        eprintln!("skipped: run interop/setup.sh");
        return;
    };
    let (a, b) = (hyphae_daemon_dht_pubsub().await, hyphae_daemon_dht_pubsub().await);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        common::node_script("interop/js-interop", "client.mjs").arg(&a.sock).arg(&b.sock).kill_on_drop(true).output(),
    )
    .await
    .expect("the js client finishes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for step in [
        "ok identify",
        "ok connect listPeers",
        "ok dht getClosestPeers",
        "ok dht getPublicKey Ed25519",
        "ok pubsub getTopics",
        "ok pubsub getSubscribers",
        "ok pubsub publish subscribe",
    ] {
        assert!(stdout.contains(step), "{step} missing:\n{stdout}");
    }
}

/// js-libp2p-daemon's PEERSTORE request (type 9 with its body in field 9, the numbers hivemind gave its
/// persistent upgrade): hyphae's daemon answers GET_PROTOCOLS and GET_PEER_INFO from its peerstore and
/// refuses an unknown peer; js-libp2p's own daemon-server answers the same request bytes the same way
/// (it leaves GET_PEER_INFO unimplemented); hivemind's upgrade on the same number still works.
#[tokio::test]
async fn daemon_peerstore_requests_of_the_js_daemon() {
    let (a, b) = (hyphae_daemon().await, hyphae_daemon().await);
    a.connect(&b.peer_id, &b.addrs).await.expect("connect");
    // Identify fills the peerstore a moment after the connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (protos, addrs) = loop {
        let (p, a) = a.peerstore(&b.peer_id, true).await.expect("GET_PEER_INFO");
        if p.iter().any(|x| x == "/ipfs/ping/1.0.0") || std::time::Instant::now() > deadline {
            break (p, a);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(protos.iter().any(|p| p == "/ipfs/id/1.0.0"), "{protos:?}");
    assert!(addrs.expect("GET_PEER_INFO has the peer").contains(&b.addrs[0]), "b's listen address");
    let (p2, none) = a.peerstore(&b.peer_id, false).await.expect("GET_PROTOCOLS");
    assert_eq!((p2, none), (protos, None));
    let stranger = hyphae::Keypair::generate_ed25519(&mut hyphae::core::rng::from_seed([9; 32])).peer_id();
    assert!(a.peerstore(&stranger, false).await.unwrap_err().contains("not in the peerstore"));
    Persistent::open(&a.sock).await;

    let Some(js) = P2pd::start_js(&[]).await else { return };
    js.connect(&b.peer_id, &b.addrs).await.expect("js connects to hyphae");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (p, addrs) = js.peerstore(&b.peer_id, false).await.expect("js GET_PROTOCOLS");
        assert_eq!(addrs, None);
        if p.iter().any(|x| x == "/ipfs/ping/1.0.0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "js never learned hyphae's protocols: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(js.peerstore(&b.peer_id, true).await.is_err(), "js leaves GET_PEER_INFO unimplemented");
}

// ---------------- hivemind's persistent connections (unary calls) ----------------

use hyphae::core::daemon::{self as dproto, PersistentRequest, PersistentResponse, UnaryResult};

/// A client of hivemind's persistent connection, built on the same `p2pd.proto` messages.
struct Persistent(tokio::net::UnixStream);

impl Persistent {
    async fn open(sock: &Path) -> Persistent {
        let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
        let mut req = Vec::new();
        dproto::encode_bare_request(true, &mut req);
        s.write_all(&req).await.unwrap();
        let resp = read_delimited(&mut s).await;
        assert_eq!(&resp[..2], &[0x08, 0x00], "upgrade answered OK: {resp:?}");
        Persistent(s)
    }
    async fn send(&mut self, r: PersistentRequest) {
        let mut out = Vec::new();
        dproto::encode_persistent_request(&r, &mut out);
        self.0.write_all(&out).await.unwrap();
    }
    async fn recv(&mut self) -> PersistentResponse {
        let body = tokio::time::timeout(Duration::from_secs(10), read_delimited(&mut self.0)).await.expect("a persistent response");
        let mut framed = Vec::new();
        hyphae::core::varint::encode_frame(&body, &mut framed);
        dproto::decode_persistent_response(&framed, &dproto::Limits::default()).unwrap().unwrap().0
    }
}

async fn read_delimited(s: &mut tokio::net::UnixStream) -> Vec<u8> {
    let mut len = 0u64;
    for i in 0..10 {
        let b = s.read_u8().await.expect("daemon answers");
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut v = vec![0u8; len as usize];
    s.read_exact(&mut v).await.unwrap();
    v
}

fn call_id(n: u8) -> Vec<u8> {
    vec![n; 16]
}

/// `server` serves /hyphae/unary/1 through a persistent connection; a client of `caller` calls it.
async fn unary_round_trip(server: &P2pd, caller: &P2pd) {
    caller.connect(&server.peer_id, &server.addrs).await.expect("connect");
    let mut x = Persistent::open(&server.sock).await;
    x.send(PersistentRequest::AddUnaryHandler { call: call_id(1), proto: "/hyphae/unary/1".into(), balanced: false }).await;
    assert_eq!(x.recv().await, PersistentResponse::Ok { call: call_id(1) });
    let mut y = Persistent::open(&caller.sock).await;
    y.send(PersistentRequest::CallUnary {
        call: call_id(2),
        peer: server.peer_id.clone(),
        proto: "/hyphae/unary/1".into(),
        data: b"ping".to_vec(),
    })
    .await;
    match x.recv().await {
        PersistentResponse::RequestHandling { call, caller: who, proto, data } => {
            assert_eq!((who, proto.as_str(), data.as_slice()), (caller.peer_id.clone(), "/hyphae/unary/1", &b"ping"[..]));
            x.send(PersistentRequest::UnaryResponse { call, result: UnaryResult::Response(b"pong".to_vec()) }).await;
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(y.recv().await, PersistentResponse::CallResponse { call: call_id(2), result: UnaryResult::Response(b"pong".to_vec()) });
    // A second, unbalanced handler for the same protocol is refused; a call nobody serves fails.
    let mut x2 = Persistent::open(&server.sock).await;
    x2.send(PersistentRequest::AddUnaryHandler { call: call_id(3), proto: "/hyphae/unary/1".into(), balanced: false }).await;
    assert!(matches!(x2.recv().await, PersistentResponse::Error { message, .. } if message.contains("already set")));
    y.send(PersistentRequest::CallUnary { call: call_id(4), peer: server.peer_id.clone(), proto: "/nobody/1".into(), data: vec![] }).await;
    assert!(matches!(y.recv().await, PersistentResponse::Error { .. }));
}

#[tokio::test]
async fn daemon_unary_calls_between_hyphae_daemons() {
    let (a, b) = (hyphae_daemon().await, hyphae_daemon().await);
    unary_round_trip(&a, &b).await;
}

/// hivemind's p2pd (go) serves, hyphae's daemon calls; and the other way round.
#[tokio::test]
async fn daemon_unary_calls_interoperate_with_go_p2pd() {
    let Some(go) = P2pd::start(&[]).await else { return };
    let a = hyphae_daemon().await;
    unary_round_trip(&go, &a).await;
    let Some(go2) = P2pd::start(&[]).await else { return };
    let b = hyphae_daemon().await;
    unary_round_trip(&b, &go2).await;
}
