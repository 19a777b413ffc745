#![no_main]
//! Kademlia message decoder (generated protobuf code + validation): never panic; limits hold; what
//! decodes re-encodes and decodes to the same value.
use hyphae_core::kad::wire::{self, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let l = Limits::default();
    if let Ok(Some((m, used))) = wire::decode(data, &l) {
        assert!(used <= data.len());
        assert!(m.closer.len() <= l.max_peers && m.providers.len() <= l.max_peers);
        assert!(m.key.len() <= l.max_key_len);
        assert!(m.record.as_ref().is_none_or(|r| r.value.len() <= l.max_record_len));
        assert!(m.closer.iter().chain(&m.providers).all(|p| p.addrs.len() <= l.max_addrs_per_peer));
        let mut b = Vec::new();
        wire::encode(&m, &mut b);
        assert_eq!(wire::decode(&b, &l).unwrap().unwrap().0, m);
    }
});
