//! The router alone: networks of routers wired in memory (frames decoded on the way), explicit time.

use super::*;
use crate::gossipsub::wire::Limits;
use crate::gossipsub::MessageIdFn;
use crate::identity::KeyType;
use crate::rng;

struct Net {
    routers: Vec<Router>,
    ids: Vec<PeerId>,
    keys: Vec<Keypair>,
    links: BTreeSet<(usize, usize)>,
    rng: Rng,
    now: Instant,
    got: Vec<Vec<Event>>,
}

impl Net {
    fn new(n: usize, cfg: Config) -> Net {
        let mut rng = rng::from_seed([7; 32]);
        let keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate(KeyType::Ed25519, &mut rng)).collect();
        let ids: Vec<PeerId> = keys.iter().map(Keypair::peer_id).collect();
        let routers = keys.iter().map(|k| Router::new(cfg.clone(), k.peer_id(), Some(k.clone()), Instant::ZERO)).collect();
        Net { routers, ids, keys, links: BTreeSet::new(), rng, now: Instant::ZERO, got: vec![Vec::new(); n] }
    }
    fn link(&mut self, a: usize, b: usize, kind: PeerKind) {
        self.routers[a].add_peer(self.ids[b].clone(), kind, true, None, self.now);
        self.routers[b].add_peer(self.ids[a].clone(), kind, false, None, self.now);
        self.links.insert((a, b));
        self.links.insert((b, a));
    }
    /// The RPCs of the next batch of frames `a` has queued for `b`, taken but not yet delivered.
    fn take(&mut self, a: usize, b: usize) -> Vec<Rpc> {
        let to = self.ids[b].clone();
        self.routers[a].take_frames(&to, 1 << 20, true).map(|(f, _)| rpcs(&f)).unwrap_or_default()
    }
    /// Hands `b` RPCs that `a` sent it.
    fn hand(&mut self, a: usize, b: usize, rpcs: Vec<Rpc>) {
        let from = self.ids[a].clone();
        for r in rpcs {
            self.routers[b].handle_rpc(&mut self.rng, self.now, &from, r);
        }
    }
    fn full(n: usize, cfg: Config) -> Net {
        let mut net = Net::new(n, cfg);
        for a in 0..n {
            for b in a + 1..n {
                net.link(a, b, PeerKind::Meshsub12);
            }
        }
        net
    }
    /// Delivers queued RPCs in rounds until the network is quiet: one round of latency per hop, links
    /// in a random order, and an RPC carrying more than 1 KiB takes a second round (its transmission
    /// time: what lets a small IDONTWANT overtake a large message).
    fn settle(&mut self) {
        let mut later: Vec<(usize, usize, Rpc)> = Vec::new();
        loop {
            let mut round = std::mem::take(&mut later);
            for &(a, b) in &self.links {
                let to = self.ids[b].clone();
                while let Some(f) = self.routers[a].take_frames(&to, 1 << 20, true).map(|(f, _)| f) {
                    let mut at = 0;
                    while let Some((rpc, used)) = wire::decode(&f[at..], &Limits::default()).unwrap() {
                        if used > 1024 {
                            later.push((a, b, rpc));
                        } else {
                            round.push((a, b, rpc));
                        }
                        at += used;
                    }
                    assert_eq!(at, f.len(), "whole frames only");
                }
            }
            if round.is_empty() && later.is_empty() {
                return;
            }
            let n = round.len();
            for (a, b, rpc) in choose(&mut self.rng, round, n) {
                let from = self.ids[a].clone();
                self.routers[b].handle_rpc(&mut self.rng, self.now, &from, rpc);
            }
            for (i, r) in self.routers.iter_mut().enumerate() {
                while let Some(e) = r.poll_event() {
                    self.got[i].push(e);
                }
            }
        }
    }
    fn heartbeats(&mut self, n: usize) {
        for _ in 0..n {
            self.now = self.now + Duration::from_secs(1);
            for r in &mut self.routers {
                r.on_timeout(&mut self.rng, self.now);
            }
            self.settle();
        }
    }
    fn subscribe_all(&mut self, topic: &str) {
        for r in &mut self.routers {
            r.subscribe(&mut self.rng, self.now, topic);
        }
        self.settle();
    }
    fn messages(&self, i: usize) -> Vec<&Arc<Message>> {
        self.got[i].iter().filter_map(|e| if let Event::Message { message, .. } = e { Some(message) } else { None }).collect()
    }
}

#[test]
fn gossipsub_router_builds_meshes_within_the_watermarks_and_delivers_each_message_once() {
    let mut net = Net::full(20, Config::default());
    net.subscribe_all("t");
    net.heartbeats(3);
    for i in 0..20 {
        let m = net.routers[i].mesh_peers("t").len();
        assert!((5..=12).contains(&m), "node {i} mesh {m}");
    }
    for k in 0..5u8 {
        let mut rng = rng::from_seed([k; 32]);
        net.routers[k as usize].publish(&mut rng, net.now, "t", vec![k; 100]).unwrap();
    }
    net.settle();
    for i in 0..20 {
        let m = net.messages(i);
        let expect = if i < 5 { 4 } else { 5 };
        assert_eq!(m.len(), expect, "node {i} got each of the others' messages exactly once");
    }
    // Flood publishing reached every subscriber directly; forwards then only made duplicates.
    assert!(net.routers.iter().map(|r| r.stats().duplicates).sum::<u64>() > 0);
    assert_eq!(net.routers.iter().map(|r| r.stats().invalid_messages).sum::<u64>(), 0);
}

#[test]
fn gossipsub_router_reaches_peers_outside_the_publishers_reach_through_the_mesh_and_gossip() {
    // A line 0 – 1 – 2 – … – 7: each message must be forwarded hop by hop.
    let mut net = Net::new(8, Config::default());
    for i in 0..7 {
        net.link(i, i + 1, PeerKind::Meshsub11);
    }
    net.subscribe_all("t");
    net.heartbeats(2);
    net.routers[0].publish(&mut rng::from_seed([1; 32]), net.now, "t", b"x".to_vec()).unwrap();
    net.settle();
    for i in 1..8 {
        assert_eq!(net.messages(i).len(), 1, "node {i}");
        assert_eq!(net.messages(i)[0].data(), b"x");
    }
}

#[test]
fn gossipsub_router_fetches_a_missed_message_through_ihave_and_iwant() {
    let mut net = Net::new(2, Config::default());
    net.link(0, 1, PeerKind::Meshsub11);
    net.subscribe_all("t");
    // Node 1 prunes node 0 from its mesh and both back off: messages now only travel as gossip.
    net.routers[1].mesh.get_mut("t").unwrap().clear();
    net.routers[0].mesh.get_mut("t").unwrap().clear();
    let (a, b) = (net.ids[0].clone(), net.ids[1].clone());
    net.routers[0].set_backoff(net.now, "t", &b, Duration::from_secs(600));
    net.routers[1].set_backoff(net.now, "t", &a, Duration::from_secs(600));
    // Publish without flood publishing: the mesh is empty, so nothing is sent now.
    net.routers[0].cfg.flood_publish = false;
    net.routers[0].cfg.d_lazy = 6;
    let mut id = None;
    // Fanout is not used for a subscribed topic: the message waits in the cache; publish fails for want
    // of peers, so put it there as a received message would be.
    let msg = {
        let k = &net.keys[0];
        let unsigned = Message::new(Some(a.to_bytes()), b"late".to_vec(), Some(vec![0, 0, 0, 0, 0, 0, 0, 9]), "t".into(), None, None);
        let sig = k.sign(&unsigned.signed_bytes());
        Arc::new(unsigned.with_signature(sig, None))
    };
    let mid = MessageIdFn::FromSeqno.id(&msg);
    net.routers[0].mark_seen(net.now, mid.clone());
    net.routers[0].mcache_put(mid.clone(), msg);
    id.replace(mid);
    net.heartbeats(1);
    assert_eq!(net.messages(1).len(), 1, "gossip brought it");
    assert_eq!(net.routers[0].stats().ihave_sent, 1);
    assert_eq!(net.routers[1].stats().iwant_sent, 1);
    assert_eq!(net.routers[0].stats().iwant_served, 1);
    // Asking again and again is answered at most `gossip_retransmission` times.
    for _ in 0..5 {
        net.routers[0].handle_iwant(&b, vec![id.clone().unwrap()]);
    }
    assert_eq!(net.routers[0].stats().iwant_served, 3);
}

#[test]
fn gossipsub_router_sends_and_honours_idontwant_for_large_messages_to_v12_peers() {
    let mut net = Net::full(10, Config { flood_publish: false, ..Config::default() });
    net.subscribe_all("t");
    net.heartbeats(2);
    net.routers[0].publish(&mut rng::from_seed([1; 32]), net.now, "t", vec![0; 2000]).unwrap();
    net.settle();
    let sent: u64 = net.routers.iter().map(|r| r.stats().idontwant_sent).sum();
    let saved: u64 = net.routers.iter().map(|r| r.stats().idontwant_saved).sum();
    assert!(sent > 0 && saved > 0, "sent {sent} saved {saved}");
    for i in 1..10 {
        assert_eq!(net.messages(i).len(), 1);
    }
    // Small messages: none.
    let before = net.routers.iter().map(|r| r.stats().idontwant_sent).sum::<u64>();
    net.routers[0].publish(&mut rng::from_seed([2; 32]), net.now, "t", vec![0; 100]).unwrap();
    net.settle();
    assert_eq!(net.routers.iter().map(|r| r.stats().idontwant_sent).sum::<u64>(), before);
}

#[test]
fn gossipsub_router_duplicates_fall_with_idontwant() {
    let run = |threshold: usize| {
        let cfg = Config { idontwant_threshold: threshold, flood_publish: false, ..Config::default() };
        let mut net = Net::full(30, cfg);
        net.subscribe_all("t");
        net.heartbeats(3);
        for k in 0..10u8 {
            net.routers[k as usize].publish(&mut rng::from_seed([k; 32]), net.now, "t", vec![k; 4096]).unwrap();
            net.settle();
        }
        net.routers.iter().map(|r| r.stats().duplicates).sum::<u64>()
    };
    let (without, with) = (run(usize::MAX), run(1024));
    assert!(with < without, "duplicates with IDONTWANT {with}, without {without}");
}

#[test]
fn gossipsub_router_rejects_badly_signed_and_unsigned_messages() {
    let mut net = Net::new(2, Config::default());
    net.link(0, 1, PeerKind::Meshsub11);
    net.subscribe_all("t");
    let a = net.ids[0].clone();
    let bad = Message::new(Some(a.to_bytes()), b"x".to_vec(), Some(vec![1; 8]), "t".into(), Some(vec![0; 64]), None);
    let unsigned = Message::new(None, b"y".to_vec(), None, "t".into(), None, None);
    let (r, rng, now) = (&mut net.routers[1], &mut net.rng, net.now);
    r.handle_rpc(rng, now, &a, Rpc { publish: vec![bad, unsigned], ..Rpc::default() });
    assert_eq!(r.stats().invalid_messages, 2);
    assert!(r.poll_event().is_none());
    // StrictNoSign takes the unsigned one and refuses a signed one.
    let mut net = Net::new(2, Config { signing: Signing::StrictNoSign, message_id: MessageIdFn::ContentSha256, ..Config::default() });
    net.link(0, 1, PeerKind::Meshsub11);
    net.subscribe_all("t");
    net.routers[0].publish(&mut rng::from_seed([1; 32]), net.now, "t", b"anon".to_vec()).unwrap();
    net.settle();
    let m = net.messages(1);
    assert_eq!((m.len(), m[0].from.is_none()), (1, true));
}

#[test]
fn gossipsub_router_checks_every_signature_against_an_authors_key_decoded_once() {
    let mut net = Net::new(3, Config::default());
    net.link(0, 1, PeerKind::Meshsub11);
    net.link(2, 1, PeerKind::Meshsub11);
    net.subscribe_all("t");
    net.heartbeats(2);
    let (a, c) = (net.ids[0].clone(), net.ids[2].clone());
    net.routers[0].publish(&mut rng::from_seed([1; 32]), net.now, "t", b"one".to_vec()).unwrap();
    net.settle();
    assert_eq!(net.routers[1].author_keys.len(), 1);
    // The key is kept, and still every signature is checked: a forgery in a's name (relayed by c) is refused.
    let (r, rng, now) = (&mut net.routers[1], &mut net.rng, net.now);
    r.handle_rpc(rng, now, &c, Rpc { publish: vec![forged(&a, "t", 9)], ..Rpc::default() });
    assert_eq!(r.stats().invalid_messages, 1);
    net.routers[0].publish(&mut rng::from_seed([2; 32]), net.now, "t", b"two".to_vec()).unwrap();
    net.settle();
    let got: Vec<Vec<u8>> = net.messages(1).iter().map(|m| m.data().to_vec()).collect();
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!((net.routers[1].author_keys.len(), net.routers[1].stats().invalid_messages), (1, 1));
}

#[test]
fn gossipsub_router_floods_a_message_on_from_its_publishers_first_hop_only() {
    // A star: hub 1 with leaves 2..=15 (more than Dhi, so its mesh holds only some); publisher 0 hangs
    // off the hub, publisher 16 off leaf 2. The leaves hear only from the hub, at once (no heartbeat).
    let run = |cfg: Config| {
        let mut net = Net::new(17, cfg);
        for leaf in 2..=15 {
            net.link(1, leaf, PeerKind::Meshsub12);
        }
        net.link(0, 1, PeerKind::Meshsub12);
        net.link(16, 2, PeerKind::Meshsub12);
        net.subscribe_all("t");
        net.heartbeats(2);
        let hub_mesh = net.routers[1].mesh_peers("t").len();
        assert!(hub_mesh <= 12, "{hub_mesh}");
        let leaves = |net: &Net, b: u8| (3..=15).filter(|&i| net.messages(i).iter().any(|m| m.data()[0] == b)).count();
        // From the publisher straight to the hub: the hub is its first hop.
        net.routers[0].publish(&mut rng::from_seed([1; 32]), net.now, "t", vec![7; 100]).unwrap();
        net.settle();
        let first = leaves(&net, 7);
        // From leaf 2, which is 16's first hop, to the hub: the hub is a second hop.
        net.routers[16].publish(&mut rng::from_seed([2; 32]), net.now, "t", vec![8; 100]).unwrap();
        net.settle();
        (first, leaves(&net, 8), hub_mesh, net.routers[1].stats().first_hop_capped)
    };
    let (first, relayed, mesh, capped) = run(Config::default());
    assert_eq!(capped, 0, "13 leaves minus the mesh fit under the cap of 12");
    assert_eq!(first, 13, "the first hop floods every subscriber (hub mesh {mesh})");
    assert!(relayed < 13, "a second hop forwards to its mesh only: {relayed} (hub mesh {mesh})");
    let off = run(Config { flood_first_hop: 0, ..Config::default() });
    assert!(off.0 < 13, "without it, only the hub's mesh: {off:?}");
    // Past the size limit, and for a relayed message, the mesh alone.
    let big = run(Config { flood_first_hop: 50, ..Config::default() });
    assert!(big.0 < 13, "{big:?}");
    // A cap on the peers beyond the mesh: the hub floods to its mesh and 2 more, and counts it.
    let capped = run(Config { flood_first_hop_peers: 2, ..Config::default() });
    assert_eq!(capped.3, 1, "{capped:?}");
    assert!(capped.0 <= capped.2 + 2 && capped.0 < 13, "{capped:?}");
}

#[test]
fn gossipsub_router_caps_a_remote_prune_backoff_and_refuses_grafts_during_it() {
    let mut net = Net::new(2, Config::default());
    net.link(0, 1, PeerKind::Meshsub11);
    net.subscribe_all("t");
    let a = net.ids[0].clone();
    let (r, rng, now) = (&mut net.routers[1], &mut net.rng, net.now);
    let prune = Prune { topic: "t".into(), peers: vec![], backoff: Some(u64::MAX) };
    r.handle_rpc(rng, now, &a, Rpc { control: Control { prune: vec![prune], ..Control::default() }, ..Rpc::default() });
    let until = r.backoff[&("t".to_string(), a.clone())];
    assert_eq!(until, now + Duration::from_secs(3600), "capped at max_prune_backoff, no overflow");
    // A GRAFT from a peer we back off from is refused with a PRUNE.
    r.handle_rpc(rng, now, &a, Rpc { control: Control { graft: vec!["t".into()], ..Control::default() }, ..Rpc::default() });
    assert!(!r.mesh_peers("t").contains(&a));
    assert_eq!(r.stats().prunes_sent, 1);
    // After the heartbeat a peer cannot be grafted while backing off either.
    r.on_timeout(rng, now + Duration::from_secs(5));
    assert!(!r.mesh_peers("t").contains(&a));
}

#[test]
fn gossipsub_router_bounds_subscriptions_ihave_and_queues() {
    let cfg = Config { max_topics_per_peer: 3, max_queue_bytes: 10_000, ..Config::default() };
    let mut net = Net::new(2, cfg);
    net.link(0, 1, PeerKind::Meshsub11);
    let a = net.ids[0].clone();
    let (r, rng, now) = (&mut net.routers[1], &mut net.rng, net.now);
    let subs = (0..10).map(|i| SubOpt { subscribe: true, topic: format!("t{i}") }).collect();
    r.handle_rpc(rng, now, &a, Rpc { subscriptions: subs, ..Rpc::default() });
    assert_eq!(r.stats().subscriptions_ignored, 7);
    // IHAVE beyond 10 RPCs per heartbeat is ignored.
    r.subscribe(rng, now, "t0");
    for i in 0..12u32 {
        let ih = IHave { topic: "t0".into(), ids: vec![Arc::from(&i.to_be_bytes()[..])] };
        r.handle_rpc(rng, now, &a, Rpc { control: Control { ihave: vec![ih], ..Control::default() }, ..Rpc::default() });
    }
    assert_eq!((r.stats().iwant_sent, r.stats().ihave_ignored), (10, 2));
    // Messages beyond the queue cap are dropped and counted, not queued.
    while r.take_frames(&a, 1 << 20, true).is_some() {}
    for i in 0..5u8 {
        let _ = r.publish(rng, now, "t0", vec![i; 4000]);
    }
    assert_eq!(r.stats().dropped_messages, 3);
    assert!(r.queued(&a) <= 10_000);
}

#[test]
fn gossipsub_router_forwards_to_floodsub_peers_and_publishes_to_fanout() {
    let mut net = Net::new(3, Config { flood_publish: false, ..Config::default() });
    net.link(0, 1, PeerKind::Meshsub11);
    net.link(1, 2, PeerKind::Floodsub);
    net.routers[1].subscribe(&mut net.rng, net.now, "t");
    net.routers[2].subscribe(&mut net.rng, net.now, "t");
    net.settle();
    // Node 0 is not subscribed: it publishes to fanout (node 1), which forwards to floodsub node 2.
    net.routers[0].publish(&mut rng::from_seed([1; 32]), net.now, "t", b"f".to_vec()).unwrap();
    net.settle();
    assert_eq!(net.messages(1).len(), 1);
    assert_eq!(net.messages(2).len(), 1);
    assert_eq!(net.routers[0].fanout["t"].peers.len(), 1);
    // The fanout is forgotten a TTL after the last publish.
    net.heartbeats(61);
    assert!(net.routers[0].fanout.is_empty());
}

// ---------------- peer scoring ----------------

fn forged(author: &PeerId, topic: &str, seq: u8) -> Message {
    Message::new(Some(author.to_bytes()), b"x".to_vec(), Some(vec![seq; 8]), topic.into(), Some(vec![0; 64]), None)
}

#[test]
fn gossipsub_score_graylists_a_sender_of_invalid_messages_prunes_it_and_forgives_it_later() {
    let mut net = Net::full(3, Config::default());
    net.subscribe_all("t");
    net.heartbeats(2);
    let bad = net.ids[1].clone();
    assert!(net.routers[0].mesh_peers("t").contains(&bad));
    let (r, rng, now) = (&mut net.routers[0], &mut net.rng, net.now);
    r.handle_rpc(rng, now, &bad, Rpc { publish: vec![forged(&bad, "t", 1)], ..Rpc::default() });
    assert!(r.peer_score(&bad, now) <= -80.0, "{}", r.peer_score(&bad, now));
    // Graylisted: its next RPC is not even read.
    r.handle_rpc(rng, now, &bad, Rpc { subscriptions: vec![SubOpt { subscribe: true, topic: "u".into() }], ..Rpc::default() });
    assert_eq!(r.stats().graylisted_rpcs, 1);
    assert!(r.peers(Some("u")).is_empty());
    // The heartbeat takes it out of the mesh; the honest peer stays.
    r.on_timeout(rng, now + Duration::from_secs(1));
    assert!(!r.mesh_peers("t").contains(&bad) && r.mesh_peers("t").contains(&net.ids[2]));
    assert!(r.stats().pruned_for_score >= 1);
    // P4 decays (×0.9 a second): within a minute the peer is back to neutral.
    let later = now + Duration::from_secs(60);
    for s in 2..=60 {
        r.on_timeout(rng, now + Duration::from_secs(s));
    }
    assert!(r.peer_score(&bad, later) > -1.0, "{}", r.peer_score(&bad, later));
}

#[test]
fn gossipsub_score_keeps_a_bad_score_across_a_reconnect() {
    let mut net = Net::full(2, Config::default());
    net.subscribe_all("t");
    let bad = net.ids[1].clone();
    let (r, rng, now) = (&mut net.routers[0], &mut net.rng, net.now);
    r.handle_rpc(rng, now, &bad, Rpc { publish: vec![forged(&bad, "t", 1)], ..Rpc::default() });
    r.remove_peer(&bad, now);
    r.add_peer(bad.clone(), PeerKind::Meshsub12, false, None, now);
    assert!(r.peer_score(&bad, now) < -50.0);
}

#[test]
fn gossipsub_score_penalizes_grafts_during_a_backoff_until_gossip_stops() {
    let mut net = Net::full(2, Config::default());
    net.subscribe_all("t");
    let b = net.ids[1].clone();
    let (r, rng, now) = (&mut net.routers[0], &mut net.rng, net.now);
    let prune = Prune { topic: "t".into(), peers: vec![], backoff: Some(60) };
    r.handle_rpc(rng, now, &b, Rpc { control: Control { prune: vec![prune], ..Control::default() }, ..Rpc::default() });
    for _ in 0..3 {
        r.handle_rpc(rng, now, &b, Rpc { control: Control { graft: vec!["t".into()], ..Control::default() }, ..Rpc::default() });
    }
    // P7 = 3 (above the threshold of 1): (3 − 1)² × −10.
    assert!((r.peer_score(&b, now) - -40.0).abs() < 1.0, "{}", r.peer_score(&b, now));
    let ih = IHave { topic: "t".into(), ids: vec![Arc::from(&b"new"[..])] };
    r.handle_rpc(rng, now, &b, Rpc { control: Control { ihave: vec![ih], ..Control::default() }, ..Rpc::default() });
    assert_eq!(r.stats().iwant_sent, 0, "no gossip with a peer below the gossip threshold");
}

#[test]
fn gossipsub_score_costs_broken_iwant_promises() {
    let mut net = Net::full(2, Config::default());
    net.subscribe_all("t");
    let b = net.ids[1].clone();
    let (r, rng, mut now) = (&mut net.routers[0], &mut net.rng, net.now);
    for i in 0..4u8 {
        let ih = IHave { topic: "t".into(), ids: vec![Arc::from(&[i; 4][..])] };
        r.handle_rpc(rng, now, &b, Rpc { control: Control { ihave: vec![ih], ..Control::default() }, ..Rpc::default() });
        now = now + Duration::from_secs(4);
        r.on_timeout(rng, now);
    }
    // Three broken promises take the peer below the gossip threshold: its fourth IHAVE is ignored.
    assert_eq!((r.stats().iwant_sent, r.stats().ihave_ignored), (3, 1));
    assert!(r.peer_score(&b, now) < -10.0, "{}", r.peer_score(&b, now));
}

#[test]
fn gossipsub_score_counts_crowds_on_one_public_ip_but_not_on_loopback() {
    let cfg = Config::default();
    let mut rng = rng::from_seed([3; 32]);
    let me = Keypair::generate(KeyType::Ed25519, &mut rng);
    let mut r = Router::new(cfg, me.peer_id(), Some(me), Instant::ZERO);
    let public = std::net::IpAddr::from([5, 5, 5, 5]);
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    let crowd: Vec<PeerId> = (0..8).map(|_| PeerId::random(&mut rng)).collect();
    let locals: Vec<PeerId> = (0..8).map(|_| PeerId::random(&mut rng)).collect();
    for p in &crowd {
        r.add_peer(p.clone(), PeerKind::Meshsub11, false, Some(public), Instant::ZERO);
    }
    for p in &locals {
        r.add_peer(p.clone(), PeerKind::Meshsub11, false, Some(local), Instant::ZERO);
    }
    // 8 on one IP, 5 allowed: (8 − 5)² × −10.
    assert_eq!(r.peer_score(&crowd[0], Instant::ZERO), -90.0);
    assert_eq!(r.peer_score(&locals[0], Instant::ZERO), 0.0);
}

#[test]
fn gossipsub_score_rewards_first_deliveries_and_mesh_time() {
    let mut net = Net::full(3, Config { flood_publish: false, ..Config::default() });
    net.subscribe_all("t");
    net.heartbeats(10);
    for k in 0..5u8 {
        net.routers[1].publish(&mut rng::from_seed([k; 32]), net.now, "t", vec![k; 10]).unwrap();
        net.settle();
    }
    let (a, b) = (&net.routers[0], &net.ids[1]);
    assert!(a.peer_score(b, net.now) > 1.0, "{}", a.peer_score(b, net.now));
}

#[test]
fn gossipsub_router_an_idontwant_takes_back_a_queued_copy_and_large_messages_wait_for_a_turn() {
    let mut net = Net::new(3, Config { stagger_threshold: 2048, ..Config::default() });
    net.link(0, 1, PeerKind::Meshsub12);
    net.link(0, 2, PeerKind::Meshsub12);
    net.subscribe_all("t");
    net.heartbeats(2);
    let (b, c) = (net.ids[1].clone(), net.ids[2].clone());
    let (r, rng, now) = (&mut net.routers[0], &mut net.rng, net.now);
    let small = r.publish(rng, now, "t", vec![1; 100]).unwrap();
    let large = r.publish(rng, now, "t", vec![2; 4000]).unwrap();
    let small2 = r.publish(rng, now, "t", vec![3; 100]).unwrap();
    let ids =
        |f: &[u8]| -> Vec<MessageId> { rpcs(f).iter().flat_map(|r| r.publish.iter().map(|m| MessageIdFn::FromSeqno.id(m))).collect() };
    // Without a turn, the small messages around the large one go, and the large one waits in front.
    let (f, is_large) = r.take_frames(&b, 1 << 20, false).unwrap();
    assert!(!is_large);
    assert_eq!(ids(&f), vec![small.clone(), small2.clone()]);
    assert!(r.take_frames(&b, 1 << 20, false).is_none());
    // With a turn it travels alone.
    let (f, is_large) = r.take_frames(&b, 1 << 20, true).unwrap();
    assert!(is_large);
    assert_eq!(ids(&f), vec![large.clone()]);
    assert_eq!(r.queued(&b), 0);
    // An IDONTWANT from c before its copy left takes the copy back: counted, not sent.
    let sent = r.stats().messages_sent;
    let idw = Rpc { control: Control { idontwant: vec![large.clone()], ..Control::default() }, ..Rpc::default() };
    r.handle_rpc(rng, now, &c, idw);
    assert_eq!(r.stats().idontwant_cancelled, 1);
    assert_eq!(r.stats().messages_sent, sent - 1);
    let (f, _) = r.take_frames(&c, 1 << 20, true).unwrap();
    assert_eq!(ids(&f), vec![small, small2]);
    assert!(r.take_frames(&c, 1 << 20, true).is_none());
    assert_eq!(r.queued(&c), 0);
}

/// The RPCs in a batch of frames.
fn rpcs(f: &[u8]) -> Vec<Rpc> {
    let mut v = Vec::new();
    let mut at = 0;
    while let Some((rpc, used)) = wire::decode(&f[at..], &Limits::default()).unwrap() {
        v.push(rpc);
        at += used;
    }
    assert_eq!(at, f.len(), "whole frames only");
    v
}

#[test]
fn gossipsub_router_v13_peers_send_extensions_first_take_them_once_and_answer_the_test_extension() {
    let mut net = Net::new(3, Config { test_extension: true, ..Config::default() });
    net.link(0, 1, PeerKind::Meshsub13);
    net.link(0, 2, PeerKind::Meshsub12);
    let (b, c) = (net.ids[1].clone(), net.ids[2].clone());
    // The first frame to a v1.3 peer is the extensions message; a v1.2 peer gets none.
    let (f, _) = net.routers[0].take_frames(&b, 1 << 20, true).unwrap();
    assert_eq!(rpcs(&f)[0].control.extensions, Some(Extensions { large_messages: true, test: true }));
    assert!(net.routers[0].take_frames(&c, 1 << 20, true).is_none());
    // Put it back the way it came and let both sides talk.
    net.routers[1].handle_rpc(&mut net.rng, net.now, &net.ids[0].clone(), rpcs(&f).remove(0));
    net.settle();
    for (x, y) in [(0, 1), (1, 0)] {
        let s = net.routers[x].peer_stats(&net.ids[y]).unwrap();
        assert_eq!(s.extensions, Some(Extensions { large_messages: true, test: true }), "{x} of {y}");
        assert!(s.test_extension_received, "{x} got the test extension's message from {y}");
        assert_eq!(net.routers[x].stats().test_extensions_received, 1, "exactly one");
    }
    assert_eq!(net.routers[0].peer_stats(&c).unwrap().extensions, None);
    // A second extensions message is ignored and counted; the first stands.
    let again = Rpc { control: Control { extensions: Some(Extensions::default()), ..Control::default() }, ..Rpc::default() };
    net.routers[0].handle_rpc(&mut net.rng, net.now, &b, again.clone());
    assert_eq!(net.routers[0].stats().extensions_repeated, 1);
    assert_eq!(net.routers[0].peer_stats(&b).unwrap().extensions, Some(Extensions { large_messages: true, test: true }));
    // From a v1.2 peer it is not taken either.
    net.routers[0].handle_rpc(&mut net.rng, net.now, &c, again);
    assert_eq!(net.routers[0].stats().extensions_repeated, 2);
    assert_eq!(net.routers[0].peer_stats(&c).unwrap().extensions, None);
}

#[test]
fn gossipsub_router_a_preamble_goes_ahead_of_a_large_copy_and_imreceiving_spares_the_copy_to_its_sender() {
    // A triangle of v1.3 peers. 0 publishes a large message; 1 hears its PREAMBLE first and tells 2
    // IMRECEIVING, so 2, which gets the message from 0 as well, does not send it on to 1.
    let mut net = Net::new(3, Config { stagger_threshold: 2048, preamble_threshold: 2048, ..Config::default() });
    net.link(0, 1, PeerKind::Meshsub13);
    net.link(0, 2, PeerKind::Meshsub13);
    net.link(1, 2, PeerKind::Meshsub13);
    net.subscribe_all("t");
    net.heartbeats(2);
    let ids = net.ids.clone();
    let id = net.routers[0].publish(&mut net.rng, net.now, "t", vec![7; 4000]).unwrap();
    let (f, large) = net.routers[0].take_frames(&ids[1], 1 << 20, true).unwrap();
    assert!(large);
    let mut to1 = rpcs(&f);
    assert_eq!(to1.len(), 2, "PREAMBLE, then the message");
    assert_eq!(to1[0].control.preamble, vec![Preamble { id: id.clone(), size: 4000, topic: "t".into() }]);
    assert!(to1[0].publish.is_empty() && to1[1].publish.len() == 1);
    assert_eq!(net.routers[0].stats().preambles_sent, 1);
    // 1 reads the PREAMBLE (the message's bytes still on their way): IMRECEIVING to 2.
    let msg = to1.pop().unwrap();
    net.routers[1].handle_rpc(&mut net.rng, net.now, &ids[0], to1.pop().unwrap());
    assert_eq!(net.routers[1].stats().imreceiving_sent, 1);
    let r = net.take(1, 2);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].control.imreceiving, vec![id.clone()]);
    net.hand(1, 2, r);
    assert_eq!(net.routers[2].stats().imreceiving_received, 1);
    // 2 gets its own copy from 0 and forwards it to nobody: 0 is its source, 1 is receiving it.
    let r = net.take(0, 2);
    assert!(!r.is_empty());
    net.hand(0, 2, r);
    assert_eq!(net.routers[2].stats().idontwant_saved, 1, "the forward to 1 left out");
    let r = net.take(2, 1);
    assert!(r.iter().all(|r| r.publish.is_empty()), "only its IDONTWANT goes to 1");
    assert!(r.iter().any(|r| r.control.idontwant == vec![id.clone()]));
    net.hand(2, 1, r);
    // 1's message arrives; nobody got a duplicate of it.
    net.routers[1].handle_rpc(&mut net.rng, net.now, &ids[0], msg);
    net.settle();
    for i in 1..3 {
        assert_eq!(net.messages(i).len(), 1);
        assert_eq!(net.routers[i].stats().duplicates, 0, "node {i}");
    }
    // Delivered within the wait: no penalty.
    net.heartbeats(3);
    assert_eq!(net.routers.iter().map(|r| r.stats().preambles_broken).sum::<u64>(), 0);
}

#[test]
fn gossipsub_router_an_announced_message_defers_iwant_until_the_wait_is_over_and_a_broken_promise_is_penalized() {
    let mut net = Net::new(3, Config { preamble_threshold: 2048, ..Config::default() });
    net.link(0, 1, PeerKind::Meshsub13);
    net.link(0, 2, PeerKind::Meshsub13);
    net.subscribe_all("t");
    net.heartbeats(2);
    let ids = net.ids.clone();
    let id: MessageId = Arc::from(&b"never-sent"[..]);
    let (id2, id3): (MessageId, MessageId) = (Arc::from(&b"nor this"[..]), Arc::from(&b"nor that"[..]));
    let pre = |id: &MessageId| Preamble { id: id.clone(), size: 4000, topic: "t".into() };
    let pre = Rpc { control: Control { preamble: vec![pre(&id), pre(&id2), pre(&id3)], ..Control::default() }, ..Rpc::default() };
    let ihave = Rpc {
        control: Control { ihave: vec![IHave { topic: "t".into(), ids: vec![id.clone()] }], ..Control::default() },
        ..Rpc::default()
    };
    let (r, rng, now) = (&mut net.routers[0], &mut net.rng, net.now);
    r.handle_rpc(rng, now, &ids[1], pre);
    assert_eq!(r.stats().imreceiving_sent, 3, "to 2");
    // 2 offers it meanwhile: no IWANT yet.
    r.handle_rpc(rng, now, &ids[2], ihave.clone());
    assert_eq!((r.stats().iwant_deferred, r.stats().iwant_sent), (1, 0));
    // The wait (1 s + 4 ms) runs out: 1 is penalized for each of its three, and 2's next offer is
    // taken up.
    let later = now + Duration::from_secs(2);
    r.on_timeout(rng, later);
    assert_eq!(r.stats().preambles_broken, 3);
    assert!(r.peer_score(&ids[1], later) < 0.0, "score {}", r.peer_score(&ids[1], later));
    r.handle_rpc(rng, later, &ids[2], ihave);
    assert_eq!(r.stats().iwant_sent, 1);
    // PREAMBLEs from a peer outside the mesh, or past the per-peer cap, are ignored.
    let outsider = Rpc {
        control: Control { preamble: vec![Preamble { id: id.clone(), size: 1, topic: "other".into() }], ..Control::default() },
        ..Rpc::default()
    };
    r.handle_rpc(rng, later, &ids[2], outsider);
    assert_eq!(r.stats().preambles_ignored, 1);
    let many = (0..20u8).map(|i| Preamble { id: Arc::from(&[i][..]), size: 4000, topic: "t".into() }).collect();
    r.handle_rpc(rng, later, &ids[2], Rpc { control: Control { preamble: many, ..Control::default() }, ..Rpc::default() });
    assert_eq!(r.stats().preambles_ignored, 1 + 4, "16 taken of 20 (the earlier three are gone)");
}

/// `Config::d_near`: 30 routers all connected, and node i's round trip to node j is |i − j| × 10 ms
/// (a line). With the latency-aware mesh each node's mesh holds its nearest peers and the mesh's
/// links are short on average; with `d_near` = 0 (the spec's random mesh) they are not. Either way
/// every message reaches every node.
#[test]
fn gossipsub_router_a_latency_aware_mesh_takes_the_nearest_peers_and_still_reaches_everyone() {
    let n = 30;
    let mut spans = Vec::new();
    for d_near in [0, 4] {
        let mut net = Net::full(n, Config { d_near, ..Config::default() });
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let rtt = Duration::from_millis(10 * i.abs_diff(j) as u64);
                    let id = net.ids[j].clone();
                    net.routers[i].set_rtt(&id, Some(rtt));
                }
            }
        }
        net.subscribe_all("t");
        net.heartbeats(5);
        let mut span = 0;
        let mut links = 0;
        for i in 0..n {
            let mesh = net.routers[i].mesh_peers("t");
            assert!((5..=12).contains(&mesh.len()), "node {i}: mesh {}", mesh.len());
            let idx: Vec<usize> = mesh.iter().map(|p| net.ids.iter().position(|q| q == p).expect("known")).collect();
            span += idx.iter().map(|j| i.abs_diff(*j)).sum::<usize>();
            links += idx.len();
            if d_near > 0 {
                // The two nearest on each side (or four on one side at the ends) are in the mesh.
                for j in (i.saturating_sub(2)..=(i + 2).min(n - 1)).filter(|j| *j != i) {
                    assert!(idx.contains(&j), "d_near {d_near}: node {i}'s mesh {idx:?} lacks its near peer {j}");
                }
                // And not only them: the random places are still there.
                assert!(idx.iter().any(|j| i.abs_diff(*j) > 4), "node {i}'s mesh {idx:?} is all near");
            }
        }
        spans.push(span as f64 / links as f64);
        for k in 0..5u8 {
            net.routers[(k as usize * 7) % n].publish(&mut net.rng, net.now, "t", vec![k; 100]).unwrap();
            net.settle();
        }
        for i in 0..n {
            let from_others = (0..5).filter(|k| (k * 7) % n != i).count();
            assert_eq!(net.messages(i).len(), from_others, "d_near {d_near}: node {i}");
        }
    }
    // Mean distance along a mesh link: 9.2 peers apart at random, 6.3 near (inbound grafts from
    // others' random places stay until the mesh passes `d_hi`).
    assert!(spans[1] < spans[0] * 0.75, "mean mesh span: random {:.1}, near {:.1}", spans[0], spans[1]);
}

/// Peer exchange: a PRUNE's offers are taken (valid ids we are not connected to, not us, at most
/// `prune_peers`, each once) from a peer whose score reaches `accept_px`, and ignored from one below
/// it; the records travel with them.
#[test]
fn gossipsub_router_takes_peer_exchange_only_from_a_well_scored_peer() {
    for scoring in [false, true] {
        let cfg = Config { score: scoring.then(crate::gossipsub::score::Params::default), prune_peers: 3, ..Config::default() };
        let mut net = Net::new(3, cfg);
        net.link(0, 1, PeerKind::Meshsub11);
        net.link(0, 2, PeerKind::Meshsub11);
        net.subscribe_all("t");
        let mut rng = rng::from_seed([9; 32]);
        let fresh: Vec<PeerId> = (0..4).map(|_| Keypair::generate(KeyType::Ed25519, &mut rng).peer_id()).collect();
        let px = vec![
            PxPeer { id: fresh[0].to_bytes(), record: Some(vec![1, 2, 3]) },
            PxPeer { id: net.ids[2].to_bytes(), record: None }, // already connected
            PxPeer { id: vec![0xff; 3], record: None },         // not a peer id
            PxPeer { id: fresh[1].to_bytes(), record: None },   // past prune_peers (3)
        ];
        let from = net.ids[1].clone();
        let (r, rng, now) = (&mut net.routers[0], &mut net.rng, net.now);
        let prune = Prune { topic: "t".into(), peers: px, backoff: Some(60) };
        r.handle_rpc(rng, now, &from, Rpc { control: Control { prune: vec![prune], ..Control::default() }, ..Rpc::default() });
        let taken = r.take_px();
        if scoring {
            // A new peer's score is 0, below the default accept_px (10): no offer is taken.
            assert!(taken.is_empty());
            assert_eq!(r.stats().px_ignored_score, 1);
        } else {
            assert_eq!(taken, vec![(fresh[0].clone(), Some(vec![1, 2, 3]))]);
            assert_eq!((r.stats().px_taken, r.stats().px_skipped), (1, 2));
            assert!(r.take_px().is_empty(), "taken once");
        }
    }
}

/// The peers a PRUNE offers are chosen at random among the topic's other subscribers of non-negative
/// score (go's rule): not the pruned peer, not a peer scoring below 0, at most `prune_peers`, and not
/// always the same ones (an attacker cannot predict or steer whom a node offers).
#[test]
fn gossipsub_router_offers_random_well_scored_peers_in_its_prunes() {
    let cfg = Config { score: Some(crate::gossipsub::score::Params::default()), d_hi: 2, prune_peers: 3, ..Config::default() };
    let n = 14;
    let mut net = Net::new(n, cfg);
    // Every peer dialed node 0: their GRAFTs are inbound, refused with PX once the mesh holds d_hi.
    for k in 1..n {
        net.link(k, 0, PeerKind::Meshsub11);
    }
    net.subscribe_all("t");
    let shunned = net.ids[n - 1].clone();
    net.routers[0].set_app_score(&shunned, -100.0);
    let mut offered: BTreeSet<Vec<Vec<u8>>> = BTreeSet::new();
    for k in 1..n - 1 {
        let from = net.ids[k].clone();
        let (r, rng, now) = (&mut net.routers[0], &mut net.rng, net.now);
        let full = r.mesh_peers("t").len() >= 2;
        r.handle_rpc(rng, now, &from, Rpc { control: Control { graft: vec!["t".into()], ..Control::default() }, ..Rpc::default() });
        let prunes: Vec<Prune> = net.take(0, k).into_iter().flat_map(|rpc| rpc.control.prune).collect();
        if !full {
            assert!(prunes.is_empty(), "peer {k}: taken into a mesh below d_hi");
            continue;
        }
        assert_eq!(prunes.len(), 1, "peer {k}: refused with one PRUNE");
        let mut ids: Vec<Vec<u8>> = prunes[0].peers.iter().map(|p| p.id.clone()).collect();
        assert_eq!(ids.len(), 3, "prune_peers");
        assert!(!ids.contains(&from.to_bytes()) && !ids.contains(&shunned.to_bytes()), "neither the pruned nor a negative scorer");
        ids.sort();
        offered.insert(ids);
    }
    assert!(net.routers[0].stats().prunes_sent >= 9, "grafts past d_hi refused");
    // In id order (the old rule) there would be at most 4 distinct sets; at random nearly every one differs.
    assert!(offered.len() >= 6, "offers vary: {} distinct sets", offered.len());
}
