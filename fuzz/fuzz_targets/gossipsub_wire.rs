#![no_main]
//! Pubsub RPC decoder: never panic; every limit holds; what decodes re-encodes and decodes to the same
//! value.
use hyphae_core::gossipsub::wire::{self, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let l = Limits { max_rpc_len: 4096, max_subscriptions: 8, max_messages: 8, max_message_ids: 16, max_control_entries: 8, max_px_peers: 4, max_px_record_len: 128, max_topic_len: 64, max_id_len: 64 };
    if let Ok(Some((r, used))) = wire::decode(data, &l) {
        assert!(used <= data.len() && used <= l.max_rpc_len + 3);
        assert!(r.subscriptions.len() <= l.max_subscriptions && r.publish.len() <= l.max_messages);
        let c = &r.control;
        let ids = c.ihave.iter().map(|h| h.ids.len()).sum::<usize>() + c.iwant.len() + c.idontwant.len();
        assert!(ids <= l.max_message_ids);
        assert!(c.ihave.len() + c.graft.len() + c.prune.len() <= l.max_control_entries);
        assert!(c.prune.iter().all(|p| p.peers.len() <= l.max_px_peers));
        assert!(c.prune.iter().flat_map(|p| &p.peers).all(|x| x.record.as_ref().is_none_or(|r| r.len() <= l.max_px_record_len)));
        assert!(r.publish.iter().all(|m| m.topic.len() <= l.max_topic_len));
        let mut b = Vec::new();
        wire::encode(&r, &mut b);
        let (again, _) = wire::decode(&b, &Limits { max_rpc_len: 1 << 20, ..l.clone() }).unwrap().unwrap();
        // Subscriptions, control and each message's own bytes survive the trip.
        assert_eq!(again.subscriptions, r.subscriptions);
        assert_eq!(again.control, r.control);
        assert_eq!(again.publish.iter().map(|m| m.raw.clone()).collect::<Vec<_>>(), r.publish.iter().map(|m| m.raw.clone()).collect::<Vec<_>>());
    }
});
