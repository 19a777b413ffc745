//! Signed peer records: RFC 0002 signed envelopes carrying RFC 0003 peer records
//! (<https://github.com/libp2p/specs/blob/master/RFC/0002-signed-envelopes.md>,
//! <https://github.com/libp2p/specs/blob/master/RFC/0003-routing-records.md>). A peer signs the list of
//! its addresses with its identity key; whoever receives the envelope (identify's `signedPeerRecord`)
//! can tell those *certified* addresses from ones a third party merely claimed. Sans-IO: bytes in,
//! a verified record or a typed error out.

use crate::identity::{Keypair, PeerId, PublicKey};
use crate::multiaddr::Multiaddr;
use crate::{varint, DecodeError};

#[allow(clippy::all, clippy::pedantic, non_snake_case, non_upper_case_globals, non_camel_case_types, unused_imports, unknown_lints)]
#[rustfmt::skip]
mod env_pb {
    include!(concat!(env!("OUT_DIR"), "/envelope.rs"));
}
#[allow(clippy::all, clippy::pedantic, non_snake_case, non_upper_case_globals, non_camel_case_types, unused_imports, unknown_lints)]
#[rustfmt::skip]
mod rec_pb {
    include!(concat!(env!("OUT_DIR"), "/peer_record.rs"));
}

/// spec(RFC 0003): the domain peer records are signed in ("libp2p-peer-record", as go and js use).
pub const PEER_RECORD_DOMAIN: &str = "libp2p-peer-record";
/// The multicodec `libp2p-peer-record` (0x0301) as go and js write it: the two bytes 0x03 0x01.
pub const PEER_RECORD_PAYLOAD_TYPE: &[u8] = &[0x03, 0x01];

/// Limits on a received envelope. go caps the whole signed record in identify; we cap each part.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The envelope's bytes. Default 4 KiB.
    pub max_envelope_len: usize,
    /// Addresses in one record. Default 32.
    pub max_addrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_envelope_len: 4096, max_addrs: 32 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("envelope of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("not a peer record (payload type {0:02x?})")]
    PayloadType(Vec<u8>),
    #[error("signature does not verify")]
    BadSignature,
    #[error("record of {record} signed by {signer}")]
    WrongSigner { record: PeerId, signer: PeerId },
    #[error("more than {0} addresses")]
    TooManyAddrs(usize),
}

/// What a peer record says: its peer, a sequence number (newer records have larger ones), addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    pub peer: PeerId,
    pub seq: u64,
    pub addrs: Vec<Multiaddr>,
}

/// spec(RFC 0002): the signed bytes are the varint-length-prefixed domain, payload type and payload.
fn signed_bytes(domain: &str, payload_type: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(domain.len() + payload_type.len() + payload.len() + 6);
    varint::encode_frame(domain.as_bytes(), &mut b);
    varint::encode_frame(payload_type, &mut b);
    varint::encode_frame(payload, &mut b);
    b
}

impl PeerRecord {
    /// The record signed by `key` (whose peer id must be `self.peer`) in an envelope.
    pub fn seal(&self, key: &Keypair) -> Vec<u8> {
        debug_assert_eq!(key.peer_id(), self.peer, "invariant: a peer signs its own record");
        let rec = rec_pb::PeerRecord {
            peer_id: self.peer.to_bytes(),
            seq: self.seq,
            addresses: self.addrs.iter().map(|a| rec_pb::mod_PeerRecord::AddressInfo { multiaddr: a.to_bytes() }).collect(),
        };
        let payload = crate::pb::write_message(&rec);
        let signature = key.sign(&signed_bytes(PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, &payload));
        let env = env_pb::Envelope {
            public_key: key.public().encode_protobuf(),
            payload_type: PEER_RECORD_PAYLOAD_TYPE.to_vec(),
            payload,
            signature,
        };
        crate::pb::write_message(&env)
    }

    /// Opens an envelope: a peer record signed by the key of the peer it names, or why not.
    pub fn open(envelope: &[u8], limits: &Limits) -> Result<(PeerRecord, PublicKey), RecordError> {
        if envelope.len() > limits.max_envelope_len {
            return Err(RecordError::TooLarge(envelope.len()));
        }
        // Every field of the envelope is bytes (its key too, as declared here): nothing nested to check.
        let env: env_pb::Envelope = crate::pb::read_message(envelope, &[], "malformed envelope")?;
        if env.payload_type != PEER_RECORD_PAYLOAD_TYPE {
            return Err(RecordError::PayloadType(env.payload_type));
        }
        let key = PublicKey::decode_protobuf(&env.public_key)?;
        if !key.verify(&signed_bytes(PEER_RECORD_DOMAIN, &env.payload_type, &env.payload), &env.signature) {
            return Err(RecordError::BadSignature);
        }
        let rec: rec_pb::PeerRecord = crate::pb::read_message(&env.payload, &[crate::pb::Nest(3, &[])], "malformed peer record")?;
        let peer = PeerId::from_bytes(&rec.peer_id)?;
        let signer = key.to_peer_id();
        if signer != peer {
            return Err(RecordError::WrongSigner { record: peer, signer });
        }
        if rec.addresses.len() > limits.max_addrs {
            return Err(RecordError::TooManyAddrs(limits.max_addrs));
        }
        let addrs = rec
            .addresses
            .iter()
            .map(|a| Multiaddr::from_bytes(&a.multiaddr).map_err(|_| DecodeError::Invalid("peer record address")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((PeerRecord { peer, seq: rec.seq, addrs }, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Keypair {
        Keypair::generate_ed25519(&mut crate::rng::from_seed([n; 32]))
    }

    #[test]
    fn record_seals_and_opens_and_tampering_is_caught() {
        let k = key(1);
        let r = PeerRecord { peer: k.peer_id(), seq: 7, addrs: vec!["/ip4/1.2.3.4/tcp/4001".parse().unwrap()] };
        let env = r.seal(&k);
        let (back, pk) = PeerRecord::open(&env, &Limits::default()).unwrap();
        assert_eq!(back, r);
        assert_eq!(pk, k.public());
        // A flipped bit anywhere in the payload or signature: refused.
        for i in [env.len() - 1, env.len() / 2] {
            let mut bad = env.clone();
            bad[i] ^= 1;
            assert!(PeerRecord::open(&bad, &Limits::default()).is_err(), "byte {i}");
        }
        // Someone else's record signed by another key: the signer must be the peer named.
        let other = key(2);
        let forged = PeerRecord { peer: other.peer_id(), ..r.clone() };
        let env = env_pb::Envelope {
            public_key: k.public().encode_protobuf(),
            payload_type: PEER_RECORD_PAYLOAD_TYPE.to_vec(),
            payload: crate::pb::write_message(&rec_pb::PeerRecord { peer_id: forged.peer.to_bytes(), seq: 1, addresses: vec![] }),
            signature: vec![],
        };
        let mut e = env.clone();
        e.signature = k.sign(&signed_bytes(PEER_RECORD_DOMAIN, &e.payload_type, &e.payload));
        assert!(matches!(PeerRecord::open(&crate::pb::write_message(&e), &Limits::default()), Err(RecordError::WrongSigner { .. })));
        // Limits before work.
        let big = vec![0u8; 5000];
        assert_eq!(PeerRecord::open(&big, &Limits::default()), Err(RecordError::TooLarge(5000)));
    }

    /// The envelope's wire layout: public key (1), payload type 03 01 (2), payload (3), signature (5, as
    /// go writes it). Interop with go and js is proven in `hyphae/tests/interop.rs`.
    #[test]
    fn record_wire_layout_matches_the_spec() {
        let k = key(3);
        let r = PeerRecord { peer: k.peer_id(), seq: 1, addrs: vec![] };
        let env = r.seal(&k);
        // Field 1 (public key, length-delimited), 2 (payload type 03 01), 3 (payload), 5 (signature).
        assert_eq!(env[0], 0x0a);
        let pk_len = env[1] as usize;
        assert_eq!(&env[2 + pk_len..2 + pk_len + 4], &[0x12, 0x02, 0x03, 0x01]);
        assert_eq!(env[2 + pk_len + 4], 0x1a);
        let sig_tag_at = env.len() - 66;
        assert_eq!(&env[sig_tag_at..sig_tag_at + 2], &[0x2a, 64]);
    }
}
