//! The `hyphae` binary: node prints its addresses, ping exits 0 after N pings and non-zero with a clear
//! message on failure, id prints the key's peer ID, Ctrl-C (SIGINT) and SIGTERM stop the node cleanly.

#[path = "../../hyphae/tests/common/mod.rs"]
mod common;
use common::TempDir;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_hyphae");

#[tokio::test]
async fn cli_node_ping_id_and_sigint() {
    let dir = TempDir::new("cli");
    let key = dir.0.join("node.key");
    let (mut node, addr) = start_node(&["--key", key.to_str().unwrap()]).await;
    assert!(addr.starts_with("/ip4/127.0.0.1/tcp/") && addr.contains("/p2p/12D3KooW"), "{addr}");

    let id = Command::new(BIN).args(["id", "--key"]).arg(&key).output().await.unwrap();
    assert!(id.status.success());
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), addr.rsplit('/').next().unwrap());

    let out = Command::new(BIN).args(["ping", &addr, "--count", "2"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("agent: hyphae/0.1.0"), "{stdout}");
    assert!(stdout.contains("/ipfs/ping/1.0.0"), "{stdout}");
    assert!(stdout.contains("ping 1: rtt") && stdout.contains("ping 2: rtt"), "{stdout}");

    // A wrong peer ID at the right address: non-zero exit and a clear message.
    let wrong = format!("{}/p2p/12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf", addr.rsplit_once("/p2p/").unwrap().0);
    let out = Command::new(BIN).args(["ping", &wrong, "--count", "1"]).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: connecting to") && err.contains("expected"), "{err}");

    // Nothing listening: non-zero, clear message.
    let out = Command::new(BIN)
        .args(["ping", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: connecting to"));

    // Ctrl-C: exits 0.
    let pid = node.id().unwrap();
    let _ = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status();
    let status = tokio::time::timeout(Duration::from_secs(10), node.wait()).await.expect("node stops on SIGINT").unwrap();
    assert!(status.success(), "{status:?}");
}

/// SIGTERM stops a node as cleanly as Ctrl-C (exit 0, "shutting down" logged).
#[tokio::test]
async fn cli_node_stops_cleanly_on_sigterm() {
    let (mut node, _addr) = start_node(&[]).await;
    let pid = node.id().unwrap();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let status = tokio::time::timeout(Duration::from_secs(10), node.wait()).await.expect("node stops on SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");
    // Its log reader gone (a closed pipe), a node still runs and stops cleanly.
    let mut node = Command::new(BIN)
        .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err = BufReader::new(node.stderr.take().unwrap()).lines();
    err.next_line().await.unwrap();
    drop(err);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::process::Command::new("kill").args(["-TERM", &node.id().unwrap().to_string()]).status();
    let status = tokio::time::timeout(Duration::from_secs(10), node.wait()).await.unwrap().unwrap();
    assert!(status.success(), "a closed log pipe: {status:?}");
}

/// A bad value names the flag and the reason, without the whole usage (exit 2); every subcommand has
/// its own --help; --version prints the version.
#[tokio::test]
async fn cli_bad_arguments_exit_2_with_usage() {
    let out = Command::new(BIN).args(["node", "--listen", "/foo/1"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen") && err.contains("unknown protocol name"), "{err}");
    assert!(!err.contains("--bootstrap"), "the whole usage was printed: {err}");
    for (args, flag) in [
        (&["node", "--conn-high", "lots"][..], "--conn-high"),
        (&["node", "--allow", "10.0.0.0/99"][..], "--allow"),
        (&["ping", "--count", "x", "/ip4/1.2.3.4/tcp/1"][..], "--count"),
        (&["node", "--security", "ssl"][..], "--security"),
        (&["node", "--max-memory", "12 parsecs"][..], "--max-memory"),
    ] {
        let out = Command::new(BIN).args(args).output().await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.lines().count() <= 4 && err.contains(flag), "{args:?}: {err}");
    }
    let out = Command::new(BIN).args(["node", "--conn-low", "600"]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--conn-low 600 must be below --conn-high 512"));
    for sub in ["node", "pubsub", "dht", "ping", "id", "perf", "sim"] {
        let out = Command::new(BIN).args([sub, "--help"]).output().await.unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("Usage: hyphae {sub}")), "{sub}");
    }
    let out = Command::new(BIN).arg("--version").output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), concat!("hyphae ", env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN).args(["ping", "/ip4/127.0.0.1/tcp/1"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no /p2p/"));
}

#[tokio::test]
async fn cli_sim_writes_reports_and_fails_with_seed() {
    let dir = TempDir::new("sim");
    let ok = dir.0.join("ok.hyp");
    std::fs::write(&ok, "nodes all 6 ping=2s\nlink latency=5ms\nat 0s connect random 2\nrun 10s\nassert main.pings_failed == 0\n").unwrap();
    let out_dir = dir.0.join("out");
    let out = Command::new(BIN).arg("sim").arg(&ok).arg("--out").arg(&out_dir).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("pings_ok") && stdout.contains("all 1 assertions hold"), "{stdout}");
    for f in ["metrics.csv", "metrics.json", "rtt_over_time.csv", "rtt_over_time.svg"] {
        assert!(out_dir.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false), "{f} missing");
    }
    assert!(std::fs::read_to_string(out_dir.join("rtt_over_time.svg")).unwrap().starts_with("<svg"));

    let bad = dir.0.join("bad.hyp");
    std::fs::write(&bad, "nodes all 3 ping=1s\nat 0s connect random 1\nrun 3s\nassert main.pings_ok < 1\n").unwrap();
    let out = Command::new(BIN).arg("sim").arg(&bad).args(["--seed", "77"]).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("seed 77") && err.contains("expanded scenario"), "{err}");

    let out = Command::new(BIN).arg("sim").arg(&ok).arg("--check").output().await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("determinism check passed"));
}

/// Starts `hyphae node` with `extra` flags on loopback; returns it and its first address.
async fn start_node(extra: &[&str]) -> (tokio::process::Child, String) {
    let mut node = Command::new(BIN)
        .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    (node, addr)
}

#[tokio::test]
async fn cli_dht_finds_a_provider_and_a_peer_through_a_bootstrap_node() {
    let dir = TempDir::new("dht");
    let (ka, kc) = (dir.0.join("a.key"), dir.0.join("c.key"));
    let (_a, boot) = start_node(&["--dht-mode", "server", "--key", ka.to_str().unwrap()]).await;
    let cid = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n";
    let (_c, caddr) = start_node(&["--dht-mode", "server", "--bootstrap", &boot, "--provide", cid, "--key", kc.to_str().unwrap()]).await;
    let c_id = caddr.rsplit('/').next().unwrap().to_string();
    // The same content named by its CIDv1: the provider key is the multihash.
    let out = dht_retrying(&boot, &["find-providers", "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"]).await;
    assert!(out.starts_with(&c_id) && out.contains("/ip4/127.0.0.1/tcp/"), "{out}");
    let out = dht_retrying(&boot, &["find-peer", &c_id]).await;
    assert_eq!(out.trim(), caddr.rsplit_once("/p2p/").unwrap().0, "{out}");
    let out = dht_retrying(&boot, &["find-peer", &c_id, "--dht-disjoint-paths", "2"]).await;
    assert_eq!(out.trim(), caddr.rsplit_once("/p2p/").unwrap().0, "on two disjoint paths: {out}");
    let out = dht_retrying(&boot, &["closest", &format!("/pk/{c_id}")]).await;
    assert_eq!(out.lines().count(), 2, "both servers: {out}");
    // Clear failures: a bad CID, a missing bootstrap, a key nobody stored.
    let out = Command::new(BIN).args(["dht", "provide", "notacid", "--bootstrap", &boot]).output().await.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a CID"));
    let out = Command::new(BIN).args(["dht", "get", "/app/x"]).output().await.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--bootstrap"));
    let out = Command::new(BIN).args(["dht", "get", &format!("/pk/{c_id}"), "--bootstrap", &boot]).output().await.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found"));
    // IPNS: a name (the key file's peer id) published twice, the second time one sequence above the
    // first without being told; resolved by another process.
    let kn = dir.0.join("name.key");
    let name = String::from_utf8(Command::new(BIN).args(["id", "--key", kn.to_str().unwrap()]).output().await.unwrap().stdout).unwrap();
    let name = name.trim();
    let publish = |path: &'static str| {
        let kn = kn.clone();
        let boot = boot.clone();
        async move {
            let out = Command::new(BIN)
                .args(["dht", "publish", path, "--key", kn.to_str().unwrap(), "--bootstrap", &boot])
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    assert!(publish("/ipfs/bafkqaddwgevxmmraojswg33smq").await.contains("(sequence 0) stored on"));
    assert!(publish("/ipfs/bafkqaaa").await.contains("(sequence 1) stored on"));
    let out = Command::new(BIN).args(["dht", "resolve", name, "--bootstrap", &boot]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "/ipfs/bafkqaaa");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sequence 1, valid until "), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `hyphae dht ARGS --bootstrap BOOT`, retrying for a few seconds (a node started just before
/// announces shortly after it starts); its stdout.
async fn dht_retrying(boot: &str, args: &[&str]) -> String {
    let mut last = None;
    for _ in 0..20 {
        let out = Command::new(BIN).arg("dht").args(args).args(["--bootstrap", boot]).output().await.unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        last = Some(String::from_utf8_lossy(&out.stderr).into_owned());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("dht {args:?} kept failing: {last:?}");
}

/// Starts `hyphae pubsub TOPIC ARGS..`; its stdin, stdout lines and the address it prints on stderr.
async fn start_chat(
    topic: &str,
    extra: &[&str],
) -> (tokio::process::Child, tokio::process::ChildStdin, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>, String) {
    let mut c = Command::new(BIN)
        .args(["pubsub", topic, "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err = BufReader::new(c.stderr.take().unwrap()).lines();
    let addr = loop {
        let l = tokio::time::timeout(Duration::from_secs(10), err.next_line())
            .await
            .expect("chat prints its address")
            .unwrap()
            .expect("a line");
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
    let stdin = c.stdin.take().unwrap();
    let out = BufReader::new(c.stdout.take().unwrap()).lines();
    (c, stdin, out, addr)
}

/// Types `line` into a chat every 200 ms until `out` prints a line ending in it; returns that line.
async fn say_until_heard(
    stdin: &mut tokio::process::ChildStdin,
    out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    line: &str,
) -> String {
    use tokio::io::AsyncWriteExt;
    for _ in 0..50 {
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        if let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_millis(200), out.next_line()).await {
            assert!(l.ends_with(line), "{l}");
            return l;
        }
    }
    panic!("{line:?} never arrived");
}

#[tokio::test]
async fn cli_pubsub_chat_both_ways_and_a_node_logs_the_topic() {
    let (_a, mut a_in, mut a_out, a_addr) = start_chat("lobby", &[]).await;
    let (_b, mut b_in, mut b_out, _) = start_chat("lobby", &["--connect", &a_addr]).await;
    let a_id = a_addr.rsplit('/').next().unwrap().to_string();
    let l = say_until_heard(&mut b_in, &mut a_out, "hello from b").await;
    assert!(!l.starts_with(&a_id) && l.starts_with("12D3KooW"), "{l}");
    let l = say_until_heard(&mut a_in, &mut b_out, "hi from a").await;
    assert_eq!(l, format!("{a_id}: hi from a"));
    // A node subscribed to the topic logs what the chat says.
    let home = TempDir::new("cli-node");
    let mut node = Command::new(BIN)
        .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--subscribe", "lobby", "--connect", &a_addr])
        .env("XDG_DATA_HOME", &home.0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(node.stderr.take().unwrap()).lines();
    use tokio::io::AsyncWriteExt;
    let heard = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            a_in.write_all(b"for the node\n").await.unwrap();
            if let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_millis(200), log.next_line()).await {
                if l.contains("pubsub message") && l.contains("for the node") {
                    return l;
                }
            }
        }
    })
    .await
    .expect("the node logged the message");
    assert!(heard.contains(&a_id), "{heard}");
}

/// `node --metrics ADDR`: after two peers connect and ping, a scrape of /metrics shows them.
#[tokio::test]
async fn cli_node_metrics_endpoint_counts_connections_and_bytes() {
    let mut node = Command::new(BIN)
        .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(node.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), out.next_line()).await.unwrap().unwrap().unwrap();
    let mut err = BufReader::new(node.stderr.take().unwrap()).lines();
    let metrics = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let l = err.next_line().await.unwrap().expect("node exited");
            if let Some(i) = l.find("http://") {
                let rest = &l[i + 7..];
                return rest[..rest.find("/metrics").unwrap()].to_string();
            }
        }
    })
    .await
    .expect("metrics address logged");
    for _ in 0..2 {
        let o = Command::new(BIN).args(["ping", &addr, "--count", "1"]).output().await.unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let scrape = |path: &'static str| {
        let m = metrics.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&m).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {m}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).await.unwrap();
            body
        }
    };
    let text = scrape("/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("application/openmetrics-text; version=1.0.0"), "{text}");
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(value("hyphae_connections_established_total"), 2.0, "{text}");
    assert!(value("hyphae_bytes_total{transport=\"tcp\",direction=\"in\"}") > 1000.0, "{text}");
    assert!(value("hyphae_bytes_total{transport=\"tcp\",direction=\"out\"}") > 1000.0, "{text}");
    assert_eq!(value("hyphae_peerstore_peers"), 2.0, "{text}");
    assert_eq!(value("hyphae_identifies_total"), 2.0, "{text}");
    assert!(value("hyphae_rcmgr_limit{scope=\"transient\",resource=\"conns_inbound\"}") >= 32.0, "{text}");
    assert!(text.contains("hyphae_rcmgr_refused_total{scope=\"subnet\"} 0"), "{text}");
    assert!(text.contains("hyphae_rcmgr_streams_refused_total{scope=\"peer\"} 0"), "{text}");
    assert!(text.contains("hyphae_rcmgr_usage{scope=\"system\",resource=\"streams\"}"), "{text}");
    assert!(value("hyphae_rcmgr_limit{scope=\"system\",resource=\"streams_inbound\"}") >= 4096.0, "{text}");
    let missing = scrape("/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

/// `node --data-dir DIR`: a node that joined the DHT through a bootstrap peer, stopped and started
/// again with only its data dir, re-joins through the peers its saved peerstore knows.
#[tokio::test]
async fn cli_node_with_a_data_dir_rebootstraps_after_a_restart() {
    let dir = TempDir::new("datadir");
    let ka = dir.0.join("a.key");
    let (_a, boot) = start_node(&["--dht-mode", "server", "--key", ka.to_str().unwrap()]).await;
    let data = dir.0.join("c");
    let run = |extra: Vec<String>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--dht-mode", "server", "--data-dir"]).arg(&data).args(extra);
        cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap()
    };
    let wait_for = |child: &mut tokio::process::Child, needles: Vec<&'static str>| {
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        async move {
            let mut seen = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), async {
                while let Ok(Some(l)) = lines.next_line().await {
                    for n in &needles {
                        if l.contains(n) && !seen.contains(n) {
                            seen.push(*n);
                        }
                    }
                    if seen.len() == needles.len() {
                        return;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("saw only {seen:?} of {needles:?}"));
            // Keep reading: the node logs until it stops.
            tokio::spawn(async move {
                while let Ok(Some(l)) = lines.next_line().await {
                    eprintln!("node: {l}");
                }
            });
        }
    };
    let mut c = run(vec!["--bootstrap".into(), boot.clone()]);
    wait_for(&mut c, vec!["joined the DHT"]).await;
    let _ = std::process::Command::new("kill").args(["-TERM", &c.id().unwrap().to_string()]).status();
    assert!(c.wait().await.unwrap().success());
    assert!(data.join("peerstore.redb").exists() && data.join("identity.key").exists());
    let mut c = run(vec![]);
    wait_for(&mut c, vec!["peerstore loaded", "re-bootstrapping from the saved peerstore", "joined the DHT"]).await;
}

/// `--security` and `--muxer` take comma-separated lists (a clap type mismatch once made them panic):
/// a node offering only TLS and mplex is reached by a ping offering them, and not by one offering only
/// Noise.
#[tokio::test]
async fn cli_security_and_muxer_lists_choose_the_protocols() {
    let (_node, addr) = start_node(&["--security", "tls", "--muxer", "mplex"]).await;
    let ok = Command::new(BIN)
        .args(["ping", &addr, "--count", "1", "--security", "noise,tls", "--muxer", "yamux,mplex"])
        .output()
        .await
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let no = Command::new(BIN).args(["ping", &addr, "--count", "1", "--security", "noise"]).output().await.unwrap();
    assert_eq!(no.status.code(), Some(1), "{}", String::from_utf8_lossy(&no.stderr));
    assert!(String::from_utf8_lossy(&no.stderr).contains("connecting to"), "{}", String::from_utf8_lossy(&no.stderr));
}
