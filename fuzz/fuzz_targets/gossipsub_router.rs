#![no_main]
//! The gossipsub router fed arbitrary RPCs (raw bytes and well-formed ones: subscriptions, GRAFT, PRUNE
//! with any backoff, IHAVE, IWANT, IDONTWANT, signed and forged messages) from four peers, with local
//! subscribes, publishes, heartbeats and peers coming and going: never panic; queues, caches, backoffs
//! and IDONTWANT state stay within the configured limits.
use hyphae_core::gossipsub::wire::{self, Control, IHave, Message, Prune, Rpc, SubOpt};
use hyphae_core::gossipsub::{Config, PeerKind, Router};
use hyphae_core::{rng, Duration, Instant, KeyType, Keypair};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct Input<'a>(&'a [u8]);
impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        *b
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

fn keys() -> &'static [Keypair] {
    static K: OnceLock<Vec<Keypair>> = OnceLock::new();
    K.get_or_init(|| {
        let mut r = rng::from_seed([5; 32]);
        (0..5).map(|_| Keypair::generate(KeyType::Ed25519, &mut r)).collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let cfg = Config {
        max_queue_bytes: 16 * 1024,
        max_gossip_queue_bytes: 4 * 1024,
        max_seen: 64,
        max_cache_bytes: 8 * 1024,
        max_topics_per_peer: 3,
        max_idontwant_per_heartbeat: 8,
        max_ihave_length: 16,
        ..Config::default()
    };
    let (qmax, gmax, seen_max, cache_max) = (cfg.max_queue_bytes, cfg.max_gossip_queue_bytes, cfg.max_seen, cfg.max_cache_bytes);
    let dw_max = 8 * (cfg.idontwant_heartbeats as usize + 1);
    let me = keys[0].peer_id();
    let mut r = Router::new(cfg, me, Some(keys[0].clone()), Instant::ZERO);
    let mut rng = rng::from_seed([1; 32]);
    let mut now = Instant::ZERO;
    let peers: Vec<_> = keys[1..].iter().map(Keypair::peer_id).collect();
    let topics = ["a", "b", "c", "d"];
    let kinds = [PeerKind::Floodsub, PeerKind::Meshsub10, PeerKind::Meshsub11, PeerKind::Meshsub12, PeerKind::Meshsub13];
    let mut inp = Input(data);
    while !inp.0.is_empty() {
        let op = inp.byte();
        let k = usize::from(inp.byte()) % peers.len();
        let peer = &peers[k];
        let topic = topics[usize::from(inp.byte()) % topics.len()].to_string();
        let id = |inp: &mut Input| -> wire::MessageId { Arc::from(inp.bytes(usize::from(inp.0.first().copied().unwrap_or(0) % 48))) };
        let rpc = match op % 14 {
            0 => {
                let n = usize::from(inp.byte());
                let raw = inp.bytes(n);
                let mut f = Vec::new();
                hyphae_core::varint::encode_frame(&raw, &mut f);
                wire::decode(&f, &wire::Limits::default()).ok().flatten().map(|(r, _)| r)
            }
            1 => Some(Rpc { subscriptions: vec![SubOpt { subscribe: inp.byte() % 2 == 0, topic }], ..Rpc::default() }),
            2 => Some(Rpc { control: Control { graft: vec![topic], ..Control::default() }, ..Rpc::default() }),
            3 => {
                let b = u64::from_le_bytes(inp.bytes(8).try_into().unwrap_or([0xff; 8]));
                let px = (0..inp.byte() % 4).map(|i| wire::PxPeer { id: vec![i; 10], record: (i % 2 == 1).then(|| vec![i; 20]) }).collect();
                Some(Rpc { control: Control { prune: vec![Prune { topic, peers: px, backoff: (b % 3 != 0).then_some(b) }], ..Control::default() }, ..Rpc::default() })
            }
            4 => {
                let ids = (0..inp.byte() % 20).map(|_| id(&mut inp)).collect();
                Some(Rpc { control: Control { ihave: vec![IHave { topic, ids }], ..Control::default() }, ..Rpc::default() })
            }
            5 => Some(Rpc { control: Control { iwant: (0..inp.byte() % 20).map(|_| id(&mut inp)).collect(), ..Control::default() }, ..Rpc::default() }),
            6 => Some(Rpc { control: Control { idontwant: (0..inp.byte() % 20).map(|_| id(&mut inp)).collect(), ..Control::default() }, ..Rpc::default() }),
            7 => {
                // A message signed by its author (a peer), or forged.
                let author = &keys[1 + usize::from(inp.byte()) % 4];
                let n = usize::from(inp.byte()) * 8;
                let data = vec![inp.byte(); n];
                let seqno = inp.bytes(8);
                let u = Message::new(Some(author.peer_id().to_bytes()), data, Some(seqno), topic, None, None);
                let sig = if inp.byte() % 4 == 0 { vec![0; 64] } else { author.sign(&u.signed_bytes()) };
                Some(Rpc { publish: vec![u.with_signature(sig, None)], ..Rpc::default() })
            }
            8 => {
                r.subscribe(&mut rng, now, &topic);
                None
            }
            9 => {
                r.unsubscribe(now, &topic);
                None
            }
            10 => {
                let n = usize::from(inp.byte()) * 16;
                let _ = r.publish(&mut rng, now, &topic, vec![7; n]);
                None
            }
            11 => {
                now = now + Duration::from_millis(u64::from(inp.byte()) * 50);
                r.on_timeout(&mut rng, now);
                None
            }
            12 => {
                if inp.byte() % 3 == 0 {
                    r.remove_peer(peer, now);
                } else {
                    let ip = std::net::IpAddr::from([5, 5, 5, inp.byte() % 3]);
                    r.add_peer(peer.clone(), kinds[usize::from(inp.byte()) % kinds.len()], inp.byte() % 2 == 0, Some(ip), now);
                }
                None
            }
            _ => {
                // The peer's stream takes some of what is queued.
                let _ = r.take_frames(peer, usize::from(inp.byte()) * 64, inp.byte() & 1 == 0);
                None
            }
        };
        if let Some(rpc) = rpc {
            r.handle_rpc(&mut rng, now, peer, rpc);
        }
        while r.poll_event().is_some() {}
        for p in &peers {
            assert!(r.queued(p) <= qmax + gmax, "queue over its caps");
            assert!(r.dont_want_len(p) <= dw_max, "IDONTWANT state over its cap");
        }
        let (seen, cached) = r.cache_sizes();
        assert!(seen <= seen_max);
        assert!(cached <= cache_max);
        assert!(r.backoffs() <= topics.len() * peers.len());
        for p in &peers {
            assert!(r.peer_score(p, now).is_finite());
        }
    }
});
