//! Identify (`/ipfs/id/1.0.0`) and identify push (`/ipfs/id/push/1.0.0`), libp2p/specs identify/README.md.
//!
//! The responder writes one varint-length-prefixed `Identify` protobuf and closes the stream. go-libp2p
//! may split a large message in two (the signed peer record separately), so the reader merges up to
//! [`MAX_MESSAGES`] messages until EOF.

use crate::identity::{PeerId, PublicKey};
use crate::multiaddr::Multiaddr;
use crate::stream::{ConnId, OpenError};
use crate::{pb, varint, DecodeError};

pub const PROTOCOL_ID: &str = "/ipfs/id/1.0.0";
pub const PUSH_PROTOCOL_ID: &str = "/ipfs/id/push/1.0.0";
/// Largest single identify message (go-libp2p's limit for messages with a signed record).
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;
pub const MAX_MESSAGES: usize = 10;
pub const MAX_LISTEN_ADDRS: usize = 128;
pub const MAX_PROTOCOLS: usize = 512;

pub mod service;

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

impl Info {
    /// The message with its varint length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = Vec::new();
        if let Some(k) = &self.public_key {
            pb::put_bytes(&mut m, 1, &k.encode_protobuf());
        }
        for a in &self.listen_addrs {
            pb::put_bytes(&mut m, 2, &a.to_bytes());
        }
        for p in &self.protocols {
            pb::put_bytes(&mut m, 3, p.as_bytes());
        }
        if let Some(o) = &self.observed_addr {
            pb::put_bytes(&mut m, 4, &o.to_bytes());
        }
        if let Some(v) = &self.protocol_version {
            pb::put_bytes(&mut m, 5, v.as_bytes());
        }
        if let Some(v) = &self.agent_version {
            pb::put_bytes(&mut m, 6, v.as_bytes());
        }
        if let Some(r) = &self.signed_peer_record {
            pb::put_bytes(&mut m, 8, r);
        }
        let mut out = Vec::with_capacity(m.len() + 3);
        varint::encode_frame(&m, &mut out);
        out
    }

    /// Merges one message body into `self`. Unparseable addresses (newer protocols) are skipped.
    fn merge(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        for f in pb::Reader::new(body) {
            match f? {
                (1, v) => self.public_key = Some(PublicKey::decode_protobuf(v.bytes()?)?),
                (2, v) => {
                    if self.listen_addrs.len() >= MAX_LISTEN_ADDRS {
                        return Err(DecodeError::Invalid("too many listen addresses"));
                    }
                    if let Ok(a) = Multiaddr::from_bytes(v.bytes()?) {
                        self.listen_addrs.push(a);
                    }
                }
                (3, v) => {
                    if self.protocols.len() >= MAX_PROTOCOLS {
                        return Err(DecodeError::Invalid("too many protocols"));
                    }
                    self.protocols.push(v.string()?.to_string());
                }
                (4, v) => self.observed_addr = Multiaddr::from_bytes(v.bytes()?).ok(),
                (5, v) => self.protocol_version = Some(v.string()?.to_string()),
                (6, v) => self.agent_version = Some(v.string()?.to_string()),
                (8, v) => self.signed_peer_record = Some(v.bytes()?.to_vec()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Decodes everything a responder wrote (read until EOF): one or more length-prefixed messages.
    pub fn decode_all(mut buf: &[u8]) -> Result<Info, DecodeError> {
        let mut info = Info::default();
        let mut n = 0;
        while !buf.is_empty() {
            n += 1;
            if n > MAX_MESSAGES {
                return Err(DecodeError::Invalid("too many identify messages"));
            }
            let (r, used) = varint::decode_frame(buf, MAX_MESSAGE_LEN)?.ok_or(DecodeError::Truncated)?;
            info.merge(&buf[r])?;
            buf = &buf[used..];
        }
        Ok(info)
    }

    /// The most bytes `decode_all` can need: a reader stops collecting past this.
    pub const fn max_total_len() -> usize {
        MAX_MESSAGES * (MAX_MESSAGE_LEN + 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_roundtrip_and_merge() {
        let mut rng = crate::rng::from_seed([1; 32]);
        let k = crate::Keypair::generate_ed25519(&mut rng);
        let a = Info {
            protocol_version: Some("ipfs/0.1.0".into()),
            agent_version: Some("hyphae/0.1.0".into()),
            public_key: Some(k.public()),
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
            observed_addr: Some("/ip4/1.2.3.4/tcp/5".parse().unwrap()),
            protocols: vec!["/ipfs/ping/1.0.0".into()],
            signed_peer_record: None,
        };
        let mut wire = a.encode();
        assert_eq!(Info::decode_all(&wire).unwrap(), a);
        let b = Info { signed_peer_record: Some(vec![1, 2, 3]), ..Default::default() };
        wire.extend(b.encode());
        let m = Info::decode_all(&wire).unwrap();
        assert_eq!(m.signed_peer_record, Some(vec![1, 2, 3]));
        assert_eq!(m.agent_version.as_deref(), Some("hyphae/0.1.0"));
    }

    #[test]
    fn identify_oversized_or_truncated_rejected() {
        let mut big = Vec::new();
        varint::encode((MAX_MESSAGE_LEN + 1) as u64, &mut big);
        assert!(matches!(Info::decode_all(&big), Err(DecodeError::TooLarge { .. })));
        assert_eq!(Info::decode_all(&[5, 1]), Err(DecodeError::Truncated));
    }
}
