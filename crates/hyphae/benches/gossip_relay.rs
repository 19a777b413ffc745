//! Gossipsub relay throughput: how many 1 KiB messages per second one relay node passes on, with a
//! publisher and 4 subscribers (hyphae hosts in this process) connected to it alone, on loopback. The
//! relay is a separate process: this binary run as `--relay` (a hyphae Host subscribed to the topic), or
//! rust-libp2p's gossipsub 0.50 (`interop/rust-peer/target/release/rust-peer pubsub quiet`, release
//! build: `scripts/bench-gossip.sh` builds both). Same publisher, subscribers and pacing for both.
//! Two modes, A B A B each: signed messages (the default policy; every receiver checks every signature,
//! so the publisher and subscribers, sharing this machine's cores with the relay, set much of the pace)
//! and unsigned ones identified by the sha256 of their data (Ethereum's policy: hyphae's
//! `Signing::StrictNoSign` + `MessageIdFn::ContentSha256`, rust-libp2p's `Anonymous` with the same id
//! function), where the relay's own work is most of the work. Besides the wall-clock rate the table
//! gives the relay process's own CPU time per message (from /proc): the rate the relay would sustain
//! with a core to itself.
//! `cargo bench -p hyphae --bench gossip_relay [-- MESSAGES] [--signed|--unsigned]` prints a table
//! (both modes unless one is named).

use hyphae::{Host, HostConfig, Multiaddr, PeerId};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const TOPIC: &str = "relay-bench";
const SUBSCRIBERS: usize = 4;
const SIZE: usize = 1024;

fn config(unsigned: bool) -> HostConfig {
    let mut c = HostConfig::ephemeral();
    // rust-libp2p's relay speaks 1 MiB RPCs here too (its default is 64 KiB; 1 KiB messages fit both).
    c.pubsub.max_queue_bytes = 64 << 20;
    if unsigned {
        c.pubsub.signing = hyphae::core::gossipsub::Signing::StrictNoSign;
        c.pubsub.message_id = hyphae::core::gossipsub::MessageIdFn::ContentSha256;
    }
    c
}

/// `--relay [--unsigned]`: a hyphae node subscribed to the topic, printing its address, until stdin closes.
async fn relay(unsigned: bool) {
    let h = Host::new(config(unsigned)).await.unwrap();
    let a = h.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    println!("{}", a[0]);
    let mut sub = h.pubsub().subscribe(TOPIC);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            m = sub.next() => if m.is_none() { break },
            l = stdin.next_line() => if !matches!(l, Ok(Some(_))) { break },
        }
    }
    let s = h.pubsub().stats();
    eprintln!(
        "hyphae relay: received {} duplicates {} sent {} dropped {}",
        s.messages_received, s.duplicates, s.messages_sent, s.dropped_messages
    );
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

/// Starts a relay; its process and address (with /p2p/).
async fn start(kind: &str, unsigned: bool) -> Option<(Child, Multiaddr)> {
    let mut cmd = if kind == "hyphae" {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.arg("--relay");
        if unsigned {
            c.arg("--unsigned");
        }
        c
    } else {
        let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../../interop/rust-peer/target/release/rust-peer");
        if !std::path::Path::new(bin).exists() {
            eprintln!("skipping rust-libp2p: {bin} missing (scripts/bench-gossip.sh builds it)");
            return None;
        }
        let mut c = Command::new(bin);
        c.args(["pubsub", "quiet"]);
        if unsigned {
            c.arg("anonymous");
        }
        c
    };
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let addr: Multiaddr = if kind == "hyphae" {
        first.parse().unwrap()
    } else {
        let start = first.find("\"addrs\":[\"").unwrap() + 10;
        first[start..start + first[start..].find('"').unwrap()].parse().unwrap()
    };
    if kind != "hyphae" {
        child.stdin.as_mut().unwrap().write_all(format!("subscribe {TOPIC}\n").as_bytes()).await.unwrap();
        lines.next_line().await.unwrap();
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some((child, addr))
}

async fn run(kind: &str, unsigned: bool, n: usize) -> Option<(f64, usize, f64)> {
    let (child, addr) = start(kind, unsigned).await?;
    let relay: PeerId = addr.peer_id().unwrap();
    let publisher = Host::new(config(unsigned)).await.unwrap();
    publisher.connect(&addr).await.unwrap();
    let _ps = publisher.pubsub().subscribe(TOPIC);
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let h = Host::new(config(unsigned)).await.unwrap();
        h.connect(&addr).await.unwrap();
        // Counted at the router (`stats().delivered`): a subscription read by a task on this busy
        // 2-core process drops what it cannot take (counted in `dropped()`), which is not the relay's doing.
        let mut s = h.pubsub().subscribe(TOPIC);
        tokio::spawn(async move { while s.next().await.is_some() {} });
        subs.push(h);
    }
    // Every mesh holds the relay (the relay grafts all five: fewer than Dlo).
    let t = Instant::now();
    while !(publisher.pubsub().mesh_peers(TOPIC).contains(&relay) && subs.iter().all(|h| h.pubsub().mesh_peers(TOPIC).contains(&relay))) {
        assert!(t.elapsed() < Duration::from_secs(20), "meshes never formed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let total = || subs.iter().map(|h| h.pubsub().stats().delivered as usize).sum::<usize>();
    let pid = child.id().unwrap();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut last = (0, Instant::now());
    for i in 0..n {
        let mut data = vec![0u8; SIZE];
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        // Pace on what the relay's stream has not taken (1 MiB in flight at most).
        while publisher.pubsub().queued(&relay) > 1 << 20 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        publisher.pubsub().publish(TOPIC, data).unwrap();
    }
    // Until every subscriber has every message, or nothing arrived for 5 s.
    loop {
        let got = total();
        if got >= n * SUBSCRIBERS {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = if total() >= n * SUBSCRIBERS { t0.elapsed() } else { last.1 - t0 };
    let got = total();
    let cpu = cpu_seconds(pid) - cpu0;
    drop(child);
    for h in subs {
        h.close().await;
    }
    publisher.close().await;
    Some((elapsed.as_secs_f64(), got, cpu))
}

#[tokio::main]
async fn main() {
    let arg = |a: &str| std::env::args().any(|x| x == a);
    if arg("--relay") {
        return relay(arg("--unsigned")).await;
    }
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let modes: &[bool] = match (arg("--signed"), arg("--unsigned")) {
        (true, false) => &[false],
        (false, true) => &[true],
        _ => &[false, true],
    };
    println!("{n} messages of {SIZE} B, 1 publisher -> relay -> {SUBSCRIBERS} subscribers, loopback");
    println!("| relay | messages | seconds | delivered (of {}) | messages/s relayed out | relay CPU s | relay CPU µs per message in | messages in per relay CPU-second |", n * SUBSCRIBERS);
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for &unsigned in modes {
        for kind in ["hyphae", "rust-libp2p", "hyphae", "rust-libp2p"] {
            if let Some((secs, got, cpu)) = run(kind, unsigned, n).await {
                println!(
                    "| {kind} | {} | {secs:.2} | {got} | {:.0} | {cpu:.2} | {:.0} | {:.0} |",
                    if unsigned { "unsigned" } else { "signed" },
                    got as f64 / secs,
                    cpu * 1e6 / n as f64,
                    n as f64 / cpu.max(1e-9)
                );
            }
        }
    }
}
