//! `hyphae transport-interop`: libp2p/test-plans' transport-interop contract, so hyphae can join its
//! matrix. Configured by environment variables (`transport` tcp | quic-v1, `muxer` yamux | mplex,
//! `security` noise | tls, `is_dialer`, `ip`, `redis_addr`, `test_timeout_seconds`; the upper-case
//! names of the newer runner are read too). The listener publishes its address on the redis list
//! `listenerAddr` and waits to be killed; the dialer takes it, dials, pings once and prints
//! `{"handshakePlusOneRTTMillis":…,"pingRTTMilllis":…}` on stdout (the misspelling is the contract's).
//! Logs go to stderr.
//!
//! Redis is spoken directly (RESP, two commands: RPUSH and BLPOP): the `redis` crate would bring URL
//! and IDNA parsing into the binary for those two commands.

use hyphae::{Host, HostConfig, Keypair, Multiaddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn env(name: &str) -> Option<String> {
    std::env::var(name).or_else(|_| std::env::var(name.to_uppercase())).ok().filter(|v| !v.is_empty())
}

/// One RESP command (an array of bulk strings).
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one RESP reply line; for an array reply, its bulk strings.
async fn reply(r: &mut BufReader<TcpStream>) -> Result<Vec<String>, String> {
    let mut line = String::new();
    r.read_line(&mut line).await.map_err(|e| format!("redis: {e}"))?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(vec![rest.to_string()]),
        "-" => Err(format!("redis: {rest}")),
        "*" => {
            let n: i64 = rest.parse().map_err(|_| format!("redis: bad reply {line:?}"))?;
            let mut v = Vec::new();
            for _ in 0..n.clamp(0, 16) {
                let mut len = String::new();
                r.read_line(&mut len).await.map_err(|e| format!("redis: {e}"))?;
                let len: usize = len.trim_end().trim_start_matches('$').parse().map_err(|_| "redis: bad bulk length".to_string())?;
                if len > 4096 {
                    return Err("redis: bulk string too long".into());
                }
                let mut b = vec![0u8; len + 2];
                tokio::io::AsyncReadExt::read_exact(r, &mut b).await.map_err(|e| format!("redis: {e}"))?;
                b.truncate(len);
                v.push(String::from_utf8(b).map_err(|_| "redis: not utf-8".to_string())?);
            }
            Ok(v)
        }
        _ => Err(format!("redis: unexpected reply {line:?}")),
    }
}

async fn redis(addr: &str, args: &[&str]) -> Result<Vec<String>, String> {
    let s = TcpStream::connect(addr).await.map_err(|e| format!("redis at {addr}: {e}"))?;
    let mut r = BufReader::new(s);
    r.get_mut().write_all(&command(args)).await.map_err(|e| format!("redis: {e}"))?;
    reply(&mut r).await
}

pub async fn run() -> Result<(), String> {
    let transport = env("transport").ok_or("transport is not set (tcp or quic-v1)")?;
    let dialer = env("is_dialer").ok_or("is_dialer is not set")? == "true";
    let ip = env("ip").or_else(|| env("listener_ip")).unwrap_or_else(|| "0.0.0.0".into());
    let redis_addr = env("redis_addr").unwrap_or_else(|| "redis:6379".into());
    let timeout = Duration::from_secs(env("test_timeout_seconds").and_then(|t| t.parse().ok()).unwrap_or(180));
    let mut c = HostConfig::new(Keypair::generate_ed25519(&mut rand_core::OsRng));
    if transport == "tcp" {
        c.security = match env("security").as_deref() {
            Some("noise") => vec![hyphae::core::noise::PROTOCOL_ID.into()],
            Some("tls") => vec![hyphae::core::tls::PROTOCOL_ID.into()],
            other => return Err(format!("security {other:?}: noise or tls")),
        };
        c.muxers = match env("muxer").as_deref() {
            Some("yamux") => vec![hyphae::core::yamux::PROTOCOL_ID.into()],
            Some("mplex") => vec![hyphae::core::mplex::PROTOCOL_ID.into()],
            other => return Err(format!("muxer {other:?}: yamux or mplex")),
        };
    } else if transport != "quic-v1" {
        return Err(format!("transport {transport}: tcp or quic-v1"));
    }
    let host = Host::new(c).await.map_err(|e| e.to_string())?;
    if dialer {
        let secs = timeout.as_secs().to_string();
        let got = tokio::time::timeout(timeout, redis(&redis_addr, &["BLPOP", "listenerAddr", &secs]))
            .await
            .map_err(|_| "no listener address in time")??;
        let addr: Multiaddr = got.get(1).ok_or("BLPOP timed out")?.parse().map_err(|e| format!("listener address: {e}"))?;
        tracing::info!(%addr, "dialing");
        let t0 = Instant::now();
        let run = async {
            let peer = host.connect(&addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
            let rtt = host.ping(&peer).await.map_err(|e| format!("ping: {e}"))?;
            Ok::<_, String>(rtt)
        };
        let rtt = tokio::time::timeout(timeout, run).await.map_err(|_| "timed out")??;
        let total = t0.elapsed();
        println!("{{\"handshakePlusOneRTTMillis\":{:.3},\"pingRTTMilllis\":{:.3}}}", total.as_secs_f64() * 1e3, rtt.as_secs_f64() * 1e3);
        host.close().await;
        Ok(())
    } else {
        let listen: Multiaddr = match transport.as_str() {
            "tcp" => format!("/ip4/{ip}/tcp/0"),
            _ => format!("/ip4/{ip}/udp/0/quic-v1"),
        }
        .parse()
        .map_err(|e| format!("ip {ip}: {e}"))?;
        let addrs = host.listen(listen).await.map_err(|e| e.to_string())?;
        // A routable address first: the dialer runs elsewhere (loopback only when that is all there is).
        let addr = addrs.iter().find(|a| a.ip().is_some_and(|i| !i.is_loopback())).or(addrs.first()).ok_or("no listen address")?;
        redis(&redis_addr, &["RPUSH", "listenerAddr", &addr.to_string()]).await?;
        tracing::info!(%addr, "published on redis; waiting to be stopped");
        tokio::time::sleep(timeout).await;
        Err("test timeout reached without being stopped".into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resp_commands_are_arrays_of_bulk_strings() {
        assert_eq!(super::command(&["RPUSH", "k", "v1"]), b"*3\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$2\r\nv1\r\n");
    }
}
