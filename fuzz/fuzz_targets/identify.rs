#![no_main]
//! Identify message decoder (generated protobuf code + validation): never panic; limits hold; what
//! decodes re-encodes and decodes to the same value.
use hyphae_core::identify::{wire, Info, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let l = Limits::default();
    if let Ok(Some((m, used))) = wire::decode(data, &l) {
        assert!(used <= data.len());
        assert_eq!(wire::decode(&m.encode(), &l).unwrap().unwrap().0, m);
    }
    if let Ok(i) = Info::decode_all(data, &l) {
        assert!(i.listen_addrs.len() <= l.max_listen_addrs && i.protocols.len() <= l.max_protocols);
        assert_eq!(Info::decode_all(&i.encode(), &l).unwrap(), i);
    }
});
