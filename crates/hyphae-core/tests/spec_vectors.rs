//! RSA test vectors of libp2p/specs peer-ids/peer-ids.md (a 4096-bit key), kept as fixture files.

use hyphae_core::{Keypair, KeyType, PublicKey};

fn hex(name: &str) -> Vec<u8> {
    let s = std::fs::read_to_string(format!("{}/tests/fixtures/{name}.hex", env!("CARGO_MANIFEST_DIR"))).unwrap();
    data_encoding::HEXLOWER_PERMISSIVE.decode(s.trim().as_bytes()).unwrap()
}

#[test]
fn spec_rsa_private_key_yields_public_key() {
    let kp = Keypair::decode_protobuf(&hex("rsa_private_key")).unwrap();
    assert_eq!(kp.key_type(), KeyType::Rsa);
    assert_eq!(kp.public().encode_protobuf(), hex("rsa_public_key"));
    let pk = PublicKey::decode_protobuf(&hex("rsa_public_key")).unwrap();
    let sig = kp.sign(b"libp2p");
    assert!(pk.verify(b"libp2p", &sig));
    // RSA keys are too long to inline: sha2-256 peer id.
    assert!(pk.to_peer_id().to_base58().starts_with("Qm"));
    assert_eq!(kp.encode_protobuf(), hex("rsa_private_key"));
}
