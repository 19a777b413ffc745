//! `rust-peer pubsub`: a rust-libp2p gossipsub (0.50) peer driven by one command per stdin line, each
//! answered with one JSON line (the same commands as interop/js/pubsub.mjs):
//!   connect ADDR | subscribe TOPIC | publish TOPIC DATA_HEX | mesh TOPIC | peers
//! `rust-peer pubsub [quiet] [anonymous]`: `quiet` prints nothing for received messages (a relay in a
//! benchmark); `anonymous` publishes and accepts unsigned messages only, identified by the sha256 of their
//! data (Ethereum's way; hyphae's `Signing::StrictNoSign` with `MessageIdFn::ContentSha256`). Otherwise every
//! received message is printed as it comes, on its own line:
//!   {"event":"message","topic":..,"from":..,"source":..,"data":"<hex>"}
use futures::StreamExt;
use sha2::Digest;
use libp2p::{gossipsub, identify, noise, ping, swarm::NetworkBehaviour, swarm::SwarmEvent, tcp, yamux, Multiaddr, PeerId};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
}

use crate::{hex, json_str, unhex};

fn ids(v: impl Iterator<Item = PeerId>) -> String {
    v.map(|p| json_str(&p.to_string())).collect::<Vec<_>>().join(",")
}

pub async fn run(quiet: bool, anonymous: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| {
            let mut b = gossipsub::ConfigBuilder::default();
            b.heartbeat_initial_delay(Duration::from_millis(100)).heartbeat_interval(Duration::from_millis(500)).max_transmit_size(1 << 20);
            if anonymous {
                b.validation_mode(gossipsub::ValidationMode::Anonymous)
                    .message_id_fn(|m: &gossipsub::Message| gossipsub::MessageId::from(sha2::Sha256::digest(&m.data).to_vec()));
            } else {
                b.validation_mode(gossipsub::ValidationMode::Strict);
            }
            let cfg = b.build().expect("gossipsub config");
            let auth = if anonymous { gossipsub::MessageAuthenticity::Anonymous } else { gossipsub::MessageAuthenticity::Signed(key.clone()) };
            Behaviour {
                ping: ping::Behaviour::new(ping::Config::new()),
                identify: identify::Behaviour::new(identify::Config::new("ipfs/0.1.0".into(), key.public()).with_agent_version("rust-libp2p-interop/0.57".into())),
                gossipsub: gossipsub::Behaviour::new(auth, cfg).expect("gossipsub"),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let me = *swarm.local_peer_id();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut connecting: Option<PeerId> = None;
    loop {
        tokio::select! {
            line = stdin.next_line(), if connecting.is_none() => {
                let Some(line) = line? else { return Ok(()) };
                let w: Vec<&str> = line.split_whitespace().collect();
                let g = &mut swarm.behaviour_mut().gossipsub;
                let r: Result<Option<String>, String> = match w.as_slice() {
                    ["connect", a] => (|| {
                        let addr: Multiaddr = a.parse().map_err(|e| format!("{e}"))?;
                        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else { return Err("connect needs /p2p/".to_string()) };
                        swarm.dial(addr).map_err(|e| e.to_string())?;
                        connecting = Some(peer);
                        Ok(None)
                    })(),
                    ["subscribe", t] => g.subscribe(&gossipsub::IdentTopic::new(*t)).map(|_| Some("{\"ok\":true}".into())).map_err(|e| e.to_string()),
                    ["publish", t, d] => unhex(d).and_then(|d| {
                        g.publish(gossipsub::IdentTopic::new(*t), d).map(|id| Some(format!("{{\"id\":{}}}", json_str(&id.to_string())))).map_err(|e| e.to_string())
                    }),
                    ["mesh", t] => Ok(Some(format!("{{\"peers\":[{}]}}", ids(g.mesh_peers(&gossipsub::IdentTopic::new(*t).hash()).cloned())))),
                    ["peers"] => Ok(Some(format!("{{\"peers\":[{}]}}", ids(g.all_peers().map(|(p, _)| *p))))),
                    _ => Err(format!("unknown command {line:?}")),
                };
                match r {
                    Ok(Some(s)) => println!("{s}"),
                    Ok(None) => {}
                    Err(e) => println!("{{\"error\":{}}}", json_str(&e)),
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    println!("{{\"peerId\":{},\"addrs\":[{}]}}", json_str(&me.to_string()), json_str(&format!("{address}/p2p/{me}")));
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } if connecting == Some(peer_id) => {
                    connecting = None;
                    println!("{{\"ok\":true}}");
                }
                SwarmEvent::OutgoingConnectionError { error, .. } if connecting.is_some() => {
                    connecting = None;
                    println!("{{\"error\":{}}}", json_str(&error.to_string()));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message, .. })) if !quiet => {
                    let from = message.source.map(|p| p.to_string()).unwrap_or_default();
                    println!(
                        "{{\"event\":\"message\",\"topic\":{},\"from\":{},\"source\":{},\"data\":\"{}\"}}",
                        json_str(message.topic.as_str()),
                        json_str(&from),
                        json_str(&propagation_source.to_string()),
                        hex(&message.data)
                    );
                }
                _ => {}
            }
        }
    }
}
