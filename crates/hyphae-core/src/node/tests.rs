//! Node machine tests: two (or more) `ByteNode`s over in-memory links, driven by explicit time.

use super::*;
use crate::identify::Info;
use crate::testing::Net;

fn pair(ping: Option<Duration>, quic: bool) -> Net {
    // quinn-proto wants a std instant for our `Instant(0)`: the test is the driver, it reads the clock.
    let base = std::time::Instant::now();
    Net::new(2, |_, c| {
        c.ping.interval = ping;
        c.quic_base = quic.then_some(base);
    })
}

#[test]
fn node_connects_identifies_and_pings_on_virtual_time() {
    let mut p = pair(Some(Duration::from_secs(10)), false);
    let b = p.nodes[1].peer_id().clone();
    let a = p.addr(1);
    p.dial(0, a);
    p.run_until(Instant(0) + Duration::from_secs(35));
    assert!(p.nodes[0].is_connected(&b));
    let rtts = rtts(&p.events[0]);
    // Pings at 0 (after the handshake), 10, 20, 30 s; each RTT is exactly two one-way latencies.
    assert_eq!(rtts.len(), 4, "{:?}", p.events[0]);
    assert!(rtts.iter().all(|r| *r == Duration::from_millis(20)), "{rtts:?}");
    assert!(p.events[0].iter().any(|e| matches!(e, Event::Identify(identify::Event::Received { info, push: false, .. }) if info.agent_version.as_deref().is_some_and(|a| a.starts_with("hyphae/")))));
    assert!(p.events[1].iter().any(|e| matches!(e, Event::Identify(identify::Event::Received { .. }))));
    assert_eq!(p.nodes[1].stats().pings_ok, 4, "both sides ping");
}

#[test]
fn node_runs_over_quic_with_the_same_protocol_code() {
    let mut p = pair(Some(Duration::from_secs(10)), true);
    let b = p.nodes[1].peer_id().clone();
    let addr = p.quic_addr(1);
    p.dial(0, addr);
    p.run_until(Instant(0) + Duration::from_secs(25));
    assert!(p.nodes[0].is_connected(&b));
    let rtts = rtts(&p.events[0]);
    assert_eq!(rtts.len(), 3, "{:?}", p.events[0]);
    assert!(rtts.iter().all(|r| *r == Duration::from_millis(20)), "{rtts:?}");
    assert_eq!(p.nodes[0].stats().identifies, 1);
    assert_eq!(p.nodes[1].stats().identifies, 1);
    assert_eq!(p.nodes[0].num_connections(), 1);
}

#[test]
fn node_idle_inbound_ping_stream_is_closed_and_the_next_ping_opens_another() {
    let mut p = pair(None, false);
    let b = p.nodes[1].peer_id().clone();
    let a = p.addr(1);
    p.dial(0, a);
    p.run_until(Instant(0) + Duration::from_secs(1));
    let now = p.now;
    p.nodes[0].ping(now, &b).unwrap();
    p.run_until(now + Duration::from_secs(30));
    let now = p.now;
    p.nodes[0].ping(now, &b).unwrap();
    // 30 s later the stream is still in use; 60–90 s after this ping the listener closes it as idle.
    p.run_until(now + ping::service::IDLE + ping::service::IDLE / 2 + Duration::from_secs(5));
    let now = p.now;
    p.nodes[0].ping(now, &b).unwrap();
    p.run_until(now + Duration::from_secs(1));
    let inbound = p.events[1].iter().filter(|e| matches!(e, Event::Ping(ping::Event::Inbound { .. }))).count();
    assert_eq!(p.nodes[0].stats().pings_ok, 3, "{:?}", p.events[0]);
    assert_eq!(p.nodes[0].stats().pings_failed, 0);
    assert_eq!(inbound, 2, "one stream for the first two pings, a new one after the idle close");
}

#[test]
fn node_new_protocol_reaches_peer_by_identify_push() {
    let mut p = pair(None, false);
    let a = p.addr(1);
    p.dial(0, a);
    p.run_until(Instant(0) + Duration::from_secs(1));
    let now = p.now;
    p.nodes[1].set_protocols(now, vec!["/x/1.0.0".into()]);
    p.run_until(now + Duration::from_secs(1));
    let pushed: Vec<&Info> = p.events[0]
        .iter()
        .filter_map(|e| if let Event::Identify(identify::Event::Received { info, push: true, .. }) = e { Some(&**info) } else { None })
        .collect();
    assert_eq!(pushed.len(), 1, "{:?}", p.events[0]);
    assert!(pushed[0].protocols.iter().any(|x| x == "/x/1.0.0"), "{:?}", pushed[0].protocols);
    assert!(pushed[0].protocols.iter().any(|x| x == ping::PROTOCOL_ID));
    assert_eq!(p.nodes[1].stats().identifies_failed, 0);
}

fn rtts(events: &[Event]) -> Vec<Duration> {
    events.iter().filter_map(|e| if let Event::Ping(ping::Event::Ok { rtt, .. }) = e { Some(*rtt) } else { None }).collect()
}

/// A request/response service written outside the router: `/echo/1.0.0` answers a request with the same
/// bytes; `request` sends one and the answer comes back as `Event::Custom`. Registered with
/// `add_service` only — the shape kad and gossipsub use.
mod echo {
    use crate::service::{ConnId, ConnectionEvent, Cx, Event, Service, StreamEvent};
    use crate::stream::{OpenError, StreamId};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    pub const PROTOCOL: &str = "/echo/1.0.0";

    #[derive(Debug, PartialEq, Eq)]
    pub enum EchoEvent {
        Answer { token: u64, data: Vec<u8> },
        Failed { token: u64 },
    }

    #[derive(Default)]
    pub struct Echo {
        /// Requests waiting for their stream, by token.
        pending: BTreeMap<u64, Vec<u8>>,
        /// Our requests (stream → token, answer so far) and the peer's (stream → request so far).
        out: BTreeMap<(ConnId, StreamId), (u64, Vec<u8>)>,
        inb: BTreeMap<(ConnId, StreamId), Vec<u8>>,
        pub connections: Vec<ConnId>,
        mixed: std::collections::BTreeSet<u64>,
        pub drained: usize,
        /// Streams reset under us (by the peer, or by the node when the outbox overflowed).
        pub resets: usize,
        /// Peers' requests longer than this are given up: the stream is released at once.
        pub quit_after: Option<usize>,
        pub given_up: std::collections::BTreeSet<(ConnId, StreamId)>,
        /// `Data` the node delivered for a stream after this service released it (there should be none).
        pub data_after_release: usize,
        /// Read as a bulk service does (64 KiB per read) rather than 2 KiB at a time.
        pub bulk_reads: bool,
    }

    /// A request sent as static block, then `data`, then a static tail (see `request_mixed`).
    pub static BLOCK: [u8; 300_000] = [1; 300_000];
    pub const TAIL: &[u8] = b"tail";

    impl Echo {
        pub fn request(&mut self, cx: &mut Cx<'_>, conn: ConnId, token: u64, data: &[u8]) {
            self.pending.insert(token, data.to_vec());
            cx.open_stream(conn, PROTOCOL, token);
        }

        /// Like `request`, but the request is `BLOCK`, `data`, `TAIL`, the two statics written with
        /// `Cx::write_static` around a copied write: the router must keep their order.
        pub fn request_mixed(&mut self, cx: &mut Cx<'_>, conn: ConnId, token: u64, data: &[u8]) {
            self.mixed.insert(token);
            self.request(cx, conn, token, data);
        }
    }

    impl Service for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn protocols(&self) -> Vec<String> {
            vec![PROTOCOL.into()]
        }
        fn read_chunk(&self) -> usize {
            if self.bulk_reads {
                64 * 1024
            } else {
                2048
            }
        }
        fn on_connection(&mut self, _cx: &mut Cx<'_>, ev: ConnectionEvent<'_>) {
            if let ConnectionEvent::Established { conn, .. } = ev {
                self.connections.push(conn);
            }
        }
        fn on_inbound(&mut self, _cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, _protocol: &str) {
            self.inb.insert((conn, stream), Vec::new());
        }
        fn on_stream(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>) {
            match ev {
                StreamEvent::Opened { token, .. } => {
                    let req = self.pending.remove(&token).unwrap_or_default();
                    if self.mixed.remove(&token) {
                        cx.write_static(conn, stream, &BLOCK);
                        cx.write(conn, stream, &req);
                        cx.write_static(conn, stream, TAIL);
                    } else {
                        cx.write(conn, stream, &req);
                    }
                    cx.close_stream(conn, stream);
                    self.out.insert((conn, stream), (token, Vec::new()));
                }
                StreamEvent::Data(d) => {
                    if self.given_up.contains(&(conn, stream)) {
                        self.data_after_release += 1;
                    } else if let Some(b) = self.inb.get_mut(&(conn, stream)) {
                        b.extend_from_slice(d);
                        if self.quit_after.is_some_and(|q| b.len() > q) {
                            self.inb.remove(&(conn, stream));
                            self.given_up.insert((conn, stream));
                            cx.release(conn, stream);
                        }
                    } else if let Some((_, b)) = self.out.get_mut(&(conn, stream)) {
                        b.extend_from_slice(d);
                    }
                }
                StreamEvent::Eof => {
                    if let Some(req) = self.inb.remove(&(conn, stream)) {
                        cx.write(conn, stream, &req);
                        cx.close_stream(conn, stream);
                    } else if let Some((token, data)) = self.out.remove(&(conn, stream)) {
                        cx.emit(Event::Custom { service: "echo", event: Arc::new(EchoEvent::Answer { token, data }) });
                    }
                    cx.release(conn, stream);
                }
                StreamEvent::Drained => self.drained += 1,
                StreamEvent::Reset => {
                    self.resets += 1;
                    self.out.remove(&(conn, stream));
                    self.inb.remove(&(conn, stream));
                }
            }
        }
        fn on_open_failed(&mut self, cx: &mut Cx<'_>, _conn: ConnId, token: u64, _reason: &OpenError) {
            self.pending.remove(&token);
            cx.emit(Event::Custom { service: "echo", event: Arc::new(EchoEvent::Failed { token }) });
        }
        fn as_any(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }
}

/// Two nodes with the echo service, node 0 connected to node 1 and both identified.
fn echo_pair() -> Net {
    echo_pair_over(false)
}

/// `echo_pair` over TCP or QUIC.
fn echo_pair_over(quic: bool) -> Net {
    let mut p = pair(None, quic);
    for n in &mut p.nodes {
        n.add_service(Instant(0), Box::new(echo::Echo::default()));
    }
    let a = if quic { p.quic_addr(1) } else { p.addr(1) };
    p.dial(0, a);
    p.run_until(Instant(0) + Duration::from_secs(1));
    p
}

/// The echo answers node 0 got, in order.
fn echo_answers(p: &Net) -> Vec<&echo::EchoEvent> {
    p.events[0]
        .iter()
        .filter_map(|e| if let Event::Custom { service: "echo", event } = e { event.downcast_ref::<echo::EchoEvent>() } else { None })
        .collect()
}

#[test]
fn node_lends_quic_reads_frame_by_frame_and_a_release_stops_them_at_once() {
    // Over QUIC a read lends the service each received frame where quinn keeps it: a 300 kB request
    // arrives whole and in order. Datagrams arrive in batches, as from a receive with GRO, so that one
    // read finds many frames.
    let mut p = echo_pair_over(true);
    p.batch_datagrams = true;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let now = p.now;
    p.nodes[0].with_service::<echo::Echo, _>(now, |e, cx| {
        let conn = e.connections[0];
        e.request(cx, conn, 1, &big);
    });
    p.run_until(now + Duration::from_secs(2));
    assert_eq!(echo_answers(&p), vec![&echo::EchoEvent::Answer { token: 1, data: big.clone() }]);
    // A service that releases a stream in the middle of a read gets none of the read's other frames.
    let now = p.now;
    let e = p.nodes[1].node_mut().service_mut::<echo::Echo>().unwrap();
    (e.quit_after, e.bulk_reads) = (Some(10_000), true);
    p.nodes[0].with_service::<echo::Echo, _>(now, |e, cx| {
        let conn = e.connections[0];
        e.request(cx, conn, 2, &big);
    });
    p.run_until(now + Duration::from_secs(2));
    let e = p.nodes[1].node_mut().service_mut::<echo::Echo>().unwrap();
    assert_eq!((e.given_up.len(), e.data_after_release), (1, 0));
}

#[test]
fn node_new_service_added_by_registration_only_serves_and_requests() {
    let mut p = pair(None, false);
    for n in &mut p.nodes {
        n.add_service(Instant(0), Box::new(echo::Echo::default()));
    }
    let b = p.nodes[1].peer_id().clone();
    let a = p.addr(1);
    p.dial(0, a);
    p.run_until(Instant(0) + Duration::from_secs(1));
    // The peer learnt the new protocol from identify, and the node's peerstore has the peer's.
    assert!(p.nodes[1].node().peerstore().get(p.nodes[0].peer_id()).unwrap().protocols.iter().any(|x| x == echo::PROTOCOL));
    assert!(p.nodes[0].node().peerstore().get(&b).unwrap().protocols.iter().any(|x| x == echo::PROTOCOL));
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let now = p.now;
    p.nodes[0].with_service::<echo::Echo, _>(now, |e, cx| {
        let conn = e.connections[0];
        e.request(cx, conn, 7, b"hello");
        e.request(cx, conn, 8, &big);
    });
    p.run_until(now + Duration::from_secs(2));
    let answers = echo_answers(&p);
    assert_eq!(answers.len(), 2, "{:?}", p.events[0]);
    assert!(answers.contains(&&echo::EchoEvent::Answer { token: 7, data: b"hello".to_vec() }));
    // 300 kB: more than one write can take; the router's per-stream buffer drains on Writable.
    assert!(answers.contains(&&echo::EchoEvent::Answer { token: 8, data: big.clone() }));
    assert_eq!(p.nodes[0].stats().writes_dropped, 0);
}

#[test]
fn node_static_writes_keep_their_order_with_copied_writes_and_report_drained() {
    let mut p = echo_pair();
    let now = p.now;
    p.nodes[0].with_service::<echo::Echo, _>(now, |e, cx| {
        let conn = e.connections[0];
        e.request_mixed(cx, conn, 9, b"middle");
    });
    p.run_until(now + Duration::from_secs(2));
    let mut want = echo::BLOCK.to_vec();
    want.extend_from_slice(b"middle");
    want.extend_from_slice(echo::TAIL);
    let got = p.events[0].iter().find_map(|e| match e {
        Event::Custom { service: "echo", event } => match event.downcast_ref::<echo::EchoEvent>() {
            Some(echo::EchoEvent::Answer { token: 9, data }) => Some(data.clone()),
            _ => None,
        },
        _ => None,
    });
    assert!(got.as_ref() == Some(&want), "answer of {} bytes, want {}", got.map_or(0, |g| g.len()), want.len());
    // Its owner is told when the static writes have left: once per static write, or once for both when
    // the first still waited when the second was queued.
    let drained = p.nodes[0].node_mut().service_mut::<echo::Echo>().unwrap().drained;
    assert!((1..=2).contains(&drained), "{drained}");
}

#[test]
fn node_outbox_overflow_resets_the_stream_and_tells_its_service() {
    let mut p = echo_pair();
    let limit = crate::node::Limits::default().max_queued_bytes_per_conn;
    let now = p.now;
    p.nodes[0].with_service::<echo::Echo, _>(now, |e, cx| {
        let conn = e.connections[0];
        e.request(cx, conn, 5, &vec![7u8; limit + 1]);
        e.request(cx, conn, 6, b"small");
    });
    p.run_until(now + Duration::from_secs(2));
    // The write past the limit is dropped and counted; the service learns its stream was reset (it would
    // otherwise wait for an answer forever), and the next request on the connection still works.
    assert_eq!(p.nodes[0].stats().writes_dropped, 1);
    assert_eq!(p.nodes[0].node_mut().service_mut::<echo::Echo>().unwrap().resets, 1);
    let answers = echo_answers(&p);
    assert_eq!(answers, vec![&echo::EchoEvent::Answer { token: 6, data: b"small".to_vec() }]);
}

#[test]
fn node_per_peer_connection_cap_closes_the_extra_connection_with_a_typed_reason() {
    let mut p = Net::new(2, |_, c| c.limits.resources.peer.conns = 2);
    let b = p.nodes[1].peer_id().clone();
    for _ in 0..3 {
        let a = p.addr(1);
        p.dial(0, a);
        p.run_until(p.now + Duration::from_millis(200));
    }
    assert_eq!(p.nodes[0].node().connections_to(&b).len(), 2);
    assert_eq!(p.nodes[0].stats().resources.refused_peer, 1);
    let failed: Vec<&CloseReason> =
        p.events[0].iter().filter_map(|e| if let Event::DialFailed { reason, .. } = e { Some(reason) } else { None }).collect();
    let want = crate::rcmgr::Refusal { scope: crate::rcmgr::Scope::Peer, resource: crate::rcmgr::Resource::Conns, limit: 2 };
    assert_eq!(failed, vec![&CloseReason::Refused(want)], "{:?}", p.events[0]);
}

/// A service asks for a connection through the outbox (`Cx::dial`): the driver dials, the node connects,
/// and every service hears the outcome; a dial to an address nobody answers fails with a typed reason.
#[test]
fn node_service_requested_dial_connects_or_reports_its_failure() {
    let mut p = Net::new(3, |_, _| {});
    for n in &mut p.nodes {
        n.add_service(Instant(0), Box::new(echo::Echo::default()));
    }
    let (a2, p2) = (p.addr(2), p.peer_id(2));
    let nowhere: Multiaddr = "/ip4/10.0.0.99/tcp/4001".parse().unwrap();
    let now = p.now;
    p.nodes[0].with_service::<echo::Echo, _>(now, |_, cx| {
        cx.dial(a2, Some(p2.clone()));
        cx.dial(nowhere, None);
    });
    p.run_for(Duration::from_secs(1));
    assert!(p.nodes[0].is_connected(&p2), "{:?}", p.events[0]);
    assert!(p.nodes[0].node_mut().service_mut::<echo::Echo>().unwrap().connections.len() == 1, "the service saw the connection");
    let failed: Vec<&CloseReason> =
        p.events[0].iter().filter_map(|e| if let Event::DialFailed { reason, peer: None, .. } = e { Some(reason) } else { None }).collect();
    assert!(matches!(failed[..], [CloseReason::Lost(_)]), "{:?}", p.events[0]);
    assert_eq!(p.nodes[0].stats().dials_failed, 1);
    assert!(!p.nodes[0].is_connected(&p.peer_id(1)));
}

/// Identify tells each side the address the other sees it at: the transport address, without the
/// `/p2p/..` of the dialed address (which named the dialed peer, not the one told).
#[test]
fn node_identify_observed_address_is_the_transport_address() {
    let mut p = pair(None, false);
    let a = p.addr(1);
    p.dial(0, a);
    p.run_for(Duration::from_secs(1));
    let observed = |events: &[Event]| {
        events
            .iter()
            .find_map(|e| if let Event::Identify(identify::Event::Received { info, .. }) = e { info.observed_addr.clone() } else { None })
            .expect("identified")
    };
    assert_eq!(observed(&p.events[0]), Multiaddr::from_tcp(crate::testing::socket(0)), "how node 1 sees node 0");
    assert_eq!(observed(&p.events[1]), Multiaddr::from_tcp(crate::testing::socket(1)), "how node 0 sees node 1");
}

#[test]
fn node_idle_connections_close_after_the_timeout_and_busy_ones_stay() {
    let idle = Duration::from_secs(10);
    let mut p = Net::new(3, |i, c| {
        c.limits.idle_timeout = Some(idle);
        // Node 2 pings every 3 s: its connection always has the ping stream open.
        if i == 2 {
            c.ping.interval = Some(Duration::from_secs(3));
        }
    });
    let (a1, a2) = (p.addr(1), p.addr(2));
    p.dial(0, a1);
    p.dial(0, a2);
    p.run_until(Instant(0) + Duration::from_secs(5));
    assert_eq!(p.nodes[0].num_connections(), 2);
    assert_eq!(p.nodes[0].node().next_timer().map(|(_, r)| r), Some("idle"));
    p.run_until(Instant(0) + Duration::from_secs(30));
    assert!(!p.nodes[0].is_connected(&p.peer_id(1)), "idle for 10 s: closed");
    assert!(p.nodes[0].is_connected(&p.peer_id(2)), "the ping stream keeps it");
    assert_eq!(p.nodes[0].stats().connections_idle_closed + p.nodes[1].stats().connections_idle_closed, 1);
    let reason = p.events[0].iter().chain(&p.events[1]).find_map(|e| match e {
        Event::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(matches!(reason, Some(CloseReason::Limit("idle")) | Some(CloseReason::Remote)), "{reason:?}");
}

/// The connection manager in the node machine: five peers dial node 0 (high water 3, low water 2, no
/// grace); at the fourth it trims down to two, sparing the protected peer and the valuable one, and the
/// trimmed connections close with `Trimmed` on both sides.
#[test]
fn node_connmgr_trims_to_the_low_watermark_sparing_protected_and_valuable_peers() {
    use super::connmgr;
    let mut p = Net::new(6, |i, c| {
        if i == 0 {
            c.limits.connmgr =
                Some(connmgr::Config { low_water: 2, high_water: 3, grace: Duration::ZERO, silence: Duration::from_secs(60) });
        }
    });
    let ids: Vec<PeerId> = (0..6).map(|i| p.nodes[i].peer_id().clone()).collect();
    p.nodes[0].node_mut().connmgr_mut().protect(&ids[1], "bootstrap");
    p.nodes[0].node_mut().connmgr_mut().tag(&ids[2], "mesh", 20);
    for i in 1..=4 {
        let a = p.addr(0);
        p.dial(i, a);
        p.run_until(p.now + Duration::from_millis(200));
    }
    let n0 = p.nodes[0].node();
    let left: Vec<PeerId> = n0.connected_peers();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&ids[1]) && left.contains(&ids[2]), "{left:?}");
    assert_eq!(n0.connmgr().stats().connections_trimmed, 2);
    let trimmed = p.events[0].iter().filter(|e| matches!(e, Event::Disconnected { reason: CloseReason::Trimmed, .. })).count();
    assert_eq!(trimmed, 2, "{:?}", p.events[0]);
    // Within the silence period a fifth connection stays (no automatic trim); an explicit one runs.
    let a = p.addr(0);
    p.dial(5, a);
    p.run_until(p.now + Duration::from_millis(200));
    assert_eq!(p.nodes[0].node().connected_peers().len(), 3);
    let now = p.now;
    assert_eq!(p.nodes[0].node_mut().trim(now), 1);
    p.run_until(p.now + Duration::from_millis(200));
    assert_eq!(p.nodes[0].node().connected_peers().len(), 2);
}

/// Identify carries each node's signed peer record: the other side verifies it and keeps the signed
/// listen address as certified; an older record (a smaller sequence number) is not taken again.
#[test]
fn node_identify_exchanges_signed_peer_records_and_certifies_their_addresses() {
    let mut p = Net::new(2, |_, _| {});
    let a = p.addr(1);
    p.dial(0, a);
    p.run_until(p.now + Duration::from_millis(300));
    let b = p.nodes[1].peer_id().clone();
    let rec = p.nodes[0].node().peerstore().get(&b).unwrap();
    assert_eq!(rec.certified_addrs, vec![p.addr(1).without_peer_id()], "{rec:?}");
    assert_eq!(p.nodes[0].node().stats().records_certified, 1);
    assert_eq!(p.nodes[0].node().stats().records_invalid, 0);
    let old = crate::record::PeerRecord { peer: b.clone(), seq: 1, addrs: vec!["/ip4/6.6.6.6/tcp/1".parse().unwrap()] };
    let now = p.now;
    assert!(!p.nodes[0].node_mut().peerstore_mut().add_certified(&old, now, &|_| true), "stale");
}
