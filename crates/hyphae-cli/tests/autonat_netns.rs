//! AutoNAT v1 against go-libp2p (p2pd v0.32, v1 only) and v2 against rust-libp2p 0.57 (libp2p-autonat
//! 0.16, `rust-peer autonat`) in network namespaces this test creates: servers
//! refuse to dial back loopback, so the peers get public-looking addresses (servers 5.5.5.1–3, client
//! 6.6.6.2) routed only between the namespaces, through a router namespace. hyphae runs as the `hyphae`
//! binary inside its namespace. Needs root, `ip` and `iptables` (interop/setup.sh installs iptables);
//! skipped without them.
//!
//! - go's servers confirm a reachable hyphae node public;
//! - behind a firewall that drops inbound connections, and behind a MASQUERADE router, it is private;
//! - hyphae's own server classifies a reachable and a firewalled go client;
//! - rust's v2 servers confirm a reachable hyphae public (over v2: the dial-back carried hyphae's
//!   nonce), and a masqueraded one private;
//! - hyphae's v2 server dials back a reachable rust v2 client (rust confirms the address) and reports a
//!   firewalled one unreachable.

#[path = "../../hyphae/tests/common/mod.rs"]
mod common;
use common::{sh, Namespaces, P2pd, TempDir};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_hyphae");

/// Whether this machine can run the test (root, ip, iptables, p2pd).
fn usable() -> bool {
    let ok = |c: &str| {
        std::process::Command::new("sh").arg("-c").arg(c).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    let root = ok("[ \"$(id -u)\" = 0 ]");
    let tools = ok("command -v ip && command -v iptables");
    let p2pd = common::peer_path("interop/.peers/p2pd").is_some();
    if !(root && tools && p2pd) {
        eprintln!("skipped: needs root ({root}), ip and iptables ({tools}), p2pd ({p2pd})");
    }
    root && tools && p2pd
}

/// Three namespaces — servers (S), router (R), client (C) — removed on drop (with `_ns`).
struct Net {
    s: String,
    r: String,
    c: String,
    _ns: Namespaces,
}

#[derive(Clone, Copy, PartialEq)]
enum Client {
    /// 6.6.6.2, routed.
    Public,
    /// 6.6.6.2, new inbound TCP connections dropped.
    Firewalled,
    /// 10.9.0.2 behind the router's MASQUERADE (seen as 5.5.5.254).
    Masqueraded,
}

impl Net {
    fn new(kind: Client) -> Net {
        let ns = Namespaces::new("a", &["S", "R", "C"]);
        let n = Net { s: ns.0[0].clone(), r: ns.0[1].clone(), c: ns.0[2].clone(), _ns: ns };
        let (s, r, c) = (&n.s, &n.r, &n.c);
        sh(&format!("ip -n {r} link add rs type veth peer name sr netns {s}"));
        sh(&format!("ip -n {r} link add rc type veth peer name cr netns {c}"));
        sh(&format!(
            "ip -n {s} addr add 5.5.5.1/24 dev sr && ip -n {s} addr add 5.5.5.2/24 dev sr && ip -n {s} addr add 5.5.5.3/24 dev sr \
             && ip -n {s} link set sr up && ip -n {s} route add default via 5.5.5.254"
        ));
        sh(&format!(
            "ip -n {r} addr add 5.5.5.254/24 dev rs && ip -n {r} link set rs up && ip netns exec {r} sysctl -q -w net.ipv4.ip_forward=1"
        ));
        let (client_ip, router_ip) = if kind == Client::Masqueraded { ("10.9.0.2", "10.9.0.1") } else { ("6.6.6.2", "6.6.6.1") };
        sh(&format!("ip -n {r} addr add {router_ip}/24 dev rc && ip -n {r} link set rc up"));
        sh(&format!("ip -n {c} addr add {client_ip}/24 dev cr && ip -n {c} link set cr up && ip -n {c} route add default via {router_ip}"));
        match kind {
            Client::Public => {}
            Client::Firewalled => sh(&format!("ip netns exec {c} iptables -A INPUT -p tcp --syn -j DROP")),
            Client::Masqueraded => sh(&format!("ip netns exec {r} iptables -t nat -A POSTROUTING -s 10.9.0.0/24 -o rs -j MASQUERADE")),
        }
        n
    }
}

/// `hyphae node` inside `ns`, listening on `listen`, connected to `peers`; its stderr lines.
fn hyphae_in(ns: &str, listen: &str, peers: &[String], dir: &TempDir) -> (Child, tokio::io::Lines<BufReader<tokio::process::ChildStderr>>) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, BIN, "node", "--listen", listen, "--key"]).arg(dir.0.join("node.key"));
    for p in peers {
        cmd.args(["--bootstrap", p]);
    }
    let mut child = cmd
        .env("RUST_LOG", std::env::var("HYPHAE_TEST_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn hyphae");
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

/// The first line of a child's output containing `needle`, within `secs`; with `HYPHAE_TEST_LOG` set,
/// the lines before it are echoed.
async fn line_with<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>, needle: &str, secs: u64) -> String {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.contains(needle) => return l,
                Ok(Some(l)) if std::env::var("HYPHAE_TEST_LOG").is_ok() => eprintln!("{l}"),
                Ok(Some(_)) => {}
                _ => panic!("the process exited before printing {needle:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} within {secs} s"))
}

/// hyphae in the client namespace asks three go servers; its verdict.
async fn verdict_from_go_servers(kind: Client) -> Option<String> {
    if !usable() {
        return None;
    }
    let net = Net::new(kind);
    let mut servers = Vec::new();
    for i in 1..=3 {
        let go = P2pd::start_in(Some(&net.s), &format!("/ip4/5.5.5.{i}/tcp/4001"), &["-autonat", "-forceReachabilityPublic"]).await?;
        servers.push(go);
    }
    let peers: Vec<String> = servers.iter().map(|g| format!("{}/p2p/{}", g.addrs[0], g.peer_id)).collect();
    let dir = TempDir::new("autonat");
    let (_node, mut lines) = hyphae_in(&net.c, "/ip4/0.0.0.0/tcp/4001", &peers, &dir);
    // Boot delay 15 s; a firewalled dial-back fails only at go's dial timeout.
    Some(line_with(&mut lines, "AutoNAT verdict", 90).await)
}

#[tokio::test]
async fn autonat_netns_go_servers_confirm_a_reachable_hyphae_public() {
    let Some(v) = verdict_from_go_servers(Client::Public).await else { return };
    eprintln!("{v}");
    assert!(v.contains("Public") && v.contains("6.6.6.2"), "{v}");
}

#[tokio::test]
async fn autonat_netns_firewalled_hyphae_is_private() {
    let Some(v) = verdict_from_go_servers(Client::Firewalled).await else { return };
    assert!(v.contains("Private"), "{v}");
}

#[tokio::test]
async fn autonat_netns_masqueraded_hyphae_is_private() {
    let Some(v) = verdict_from_go_servers(Client::Masqueraded).await else { return };
    eprintln!("{v}");
    assert!(v.contains("Private"), "{v}");
}

/// `hyphae node` serving at 5.5.5.1 in the servers' namespace, listening (before a client dials it): its
/// process, stderr lines and peer ID.
async fn hyphae_server(
    net: &Net,
    dir: &TempDir,
) -> Option<(Child, tokio::io::Lines<BufReader<tokio::process::ChildStderr>>, hyphae::PeerId)> {
    let (node, mut lines) = hyphae_in(&net.s, "/ip4/5.5.5.1/tcp/4001", &[], dir);
    line_with(&mut lines, "listening", 10).await;
    let id = std::process::Command::new(BIN).args(["id", "--key"]).arg(dir.0.join("node.key")).output().ok()?.stdout;
    let id = String::from_utf8(id).ok()?.trim().parse().ok()?;
    Some((node, lines, id))
}

/// hyphae serves (5.5.5.1); a go client asks it (go's client probes after its 15 s boot delay).
async fn hyphae_serves_go(kind: Client) -> Option<String> {
    if !usable() {
        return None;
    }
    let net = Net::new(kind);
    let dir = TempDir::new("autonat-srv");
    let (_node, mut lines, id) = hyphae_server(&net, &dir).await?;
    let go = P2pd::start_in(Some(&net.c), "/ip4/0.0.0.0/tcp/4001", &["-autonat"]).await?;
    go.connect(&id, &["/ip4/5.5.5.1/tcp/4001".parse().unwrap()]).await.expect("go connects to hyphae");
    let l = line_with(&mut lines, &format!("AutoNAT request served peer={}", go.peer_id), 90).await;
    Some(l)
}

#[tokio::test]
async fn autonat_netns_hyphae_server_dials_back_a_reachable_go_client() {
    let Some(l) = hyphae_serves_go(Client::Public).await else { return };
    assert!(l.contains("status=Ok"), "{l}");
}

#[tokio::test]
async fn autonat_netns_hyphae_server_reports_a_firewalled_go_client_unreachable() {
    let Some(l) = hyphae_serves_go(Client::Firewalled).await else { return };
    eprintln!("{l}");
    assert!(l.contains("status=DialError"), "{l}");
}

/// `rust-peer autonat ROLE LISTEN [SERVER]` inside `ns`; its stdout lines.
fn rust_autonat_in(ns: &str, args: &[&str]) -> Option<(Child, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>)> {
    let bin = common::peer_path("interop/rust-peer/target/debug/rust-peer")?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .arg("autonat")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rust-peer");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    Some((child, lines))
}

/// hyphae in the client namespace asks three rust v2 servers; its verdict and its v2 answer lines.
async fn verdict_from_rust_v2_servers(kind: Client) -> Option<(String, Vec<String>)> {
    if !usable() {
        return None;
    }
    let net = Net::new(kind);
    let mut servers = Vec::new();
    let mut peers = Vec::new();
    for i in 1..=3 {
        let (child, mut out) = rust_autonat_in(&net.s, &["server", &format!("/ip4/5.5.5.{i}/tcp/4001")])?;
        let hello = line_with(&mut out, "peerId", 20).await;
        let id = hello.split('"').nth(3).expect("peerId").to_string();
        peers.push(format!("/ip4/5.5.5.{i}/tcp/4001/p2p/{id}"));
        servers.push((child, out));
    }
    let dir = TempDir::new("autonat-v2");
    let (_node, mut lines) = hyphae_in(&net.c, "/ip4/0.0.0.0/tcp/4001", &peers, &dir);
    let mut answers = Vec::new();
    let verdict = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.contains("AutoNAT verdict") => return l,
                Ok(Some(l)) if l.contains("AutoNAT v2 answer") => answers.push(l),
                Ok(Some(_)) => {}
                _ => panic!("hyphae exited before its verdict"),
            }
        }
    })
    .await
    .expect("a verdict within 90 s");
    Some((verdict, answers))
}

#[tokio::test]
async fn autonat_netns_rust_v2_servers_confirm_a_reachable_hyphae_public() {
    let Some((v, answers)) = verdict_from_rust_v2_servers(Client::Public).await else { return };
    eprintln!("{v}\n{}", answers.join("\n"));
    assert!(v.contains("Public") && v.contains("6.6.6.2"), "{v}");
    assert!(answers.len() >= 3 && answers.iter().all(|a| a.contains("nonce_seen=true") && a.contains("dial_status=Ok")), "{answers:?}");
}

#[tokio::test]
async fn autonat_netns_rust_v2_servers_find_a_masqueraded_hyphae_private() {
    let Some((v, answers)) = verdict_from_rust_v2_servers(Client::Masqueraded).await else { return };
    eprintln!("{v}\n{}", answers.join("\n"));
    assert!(v.contains("Private"), "{v}");
}

/// hyphae serves (5.5.5.1); a rust v2 client in the client namespace dials it and tests its address.
async fn hyphae_serves_rust_v2(kind: Client) -> Option<(String, Option<String>)> {
    if !usable() {
        return None;
    }
    let net = Net::new(kind);
    let dir = TempDir::new("autonat-v2-srv");
    let (_node, mut lines, id) = hyphae_server(&net, &dir).await?;
    let server = format!("/ip4/5.5.5.1/tcp/4001/p2p/{id}");
    let (_rust, mut out) = rust_autonat_in(&net.c, &["client", "/ip4/0.0.0.0/tcp/4001", &server])?;
    let served = line_with(&mut lines, "AutoNAT v2 request served", 60).await;
    // What rust concluded (a reachable client only: a firewalled one's report waits for its timeouts).
    let tested = if kind == Client::Public { Some(line_with(&mut out, "\"event\":\"tested\"", 10).await) } else { None };
    Some((served, tested))
}

#[tokio::test]
async fn autonat_netns_hyphae_v2_server_dials_back_a_reachable_rust_client() {
    let Some((served, tested)) = hyphae_serves_rust_v2(Client::Public).await else { return };
    eprintln!("{served}\n{tested:?}");
    assert!(served.contains("status=Ok") && served.contains("dial=Ok"), "{served}");
    let tested = tested.expect("rust reports the test");
    assert!(tested.contains("\"ok\":true") && tested.contains("6.6.6.2"), "{tested}");
}

#[tokio::test]
async fn autonat_netns_hyphae_v2_server_reports_a_firewalled_rust_client_unreachable() {
    let Some((served, _)) = hyphae_serves_rust_v2(Client::Firewalled).await else { return };
    eprintln!("{served}");
    assert!(served.contains("dial=DialError"), "{served}");
}
