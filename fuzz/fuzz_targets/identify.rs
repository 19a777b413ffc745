#![no_main]
//! Identify message decoder: never panic; limits hold.
use hyphae_core::identify::{Info, MAX_LISTEN_ADDRS, MAX_PROTOCOLS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(i) = Info::decode_all(data) {
        assert!(i.listen_addrs.len() <= MAX_LISTEN_ADDRS && i.protocols.len() <= MAX_PROTOCOLS);
        let _ = Info::decode_all(&i.encode()).unwrap();
    }
});
