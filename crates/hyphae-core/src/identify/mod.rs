//! Identify (`/ipfs/id/1.0.0`) and identify push (`/ipfs/id/push/1.0.0`), libp2p/specs identify/README.md.
//!
//! The responder writes one varint-length-prefixed `Identify` protobuf and closes the stream. go-libp2p
//! may split a large message in two (the signed peer record separately), so the reader merges up to
//! [`MAX_MESSAGES`] messages until EOF.

use crate::identity::{PeerId, PublicKey};
use crate::multiaddr::Multiaddr;
use crate::stream::{ConnId, OpenError};
use crate::DecodeError;

pub const PROTOCOL_ID: &str = "/ipfs/id/1.0.0";
pub const PUSH_PROTOCOL_ID: &str = "/ipfs/id/push/1.0.0";
/// Defaults of [`Limits`]. Largest single identify message (go-libp2p's limit for messages with a signed
/// record).
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;
pub const MAX_MESSAGES: usize = 10;
pub const MAX_LISTEN_ADDRS: usize = 128;
pub const MAX_PROTOCOLS: usize = 512;

pub mod service;
pub mod wire;
pub use wire::Limits;

/// What the identify service reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The identify exchange on `conn` finished, or a push arrived (`push`).
    Received { peer: PeerId, conn: ConnId, info: Box<Info>, push: bool },
    /// Our identify request on `conn` failed.
    Failed { peer: PeerId, conn: ConnId, error: Failure },
}

/// Why an identify exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    #[error("timed out")]
    Timeout,
    #[error("could not open the stream: {0}")]
    Open(OpenError),
    #[error("stream reset")]
    Reset,
    #[error("malformed: {0}")]
    Malformed(DecodeError),
    #[error("public key does not match the peer id")]
    KeyMismatch,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    pub protocol_version: Option<String>,
    pub agent_version: Option<String>,
    pub public_key: Option<PublicKey>,
    pub listen_addrs: Vec<Multiaddr>,
    pub observed_addr: Option<Multiaddr>,
    pub protocols: Vec<String>,
    pub signed_peer_record: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pb, varint};

    fn sample() -> Info {
        let mut rng = crate::rng::from_seed([1; 32]);
        let k = crate::Keypair::generate_ed25519(&mut rng);
        Info {
            protocol_version: Some("ipfs/0.1.0".into()),
            agent_version: Some("hyphae/0.1.0".into()),
            public_key: Some(k.public()),
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
            observed_addr: Some("/ip4/1.2.3.4/tcp/5".parse().unwrap()),
            protocols: vec!["/ipfs/ping/1.0.0".into()],
            signed_peer_record: None,
        }
    }

    #[test]
    fn identify_roundtrip_and_merge() {
        let a = sample();
        let l = Limits::default();
        let mut wire = a.encode();
        assert_eq!(Info::decode_all(&wire, &l).unwrap(), a);
        let b = Info { signed_peer_record: Some(vec![1, 2, 3]), ..Default::default() };
        wire.extend(b.encode());
        let m = Info::decode_all(&wire, &l).unwrap();
        assert_eq!(m.signed_peer_record, Some(vec![1, 2, 3]));
        assert_eq!(m.agent_version.as_deref(), Some("hyphae/0.1.0"));
    }

    /// The generated encoder writes the bytes the hand-written one did (fields by number), so peers
    /// and the simulator's traces see no change.
    #[test]
    fn identify_generated_encoding_matches_the_field_order_of_the_spec_numbers() {
        let a = sample();
        let mut m = Vec::new();
        pb::put_bytes(&mut m, 1, &a.public_key.as_ref().unwrap().encode_protobuf());
        pb::put_bytes(&mut m, 2, &a.listen_addrs[0].to_bytes());
        pb::put_bytes(&mut m, 3, a.protocols[0].as_bytes());
        pb::put_bytes(&mut m, 4, &a.observed_addr.as_ref().unwrap().to_bytes());
        pb::put_bytes(&mut m, 5, b"ipfs/0.1.0");
        pb::put_bytes(&mut m, 6, b"hyphae/0.1.0");
        let mut expected = Vec::new();
        varint::encode_frame(&m, &mut expected);
        assert_eq!(a.encode(), expected);
    }

    #[test]
    fn identify_decode_needs_more_bytes_then_reports_what_it_used() {
        let wire = sample().encode();
        let l = Limits::default();
        assert_eq!(wire::decode(&wire[..wire.len() - 1], &l), Ok(None));
        let (info, used) = wire::decode(&wire, &l).unwrap().unwrap();
        assert_eq!((info, used), (sample(), wire.len()));
    }

    #[test]
    fn identify_oversized_or_truncated_or_too_many_rejected() {
        let l = Limits::default();
        let mut big = Vec::new();
        varint::encode((MAX_MESSAGE_LEN + 1) as u64, &mut big);
        assert!(matches!(Info::decode_all(&big, &l), Err(DecodeError::TooLarge { .. })));
        assert_eq!(Info::decode_all(&[5, 1], &l), Err(DecodeError::Truncated));
        let tight = Limits { max_protocols: 2, ..Limits::default() };
        let three = Info { protocols: vec!["/a".into(), "/b".into(), "/c".into()], ..Default::default() };
        assert!(matches!(Info::decode_all(&three.encode(), &tight), Err(DecodeError::TooLarge { len: 3, limit: 2 })));
        // Split over two messages, the limit holds for the sum.
        let mut two = Info { protocols: vec!["/a".into(), "/b".into()], ..Default::default() }.encode();
        two.extend(Info { protocols: vec!["/c".into()], ..Default::default() }.encode());
        assert!(matches!(Info::decode_all(&two, &tight), Err(DecodeError::TooLarge { .. })));
        assert!(matches!(Info::decode_all(&[2, 0xff, 0xff], &l), Err(DecodeError::Invalid(_))));
    }
}
