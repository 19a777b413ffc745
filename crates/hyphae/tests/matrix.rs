//! The interop matrix: hyphae against go-libp2p (p2pd), js-libp2p and rust-libp2p over every
//! transport × security × muxer × direction, with ping. Prints a table like libp2p/test-plans'
//! transport-interop (also written to target/interop-matrix.md) and fails on any failed combination.
//! Run it alone with: cargo test -p hyphae --test matrix -- --nocapture

mod common;
use common::*;
use hyphae::core::ping;
use hyphae::{Host, HostConfig, Keypair, Multiaddr, PeerId};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PEERS: [&str; 3] = ["go", "js", "rust"];
const TRANSPORTS: [&str; 2] = ["tcp", "quic-v1"];
const SECURITY: [&str; 2] = ["noise", "tls"];
const MUXERS: [&str; 2] = ["yamux", "mplex"];
const DIRECTIONS: [&str; 2] = ["hyphae dials", "peer dials"];

struct Row {
    peer: &'static str,
    transport: &'static str,
    security: &'static str,
    muxer: &'static str,
    direction: &'static str,
    result: String,
    connect_ms: Option<f64>,
    rtt_ms: Option<f64>,
}

fn proto_ids(security: &str, muxer: &str) -> (String, String) {
    let s = if security == "tls" { "/tls/1.0.0" } else { "/noise" };
    let m = match muxer {
        "mplex" => "/mplex/6.7.0",
        "quic" => "quic-v1",
        _ => "/yamux/1.0.0",
    };
    (s.into(), m.into())
}

/// The security × muxer combinations of a transport: QUIC has TLS and streams built in.
fn combos(transport: &str) -> Vec<(&'static str, &'static str)> {
    if transport == "quic-v1" {
        vec![("tls", "quic")]
    } else {
        SECURITY.iter().flat_map(|s| MUXERS.iter().map(move |m| (*s, *m))).collect()
    }
}

fn listen_addr(transport: &str) -> Multiaddr {
    if transport == "quic-v1" { "/ip4/127.0.0.1/udp/0/quic-v1" } else { "/ip4/127.0.0.1/tcp/0" }.parse().unwrap()
}

async fn host(security: &str, muxer: &str) -> Host {
    let mut c = HostConfig::new(Keypair::generate_ed25519(&mut rand_core::OsRng));
    if muxer != "quic" {
        let (s, m) = proto_ids(security, muxer);
        c.security = vec![s];
        c.muxers = vec![m];
    }
    Host::new(c).await.unwrap()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Some(v[v.len() / 2])
}

/// The connection really used the security and muxer of the row.
fn check_conn(h: &Host, peer: &PeerId, security: &str, muxer: &str) -> Result<(), String> {
    let (s, m) = proto_ids(security, muxer);
    let c = h.connections().into_iter().find(|c| &c.peer == peer).ok_or("no connection")?;
    if c.security != s || c.muxer != m {
        return Err(format!("connection used {} + {}", c.security, c.muxer));
    }
    Ok(())
}

fn unsupported(peer: &str, transport: &str, muxer: &str) -> Option<&'static str> {
    match (peer, transport, muxer) {
        ("js", "quic-v1", _) => Some("unsupported (js-libp2p has no QUIC on Node)"),
        ("go", _, "mplex") => Some("unsupported (p2pd refuses mplex)"),
        _ => None,
    }
}

async fn hyphae_dials(h: &Host, addr: &Multiaddr, want: &PeerId, security: &str, muxer: &str) -> Result<(f64, f64), String> {
    let t0 = Instant::now();
    let peer = h.connect(addr).await.map_err(|e| e.to_string())?;
    if &peer != want {
        return Err(format!("connected to {peer}, wanted {want}"));
    }
    let mut s = h.new_stream(&peer, &[ping::PROTOCOL_ID]).await.map_err(|e| e.to_string())?;
    h.ping_on(&mut s).await.map_err(|e| e.to_string())?;
    let connect = t0.elapsed().as_secs_f64() * 1e3;
    let mut rtts = Vec::new();
    for _ in 0..3 {
        rtts.push(h.ping_on(&mut s).await.map_err(|e| e.to_string())?.as_secs_f64() * 1e3);
    }
    check_conn(h, &peer, security, muxer)?;
    Ok((connect, median(rtts).unwrap_or(0.0)))
}

/// Waits for the peer's inbound connection and checks its security and muxer.
async fn check_inbound(
    ev: &mut tokio::sync::broadcast::Receiver<hyphae::HostEvent>,
    security: &str,
    muxer: &str,
) -> Result<PeerId, String> {
    let (s, m) = proto_ids(security, muxer);
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.recv().await {
                Ok(hyphae::HostEvent::Connected { peer, security, muxer, .. }) => return Some((peer, security, muxer)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
    .ok_or("hyphae saw no connection")?;
    if got.1 != s || got.2 != m {
        return Err(format!("connection used {} + {}", got.1, got.2));
    }
    Ok(got.0)
}

async fn run_row(peer: &str, transport: &str, security: &str, muxer: &str, direction: &str) -> Result<(f64, f64), String> {
    match (peer, direction) {
        ("go", d) => {
            let flag = if security == "tls" { "-noise=false" } else { "-tls=false" };
            let host_addrs = if transport == "quic-v1" { "/ip4/127.0.0.1/udp/0/quic-v1" } else { "/ip4/127.0.0.1/tcp/0" };
            let go = P2pd::start_on(host_addrs, &[flag]).await.ok_or("p2pd missing")?;
            let h = host(security, muxer).await;
            if d == "hyphae dials" {
                return hyphae_dials(&h, &go.addrs[0].with_peer_id(&go.peer_id), &go.peer_id, security, muxer).await;
            }
            let addr = h.listen(listen_addr(transport)).await.map_err(|e| e.to_string())?.remove(0);
            let mut ev = h.events();
            let t0 = Instant::now();
            go.connect(&h.peer_id(), &[addr.without_peer_id()]).await?;
            check_inbound(&mut ev, security, muxer).await?;
            let (mut s, _) = go.stream_open(&h.peer_id(), &[ping::PROTOCOL_ID]).await?;
            let mut rtts = Vec::new();
            let mut connect = 0.0;
            for i in 0..4u8 {
                let t = Instant::now();
                s.write_all(&[i; 32]).await.map_err(|e| e.to_string())?;
                let mut echo = [0u8; 32];
                s.read_exact(&mut echo).await.map_err(|e| e.to_string())?;
                if echo != [i; 32] {
                    return Err("ping echo differs".into());
                }
                if i == 0 {
                    connect = t0.elapsed().as_secs_f64() * 1e3;
                } else {
                    rtts.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            Ok((connect, median(rtts).unwrap_or(0.0)))
        }
        ("js" | "rust", "hyphae dials") => {
            let tr = if transport == "quic-v1" { "quic" } else { "tcp" };
            let mut p = if peer == "js" { js_peer(&["listen", security, muxer]) } else { rust_peer(&["listen", security, tr, muxer]) }
                .ok_or("peer missing")?;
            let first = wait_line(&mut p, "peerId", "peer listen").await;
            let (id, addr) = listen_line(&first).ok_or(format!("bad listen line {first}"))?;
            let h = host(security, muxer).await;
            hyphae_dials(&h, &addr, &id, security, muxer).await
        }
        (_, _) => {
            let h = host(security, muxer).await;
            let addr = h.listen(listen_addr(transport)).await.map_err(|e| e.to_string())?.remove(0);
            let a = addr.to_string();
            let mut ev = h.events();
            let mut p =
                if peer == "js" { js_peer(&["dial", &a, "4", security, muxer]) } else { rust_peer(&["dial", &a, "4", security, muxer]) }
                    .ok_or("peer missing")?;
            // The dial's result, or the error line the peer prints before it exits (then the cell fails
            // with its reason and is retried, instead of the reader running into the peer's EOF).
            let l = loop {
                let l = read_line(&mut p.lines, "peer dial result").await;
                if l.contains("\"peerId\"") || l.contains("\"error\"") {
                    break l;
                }
            };
            if l.contains("\"error\"") {
                return Err(l);
            }
            let connect = l
                .split("\"connectMs\":")
                .nth(1)
                .and_then(|x| x.split([',', '}']).next())
                .and_then(|x| x.parse::<f64>().ok())
                .ok_or(format!("no connectMs in {l}"))?;
            let rtts = json_numbers(&l, "rtts");
            if rtts.len() != 4 {
                return Err(format!("expected 4 rtts: {l}"));
            }
            let peer_id = json_field(&l, "peerId").unwrap_or("");
            if peer_id != h.peer_id().to_string() {
                return Err(format!("peer saw {peer_id}"));
            }
            check_inbound(&mut ev, security, muxer).await?;
            Ok((connect, median(rtts[1..].to_vec()).unwrap_or(0.0)))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_matrix() {
    init_tracing();
    if peer_path("interop/.peers/p2pd").is_none() {
        return;
    }
    let mut rows = Vec::new();
    for peer in PEERS {
        for transport in TRANSPORTS {
            for (security, muxer) in combos(transport) {
                {
                    for direction in DIRECTIONS {
                        let mut row =
                            Row { peer, transport, security, muxer, direction, result: String::new(), connect_ms: None, rtt_ms: None };
                        if let Some(why) = unsupported(peer, transport, muxer) {
                            row.result = why.to_string();
                        } else {
                            // One visible retry: a second failure fails the matrix; a pass after a failure is
                            // reported with the first error so flakes stay on record.
                            let mut first_error: Option<String> = None;
                            for _attempt in 0..2 {
                                let r = match tokio::time::timeout(
                                    Duration::from_secs(45),
                                    run_row(peer, transport, security, muxer, direction),
                                )
                                .await
                                {
                                    Ok(r) => r,
                                    Err(_) => Err("timed out".to_string()),
                                };
                                match r {
                                    Ok((c, rt)) => {
                                        row.result = match &first_error {
                                            None => "ok".into(),
                                            Some(e) => format!("ok (retried after: {})", e.chars().take(80).collect::<String>()),
                                        };
                                        row.connect_ms = Some(c);
                                        row.rtt_ms = Some(rt);
                                        break;
                                    }
                                    Err(e) if first_error.is_none() => first_error = Some(e),
                                    Err(e) => row.result = format!("FAIL: {}", e.chars().take(120).collect::<String>()),
                                }
                            }
                        }
                        rows.push(row);
                    }
                }
            }
        }
    }
    let mut t = String::from("| peer | transport | security | muxer | direction | result | handshake + 1 RTT (ms) | ping RTT (ms) |\n|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "–".into());
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.peer,
            r.transport,
            r.security,
            r.muxer,
            r.direction,
            r.result,
            f(r.connect_ms),
            f(r.rtt_ms)
        ));
    }
    let ok = rows.iter().filter(|r| r.result.starts_with("ok")).count();
    let failed: Vec<&Row> = rows.iter().filter(|r| r.result.starts_with("FAIL")).collect();
    t.push_str("\nQUIC rows: security and stream multiplexing are QUIC's own (TLS 1.3, native streams).\n");
    t.push_str("js-libp2p reports ping RTTs in whole milliseconds. \"handshake + 1 RTT\": from the dial until the first ping answer (including stream negotiation); for \"peer dials\" the peer measures it (go: through the daemon's control socket). The rust peer is a debug build (quicker to build in CI): its TLS and QUIC rows carry ~40 ms of its own certificate work (rust-libp2p against itself over TLS takes ~65 ms in that build).\n");
    t.push_str(&format!("\n{ok} combinations passed, {} failed, {} not applicable\n", failed.len(), rows.len() - ok - failed.len()));
    let path = repo_root().join("target/interop-matrix.md");
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    let _ = std::fs::write(&path, &t);
    println!("{t}");
    assert!(failed.is_empty(), "interop matrix has failures:\n{t}");
}

/// One matrix row ("go, quic-v1, hyphae dials") run `FLAKE_RUNS` times (default 40), each with a new
/// hyphae host (a new certificate): the hunt that found the 1-in-256 certificate go refused (a serial
/// number not minimally encoded). Before the fix 3 of 700 runs failed with TLS alert 42 under load
/// (three busy loops beside it); after it 0 of 800. Run it with
/// `FLAKE_RUNS=800 cargo test -p hyphae --test matrix flake_hunt -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn flake_hunt_go_quic_hyphae_dials() {
    init_tracing();
    let n: usize = std::env::var("FLAKE_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let mut fails = Vec::new();
    for i in 0..n {
        tracing::info!("FLAKE RUN {i}");
        let r = tokio::time::timeout(Duration::from_secs(45), run_row("go", "quic-v1", "tls", "quic", "hyphae dials")).await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::info!("FLAKE FAIL {i}: {e}");
                fails.push((i, e))
            }
            Err(_) => fails.push((i, "timeout".into())),
        }
    }
    eprintln!("FLAKE {} of {n} failed: {fails:?}", fails.len());
}
