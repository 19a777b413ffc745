//! Memory per idle connection: N connections (default 1,000) between two hosts in this process over
//! TCP + Noise + Yamux, then over QUIC, each left idle after identify; prints the process's resident
//! memory growth per connection (both ends are in this process: one end costs half).
//! `cargo bench -p hyphae --bench idle_conns [-- N]`.
#[path = "../tests/common/mod.rs"]
mod common;

use hyphae::Host;
use std::time::Duration;

async fn run(transport: &str, n: usize) -> (u64, u64) {
    let a = Host::new(common::unlimited_config()).await.unwrap();
    let listen = if transport == "quic" { "/ip4/127.0.0.1/udp/0/quic-v1" } else { "/ip4/127.0.0.1/tcp/0" };
    let addr = a.listen(listen.parse().unwrap()).await.unwrap().remove(0);
    let b = Host::new(common::unlimited_config()).await.unwrap();
    // One connection first: what every connection shares (buffers, the QUIC endpoint) is then allocated.
    b.dial(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = common::rss_bytes("self");
    for _ in 0..n {
        b.dial(&addr).await.unwrap();
    }
    // Identify runs on each; let it finish and the connections go quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = common::rss_bytes("self");
    b.close().await;
    a.close().await;
    (before, after)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1000);
    println!("| transport | connections | RSS before | RSS after | per connection, both ends | per end |");
    println!("|---|---:|---:|---:|---:|---:|");
    for t in ["tcp+noise+yamux", "quic"] {
        let (before, after) = run(if t == "quic" { "quic" } else { "tcp" }, n).await;
        let per = after.saturating_sub(before) as f64 / n as f64;
        println!(
            "| {t} | {n} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.1} KiB |",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            per / 1024.0,
            per / 2048.0
        );
    }
}
