//! `rust-peer autonat server LISTEN_ADDR` / `rust-peer autonat client LISTEN_ADDR SERVER_ADDR`: AutoNAT v2
//! (libp2p-autonat 0.16) with identify and ping. Prints `{"peerId","addrs"}` when listening, then one JSON
//! line per AutoNAT v2 event: the server's `{"event":"served","client","tested","data","ok"}` and the
//! client's `{"event":"tested","server","tested","bytes","ok","error"}`. The client dials SERVER_ADDR; it
//! tests the address candidates identify gives it (the observed address, translated to its listen port).
use crate::json_str;
use futures::StreamExt;
use libp2p::autonat::v2 as autonat;
use libp2p::{identify, noise, ping, swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, swarm::SwarmEvent, tcp, yamux, Multiaddr};
use std::time::Duration;

#[derive(NetworkBehaviour)]
struct Behaviour {
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    server: Toggle<autonat::server::Behaviour>,
    client: Toggle<autonat::client::Behaviour>,
}

pub async fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let role = args.first().map(String::as_str).ok_or("autonat server|client LISTEN_ADDR [SERVER_ADDR]")?;
    let listen: Multiaddr = args.get(1).ok_or("LISTEN_ADDR")?.parse()?;
    let is_server = role == "server";
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| Behaviour {
            ping: ping::Behaviour::new(ping::Config::new()),
            identify: identify::Behaviour::new(identify::Config::new("ipfs/0.1.0".into(), key.public()).with_agent_version("rust-libp2p-interop/0.57".into())),
            server: Toggle::from(is_server.then(autonat::server::Behaviour::default)),
            client: Toggle::from((!is_server).then(autonat::client::Behaviour::default)),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let me = *swarm.local_peer_id();
    swarm.listen_on(listen)?;
    if let Some(s) = args.get(2) {
        swarm.dial(s.parse::<Multiaddr>()?)?;
    }
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                println!("{{\"peerId\":{},\"addrs\":[{}]}}", json_str(&me.to_string()), json_str(&format!("{address}/p2p/{me}")));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Server(e)) => println!(
                "{{\"event\":\"served\",\"client\":{},\"tested\":{},\"data\":{},\"ok\":{}}}",
                json_str(&e.client.to_string()),
                json_str(&e.tested_addr.to_string()),
                e.data_amount,
                e.result.is_ok()
            ),
            SwarmEvent::Behaviour(BehaviourEvent::Client(e)) => println!(
                "{{\"event\":\"tested\",\"server\":{},\"tested\":{},\"bytes\":{},\"ok\":{},\"error\":{}}}",
                json_str(&e.server.to_string()),
                json_str(&e.tested_addr.to_string()),
                e.bytes_sent,
                e.result.is_ok(),
                json_str(&e.result.err().map(|x| format!("{x:?}")).unwrap_or_default())
            ),
            SwarmEvent::OutgoingConnectionError { error, .. } => eprintln!("dial error: {error}"),
            _ => {}
        }
    }
}
