//! `hyphae transport-interop`, libp2p/test-plans' contract, against a local redis-server (the Debian
//! package `interop/setup.sh` installs): a hyphae listener and a hyphae dialer in each combination
//! hyphae offers the matrix — TCP with Noise or TLS and Yamux or mplex, and QUIC-v1. Skipped without
//! redis-server.

#[path = "../../hyphae/tests/common/mod.rs"]
mod common;
use common::TempDir;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_hyphae");

struct Redis {
    _child: tokio::process::Child,
    addr: String,
    _dir: TempDir,
}

async fn redis() -> Option<Redis> {
    if !std::process::Command::new("sh").args(["-c", "command -v redis-server"]).stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: no redis-server (interop/setup.sh installs it)");
        return None;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = TempDir::new("redis");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
        .arg(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Some(Redis { _child: child, addr, _dir: dir });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server did not start");
}

fn role(redis: &Redis, dialer: bool, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("transport-interop")
        .env("is_dialer", if dialer { "true" } else { "false" })
        .env("ip", "127.0.0.1")
        .env("redis_addr", &redis.addr)
        .env("test_timeout_seconds", "30")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn transport_interop_contract_in_both_roles() {
    let Some(redis) = redis().await else { return };
    let combos: [&[(&str, &str)]; 4] = [
        &[("transport", "tcp"), ("security", "noise"), ("muxer", "yamux")],
        &[("transport", "tcp"), ("security", "tls"), ("muxer", "yamux")],
        &[("transport", "tcp"), ("security", "noise"), ("muxer", "mplex")],
        &[("transport", "quic-v1")],
    ];
    for env in combos {
        let mut listener = role(&redis, false, env).spawn().unwrap();
        let out = tokio::time::timeout(Duration::from_secs(30), role(&redis, true, env).output()).await.expect("dialer finishes").unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{env:?}: {stdout}");
        // One JSON object with both timings, as test-plans parses it.
        let line = stdout.trim();
        assert!(
            line.starts_with("{\"handshakePlusOneRTTMillis\":") && line.contains(",\"pingRTTMilllis\":") && line.ends_with('}'),
            "{line}"
        );
        let num = |k: &str| -> f64 {
            line.split(&format!("\"{k}\":")).nth(1).unwrap().trim_end_matches('}').split(',').next().unwrap().parse().unwrap()
        };
        assert!(num("handshakePlusOneRTTMillis") > 0.0 && num("pingRTTMilllis") > 0.0, "{line}");
        assert!(num("pingRTTMilllis") <= num("handshakePlusOneRTTMillis"), "{line}");
        // The listener waits to be stopped, as the contract asks.
        assert!(listener.try_wait().unwrap().is_none(), "the listener must not exit on its own");
        listener.kill().await.unwrap();
    }
    // A wrong combination is an error, not a silent default.
    let out = role(&redis, true, &[("transport", "ws")]).output().await.unwrap();
    assert!(!out.status.success());
}
