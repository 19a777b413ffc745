//! Host API behaviour between two hyphae hosts on loopback.

mod common;
use hyphae::{Error, Host, HostConfig, HostEvent, Stream};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO: &str = "/test/echo/1.0.0";

async fn echo_server() -> (Host, hyphae::Multiaddr) {
    let h = Host::new(HostConfig::ephemeral()).await.unwrap();
    h.set_stream_handler(ECHO, |s: Stream| async move {
        let (mut r, mut w) = tokio::io::split(s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let a = h.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap();
    (h, a[0].clone())
}

async fn echo_roundtrip(client: &Host, peer: &hyphae::PeerId, len: usize, seed: u8) {
    let s = client.new_stream(peer, &[ECHO]).await.unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let (mut r, mut w) = tokio::io::split(s);
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&d2).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(len);
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut got)).await.expect("echo timeout").unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
}

#[tokio::test]
async fn host_echo_16mib_exercises_flow_control() {
    let (_server, addr) = echo_server().await;
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = client.connect(&addr).await.unwrap();
    echo_roundtrip(&client, &peer, 16 << 20, 1).await;
}

#[tokio::test]
async fn host_many_concurrent_streams() {
    let (_server, addr) = echo_server().await;
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = client.connect(&addr).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let c = client.clone();
        let p = peer.clone();
        tasks.push(tokio::spawn(async move { echo_roundtrip(&c, &p, 100_000, i).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(client.connections().len(), 1, "all streams share one connection");
}

#[tokio::test]
async fn host_unknown_protocol_fails_stream_keeps_connection() {
    let (_server, addr) = echo_server().await;
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = client.connect(&addr).await.unwrap();
    let err = client.new_stream(&peer, &["/nope/1"]).await.unwrap_err();
    assert!(matches!(err, Error::Negotiation(_)), "{err}");
    // Falls back to the second proposal.
    let s = client.new_stream(&peer, &["/nope/1", ECHO]).await.unwrap();
    assert_eq!(s.protocol(), ECHO);
    assert!(client.is_connected(&peer));
}

#[tokio::test]
async fn host_removed_handler_is_no_longer_negotiated() {
    let (server, addr) = echo_server().await;
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = client.connect(&addr).await.unwrap();
    server.remove_stream_handler(ECHO);
    assert!(client.new_stream(&peer, &[ECHO]).await.is_err());
    // Identify push told the client: its peerstore no longer lists the protocol.
    for _ in 0..100 {
        let protos = client.peer_info(&peer).map(|i| i.protocols).unwrap_or_default();
        if !protos.iter().any(|p| p == ECHO) && !protos.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("identify push did not update the peerstore");
}

#[tokio::test]
async fn host_close_is_seen_and_new_stream_redials_from_peerstore() {
    let (server, addr) = echo_server().await;
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();
    let mut ev = server.events();
    let peer = client.connect(&addr).await.unwrap();
    client.disconnect(&peer);
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(HostEvent::Disconnected { peer: p, .. }) = ev.recv().await {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen, client.peer_id());
    for _ in 0..100 {
        if !client.is_connected(&peer) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // No connection, but the peerstore has its address: new_stream dials.
    echo_roundtrip(&client, &peer, 1000, 7).await;
}

#[tokio::test]
async fn host_dial_limit_is_enforced() {
    let (_server, addr) = echo_server().await;
    let mut cfg = HostConfig::ephemeral();
    cfg.resources.system.conns_outbound = 0;
    let client = Host::new(cfg).await.unwrap();
    let e = client.dial(&addr).await.unwrap_err();
    assert!(
        matches!(e, Error::Handshake(hyphae::core::conn::CloseReason::Refused(r)) if r.scope == hyphae::core::rcmgr::Scope::System),
        "{e}"
    );
}

#[tokio::test]
async fn host_garbage_peer_is_dropped_without_harm() {
    let (server, addr) = echo_server().await;
    let (sa, _) = addr.socket_addr().unwrap();
    // A wrong multistream header, and a length prefix far beyond the message limit.
    for garbage in [&b"\x13/multistream/9.9.9\n"[..], &[0xff, 0xff, 0xff, 0x7f][..]] {
        let mut s = tokio::net::TcpStream::connect(sa).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("server closes the connection");
        let _ = r; // EOF or reset: either way the server hung up
    }
    // The server still works.
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = client.connect(&addr).await.unwrap();
    assert_eq!(peer, server.peer_id());
    assert!(client.ping(&peer).await.unwrap() < Duration::from_secs(1));
}

#[tokio::test]
async fn host_perf_protocol_moves_requested_bytes() {
    let server = Host::new(HostConfig::ephemeral()).await.unwrap();
    server.enable_perf_server();
    let addr = server.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap().remove(0);
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = client.connect(&addr).await.unwrap();
    let r = client.perf(&peer, 3_000_000, 5_000_001, |_, _, _| {}).await.unwrap();
    assert_eq!((r.uploaded, r.downloaded), (3_000_000, 5_000_001));
    let r = client.perf(&peer, 0, 0, |_, _, _| {}).await.unwrap();
    assert_eq!((r.uploaded, r.downloaded), (0, 0));
}

#[tokio::test]
async fn host_quic_echo_and_ping_through_the_same_api() {
    let server = Host::new(HostConfig::ephemeral()).await.unwrap();
    server.set_stream_handler(ECHO, |s: Stream| async move {
        let (mut r, mut w) = tokio::io::split(s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let addr = server.listen("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()).await.unwrap().remove(0);
    assert!(addr.to_string().contains("/quic-v1/p2p/"), "{addr}");
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = client.connect(&addr).await.unwrap();
    assert_eq!(peer, server.peer_id());
    let c = &client.connections()[0];
    assert_eq!((c.security.as_str(), c.muxer.as_str()), ("/tls/1.0.0", "quic-v1"));
    echo_roundtrip(&client, &peer, 4 << 20, 3).await;
    assert!(client.ping(&peer).await.unwrap() < Duration::from_secs(1));
    assert_eq!(client.identify(&peer).await.unwrap().agent_version.as_deref(), Some("hyphae/0.1.0"));
    // The endpoint's congestion decisions and window doublings are exported.
    let text = server.metrics_text();
    for series in [
        "hyphae_quic_losses_total{decision=\"congestion\"} ",
        "hyphae_quic_losses_total{decision=\"tolerated\"} ",
        "hyphae_quic_slow_start_exits_total ",
        "hyphae_quic_receive_window_doublings_total{outcome=\"grown\"} ",
        "hyphae_quic_receive_window_doublings_total{outcome=\"refused\"} ",
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
}

/// Periodic pings come from the node machine (the one the simulator runs), over TCP and over QUIC.
#[tokio::test]
async fn host_periodic_ping_from_node_machine_over_tcp_and_quic() {
    for listen in ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"] {
        let server = Host::new(HostConfig::ephemeral()).await.unwrap();
        let addr = server.listen(listen.parse().unwrap()).await.unwrap()[0].clone();
        let mut cfg = HostConfig::ephemeral();
        cfg.ping_interval = Some(Duration::from_millis(100));
        let client = Host::new(cfg).await.unwrap();
        let mut ev = client.events();
        let mut server_ev = server.events();
        let peer = client.connect(&addr).await.unwrap();
        let mut rtts = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rtts.len() < 3 {
            match tokio::time::timeout_at(deadline, ev.recv()).await.expect("pings in time").unwrap() {
                HostEvent::Ping { peer: p, rtt } => {
                    assert_eq!(p, peer);
                    rtts.push(rtt.expect("ping ok"));
                }
                _ => continue,
            }
        }
        assert!(rtts.iter().all(|r| *r < Duration::from_secs(1)), "{listen}: {rtts:?}");
        // One ping stream, reused: the server saw it opened once.
        let mut inbound = 0;
        while let Ok(e) = server_ev.try_recv() {
            inbound += usize::from(matches!(e, HostEvent::InboundPing { .. }));
        }
        assert_eq!(inbound, 1, "{listen}: pings share one stream");
        assert_eq!(client.identify(&peer).await.unwrap().agent_version.as_deref(), Some("hyphae/0.1.0"));
    }
}

/// A peer that floods yamux pings and never reads what we send: once our outgoing buffer is full the
/// Host stops reading its socket, so TCP pushes back on the peer (its writes stall) instead of the Host
/// parsing the flood forever. The peer is hyphae's own sans-IO connection machine over a raw socket.
#[tokio::test]
async fn host_stops_reading_a_peer_that_floods_without_reading() {
    use hyphae::core::conn::{Config, Connection, Role};
    let (_server, addr) = echo_server().await;
    let expected = addr.peer_id();
    let sa = addr.socket_addr().unwrap().0;
    let mut sock = tokio::net::TcpStream::connect(sa).await.unwrap();
    let key = hyphae::Keypair::generate_ed25519(&mut rand_core::OsRng);
    let mut c = Connection::new(Role::Dialer, Config::new(key), expected, hyphae::core::Instant::ZERO, [3; 32]);
    let mut buf = vec![0u8; 64 * 1024];
    while !c.is_open() {
        if let Some(b) = c.poll_transmit() {
            sock.write_all(&b).await.unwrap();
            continue;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await.expect("handshake").unwrap();
        assert!(n > 0, "server closed during the handshake");
        c.handle_input(hyphae::core::Instant::ZERO, &buf[..n]);
        assert!(!c.is_closed(), "handshake failed");
    }
    // From here on the client never reads.
    let mut written = 0usize;
    let mut stalled = false;
    while written < 2 << 30 {
        for i in 0..4096 {
            assert!(c.ping(i));
        }
        let b = c.poll_transmit().expect("pings to send");
        match tokio::time::timeout(Duration::from_secs(2), sock.write_all(&b)).await {
            Ok(r) => r.unwrap(),
            Err(_) => {
                stalled = true;
                break;
            }
        }
        written += b.len();
    }
    assert!(stalled, "the host read {written} bytes of pings from a peer that never reads its pongs");
    // Socket buffers on both sides plus one muxer buffer; measured 9.7 MB on loopback.
    assert!(written < 64 << 20, "the host read {written} bytes before pushing back");
}

/// The connection manager through the Host: with high water 2 and low water 1, a third inbound peer
/// makes the host trim down to one connection; the protected peer is the one kept. An explicit trim
/// with nothing above the low watermark closes nothing.
#[tokio::test]
async fn host_connmgr_trims_to_the_low_watermark_and_keeps_the_protected_peer() {
    use hyphae::core::node::connmgr;
    let mut cfg = HostConfig::ephemeral();
    cfg.connmgr = Some(connmgr::Config { low_water: 1, high_water: 2, grace: Duration::ZERO, silence: Duration::ZERO });
    let server = Host::new(cfg).await.unwrap();
    let addr = server.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap().remove(0);
    let clients: Vec<Host> = hosts(3).await;
    let keep = clients[1].peer_id().clone();
    assert!(server.protect_peer(&keep, "test"));
    assert!(server.tag_peer(&clients[0].peer_id().clone(), "app", 5));
    for c in &clients {
        c.connect(&addr).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.peers().len() > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.peers(), vec![keep.clone()]);
    assert_eq!(server.trim_connections(), 0);
    assert!(server.is_protected(&keep, Some("test")));
    assert!(!server.unprotect_peer(&keep, "test"));
}

async fn hosts(n: usize) -> Vec<Host> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Host::new(HostConfig::ephemeral()).await.unwrap());
    }
    v
}

/// `host.metrics_text()`: after a ping, the RTT histogram, the connection gauge and the byte counters
/// show it, in the Prometheus text format.
#[tokio::test]
async fn host_metrics_text_shows_a_ping_and_its_connection() {
    let (server, addr) = echo_server().await;
    let client = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = client.connect(&addr).await.unwrap();
    client.ping(&peer).await.unwrap();
    let text = client.metrics_text();
    assert!(text.contains("hyphae_ping_rtt_seconds_count 1"), "{text}");
    assert!(text.contains("hyphae_connections{direction=\"outbound\",transport=\"tcp\"} 1"), "{text}");
    assert!(text.contains("# TYPE hyphae_bytes counter"), "{text}");
    let s = server.metrics_text();
    assert!(s.contains("hyphae_connections{direction=\"inbound\",transport=\"tcp\"} 1"), "{s}");
    assert!(s.trim_end().ends_with("# EOF"), "OpenMetrics terminator");
}

/// Flood (4) of the rcmgr issue: a peer opens streams to a protocol whose handler holds them without
/// reading and fills each receive window. The victim's muxers reserve every window from its memory
/// budget (16 MiB here): streams beyond it are refused, the reserved bytes never exceed the budget,
/// the process does not grow by the ~100 MiB the attack would otherwise park, and everything is
/// given back when the attacker leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_memory_budget_bounds_what_unread_streams_can_hold() {
    let budget: u64 = 16 << 20;
    let (victim, held, attacker, peer) = sink_victim(budget, "/ip4/127.0.0.1/tcp/0").await;
    let rss0 = common::rss_bytes("self");
    let chunk = vec![0x5au8; 1 << 20];
    let (mut opened, mut refused) = (0, 0);
    let mut streams = Vec::new();
    for _ in 0..100 {
        match attacker.new_stream(&peer, &["/sink/1"]).await {
            Ok(mut s) => {
                // Fills the window the victim granted (then blocks: nobody reads).
                let _ = tokio::time::timeout(Duration::from_millis(300), s.write_all(&chunk)).await;
                opened += 1;
                streams.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    let used = |h: &Host| -> f64 {
        let t = h.metrics_text();
        t.lines().find_map(|l| l.strip_prefix("hyphae_rcmgr_memory_used_bytes ")).unwrap().parse().unwrap()
    };
    let rss1 = common::rss_bytes("self");
    eprintln!(
        "opened {opened}, refused {refused}, reserved {} MiB, RSS +{} MiB",
        used(&victim) / 1048576.0,
        (rss1.saturating_sub(rss0)) >> 20
    );
    assert!(used(&victim) <= budget as f64, "{}", used(&victim));
    assert!(refused > 50, "opened {opened}");
    assert!(victim.metrics_text().contains("hyphae_rcmgr_memory_refused_total"), "counted");
    assert!(rss1.saturating_sub(rss0) < 64 << 20, "RSS grew {} MiB", (rss1 - rss0) >> 20);
    drop(streams);
    attacker.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while victim.peers().contains(&attacker.peer_id().clone()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(used(&victim), 0.0, "everything returned");
}

/// Flood (4) over QUIC: the same unread streams on one QUIC connection. quinn buffers at most the
/// connection's receive window, which the victim reserved from its budget when the connection was
/// established and which grows only while the application reads whole windows fast — here it never
/// does, so the attacker parks at most 1 MiB in the victim (and then nothing more moves on
/// that connection: QUIC's flow control is per connection as well as per stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_quic_connection_window_bounds_what_unread_streams_can_hold() {
    let (victim, _held, attacker, peer) = sink_victim(16 << 20, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let rss0 = common::rss_bytes("self");
    let chunk = vec![0x5au8; 1 << 20];
    let mut streams = Vec::new();
    let mut written = 0usize;
    // Once the window is full nothing more moves on this connection, new streams' negotiation included
    // (QUIC's connection-level flow control): the attacker stops at its first stalled open.
    for _ in 0..100 {
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(500), attacker.new_stream(&peer, &["/sink/1"])).await else { break };
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(50), s.write(&chunk[..64 << 10])).await {
                Ok(Ok(n)) if n > 0 => written += n,
                _ => break,
            }
        }
        streams.push(s);
    }
    let used: f64 = victim.metrics_text().lines().find_map(|l| l.strip_prefix("hyphae_rcmgr_memory_used_bytes ")).unwrap().parse().unwrap();
    let rss1 = common::rss_bytes("self");
    eprintln!(
        "{} streams, {} KiB accepted, victim reserved {} KiB, RSS +{} MiB",
        streams.len(),
        written >> 10,
        used / 1024.0,
        (rss1.saturating_sub(rss0)) >> 20
    );
    assert!(used <= f64::from(hyphae::core::quic::INITIAL_CONNECTION_WINDOW), "reserved {used}");
    assert!((512 << 10..=2 << 20).contains(&written), "{written} bytes accepted: the window, filled");
    assert!(rss1.saturating_sub(rss0) < 32 << 20, "RSS grew {} MiB", (rss1 - rss0) >> 20);
}

/// A victim with memory budget `budget` listening on `listen`, whose `/sink/1` handler keeps every
/// stream without reading it (in the returned list), and an attacker connected to it.
async fn sink_victim(budget: u64, listen: &str) -> (Host, std::sync::Arc<std::sync::Mutex<Vec<Stream>>>, Host, hyphae::PeerId) {
    let mut cfg = HostConfig::ephemeral();
    cfg.resources.memory = budget;
    let victim = Host::new(cfg).await.unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h2 = held.clone();
    victim.set_stream_handler("/sink/1", move |s: Stream| {
        h2.lock().unwrap().push(s);
        async {}
    });
    let addr = victim.listen(listen.parse().unwrap()).await.unwrap().remove(0);
    let attacker = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = attacker.connect(&addr).await.unwrap();
    (victim, held, attacker, peer)
}

/// Flood (3) of the rcmgr issue: a peer opens 1,000 streams it never uses. Past its connection's
/// limits (160 first windows within 64 MiB) the rest are refused; another peer's streams and pings go
/// on as before, and the victim's budget holds only what the flooding connection may take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_stream_flood_is_refused_past_the_connection_limits_and_others_are_unaffected() {
    let victim = Host::new(HostConfig::ephemeral()).await.unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h2 = held.clone();
    victim.set_stream_handler("/hold/1", move |s: Stream| {
        h2.lock().unwrap().push(s);
        async {}
    });
    victim.set_stream_handler(ECHO, |s: Stream| async move {
        let (mut r, mut w) = tokio::io::split(s);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
    let addr = victim.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap().remove(0);
    let attacker = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = attacker.connect(&addr).await.unwrap();
    let (mut ok, mut refused) = (0, 0);
    let mut streams = Vec::new();
    for _ in 0..1000 {
        match attacker.new_stream(&peer, &["/hold/1"]).await {
            Ok(s) => {
                ok += 1;
                streams.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    eprintln!("flood: {ok} streams open, {refused} refused");
    assert!(ok <= 160 && refused >= 840, "{ok} open");
    // Another peer is unaffected.
    let other = Host::new(HostConfig::ephemeral()).await.unwrap();
    let p2 = other.connect(&addr).await.unwrap();
    other.ping(&p2).await.expect("ping during the flood");
    echo_roundtrip(&other, &p2, 100_000, 3).await;
    let text = victim.metrics_text();
    let used: f64 = text.lines().find_map(|l| l.strip_prefix("hyphae_rcmgr_memory_used_bytes ")).unwrap().parse().unwrap();
    assert!(used <= (64 << 20) as f64 + (8 << 20) as f64, "reserved {used}");
}

/// The resource manager's stream scopes: a peer may hold `peer_streams.inbound` inbound streams over
/// all its connections; beyond, new ones are reset before the application sees them. Streams the
/// application drops give their place back; another peer has its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_peer_inbound_stream_budget_is_enforced_and_given_back() {
    let mut cfg = HostConfig::ephemeral();
    cfg.resources.peer_streams.inbound = 10;
    let victim = Host::new(cfg).await.unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h2 = held.clone();
    victim.set_stream_handler("/hold/1", move |s: Stream| {
        h2.lock().unwrap().push(s);
        async {}
    });
    let addr = victim.listen("/ip4/127.0.0.1/tcp/0".parse().unwrap()).await.unwrap().remove(0);
    let open_many = |h: Host, peer: hyphae::PeerId, n: usize| async move {
        let mut v = Vec::new();
        for _ in 0..n {
            if let Ok(s) = h.new_stream(&peer, &["/hold/1"]).await {
                v.push(s);
            }
        }
        v
    };
    let attacker = Host::new(HostConfig::ephemeral()).await.unwrap();
    let peer = attacker.connect(&addr).await.unwrap();
    let _keep = open_many(attacker.clone(), peer.clone(), 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = held.lock().unwrap().len();
    assert!((8..=10).contains(&n), "{n} streams reached the handler");
    assert!(victim.stats().resources.refused_streams_peer >= 20, "{:?}", victim.stats().resources);
    // Another peer is not held to the first one's budget.
    let other = Host::new(HostConfig::ephemeral()).await.unwrap();
    let p2 = other.connect(&addr).await.unwrap();
    let _keep2 = open_many(other.clone(), p2, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held.lock().unwrap().len(), n + 5);
    // The handler lets the first peer's streams go: its budget is free again.
    held.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _more = open_many(attacker.clone(), peer, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held.lock().unwrap().len(), 5);
}

/// Streams we open count in the peer's and the protocol's outbound budgets: past
/// `peer_streams.outbound` (the node's own identify and ping streams included), `new_stream` fails
/// with the refusal (the stream was negotiated, then reset here), and a dropped stream gives its place
/// back. Over TCP and over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_outbound_stream_budget_is_enforced_and_given_back() {
    use hyphae::core::rcmgr::{Resource, Scope};
    use hyphae::core::stream::OpenError;
    for listen in ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"] {
        let server = Host::new(HostConfig::ephemeral()).await.unwrap();
        server.set_stream_handler("/hold/1", |s: Stream| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let addr = server.listen(listen.parse().unwrap()).await.unwrap().remove(0);
        let mut cfg = HostConfig::ephemeral();
        cfg.resources.peer_streams.outbound = 5;
        let opener = Host::new(cfg).await.unwrap();
        let peer = opener.connect(&addr).await.unwrap();
        // The node's own streams to the peer (identify, ping) share the budget.
        let mut held = Vec::new();
        let refusal = loop {
            match opener.new_stream(&peer, &["/hold/1"]).await {
                Ok(s) => held.push(s),
                Err(hyphae::Error::Negotiation(OpenError::Limit(r))) => break r,
                Err(e) => panic!("{listen}: stream {}: {e}", held.len()),
            }
            assert!(held.len() <= 5, "{listen}: opened past the budget");
        };
        assert_eq!((refusal.scope, refusal.resource, refusal.limit), (Scope::Peer, Resource::StreamsOutbound, 5), "{listen}");
        assert!(held.len() >= 3, "{listen}: only {} streams", held.len());
        assert_eq!(opener.stats().resources.refused_streams_peer, 1, "{listen}");
        held.pop();
        opener.new_stream(&peer, &["/hold/1"]).await.unwrap_or_else(|e| panic!("{listen}: after a drop: {e}"));
    }
}
