//! Loopback throughput of one stream over TCP + Noise + Yamux between two hyphae hosts (Host API).
//! Prints a table. `cargo bench -p hyphae --bench throughput [-- BYTES]` (default 1 GiB each way).

use hyphae::{Host, HostConfig, Stream};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SINK: &str = "/bench/sink/1.0.0";
const SOURCE: &str = "/bench/source/1.0.0";
const CHUNK: usize = 256 * 1024;

async fn run(bytes: u64) -> (Duration, Duration, Duration) {
    let server = Host::new(HostConfig::ephemeral()).await.unwrap();
    server.set_stream_handler(SINK, |mut s: Stream| async move {
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = s.write_all(&n.to_be_bytes()).await;
        let _ = s.shutdown().await;
    });
    server.set_stream_handler(SOURCE, |mut s: Stream| async move {
        let mut want = [0u8; 8];
        if s.read_exact(&mut want).await.is_err() {
            return;
        }
        let mut left = u64::from_be_bytes(want);
        let buf = vec![0x5au8; CHUNK];
        while left > 0 {
            let k = left.min(CHUNK as u64) as usize;
            if s.write_all(&buf[..k]).await.is_err() {
                return;
            }
            left -= k as u64;
        }
        let _ = s.shutdown().await;
    });
    let addrs = server.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();

    let t = Instant::now();
    let peer = client.connect(&addrs[0]).await.unwrap();
    let mut s = client.new_stream(&peer, &[SINK]).await.unwrap();
    s.write_all(&[1]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).await.unwrap();
    let setup_1b = t.elapsed();
    drop(s);

    // upload
    let t = Instant::now();
    let mut s = client.new_stream(&peer, &[SINK]).await.unwrap();
    let buf = vec![0xa5u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..k]).await.unwrap();
        left -= k as u64;
    }
    s.shutdown().await.unwrap();
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(u64::from_be_bytes(ack), bytes);
    let up = t.elapsed();
    drop(s);

    // download
    let t = Instant::now();
    let mut s = client.new_stream(&peer, &[SOURCE]).await.unwrap();
    s.write_all(&bytes.to_be_bytes()).await.unwrap();
    let mut rbuf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        match s.read(&mut rbuf).await.unwrap() {
            0 => break,
            k => got += k as u64,
        }
    }
    assert_eq!(got, bytes);
    let down = t.elapsed();
    client.close().await;
    server.close().await;
    (setup_1b, up, down)
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this runs as a 1 MiB smoke test.
    let bench = std::env::args().any(|a| a == "--bench");
    let default = if bench { 1 << 30 } else { 1 << 20 };
    let bytes: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(default);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (setup, up, down) = rt.block_on(run(bytes));
    let gbps = |d: Duration| bytes as f64 * 8.0 / d.as_secs_f64() / 1e9;
    println!("| hyphae TCP+Noise+Yamux, loopback | value |");
    println!("|---|---|");
    println!("| connect + stream + 1-byte round trip | {:.2} ms |", setup.as_secs_f64() * 1e3);
    println!("| upload {} MiB | {:.2} s, {:.2} Gbit/s |", bytes >> 20, up.as_secs_f64(), gbps(up));
    println!("| download {} MiB | {:.2} s, {:.2} Gbit/s |", bytes >> 20, down.as_secs_f64(), gbps(down));
}
