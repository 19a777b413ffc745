//! Gossipsub behind a real uplink: one publisher in namespace A sends large messages across the delay
//! line (`scripts/wan.sh`, rate-limited) to N subscribers in namespace B, which also mesh with each
//! other (so the first copy to arrive is forwarded inside B at once, and IDONTWANTs come back). Compares
//! the publisher with and without `HostConfig::send_limit` (the send gate that lets gossipsub's staggered
//! sending take queued copies back), A B A B, one table. Run by `scripts/bench-gossip-uplink.sh`, which
//! brings the path up and runs this binary in namespace A:
//!
//!   gossip_uplink [--subscribers N] [--messages M] [--size BYTES] [--limit BYTES] [--peer-ip IP] [--runs R]
//!
//! (`--serve N IP` is the subscriber side, started by the publisher side in namespace B.)

use hyphae::{Host, HostConfig, Multiaddr};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TOPIC: &str = "uplink-bench";

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// `--serve N IP`: N subscribers listening on IP, each dialing the next three; prints their addresses,
/// then "ready"; when stdin closes, prints "RESULT duplicates deliveries idontwant_sent" and, per
/// message, "LAT index first_ms all_ms received".
async fn serve(n: usize, ip: &str) {
    let mut hosts = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let h = Host::new(HostConfig::ephemeral()).await.unwrap();
        let a = h.listen(format!("/ip4/{ip}/tcp/0").parse().unwrap()).await.unwrap().remove(0);
        addrs.push(a);
        hosts.push(h);
    }
    for i in 0..n {
        for d in 1..=3.min(n - 1) {
            let _ = hosts[i].connect(&addrs[(i + d) % n]).await;
        }
    }
    // (message index) -> (publish ns, receive ns of each receiver)
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<u32, (u64, Vec<u64>)>::new()));
    let mut tasks = Vec::new();
    for h in &hosts {
        let mut sub = h.pubsub().subscribe(TOPIC);
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let now = unix_ns();
                let idx = u32::from_le_bytes(m.data[0..4].try_into().unwrap());
                let sent = u64::from_le_bytes(m.data[4..12].try_into().unwrap());
                let mut a = arrivals.lock().unwrap();
                let e = a.entry(idx).or_insert((sent, Vec::new()));
                e.1.push(now);
            }
        }));
    }
    for a in &addrs {
        println!("{a}");
    }
    println!("ready");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
    let (mut dups, mut deliveries, mut idw) = (0, 0, 0);
    for h in &hosts {
        let s = h.pubsub().stats();
        dups += s.duplicates;
        deliveries += s.delivered;
        idw += s.idontwant_sent;
    }
    println!("RESULT {dups} {deliveries} {idw}");
    for (i, (sent, rx)) in arrivals.lock().unwrap().iter() {
        let first = rx.iter().min().copied().unwrap_or(*sent).saturating_sub(*sent) as f64 / 1e6;
        let all = rx.iter().max().copied().unwrap_or(*sent).saturating_sub(*sent) as f64 / 1e6;
        println!("LAT {i} {first:.1} {all:.1} {}", rx.len());
    }
    for h in &hosts {
        h.close().await;
    }
}

struct Run {
    copies_per_message: f64,
    mib_per_message: f64,
    taken_back: u64,
    dups_per_delivery: f64,
    delivered: String,
    first_p50: f64,
    all_p50: f64,
    all_max: f64,
}

async fn run(n: usize, messages: u32, size: usize, limit: Option<usize>, peer_ip: &str, netns: &str) -> Run {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if netns.is_empty() { Command::new(&exe) } else { Command::new("ip") };
    if !netns.is_empty() {
        cmd.args(["netns", "exec", netns]).arg(&exe);
    }
    let mut child = cmd
        .args(["--serve", &n.to_string(), peer_ip])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the subscribers");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    while let Some(l) = out.next_line().await.unwrap() {
        if l == "ready" {
            break;
        }
        addrs.push(l.parse().unwrap());
    }
    let mut cfg = HostConfig::ephemeral();
    cfg.send_limit = limit;
    let p = Host::new(cfg).await.unwrap();
    for a in &addrs {
        p.connect(a).await.unwrap();
    }
    for _ in 0..400 {
        if p.pubsub().peers(Some(TOPIC)).len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Grafts settle over a few heartbeats.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = p.pubsub().stats();
    for i in 0..messages {
        let mut data = vec![0u8; size];
        data[0..4].copy_from_slice(&i.to_le_bytes());
        data[4..12].copy_from_slice(&unix_ns().to_le_bytes());
        data[12..].fill(i as u8);
        p.pubsub().publish(TOPIC, data).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = p.pubsub().stats();
    drop(child.stdin.take());
    let (mut dups, mut deliveries) = (0u64, 0u64);
    let (mut first, mut all, mut got) = (Vec::new(), Vec::new(), 0usize);
    while let Some(l) = out.next_line().await.unwrap() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.first().copied() {
            Some("RESULT") => {
                dups = f[1].parse().unwrap();
                deliveries = f[2].parse().unwrap();
            }
            Some("LAT") => {
                first.push(f[2].parse::<f64>().unwrap());
                all.push(f[3].parse::<f64>().unwrap());
                got += f[4].parse::<usize>().unwrap();
            }
            _ => {}
        }
    }
    let _ = child.wait().await;
    p.close().await;
    let pct = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
    };
    let m = f64::from(messages);
    Run {
        copies_per_message: (after.messages_sent - before.messages_sent) as f64 / m,
        mib_per_message: (after.message_bytes_sent - before.message_bytes_sent) as f64 / m / 1048576.0,
        taken_back: after.idontwant_cancelled - before.idontwant_cancelled,
        dups_per_delivery: dups as f64 / deliveries.max(1) as f64,
        delivered: format!("{got}/{}", messages as usize * n),
        first_p50: pct(&mut first, 0.5),
        all_p50: pct(&mut all, 0.5),
        all_max: pct(&mut all, 1.0),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = arg(&args, "--serve") {
        let ip = args.iter().skip_while(|a| *a != "--serve").nth(2).cloned().unwrap_or("127.0.0.1".into());
        return serve(n.parse().unwrap(), &ip).await;
    }
    let n: usize = arg(&args, "--subscribers").map_or(8, |v| v.parse().unwrap());
    let messages: u32 = arg(&args, "--messages").map_or(20, |v| v.parse().unwrap());
    let size: usize = arg(&args, "--size").map_or(128 << 10, |v| v.parse().unwrap());
    let limit: usize = arg(&args, "--limit").map_or(64 << 10, |v| v.parse().unwrap());
    let runs: usize = arg(&args, "--runs").map_or(2, |v| v.parse().unwrap());
    let peer_ip = arg(&args, "--peer-ip").unwrap_or("127.0.0.1".into());
    let netns = arg(&args, "--netns").unwrap_or_default();
    println!("{n} subscribers, {messages} messages of {size} bytes, one per second; gate limit {limit} bytes");
    println!();
    println!("| publisher | copies sent per message | MiB sent per message | queued copies taken back | duplicates per delivery | delivered | first arrival p50 ms | all arrived p50 ms | all arrived max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for _ in 0..runs {
        for (name, l) in [("no gate", None), ("send gate", Some(limit))] {
            let r = run(n, messages, size, l, &peer_ip, &netns).await;
            println!(
                "| {name} | {:.2} | {:.2} | {} | {:.2} | {} | {:.1} | {:.1} | {:.1} |",
                r.copies_per_message, r.mib_per_message, r.taken_back, r.dups_per_delivery, r.delivered, r.first_p50, r.all_p50, r.all_max
            );
        }
    }
}
