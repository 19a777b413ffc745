//! `host.dht()` between hyphae hosts on loopback (interop with go, js and rust is in interop/).

use hyphae::core::kad::{self, store, Mode};
use hyphae::{Error, Host, HostConfig, Multiaddr, PeerId};
use std::time::Duration;

async fn host(mode: Mode) -> (Host, Multiaddr) {
    let mut c = HostConfig::ephemeral();
    c.dht.mode = mode;
    let h = Host::new(c).await.unwrap();
    let a = h.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    (h, a[0].clone())
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("dht call took over 30 s")
}

#[tokio::test]
async fn dht_hosts_find_peers_providers_and_records() {
    let mut hosts = Vec::new();
    for _ in 0..6 {
        hosts.push(host(Mode::Server).await);
    }
    let boot = hosts[0].1.clone();
    for (h, _) in &hosts[1..] {
        within(h.dht().bootstrap(std::slice::from_ref(&boot))).await.unwrap();
    }
    // A host that never connected to host 5 finds it.
    let (a, _) = &hosts[1];
    let target = hosts[5].0.peer_id();
    let found = within(a.dht().find_peer(&target)).await.unwrap();
    assert_eq!(found.peer, target);
    assert!(found.addrs.iter().any(|x| x.without_peer_id() == hosts[5].1.without_peer_id()), "{:?}", found.addrs);

    let cid = {
        let mut k = vec![0x12, 0x20];
        k.extend_from_slice(&[42u8; 32]);
        k
    };
    let stored = within(hosts[2].0.dht().provide(&cid)).await.unwrap();
    assert!(stored >= 3, "{stored}");
    let provs = within(hosts[4].0.dht().find_providers(&cid, 1, |_| {})).await.unwrap();
    assert_eq!(provs.iter().map(|p| &p.peer).collect::<Vec<_>>(), vec![&hosts[2].0.peer_id()]);

    let kp = hyphae::Keypair::generate(hyphae::KeyType::Rsa, &mut rand_core::OsRng);
    let key = store::pk_key(&kp.peer_id());
    let stored = within(hosts[3].0.dht().put_value(&key, &kp.public().encode_protobuf())).await.unwrap();
    assert!(stored >= 3);
    let pk = within(hosts[1].0.dht().get_public_key(&kp.peer_id())).await.unwrap();
    assert_eq!(pk, kp.public());
}

#[tokio::test]
async fn dht_is_a_client_by_default_and_serves_once_switched() {
    let (server, addr) = host(Mode::Server).await;
    // The default: auto mode, a client until AutoNAT confirms a public address (it cannot on loopback).
    let (client, caddr) = host(HostConfig::ephemeral().dht.mode).await;
    assert_eq!(client.dht().mode(), Mode::Auto);
    assert!(!client.dht().is_server());
    within(client.dht().bootstrap(std::slice::from_ref(&addr))).await.unwrap();
    // The server sees the client connected, but it did not announce the protocol: not in its table.
    let info = within(server.identify(&client.peer_id())).await.unwrap();
    assert!(!info.protocols.iter().any(|p| p == kad::PROTOCOL_ID), "{:?}", info.protocols);
    assert_eq!(server.dht().routing_table_size(), 0);
    // A third host bootstrapping from the server cannot find the client...
    let (third, _) = host(Mode::Client).await;
    within(third.dht().bootstrap(std::slice::from_ref(&addr))).await.unwrap();
    let cid: PeerId = client.peer_id();
    assert!(matches!(within(third.dht().find_peer(&cid)).await, Err(Error::Dht(kad::QueryError::NotFound))));
    // ...until the client serves: identify push, the server's table, then the lookup.
    client.dht().set_mode(Mode::Server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.dht().routing_table_size(), 1);
    let found = within(third.dht().find_peer(&cid)).await.unwrap();
    assert!(found.addrs.iter().any(|a| a.without_peer_id() == caddr.without_peer_id()));
}
