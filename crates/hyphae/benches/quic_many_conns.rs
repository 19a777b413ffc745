//! One QUIC upload while the receiving host holds many idle QUIC connections: what an endpoint's cost
//! per datagram does as its connection count grows. A server host; a host that dials N idle
//! connections to it (default 0 and 1,000); a client that uploads BYTES (default 256 MiB) to it with the
//! perf protocol (`/perf/1.0.0`, from opening the stream to the server's end of it). Prints a table, one
//! row per N, alternating `-- ROUNDS` times.
//! `cargo bench -p hyphae --bench quic_many_conns [-- BYTES [ROUNDS]]`.

#[path = "../tests/common/mod.rs"]
mod common;

use hyphae::Host;
use std::time::Duration;

async fn run(idle: usize, bytes: u64) -> Duration {
    let server = Host::new(common::unlimited_config()).await.unwrap();
    server.enable_perf_server();
    let addr = server.listen("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()).await.unwrap().remove(0);
    let idler = Host::new(common::unlimited_config()).await.unwrap();
    for _ in 0..idle {
        idler.dial(&addr).await.unwrap();
    }
    // Identify runs on each; let it finish and the connections go quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client = Host::new(common::unlimited_config()).await.unwrap();
    let peer = client.connect(&addr).await.unwrap();
    let r = client.perf(&peer, bytes, 0, |_, _, _| {}).await.unwrap();
    assert_eq!(r.uploaded, bytes, "every byte went up");
    client.close().await;
    idler.close().await;
    server.close().await;
    r.elapsed
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).filter_map(|a| a.parse::<u64>().ok());
    let bytes = args.next().unwrap_or(256 << 20);
    let rounds = args.next().unwrap_or(2);
    println!("| idle QUIC connections on the server | MiB | seconds | Gbit/s |");
    println!("|---:|---:|---:|---:|");
    for _ in 0..rounds {
        for idle in [0usize, 1000] {
            let d = run(idle, bytes).await;
            let gbit = bytes as f64 * 8.0 / d.as_secs_f64() / 1e9;
            println!("| {idle} | {} | {:.2} | {gbit:.2} |", bytes >> 20, d.as_secs_f64());
        }
    }
}
