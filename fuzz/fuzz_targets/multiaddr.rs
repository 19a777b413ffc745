#![no_main]
//! Binary and text multiaddr decoders: never panic; whatever decodes re-encodes to itself.
use hyphae_core::Multiaddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Multiaddr::from_bytes(data) {
        let b = m.to_bytes();
        assert_eq!(b, data, "binary decoding is canonical");
        assert_eq!(Multiaddr::from_bytes(&b).unwrap(), m);
        let _ = m.to_string();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(m) = s.parse::<Multiaddr>() {
            assert_eq!(Multiaddr::from_bytes(&m.to_bytes()).unwrap(), m);
        }
    }
});
