#![no_main]
//! Noise handshake payload decoder: never panic; what decodes round-trips.
use hyphae_core::noise::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Payload::decode(data) {
        assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
    }
});
