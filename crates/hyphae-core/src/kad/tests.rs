//! The kad service on N nodes over in-memory links, on explicit time.

use super::service::KadService;
use super::*;
use crate::node::Event as NodeEvent;
use crate::testing::Net;
use crate::time::Instant;

/// `n` DHT servers; every node knows node 0 and bootstraps.
fn dht(n: usize, mode: Mode) -> Net {
    dht_with(n, |_| Config { mode, ..Config::default() })
}

/// The same, node `i` with `config(i)`.
fn dht_with(n: usize, config: impl Fn(usize) -> Config) -> Net {
    let mut p = Net::new(n, |_, _| {});
    for i in 0..n {
        let me = p.peer_id(i);
        let cfg = config(i);
        p.nodes[i].add_service(Instant(0), Box::new(KadService::new(me, cfg)));
    }
    let (b0, a0) = (p.peer_id(0), p.addr(0).without_peer_id());
    for i in 1..n {
        let now = p.now;
        p.nodes[i].with_service::<KadService, _>(now, |k, cx| {
            k.add_peer(cx, &b0, std::slice::from_ref(&a0));
            k.bootstrap(cx).unwrap();
        });
        p.run_for(Duration::from_millis(200));
    }
    p.run_for(Duration::from_secs(5));
    p
}

fn finished(p: &Net, i: usize, q: QueryId) -> Option<Result<Outcome, QueryError>> {
    p.events[i].iter().find_map(|e| match e {
        NodeEvent::Kad(Event::Finished { query, outcome }) if *query == q => Some(outcome.clone()),
        _ => None,
    })
}

fn run<R>(p: &mut Net, i: usize, f: impl FnOnce(&mut KadService, &mut crate::service::Cx<'_>) -> R) -> R {
    let now = p.now;
    p.nodes[i].with_service::<KadService, _>(now, f).unwrap()
}

#[test]
fn kad_nodes_bootstrap_then_find_a_peer_they_never_met() {
    let mut p = dht(30, Mode::Server);
    let sizes: Vec<usize> = (0..30).map(|i| p.nodes[i].node_mut().service_mut::<KadService>().unwrap().table().len()).collect();
    assert!(sizes.iter().all(|n| *n >= 10), "tables filled by bootstrap: {sizes:?}");
    let target = p.peer_id(29);
    let q = run(&mut p, 3, |k, cx| k.find_peer(cx, &target)).unwrap();
    p.run_for(Duration::from_secs(5));
    let o = finished(&p, 3, q).expect("finished").expect("found");
    assert_eq!(o.found.as_ref().map(|f| &f.peer), Some(&target));
    assert!(o.found.unwrap().addrs.contains(&p.addr(29).without_peer_id()));
    // The k closest peers to a key, as every node would compute them from a full view.
    let key = b"some key".to_vec();
    let q = run(&mut p, 7, |k, cx| k.get_closest_peers(cx, key.clone())).unwrap();
    p.run_for(Duration::from_secs(5));
    let o = finished(&p, 7, q).expect("finished").expect("ok");
    let mut all: Vec<PeerId> = (0..30).filter(|i| *i != 7).map(|i| p.peer_id(i)).collect();
    all.sort_by_key(|x| Key::from_peer(x).distance(&Key::from_bytes(&key)));
    let got: Vec<PeerId> = o.closest.iter().map(|c| c.peer.clone()).collect();
    assert_eq!(got, all[..20].to_vec());
    assert!(o.hops >= 1);
}

#[test]
fn kad_provider_and_pk_record_travel_between_nodes() {
    let mut p = dht(25, Mode::Server);
    let cid = {
        let mut k = vec![0x12, 0x20];
        k.extend_from_slice(&[7u8; 32]);
        k
    };
    let q = run(&mut p, 4, |k, cx| k.provide(cx, cid.clone())).unwrap();
    p.run_for(Duration::from_secs(5));
    let o = finished(&p, 4, q).expect("finished").expect("stored");
    assert!(o.stored >= 15, "{o:?}");
    let q = run(&mut p, 20, |k, cx| k.find_providers(cx, cid.clone(), 1)).unwrap();
    p.run_for(Duration::from_secs(5));
    let provider = p.events[20].iter().find_map(|e| match e {
        NodeEvent::Kad(Event::Provider { query, provider }) if *query == q => Some(provider.clone()),
        _ => None,
    });
    assert_eq!(provider.map(|p| p.peer), Some(p.peer_id(4)));
    assert!(finished(&p, 20, q).expect("finished").is_ok());

    // /pk/<id>: node 9 stores its public key; node 17 gets it.
    let kp = p.nodes[9].node().config().keypair.clone();
    let rec = Record { key: store::pk_key(&kp.peer_id()), value: kp.public().encode_protobuf(), time_received: None };
    let q = run(&mut p, 9, |k, cx| k.put_value(cx, rec.clone())).unwrap();
    p.run_for(Duration::from_secs(5));
    assert!(finished(&p, 9, q).expect("finished").expect("stored").stored >= 15);
    let q = run(&mut p, 17, |k, cx| k.get_value(cx, rec.key.clone(), 2)).unwrap();
    p.run_for(Duration::from_secs(5));
    let values = p.events[17]
        .iter()
        .filter(|e| matches!(e, NodeEvent::Kad(Event::Value { query, record, .. }) if *query == q && record.value == rec.value))
        .count();
    assert_eq!(values, 2);
    assert!(finished(&p, 17, q).expect("finished").is_ok());
    // A record that does not validate is refused before anything is sent.
    let bad = Record { key: store::pk_key(&p.peer_id(3)), value: rec.value.clone(), time_received: None };
    assert!(matches!(run(&mut p, 9, |k, cx| k.put_value(cx, bad)), Err(QueryError::InvalidRecord(_))));
}

#[test]
fn kad_client_mode_neither_announces_nor_serves() {
    let mut p = Net::new(2, |_, _| {});
    let (a, b) = (p.peer_id(0), p.peer_id(1));
    p.nodes[0].add_service(Instant(0), Box::new(KadService::new(a, Config::default())));
    p.nodes[1].add_service(Instant(0), Box::new(KadService::new(b.clone(), Config::default())));
    assert!(!p.nodes[1].node().protocols().iter().any(|x| x == PROTOCOL_ID));
    let addr = p.addr(1).without_peer_id();
    // Node 0 is told node 1 is a server; its request is refused (the protocol is not served).
    run(&mut p, 0, |k, cx| {
        k.add_peer(cx, &b, &[addr]);
        k.bootstrap(cx).unwrap()
    });
    p.run_for(Duration::from_secs(5));
    let svc = p.nodes[0].node_mut().service_mut::<KadService>().unwrap();
    assert_eq!(svc.stats().requests_failed, 1);
    // Switched to server: announced (and pushed to the connected peer), and served.
    let now = p.now;
    p.nodes[1].with_service::<KadService, _>(now, |k, cx| k.set_mode(cx, Mode::Server));
    p.nodes[1].update_protocols(now);
    p.run_for(Duration::from_secs(1));
    assert!(p.nodes[1].node().protocols().iter().any(|x| x == PROTOCOL_ID));
    let known = p.nodes[0].node().peerstore().get(&b).unwrap().protocols.clone();
    assert!(known.iter().any(|x| x == PROTOCOL_ID), "{known:?}");
    assert!(p.nodes[0].node_mut().service_mut::<KadService>().unwrap().table().contains(&b));
}

#[test]
fn kad_refresh_looks_up_around_the_table_once_per_interval() {
    let mut p = Net::new(12, |_, _| {});
    for i in 0..12 {
        let me = p.peer_id(i);
        let cfg = Config { mode: Mode::Server, refresh_interval: Duration::from_secs(30), ..Config::default() };
        p.nodes[i].add_service(Instant(0), Box::new(KadService::new(me, cfg)));
    }
    let (b0, a0) = (p.peer_id(0), p.addr(0).without_peer_id());
    for i in 1..12 {
        run(&mut p, i, |k, cx| {
            k.add_peer(cx, &b0, std::slice::from_ref(&a0));
            k.bootstrap(cx).unwrap()
        });
    }
    p.run_for(Duration::from_secs(5));
    let started = |p: &mut Net| p.nodes[5].node_mut().service_mut::<KadService>().unwrap().stats().queries_started;
    let before = started(&mut p);
    p.run_for(Duration::from_secs(20));
    assert_eq!(started(&mut p), before, "nothing before the interval");
    p.run_for(Duration::from_secs(20));
    let after = started(&mut p);
    // The self-lookup, plus one per bucket that no lookup touched (bucket 0 at least).
    assert!(after >= before + 2, "{before} -> {after}");
    p.run_for(Duration::from_secs(5));
    assert_eq!(started(&mut p), after, "one round per interval");
}

#[test]
fn kad_bootstrap_nobody_answered_fails_and_is_tried_again_through_the_seeds() {
    let mut p = Net::new(2, |_, _| {});
    let (a, b) = (p.peer_id(0), p.peer_id(1));
    p.nodes[0].add_service(Instant(0), Box::new(KadService::new(a, Config::default())));
    p.nodes[1].add_service(Instant(0), Box::new(KadService::new(b.clone(), Config { mode: Mode::Client, ..Config::default() })));
    let addr = p.addr(1).without_peer_id();
    let q = run(&mut p, 0, |k, cx| {
        k.add_peer(cx, &b, &[addr]);
        k.bootstrap(cx).unwrap()
    });
    p.run_for(Duration::from_secs(5));
    assert_eq!(finished(&p, 0, q), Some(Err(QueryError::NoAnswer)), "the seed does not serve yet");
    // The seed starts serving; within the retry interval (30 s + jitter) node 0 joins through it.
    let now = p.now;
    p.nodes[1].with_service::<KadService, _>(now, |k, cx| k.set_mode(cx, Mode::Server));
    p.nodes[1].update_protocols(now);
    p.run_for(Duration::from_secs(45));
    let oks = p.events[0].iter().filter(|e| matches!(e, NodeEvent::Kad(Event::Finished { outcome: Ok(_), .. }))).count();
    assert!(oks >= 1, "re-bootstrapped: {:?}", p.events[0]);
    assert!(p.nodes[0].node_mut().service_mut::<KadService>().unwrap().table().contains(&b));
}

/// An application's namespace, plugged in through `Config::validators`: servers that know it store
/// and serve its records, refuse values it rejects and keep the one it ranks higher; a node without
/// it refuses the namespace.
#[test]
fn kad_application_namespace_through_pluggable_validators() {
    #[derive(Debug)]
    struct Versioned;
    impl store::Validator for Versioned {
        fn validate(&self, _key: &[u8], value: &[u8], _now: i128) -> Result<(), String> {
            value.first().map(|_| ()).ok_or_else(|| "empty".into())
        }
        /// The higher first byte (a version) wins.
        fn better(&self, _key: &[u8], new: &[u8], old: &[u8]) -> bool {
            new[0] > old[0]
        }
    }
    let n = 6;
    let mut p = dht_with(n, |i| {
        let validators = if i == n - 1 { store::Validators::default() } else { store::Validators::default().with("/app/", Versioned) };
        Config { mode: Mode::Server, validators, ..Config::default() }
    });
    let rec = |v: &[u8]| Record { key: b"/app/x".to_vec(), value: v.to_vec(), time_received: None };
    let q = run(&mut p, 1, |k, cx| k.put_value(cx, rec(&[2, 2]))).unwrap();
    p.run_for(Duration::from_secs(5));
    // Every server but the one without the namespace stores it.
    assert_eq!(finished(&p, 1, q).expect("finished").expect("stored").stored, n - 2);
    assert!(matches!(run(&mut p, 1, |k, cx| k.put_value(cx, rec(&[]))), Err(QueryError::InvalidRecord(_))));
    // A lower version is refused where the higher one is kept.
    assert!(matches!(run(&mut p, 1, |k, cx| k.put_value(cx, rec(&[1]))), Err(QueryError::InvalidRecord(_))));
    let q = run(&mut p, 2, |k, cx| k.get_value(cx, b"/app/x".to_vec(), 3)).unwrap();
    p.run_for(Duration::from_secs(5));
    let got: Vec<_> = p.events[2]
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Kad(Event::Value { query, record, .. }) if *query == q => Some(record.value.clone()),
            _ => None,
        })
        .collect();
    assert!(got.len() >= 3 && got.iter().all(|v| v == &[2, 2]), "{got:?}");
    // The node without the namespace refuses it.
    assert!(matches!(run(&mut p, n - 1, |k, cx| k.put_value(cx, rec(&[3]))), Err(QueryError::InvalidRecord(_))));
}

/// Lookups on disjoint paths (`Config::disjoint_paths`) still find peers and records in a network.
#[test]
fn kad_disjoint_path_lookups_find_peers_and_records() {
    let mut p = dht_with(30, |_| Config { mode: Mode::Server, disjoint_paths: 3, ..Config::default() });
    let target = p.peer_id(23);
    let q = run(&mut p, 7, |k, cx| k.find_peer(cx, &target)).unwrap();
    p.run_for(Duration::from_secs(5));
    let o = finished(&p, 7, q).expect("finished").expect("found");
    assert_eq!(o.found.map(|i| i.peer), Some(target));
    let kp = p.nodes[11].node().config().keypair.clone();
    let rec = Record { key: store::pk_key(&kp.peer_id()), value: kp.public().encode_protobuf(), time_received: None };
    let q = run(&mut p, 11, |k, cx| k.put_value(cx, rec.clone())).unwrap();
    p.run_for(Duration::from_secs(5));
    assert!(finished(&p, 11, q).expect("finished").expect("stored").stored >= 15);
    let q = run(&mut p, 2, |k, cx| k.get_value(cx, rec.key.clone(), 1)).unwrap();
    p.run_for(Duration::from_secs(5));
    assert!(finished(&p, 2, q).expect("finished").is_ok());
}

/// go's `fixLowPeers`: a node that joined before the network did (here: as a client, so nobody kept
/// it, then turned server) keeps a one-peer table and stays unknown to the peers around it until its
/// refresh (10 min) — unless a table of `low_table` peers or fewer makes it bootstrap again, checked
/// every `low_table_interval` (2 min): then it meets its neighbours and they keep it.
#[test]
fn kad_a_node_with_a_low_table_bootstraps_again_and_its_neighbours_keep_it() {
    let run_case = |low_table: usize| {
        let n = 30;
        let mut p = dht_with(n, |i| {
            let mode = if i == 1 { Mode::Client } else { Mode::Server };
            Config { mode, low_table, ..Config::default() }
        });
        let now = p.now;
        p.nodes[1].with_service::<KadService, _>(now, |k, cx| k.set_mode(cx, Mode::Server));
        p.nodes[1].update_protocols(now);
        p.run_for(Duration::from_secs(150));
        let me = p.peer_id(1);
        let mut others: Vec<usize> = (2..n).collect();
        others.sort_by_key(|i| Key::from_peer(&p.peer_id(*i)).distance(&Key::from_peer(&me)));
        let keep =
            others[..5].iter().filter(|i| p.nodes[**i].node_mut().service_mut::<KadService>().unwrap().table().contains(&me)).count();
        let k = p.nodes[1].node_mut().service_mut::<KadService>().unwrap();
        (k.table().len(), k.stats().low_table_bootstraps, keep)
    };
    let (table_off, boots_off, keep_off) = run_case(0);
    let (table_on, boots_on, keep_on) = run_case(10);
    assert_eq!(boots_off, 0);
    assert!(boots_on >= 1);
    assert!(table_off <= 10 && keep_off < 5, "without it: table {table_off}, kept by {keep_off} of its 5 closest");
    assert!(table_on > 10 && keep_on >= 4, "with it: table {table_on}, kept by {keep_on} of its 5 closest");
}

/// Optimistic provide (k = 4, so a 60-server network gives the tables a size estimate): the provide
/// runs optimistically, reports done once 75% of its ADD_PROVIDERs are out, and the record is found
/// from everywhere: on the peers that got it, and by lookups from other nodes.
#[test]
fn kad_optimistic_provide_stores_on_the_closest_and_is_found() {
    let k = 4;
    let mut p = dht_with(60, |_| Config { mode: Mode::Server, k, ..Config::default() });
    let size = p.nodes[5].node_mut().service_mut::<KadService>().unwrap().table().size_estimate();
    assert!(size > 20.0 && size < 200.0, "size estimate {size}");
    // A key with a server very near it (a tenth of the spacing): that one is stored to during the lookup.
    let near = |c: &Vec<u8>| (0..60).filter(|i| *i != 5).map(|i| Key::from_peer(&p.peer_id(i)).distance(&Key::from_bytes(c)).0[0]).min();
    let cid = (0u8..=255)
        .map(|b| {
            let mut c = vec![0x12, 0x20];
            c.extend_from_slice(&[b; 32]);
            c
        })
        .find(|c| near(c) == Some(0))
        .expect("some key has a server within 1/256 of it");
    let q = run(&mut p, 5, |kad, cx| kad.provide(cx, cid.clone())).unwrap();
    p.run_for(Duration::from_secs(5));
    let o = finished(&p, 5, q).expect("finished").expect("stored");
    assert!(o.stored >= 3, "{o:?}");
    let st = p.nodes[5].node_mut().service_mut::<KadService>().unwrap().stats().clone();
    assert_eq!(st.optimistic_provides, 1, "{st:?}");
    assert!(st.optimistic_early_stores >= 1, "{st:?}");
    // Every one of the true k closest servers to the key holds the record (the stores that went on
    // after the provide reported done included).
    let target = Key::from_bytes(&cid);
    let mut all: Vec<usize> = (0..60).filter(|i| *i != 5).collect();
    all.sort_by_key(|i| Key::from_peer(&p.peer_id(*i)).distance(&target));
    let holders = all[..k]
        .iter()
        .filter(|i| {
            p.nodes[**i]
                .node_mut()
                .service_mut::<KadService>()
                .unwrap()
                .store()
                .providers(&cid, p.now)
                .iter()
                .any(|x| x.peer == p.peer_id(5))
        })
        .count();
    assert!(holders >= k - 1, "{holders} of the {k} closest hold the record");
    for from in [17, 33, 58] {
        let q = run(&mut p, from, |kad, cx| kad.find_providers(cx, cid.clone(), 1)).unwrap();
        p.run_for(Duration::from_secs(5));
        let found = p.events[from]
            .iter()
            .any(|e| matches!(e, NodeEvent::Kad(Event::Provider { query, provider }) if *query == q && provider.peer == p.peer_id(5)));
        assert!(found, "node {from} found the provider");
    }
}

/// The Erlang quantiles behind optimistic provide's thresholds.
#[test]
fn kad_erlang_quantiles() {
    use super::query::{erlang_cdf, erlang_quantile};
    assert!((erlang_quantile(1, 0.5) - std::f64::consts::LN_2).abs() < 1e-9);
    assert!((erlang_cdf(20, erlang_quantile(20, 0.1)) - 0.1).abs() < 1e-9);
    // Gamma(20, 1)'s 10% quantile and Gamma(11, 1)'s 90% (go's thresholds at k = 20), against the
    // Wilson-Hilferty approximation n(1 - 1/9n + z/sqrt(9n))^3 (z = -/+1.2816): 14.527 and 15.400.
    assert!((erlang_quantile(20, 0.1) - 14.527).abs() < 0.02, "{}", erlang_quantile(20, 0.1));
    assert!((erlang_quantile(11, 0.9) - 15.400).abs() < 0.05, "{}", erlang_quantile(11, 0.9));
}
