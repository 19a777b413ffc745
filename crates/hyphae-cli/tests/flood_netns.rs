//! Connection floods against a `hyphae node` with default limits, in network namespaces this test
//! creates: the node in N (10.61.1.1 towards the attacker, 10.61.2.1 towards the peer), an attacker in
//! A (10.61.1.2), an honest peer in P (10.61.2.2). Needs root and `ip`; skipped without them.
//!
//! - 3,000 TCP connections from one address that connect and send nothing: before the resource
//!   manager they held all 1,024 connection slots for the 15 s handshake timeout and every other peer
//!   was refused; now the attacker's address gets 8 (go's per-IPv4 limit) and the peer's ping works;
//! - the same with 3,000 QUIC Initial packets (connections that never finish their handshake);
//! - a peer opening 3,000 streams it never uses: past its budgets they are reset, the peer's ping works;
//! - a peer trickling 1-byte yamux frames on 100 streams and never reading what the node answers.
//!
//! The node runs with `--max-memory 64MiB`; its resident set stays under that in each.
//!
//! The attacker is this test binary again (`flood_helper`, run inside A when `HYPHAE_FLOOD` is set).

#[path = "../../hyphae/tests/common/mod.rs"]
mod common;
use common::{sh, Namespaces, TempDir};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_hyphae");
const FLOOD: usize = 3000;

fn usable() -> bool {
    let ok = |c: &str| {
        std::process::Command::new("sh").arg("-c").arg(c).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    let (root, ip) = (ok("[ \"$(id -u)\" = 0 ]"), ok("command -v ip"));
    if !(root && ip) {
        eprintln!("skipped: needs root ({root}) and ip ({ip})");
    }
    root && ip
}

/// Namespaces N, A, P (removed on drop with `ns`).
struct Net {
    n: String,
    a: String,
    p: String,
    _ns: Namespaces,
}

impl Net {
    fn new() -> Net {
        let ns = Namespaces::new("f", &["N", "A", "P"]);
        let (n, a, p) = (ns.0[0].clone(), ns.0[1].clone(), ns.0[2].clone());
        sh(&format!("ip -n {n} link add na type veth peer name an netns {a}"));
        sh(&format!("ip -n {n} link add np type veth peer name pn netns {p}"));
        sh(&format!("ip -n {n} addr add 10.61.1.1/24 dev na && ip -n {n} link set na up"));
        sh(&format!("ip -n {n} addr add 10.61.2.1/24 dev np && ip -n {n} link set np up"));
        sh(&format!("ip -n {a} addr add 10.61.1.2/24 dev an && ip -n {a} link set an up"));
        sh(&format!("ip -n {p} addr add 10.61.2.2/24 dev pn && ip -n {p} link set pn up"));
        Net { n, a, p, _ns: ns }
    }
}

/// The node's memory budget in these tests (`--max-memory`), which its RSS must stay under.
const MAX_MEMORY: u64 = 64 << 20;

/// Runs the node in N, floods it from A (`transport`: tcp or quic connections, streams, trickle),
/// then pings it from P (it must answer within 10 s); the node's RSS during the flood must stay under
/// [`MAX_MEMORY`]. `what` names the flood in the printed result.
async fn flood_then_ping(transport: &str, what: &str) {
    if !usable() {
        return;
    }
    let net = Net::new();
    let dir = TempDir::new("flood");
    let key = dir.0.join("node.key");
    let mut node = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.n,
            BIN,
            "node",
            "--listen",
            "/ip4/0.0.0.0/tcp/4701",
            "--listen",
            "/ip4/0.0.0.0/udp/4701/quic-v1",
            "--max-memory",
            "64MiB",
            "--key",
        ])
        .arg(&key)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("listening") && l.contains("quic") {
                return;
            }
        }
        panic!("node exited before listening");
    })
    .await
    .expect("node listens");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let id = String::from_utf8(std::process::Command::new(BIN).args(["id", "--key"]).arg(&key).output().unwrap().stdout).unwrap();
    let id = id.trim().to_string();

    // The attacker: this binary's `flood_helper` inside A; it prints "flooding" once every connection
    // attempt is out, then holds them.
    let target =
        if matches!(transport, "streams" | "trickle") { format!("/ip4/10.61.1.1/tcp/4701/p2p/{id}") } else { "10.61.1.1:4701".into() };
    let mut atk = Command::new("ip")
        .args(["netns", "exec", &net.a])
        .arg(std::env::current_exe().unwrap())
        .args(["flood_helper", "--exact", "--nocapture", "--test-threads", "1"])
        .env("HYPHAE_FLOOD", format!("{transport} {target} {FLOOD}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn attacker");
    let mut out = BufReader::new(atk.stdout.take().unwrap()).lines();
    let l = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(l)) = out.next_line().await {
            if l.contains("flooding:") {
                return l;
            }
        }
        panic!("attacker exited");
    })
    .await
    .expect("attacker floods");
    eprintln!("attacker: {l}");
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });

    let addr =
        if transport == "quic" { format!("/ip4/10.61.2.1/udp/4701/quic-v1/p2p/{id}") } else { format!("/ip4/10.61.2.1/tcp/4701/p2p/{id}") };
    let t = Instant::now();
    let ping = Command::new("ip")
        .args(["netns", "exec", &net.p, BIN, "ping", &addr, "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let ping = tokio::time::timeout(Duration::from_secs(10), ping).await.expect("ping finishes within 10 s").unwrap();
    let took = t.elapsed();
    assert!(
        ping.status.success(),
        "ping during a {transport} flood failed: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    // The flood goes on while the peer is served; the node's RSS is read at its height.
    let rss = common::rss_bytes(&node.id().unwrap().to_string());
    drop(atk);
    drop(node);
    eprintln!("ping through {what}: {took:?}, node RSS {} MiB", rss >> 20);
    assert!(rss < MAX_MEMORY, "node RSS {rss}");
}

#[tokio::test]
async fn flood_netns_silent_tcp_connections_from_one_address_do_not_lock_out_a_peer() {
    flood_then_ping("tcp", &format!("a {FLOOD}-connection TCP flood")).await;
}

#[tokio::test]
async fn flood_netns_quic_initials_from_one_address_do_not_lock_out_a_peer() {
    flood_then_ping("quic", &format!("a {FLOOD}-Initial QUIC flood")).await;
}

/// Flood (3): 3,000 streams opened and held, by 8 identities on one connection each. The node resets
/// those past its limits (each peer's memory share and stream budget; yamux's per-connection first
/// windows); the honest peer's ping is unaffected.
#[tokio::test]
async fn flood_netns_streams_past_the_limits_are_reset_and_a_peer_is_unaffected() {
    flood_then_ping("streams", &format!("a {FLOOD}-stream flood")).await;
}

/// Flood (4): 1-byte yamux frames trickled on every stream the 8 identities got, whose answers they
/// never read.
#[tokio::test]
async fn flood_netns_trickled_one_byte_frames_keep_the_node_within_its_memory() {
    flood_then_ping("trickle", "a 1-byte-frame trickle").await;
}

/// The attacker (only when `HYPHAE_FLOOD` = "tcp|quic IP:PORT N" or "streams|trickle MULTIADDR N"):
/// opens N connections that send nothing, or sends the Initial packets of N QUIC connections and never
/// answers, or opens N ping streams on one connection, or trickles 1-byte frames on 100; holds them 60 s.
#[tokio::test]
async fn flood_helper() {
    let Ok(spec) = std::env::var("HYPHAE_FLOOD") else { return };
    let mut it = spec.split_whitespace();
    let (transport, target, n) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap().parse::<usize>().unwrap());
    if matches!(transport, "streams" | "trickle") {
        return stream_flood(transport, target.parse().unwrap(), n).await;
    }
    let target: std::net::SocketAddr = target.parse().unwrap();
    let mut held = Vec::new();
    let mut sockets = Vec::new();
    if transport == "tcp" {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            set.spawn(async move { tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(target)).await });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(Ok(s))) = r {
                ok += 1;
                held.push(s);
            }
        }
        println!("flooding: {ok} of {n} TCP connections opened");
    } else {
        use hyphae::core::{quic, rcmgr, rng, tls, Instant as CoreInstant, Keypair};
        use rand_core::RngCore;
        let mut seed = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut seed);
        let mut r = rng::from_seed(seed);
        let k = Keypair::generate_ed25519(&mut r);
        let cert = std::sync::Arc::new(tls::Certificate::generate(&k, 1_800_000_000, &mut r));
        let cfg = quic::Config {
            keypair: k,
            cert,
            protocols: vec![],
            unix_time: 1_800_000_000,
            seed,
            base: std::time::Instant::now(),
            max_streams: 16,
            max_connections: n + 1,
            max_inbound_handshakes: 0,
            ip_limits: rcmgr::IpLimits::none(),
            max_datagrams: 1,
            stream_window: quic::DEFAULT_STREAM_WINDOW,
            connection_window: quic::DEFAULT_CONNECTION_WINDOW,
            congestion: Default::default(),
            memory: None,
        };
        let mut ep = quic::Endpoint::new(cfg).unwrap();
        // Each dial from its own port, as a botnet's would look to a per-connection-id server.
        for _ in 0..n {
            ep.dial(CoreInstant(0), target, None).unwrap();
        }
        let mut sent = 0;
        while let Some(t) = ep.poll_transmit() {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for d in t.data.chunks(t.segment_size.unwrap_or(usize::MAX)) {
                if s.send_to(d, t.to).is_ok() {
                    sent += 1;
                }
            }
            // Keep the port bound (the server's answers go nowhere useful).
            sockets.push(s);
        }
        println!("flooding: {sent} QUIC Initial packets sent for {n} connections");
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(held);
    drop(sockets);
}

/// Floods (3) and (4) from hyphae Hosts: see `flood_helper`. Eight identities at once (a Sybil from
/// one address may hold 8 connections), each flooding on its own connection.
async fn stream_flood(kind: &str, target: hyphae::Multiaddr, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SYBILS {
        let (kind, target) = (kind.to_string(), target.clone());
        tasks.spawn(async move {
            let h = hyphae::Host::new(hyphae::HostConfig::ephemeral()).await.unwrap();
            let peer = h.connect(&target).await.expect("attacker connects");
            let mut held = Vec::new();
            let mut refused = 0;
            let streams = if kind == "streams" { n / SYBILS } else { 100 };
            for _ in 0..streams {
                match tokio::time::timeout(Duration::from_secs(2), h.new_stream(&peer, &["/ipfs/ping/1.0.0"])).await {
                    Ok(Ok(s)) => held.push(s),
                    _ => refused += 1,
                }
            }
            (h, held, refused)
        });
    }
    let mut all = Vec::new();
    let (mut opened, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (h, held, r) = r.unwrap();
        opened += held.len();
        refused += r;
        all.push((h, held));
    }
    if kind == "streams" {
        println!("flooding: {opened} streams opened, {refused} refused, by {SYBILS} identities");
        tokio::time::sleep(Duration::from_secs(60)).await;
    } else {
        println!("flooding: trickling 1-byte frames on {opened} streams of {SYBILS} identities");
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < end {
            for (_, held) in &mut all {
                for s in held.iter_mut() {
                    let one = async {
                        s.write_all(&[0x42]).await?;
                        s.flush().await
                    };
                    let _ = tokio::time::timeout(Duration::from_millis(20), one).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    drop(all);
}

/// Identities the stream floods use (go's per-IPv4-address connection limit).
const SYBILS: usize = 8;
