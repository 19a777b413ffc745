//! What a DHT server keeps for others: records (validated per namespace) and provider records, each
//! bounded in number and expiring.

use super::{PeerInfo, Record};
use crate::identity::PeerId;
use crate::time::Instant;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Records kept (beyond: new keys are refused). Default 1024.
    pub max_records: usize,
    /// Provider keys kept (beyond: new keys are refused). Default 8192.
    pub max_provider_keys: usize,
    /// Providers per key (beyond: the oldest is replaced). Default 20 (k; go keeps more but answers
    /// with at most that many anyway).
    pub max_providers_per_key: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_records: 1024, max_provider_keys: 8192, max_providers_per_key: 20 }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("unknown namespace")]
    UnknownNamespace,
    #[error("bad key")]
    BadKey,
    #[error("value does not match the key")]
    Mismatch,
    #[error("store full")]
    Full,
}

/// Validates a record by its namespace. `/pk/<peer id multihash>`: the value is that peer's protobuf
/// `PublicKey` (the only namespace go, js and rust all accept unchanged). Others: refused (IPNS is the
/// next to add; applications will plug in their own).
pub fn validate(key: &[u8], value: &[u8]) -> Result<(), RecordError> {
    let Some(id) = key.strip_prefix(b"/pk/") else { return Err(RecordError::UnknownNamespace) };
    let peer = PeerId::from_bytes(id).map_err(|_| RecordError::BadKey)?;
    if PeerId::from_public_key_protobuf(value) != peer {
        return Err(RecordError::Mismatch);
    }
    Ok(())
}

/// The `/pk/` key of `peer` (namespace plus the peer id's multihash bytes, as go builds it).
pub fn pk_key(peer: &PeerId) -> Vec<u8> {
    let mut k = b"/pk/".to_vec();
    k.extend_from_slice(peer.as_bytes());
    k
}

#[derive(Debug, Clone)]
struct Provider {
    info: PeerInfo,
    expires: Instant,
}

#[derive(Default)]
pub struct Store {
    limits: Limits,
    records: BTreeMap<Vec<u8>, (Record, Instant)>,
    providers: BTreeMap<Vec<u8>, Vec<Provider>>,
}

impl Store {
    pub fn new(limits: Limits) -> Store {
        Store { limits, ..Store::default() }
    }

    pub fn put(&mut self, record: Record, expires: Instant) -> Result<(), RecordError> {
        validate(&record.key, &record.value)?;
        if !self.records.contains_key(&record.key) && self.records.len() >= self.limits.max_records {
            return Err(RecordError::Full);
        }
        self.records.insert(record.key.clone(), (record, expires));
        Ok(())
    }

    pub fn get(&self, key: &[u8], now: Instant) -> Option<&Record> {
        self.records.get(key).filter(|(_, e)| *e > now).map(|(r, _)| r)
    }

    pub fn add_provider(&mut self, key: &[u8], info: PeerInfo, expires: Instant) -> Result<(), RecordError> {
        if !self.providers.contains_key(key) && self.providers.len() >= self.limits.max_provider_keys {
            return Err(RecordError::Full);
        }
        let v = self.providers.entry(key.to_vec()).or_default();
        v.retain(|p| p.info.peer != info.peer);
        if v.len() >= self.limits.max_providers_per_key {
            let oldest = v.iter().enumerate().min_by_key(|(_, p)| p.expires).map(|(i, _)| i).expect("invariant: non-empty");
            v.remove(oldest);
        }
        v.push(Provider { info, expires });
        Ok(())
    }

    pub fn providers(&self, key: &[u8], now: Instant) -> Vec<PeerInfo> {
        self.providers.get(key).map(|v| v.iter().filter(|p| p.expires > now).map(|p| p.info.clone()).collect()).unwrap_or_default()
    }

    /// Drops what expired.
    pub fn expire(&mut self, now: Instant) {
        self.records.retain(|_, (_, e)| *e > now);
        for v in self.providers.values_mut() {
            v.retain(|p| p.expires > now);
        }
        self.providers.retain(|_, v| !v.is_empty());
    }

    pub fn num_records(&self) -> usize {
        self.records.len()
    }
    pub fn num_provider_keys(&self) -> usize {
        self.providers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::rng;
    use crate::time::Duration;

    #[test]
    fn store_validates_pk_records_and_bounds_providers() {
        let kp = Keypair::generate_ed25519(&mut rng::from_seed([1; 32]));
        let other = Keypair::generate_ed25519(&mut rng::from_seed([2; 32]));
        let key = pk_key(&kp.peer_id());
        assert_eq!(validate(&key, &kp.public().encode_protobuf()), Ok(()));
        assert_eq!(validate(&key, &other.public().encode_protobuf()), Err(RecordError::Mismatch));
        assert_eq!(validate(b"/app/x", b"v"), Err(RecordError::UnknownNamespace));
        let mut s = Store::new(Limits { max_records: 1, max_provider_keys: 1, max_providers_per_key: 2 });
        let t = Instant(0) + Duration::from_secs(10);
        s.put(Record { key: key.clone(), value: kp.public().encode_protobuf(), time_received: None }, t).unwrap();
        let k2 = pk_key(&other.peer_id());
        assert_eq!(s.put(Record { key: k2, value: other.public().encode_protobuf(), time_received: None }, t), Err(RecordError::Full));
        assert!(s.get(&key, Instant(0)).is_some());
        assert!(s.get(&key, t).is_none(), "expired");
        let mut r = rng::from_seed([3; 32]);
        for i in 0..5u64 {
            let info = PeerInfo { peer: PeerId::random(&mut r), addrs: vec![] };
            s.add_provider(b"cid", info, Instant(i)).unwrap();
        }
        assert_eq!(s.providers(b"cid", Instant(0)).len(), 2);
        assert_eq!(s.add_provider(b"cid2", PeerInfo { peer: PeerId::random(&mut r), addrs: vec![] }, t), Err(RecordError::Full));
        s.expire(Instant(100));
        assert_eq!(s.num_provider_keys(), 0);
    }
}
