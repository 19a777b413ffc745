#![no_main]
//! Public-key protobuf and peer-id decoders: never panic; decoded keys re-encode and re-decode equal.
use hyphae_core::{PeerId, PublicKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = PublicKey::decode_protobuf(data) {
        let enc = k.encode_protobuf();
        assert_eq!(PublicKey::decode_protobuf(&enc).unwrap(), k);
        let id = k.to_peer_id();
        assert!(id.matches(&k));
        assert_eq!(PeerId::from_bytes(id.as_bytes()).unwrap(), id);
        let _ = k.verify(b"msg", data);
    }
    if let Ok(id) = PeerId::from_bytes(data) {
        assert_eq!(id.to_base58().parse::<PeerId>().unwrap(), id);
    }
});
