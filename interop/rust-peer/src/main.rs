//! A rust-libp2p peer for hyphae's interop tests.
//!   rust-peer listen [noise|tls] [tcp|quic] [yamux|mplex] -> prints {"peerId","addrs"}, then a JSON line per identify/ping event
//!   rust-peer dial ADDR [COUNT] [noise|tls] [yamux|mplex] -> dials, waits for COUNT pings and identify,
//!                                              prints {"peerId","connectMs","rtts","agent","protocols"}
//!   rust-peer dht -> a Kademlia server driven over stdin (see dht.rs)
//!   rust-peer pubsub -> a gossipsub peer driven over stdin (see pubsub.rs)
//!   rust-peer autonat server|client LISTEN [SERVER] -> AutoNAT v2 (see autonat.rs)
mod autonat;
mod dht;
mod pubsub;
use futures::StreamExt;
use libp2p::{identify, noise, ping, swarm::NetworkBehaviour, swarm::SwarmEvent, tcp, yamux, Multiaddr};
use std::time::Duration;

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: ping::Behaviour,
    identify: identify::Behaviour,
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err("odd hex".into());
    }
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())).collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_default();
    if mode == "dht" {
        return dht::run().await;
    }
    if mode == "autonat" {
        return autonat::run(&args[1..]).await;
    }
    if mode == "pubsub" {
        let has = |w: &str| args[1..].iter().any(|a| a == w);
        return pubsub::run(has("quiet"), has("anonymous")).await;
    }
    let security = if mode == "dial" { args.get(3) } else { args.get(1) }.cloned().unwrap_or_else(|| "noise".into());
    let behaviour = |key: &libp2p::identity::Keypair| Behaviour {
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(200))),
        identify: identify::Behaviour::new(identify::Config::new("ipfs/0.1.0".into(), key.public()).with_agent_version("rust-libp2p-interop/0.57".into())),
    };
    // listen [noise|tls] [tcp|quic] [yamux|mplex]; dial ADDR COUNT [noise|tls] [yamux|mplex]
    let muxer = if mode == "dial" { args.get(4) } else { args.get(3) }.cloned().unwrap_or_else(|| "yamux".into());
    macro_rules! build {
        ($sec:expr, $mux:expr) => {
            libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(tcp::Config::default().nodelay(true), $sec, $mux)?
                .with_quic()
                .with_behaviour(behaviour)?
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                .build()
        };
    }
    let mut swarm = match (security.as_str(), muxer.as_str()) {
        ("tls", "mplex") => build!(libp2p::tls::Config::new, libp2p_mplex::Config::default),
        ("tls", _) => build!(libp2p::tls::Config::new, yamux::Config::default),
        (_, "mplex") => build!(noise::Config::new, libp2p_mplex::Config::default),
        _ => build!(noise::Config::new, yamux::Config::default),
    };
    let me = *swarm.local_peer_id();
    let count: usize = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(3);
    match mode.as_str() {
        "listen" => {
            // listen [noise|tls] [tcp|quic]
            if args.get(2).map(String::as_str) == Some("quic") {
                swarm.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
            } else {
                swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
            }
        }
        "dial" => {
            let addr: Multiaddr = args.get(1).ok_or("dial needs ADDR")?.parse()?;
            swarm.dial(addr)?;
        }
        _ => return Err("usage: rust-peer listen | dial ADDR [COUNT]".into()),
    }
    let mut rtts: Vec<f64> = Vec::new();
    let t0 = std::time::Instant::now();
    let mut connect_ms = 0.0;
    let mut ident: Option<identify::Info> = None;
    let deadline = tokio::time::sleep(Duration::from_secs(if mode == "dial" { 20 } else { 3600 }));
    tokio::pin!(deadline);
    loop {
        let ev = tokio::select! {
            ev = swarm.select_next_some() => ev,
            _ = &mut deadline => { println!("{{\"error\":\"timeout\"}}"); std::process::exit(1); }
        };
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                println!("{{\"peerId\":{},\"addrs\":[{}]}}", json_str(&me.to_string()), json_str(&format!("{address}/p2p/{me}")));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                if mode == "listen" {
                    println!("{{\"event\":\"ping\",\"peer\":{},\"rtt_ms\":{}}}", json_str(&peer.to_string()), rtt.as_secs_f64() * 1e3);
                } else {
                    if rtts.is_empty() {
                        connect_ms = t0.elapsed().as_secs_f64() * 1e3;
                    }
                    rtts.push(rtt.as_secs_f64() * 1e3);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { result: Err(e), .. })) => {
                eprintln!("ping error: {e}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let protos: Vec<String> = info.protocols.iter().map(|p| json_str(p.as_ref())).collect();
                if mode == "listen" {
                    println!("{{\"event\":\"identify\",\"peer\":{},\"agent\":{},\"protocols\":[{}]}}", json_str(&peer_id.to_string()), json_str(&info.agent_version), protos.join(","));
                } else {
                    ident = Some(info);
                }
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                println!("{{\"error\":{}}}", json_str(&error.to_string()));
                std::process::exit(1);
            }
            _ => {}
        }
        if mode == "dial" && rtts.len() >= count {
            if let Some(info) = &ident {
                let protos: Vec<String> = info.protocols.iter().map(|p| json_str(p.as_ref())).collect();
                let r: Vec<String> = rtts.iter().map(|x| format!("{x:.3}")).collect();
                println!("{{\"peerId\":{},\"connectMs\":{connect_ms:.3},\"rtts\":[{}],\"agent\":{},\"protocols\":[{}]}}", json_str(&info.public_key.to_peer_id().to_string()), r.join(","), json_str(&info.agent_version), protos.join(","));
                return Ok(());
            }
        }
    }
}
