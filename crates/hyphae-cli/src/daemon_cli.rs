//! `hyphae daemon`: go-libp2p-daemon's (`p2pd`) command line, so scripts and test suites that start
//! p2pd start hyphae unchanged. Go's flag syntax: `-flag value`, `-flag=value`, `--flag`; boolean flags
//! alone or `-flag=false`. Every p2pd flag is accepted; where hyphae lacks the feature yet, a startup
//! line on stderr says so (never a silent no-op).

use hyphae::daemon::{self, ControlAddr};
use hyphae::{keyfile, Host, HostConfig, Multiaddr};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Str,
}

/// p2pd's flags (go-libp2p-daemon v0.x with hivemind's), each with its kind and default.
const FLAGS: &[(&str, Kind, &str)] = &[
    ("listen", Kind::Str, "/unix/tmp/p2pd.sock"),
    ("hostAddrs", Kind::Str, ""),
    ("announceAddrs", Kind::Str, ""),
    ("noListenAddrs", Kind::Bool, "false"),
    ("id", Kind::Str, ""),
    ("q", Kind::Bool, "false"),
    ("b", Kind::Bool, "false"),
    ("bootstrapPeers", Kind::Str, ""),
    ("dht", Kind::Bool, "false"),
    ("dhtClient", Kind::Bool, "false"),
    ("dhtServer", Kind::Bool, "false"),
    ("pubsub", Kind::Bool, "false"),
    ("pubsubRouter", Kind::Str, "gossipsub"),
    ("pubsubSign", Kind::Bool, "true"),
    ("pubsubSignStrict", Kind::Bool, "true"),
    ("gossipsubHeartbeatInterval", Kind::Str, "1s"),
    ("gossipsubHeartbeatInitialDelay", Kind::Str, "100ms"),
    ("connManager", Kind::Bool, "false"),
    ("connLo", Kind::Str, "256"),
    ("connHi", Kind::Str, "512"),
    ("connGrace", Kind::Str, "120s"),
    ("autonat", Kind::Bool, "false"),
    ("forceReachabilityPublic", Kind::Bool, "false"),
    ("forceReachabilityPrivate", Kind::Bool, "false"),
    ("noise", Kind::Bool, "true"),
    ("tls", Kind::Bool, "true"),
    ("muxer", Kind::Str, "yamux"),
    ("metricsAddr", Kind::Str, ""),
    ("idleTimeout", Kind::Str, ""),
    ("persistentConnMaxMsgSize", Kind::Str, "4194304"),
    ("relay", Kind::Bool, "true"),
    ("relayActive", Kind::Bool, "false"),
    ("relayHop", Kind::Bool, "false"),
    ("relayHopLimit", Kind::Str, "0"),
    ("relayDiscovery", Kind::Bool, "false"),
    ("autoRelay", Kind::Bool, "false"),
    ("trustedRelays", Kind::Str, ""),
    ("natPortMap", Kind::Bool, "false"),
    ("quic", Kind::Bool, "true"),
    ("echo", Kind::Bool, "false"),
    ("useQuic", Kind::Bool, "false"),
];

/// The parsed command line: flag → value (defaults filled), and which were given.
pub struct Flags {
    values: BTreeMap<&'static str, String>,
    given: Vec<&'static str>,
}

impl Flags {
    fn str(&self, f: &str) -> &str {
        self.values.get(f).map(String::as_str).unwrap_or("")
    }
    fn bool(&self, f: &str) -> bool {
        self.str(f) == "true"
    }
    fn given(&self, f: &str) -> bool {
        self.given.contains(&f)
    }
}

fn usage() -> String {
    let mut s = String::from("Usage of hyphae daemon (p2pd's flags):\n");
    for (name, kind, def) in FLAGS {
        let t = if *kind == Kind::Bool { "" } else { " value" };
        s.push_str(&format!("  -{name}{t}\n    \t(default {def:?})\n"));
    }
    s
}

/// Go's `flag` package rules; errors read as go's do.
pub fn parse(args: &[String]) -> Result<Flags, String> {
    let mut values: BTreeMap<&'static str, String> = FLAGS.iter().map(|(n, _, d)| (*n, d.to_string())).collect();
    let mut given = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-h" || a == "-help" || a == "--help" {
            return Err(usage());
        }
        let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            return Err(format!("unexpected argument {a:?}\n{}", usage()));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(&(key, kind, _)) = FLAGS.iter().find(|(n, _, _)| *n == name) else {
            return Err(format!("flag provided but not defined: -{name}\n{}", usage()));
        };
        let v = match (kind, inline) {
            (Kind::Bool, None) => "true".to_string(),
            (Kind::Bool, Some(v)) => match v.as_str() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => "true".into(),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => "false".into(),
                _ => return Err(format!("invalid boolean value {v:?} for -{name}: parse error")),
            },
            (Kind::Str, Some(v)) => v,
            (Kind::Str, None) => it.next().cloned().ok_or_else(|| format!("flag needs an argument: -{name}"))?,
        };
        values.insert(key, v);
        given.push(key);
    }
    Ok(Flags { values, given })
}

/// A Go duration: `300ms`, `1.5s`, `2m`, `1h`.
fn go_duration(flag: &str, v: &str) -> Result<Duration, String> {
    let bad = || format!("invalid value {v:?} for flag -{flag}: parse error");
    let split = v.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn addr_list(flag: &str, v: &str) -> Result<Vec<Multiaddr>, String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().map_err(|e| format!("-{flag} {s}: {e}"))).collect()
}

fn number(flag: &str, v: &str) -> Result<usize, String> {
    v.parse().map_err(|_| format!("invalid value {v:?} for flag -{flag}: parse error"))
}

/// Runs the daemon until SIGINT or SIGTERM; the control socket is removed on the way out.
pub async fn run(f: Flags, stop: impl std::future::Future<Output = ()>) -> Result<(), String> {
    let control: Multiaddr = f.str("listen").parse().map_err(|e| format!("-listen {}: {e}", f.str("listen")))?;
    let control = ControlAddr::from_multiaddr(&control).ok_or_else(|| format!("-listen {control}: not a unix socket or TCP address"))?;
    let key = if f.str("id").is_empty() {
        hyphae::Keypair::generate_ed25519(&mut rand_core::OsRng)
    } else {
        keyfile::load(std::path::Path::new(f.str("id")))?
    };
    let mut c = HostConfig::new(key);
    // What hyphae does not have yet: said at start, never silently ignored.
    let mut missing = Vec::new();
    for (flag, what) in [
        ("relayActive", "circuit relay"),
        ("relayHop", "circuit relay"),
        ("relayDiscovery", "circuit relay"),
        ("autoRelay", "circuit relay"),
        ("trustedRelays", "circuit relay"),
        ("natPortMap", "NAT port mapping"),
        ("announceAddrs", "announce addresses"),
    ] {
        if f.given(flag) && (f.bool(flag) || !f.str(flag).is_empty() && f.str(flag) != "false") {
            missing.push(format!("-{flag}: {what} not supported by hyphae yet"));
        }
    }
    if f.given("relay") && f.bool("relay") {
        missing.push("-relay: circuit relay not supported by hyphae yet (dialing relay addresses fails)".into());
    }
    if f.bool("b") && f.str("bootstrapPeers").is_empty() {
        return Err(
            "-b without -bootstrapPeers: hyphae has no public bootstrap list built in (it never reaches a default network unasked)".into(),
        );
    }
    if f.bool("dhtServer") {
        c.dht.mode = hyphae::core::kad::Mode::Server;
    } else if f.bool("dhtClient") || f.bool("dht") {
        c.dht.mode = hyphae::core::kad::Mode::Client;
    }
    let mut security = Vec::new();
    if f.bool("noise") {
        security.push(hyphae::core::noise::PROTOCOL_ID.to_string());
    }
    if f.bool("tls") {
        security.push(hyphae::core::tls::PROTOCOL_ID.to_string());
    }
    if security.is_empty() {
        return Err("-noise=false and -tls=false: no security protocol left".into());
    }
    c.security = security;
    c.muxers = f
        .str("muxer")
        .split(',')
        .map(|m| match m.trim() {
            "yamux" => Ok(hyphae::core::yamux::PROTOCOL_ID.to_string()),
            "mplex" => Ok(hyphae::core::mplex::PROTOCOL_ID.to_string()),
            other => Err(format!("-muxer {other}: yamux or mplex")),
        })
        .collect::<Result<_, _>>()?;
    if f.bool("connManager") {
        c.connmgr = Some(hyphae::core::node::connmgr::Config {
            low_water: number("connLo", f.str("connLo"))?,
            high_water: number("connHi", f.str("connHi"))?,
            grace: go_duration("connGrace", f.str("connGrace"))?,
            ..Default::default()
        });
    } else {
        // p2pd without -connManager trims nothing.
        c.connmgr = None;
    }
    if !f.str("idleTimeout").is_empty() {
        c.idle_timeout = Some(go_duration("idleTimeout", f.str("idleTimeout"))?);
    }
    c.pubsub.heartbeat_interval = go_duration("gossipsubHeartbeatInterval", f.str("gossipsubHeartbeatInterval"))?;
    c.pubsub.heartbeat_initial_delay = go_duration("gossipsubHeartbeatInitialDelay", f.str("gossipsubHeartbeatInitialDelay"))?;
    c.autonat.server = f.bool("autonat");
    let host = Host::new(c).await.map_err(|e| e.to_string())?;
    let mut addrs = Vec::new();
    if !f.bool("noListenAddrs") {
        let list = if f.str("hostAddrs").is_empty() {
            addr_list("hostAddrs", "/ip4/0.0.0.0/tcp/0,/ip4/0.0.0.0/udp/0/quic-v1")?
        } else {
            addr_list("hostAddrs", f.str("hostAddrs"))?
        };
        for a in list {
            addrs.extend(host.listen(a.clone()).await.map_err(|e| format!("-hostAddrs {a}: {e}"))?);
        }
    }
    if !f.str("metricsAddr").is_empty() {
        let sa: std::net::SocketAddr = f.str("metricsAddr").parse().map_err(|e| format!("-metricsAddr {}: {e}", f.str("metricsAddr")))?;
        crate::metrics_http::serve(host.clone(), sa).await.map_err(|e| format!("-metricsAddr {sa}: {e}"))?;
    }
    let limits = hyphae::core::daemon::Limits {
        max_message_len: number("persistentConnMaxMsgSize", f.str("persistentConnMaxMsgSize"))?,
        ..Default::default()
    };
    let d =
        daemon::serve_with(host.clone(), control.clone(), limits).await.map_err(|e| format!("-listen {}: {e}", control.to_multiaddr()))?;
    for m in &missing {
        eprintln!("hyphae daemon: {m}");
    }
    // What p2pd prints (clients and test suites read these lines).
    println!("Control socket: {}", control.to_multiaddr());
    println!("Peer ID: {}", host.peer_id());
    println!("Peer Addrs:");
    for a in &addrs {
        println!("{}", a.without_peer_id());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if !f.str("bootstrapPeers").is_empty() {
        let peers = addr_list("bootstrapPeers", f.str("bootstrapPeers"))?;
        let h = host.clone();
        tokio::spawn(async move {
            for p in &peers {
                if let Err(e) = h.connect(p).await {
                    tracing::warn!(addr = %p, error = %e, "bootstrap peer unreachable");
                }
            }
            if let Err(e) = h.dht().bootstrap(&peers).await {
                tracing::warn!(error = %e, "DHT bootstrap failed");
            }
        });
    }
    stop.await;
    d.stop();
    host.close().await;
    Ok(())
}
