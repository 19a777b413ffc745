#![no_main]
//! IPNS record validation (protobuf, DAG-CBOR, RFC 3339, signatures): never panic, whatever the bytes;
//! a record that validates names a time after `now`; any text parses as RFC 3339 or not, without a panic.
use hyphae_core::kad::ipns;
use hyphae_core::Keypair;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const NOW: i128 = 1_800_000_000 * 1_000_000_000;

fuzz_target!(|data: &[u8]| {
    static NAME: OnceLock<hyphae_core::PeerId> = OnceLock::new();
    let name = NAME.get_or_init(|| Keypair::generate_ed25519(&mut hyphae_core::rng::from_seed([3; 32])).peer_id());
    if let Ok(r) = ipns::validate(name, data, NOW) {
        assert!(r.eol_unix_nanos > NOW);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(t) = ipns::parse_rfc3339(s) {
            assert!(ipns::parse_rfc3339(&ipns::format_rfc3339(t)) == Some(t));
        }
    }
});
