//! RSA test vectors of libp2p/specs peer-ids/peer-ids.md (a 4096-bit key), kept as fixture files.

use hyphae_core::{KeyType, Keypair, PublicKey};

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

/// libp2p/specs tls/tls.md "Test vectors": three valid certificates (Ed25519, ECDSA, secp256k1 host keys)
/// and one whose host-key signature does not match.
#[test]
fn spec_tls_certificates() {
    let dir = format!("{}/tests/fixtures/tls", env!("CARGO_MANIFEST_DIR"));
    let now = 1_800_000_000;
    for n in 1..=3 {
        let cert = hex(&format!("tls/cert{n}"));
        let peer = std::fs::read_to_string(format!("{dir}/cert{n}.peer")).unwrap();
        let pc = hyphae_core::tls::verify_certificate(&cert, now).unwrap_or_else(|e| panic!("cert {n}: {e}"));
        assert_eq!(pc.peer_id.to_string(), peer.trim(), "cert {n}");
    }
    assert!(hyphae_core::tls::verify_certificate(&hex("tls/cert4"), now).is_err());
}
