//! `rust-peer dht`: a rust-libp2p Kademlia server (kad 0.49) driven by one command per stdin line,
//! answering each with one JSON line (the same commands as interop/js/dht.mjs):
//!   connect ADDR | find-peer PEER_ID | closest KEY_HEX | provide MULTIHASH_HEX |
//!   find-providers MULTIHASH_HEX | put KEY_HEX VALUE_HEX | get KEY_HEX
use futures::StreamExt;
use libp2p::kad::{self, store::MemoryStore, GetClosestPeersOk, GetProvidersOk, GetRecordOk, QueryResult, Quorum, Record, RecordKey};
use libp2p::{identify, noise, ping, swarm::NetworkBehaviour, swarm::SwarmEvent, tcp, yamux, Multiaddr, PeerId};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
}

use crate::{hex, json_str, unhex};

/// What the running command waits for.
enum Pending {
    Connect(PeerId),
    FindPeer(PeerId, kad::QueryId),
    Closest(kad::QueryId),
    Provide(kad::QueryId),
    Providers(kad::QueryId),
    Put(kad::QueryId),
    Get(kad::QueryId),
}

pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| {
            let me = key.public().to_peer_id();
            let mut cfg = kad::Config::new(kad::PROTOCOL_NAME);
            cfg.set_query_timeout(Duration::from_secs(20));
            Behaviour {
                ping: ping::Behaviour::new(ping::Config::new()),
                identify: identify::Behaviour::new(identify::Config::new("ipfs/0.1.0".into(), key.public()).with_agent_version("rust-libp2p-interop/0.57".into())),
                kad: kad::Behaviour::with_config(me, MemoryStore::new(me), cfg),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let me = *swarm.local_peer_id();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut pending: Option<Pending> = None;
    let mut providers_found: Vec<PeerId> = Vec::new();
    let answer = |s: String| println!("{s}");
    loop {
        tokio::select! {
            line = stdin.next_line(), if pending.is_none() => {
                let Some(line) = line? else { return Ok(()) };
                let w: Vec<&str> = line.split_whitespace().collect();
                let r: Result<Pending, String> = (|| {
                    let k = swarm.behaviour_mut();
                    Ok(match w.as_slice() {
                        ["connect", a] => {
                            let addr: Multiaddr = a.parse().map_err(|e| format!("{e}"))?;
                            let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else { return Err("connect needs /p2p/".into()) };
                            swarm.dial(addr).map_err(|e| e.to_string())?;
                            Pending::Connect(peer)
                        }
                        ["find-peer", p] => {
                            let peer: PeerId = p.parse().map_err(|e| format!("{e}"))?;
                            Pending::FindPeer(peer, k.kad.get_closest_peers(peer))
                        }
                        ["closest", key] => Pending::Closest(k.kad.get_closest_peers(unhex(key)?)),
                        ["provide", key] => Pending::Provide(k.kad.start_providing(RecordKey::new(&unhex(key)?)).map_err(|e| e.to_string())?),
                        ["find-providers", key] => {
                            providers_found.clear();
                            Pending::Providers(k.kad.get_providers(RecordKey::new(&unhex(key)?)))
                        }
                        ["put", key, value] => {
                            Pending::Put(k.kad.put_record(Record::new(RecordKey::new(&unhex(key)?), unhex(value)?), Quorum::One).map_err(|e| e.to_string())?)
                        }
                        ["get", key] => Pending::Get(k.kad.get_record(RecordKey::new(&unhex(key)?))),
                        _ => return Err(format!("unknown command {line:?}")),
                    })
                })();
                match r {
                    Ok(p) => pending = Some(p),
                    Err(e) => answer(format!("{{\"error\":{}}}", json_str(&e))),
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    // ADD_PROVIDER carries only external addresses: go and js ignore a provider without any.
                    swarm.add_external_address(address.clone());
                    println!("{{\"peerId\":{},\"addrs\":[{}]}}", json_str(&me.to_string()), json_str(&format!("{address}/p2p/{me}")));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    if info.protocols.iter().any(|p| *p == kad::PROTOCOL_NAME) {
                        for a in info.listen_addrs {
                            swarm.behaviour_mut().kad.add_address(&peer_id, a);
                        }
                    }
                    if let Some(Pending::Connect(p)) = &pending {
                        if *p == peer_id {
                            pending = None;
                            answer("{\"ok\":true}".into());
                        }
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    if let (Some(Pending::Connect(p)), Some(q)) = (&pending, peer_id) {
                        if *p == q {
                            pending = None;
                            answer(format!("{{\"error\":{}}}", json_str(&error.to_string())));
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, .. })) => {
                    let done = match (&pending, result) {
                        (Some(Pending::FindPeer(target, q)), QueryResult::GetClosestPeers(r)) if *q == id => Some(match r {
                            Ok(GetClosestPeersOk { peers, .. }) => match peers.iter().find(|p| p.peer_id == *target) {
                                Some(p) => {
                                    let a: Vec<String> = p.addrs.iter().map(|a| json_str(&a.to_string())).collect();
                                    format!("{{\"peer\":{},\"addrs\":[{}]}}", json_str(&target.to_string()), a.join(","))
                                }
                                None => "{\"error\":\"not found\"}".into(),
                            },
                            Err(e) => format!("{{\"error\":{}}}", json_str(&e.to_string())),
                        }),
                        (Some(Pending::Closest(q)), QueryResult::GetClosestPeers(r)) if *q == id => Some(match r {
                            Ok(GetClosestPeersOk { peers, .. }) => {
                                let p: Vec<String> = peers.iter().map(|p| json_str(&p.peer_id.to_string())).collect();
                                format!("{{\"peers\":[{}]}}", p.join(","))
                            }
                            Err(e) => format!("{{\"error\":{}}}", json_str(&e.to_string())),
                        }),
                        (Some(Pending::Provide(q)), QueryResult::StartProviding(r)) if *q == id => Some(match r {
                            Ok(_) => "{\"ok\":true}".into(),
                            Err(e) => format!("{{\"error\":{}}}", json_str(&e.to_string())),
                        }),
                        (Some(Pending::Providers(q)), QueryResult::GetProviders(r)) if *q == id => match r {
                            Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                                providers_found.extend(providers);
                                None
                            }
                            Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) | Err(_) if step.last => {
                                if providers_found.is_empty() {
                                    Some("{\"error\":\"no providers\"}".into())
                                } else {
                                    let p: Vec<String> = providers_found.iter().map(|p| json_str(&p.to_string())).collect();
                                    Some(format!("{{\"providers\":[{}]}}", p.join(",")))
                                }
                            }
                            _ => None,
                        },
                        (Some(Pending::Put(q)), QueryResult::PutRecord(r)) if *q == id => Some(match r {
                            Ok(_) => "{\"ok\":true}".into(),
                            Err(e) => format!("{{\"error\":{}}}", json_str(&e.to_string())),
                        }),
                        (Some(Pending::Get(q)), QueryResult::GetRecord(r)) if *q == id => match r {
                            Ok(GetRecordOk::FoundRecord(rec)) => Some(format!("{{\"value\":\"{}\"}}", hex(&rec.record.value))),
                            Ok(_) | Err(_) if step.last => Some("{\"error\":\"not found\"}".into()),
                            _ => None,
                        },
                        _ => None,
                    };
                    if let Some(s) = done {
                        pending = None;
                        answer(s);
                    }
                }
                _ => {}
            }
        }
    }
}
