#![no_main]
//! AutoNAT v1 message decoder (generated protobuf code + validation): never panic; limits hold; what
//! decodes re-encodes and decodes to the same value.
use hyphae_core::autonat::wire::{self, Limits, Msg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let l = Limits::default();
    if let Ok(Some((m, used))) = wire::decode(data, &l) {
        assert!(used <= data.len());
        if let Msg::Dial { addrs, .. } = &m {
            assert!(addrs.len() <= l.max_addrs);
        }
        let mut b = Vec::new();
        wire::encode(&m, &mut b);
        assert_eq!(wire::decode(&b, &l).unwrap().unwrap().0, m);
    }
});
