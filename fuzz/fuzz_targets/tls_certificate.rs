#![no_main]
//! The libp2p TLS certificate parser: never panic; an accepted certificate names a peer whose key
//! verified the extension's signature.
use hyphae_core::tls::verify_certificate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pc) = verify_certificate(data, 1_800_000_000) {
        assert!(pc.peer_id.matches(&pc.public_key));
    }
});
