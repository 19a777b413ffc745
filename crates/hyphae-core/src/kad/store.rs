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
    #[error("invalid IPNS record: {0}")]
    Ipns(super::ipns::IpnsError),
    /// An IPNS record no better than the one kept (a lower sequence, or the same with an earlier expiry),
    /// or a value an application's validator ranks below the one kept.
    #[error("older than the record kept")]
    Older,
    /// An application's validator refused it.
    #[error("invalid record: {0}")]
    Invalid(String),
}

/// An application's record namespace (`/myapp/…` keys): what a value must be, and which of two valid
/// values is kept. Pure functions of their arguments — the DHT calls them inside the node machine, in
/// the simulator too — and cheap: every stored, served and found record of the namespace passes here.
pub trait Validator: Send + Sync + std::fmt::Debug {
    /// `Err(reason)` refuses the record (`now_unix_nanos`: wall-clock time, for expiring records).
    fn validate(&self, key: &[u8], value: &[u8], now_unix_nanos: i128) -> Result<(), String>;
    /// Whether `new` replaces `old` (both valid). Default: it does (the newest value wins).
    fn better(&self, key: &[u8], new: &[u8], old: &[u8]) -> bool {
        let _ = (key, new, old);
        true
    }
}

/// The namespaces the DHT accepts besides the built-in `/pk/` and `/ipns/` (go's `NamespacedValidator`):
/// each key prefix with its validator. A key of no namespace is refused ("unknown namespace").
#[derive(Debug, Clone, Default)]
pub struct Validators(Vec<(Vec<u8>, std::sync::Arc<dyn Validator>)>);

impl Validators {
    /// Adds `namespace` (written as in keys, e.g. `"/myapp/"`; the built-in `/pk/` and `/ipns/` cannot be
    /// replaced) with its validator.
    pub fn with(mut self, namespace: &str, v: impl Validator + 'static) -> Validators {
        self.0.push((namespace.as_bytes().to_vec(), std::sync::Arc::new(v)));
        self
    }
    fn find(&self, key: &[u8]) -> Option<&dyn Validator> {
        self.0.iter().find(|(ns, _)| key.starts_with(ns)).map(|(_, v)| &**v)
    }
    /// [`validate`] with these namespaces too.
    pub fn validate(&self, key: &[u8], value: &[u8], now_unix_nanos: i128) -> Result<(), RecordError> {
        match validate(key, value, now_unix_nanos) {
            Err(RecordError::UnknownNamespace) => match self.find(key) {
                Some(v) => v.validate(key, value, now_unix_nanos).map_err(RecordError::Invalid),
                None => Err(RecordError::UnknownNamespace),
            },
            r => r,
        }
    }
    /// Of two valid values of `key`, whether `new` replaces `old`: for IPNS the better record
    /// ([`super::ipns::compare`], or any valid one over an expired one); in the application's
    /// namespaces its validator's choice; elsewhere the newer value. Neither value is validated again.
    pub fn better(&self, key: &[u8], new: &[u8], old: &[u8], now_unix_nanos: i128) -> bool {
        if key.starts_with(b"/ipns/") {
            return match (super::ipns::rank(new), super::ipns::rank(old)) {
                (Some(n), Some(o)) => o.1 <= now_unix_nanos || n > o,
                (n, _) => n.is_some(),
            };
        }
        match self.find(key) {
            Some(v) if !key.starts_with(b"/pk/") => v.better(key, new, old),
            _ => true,
        }
    }
}

/// Validates a record by its namespace at wall-clock time `now_unix_nanos`. `/pk/<peer id multihash>`:
/// the value is that peer's protobuf `PublicKey` (the only namespace go, js and rust all accept
/// unchanged). `/ipns/<peer id multihash>`: a signed IPNS record of that name, not expired
/// ([`super::ipns::validate`]; go's daemon validates these too). Others: refused.
pub fn validate(key: &[u8], value: &[u8], now_unix_nanos: i128) -> Result<(), RecordError> {
    if let Some(id) = key.strip_prefix(b"/ipns/") {
        let name = PeerId::from_bytes(id).map_err(|_| RecordError::BadKey)?;
        return super::ipns::validate(&name, value, now_unix_nanos).map(|_| ()).map_err(RecordError::Ipns);
    }
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
    validators: Validators,
    records: BTreeMap<Vec<u8>, (Record, Instant)>,
    providers: BTreeMap<Vec<u8>, Vec<Provider>>,
}

impl Store {
    pub fn new(limits: Limits) -> Store {
        Store { limits, ..Store::default() }
    }

    /// A store that also accepts the application's namespaces.
    pub fn with_validators(limits: Limits, validators: Validators) -> Store {
        Store { limits, validators, ..Store::default() }
    }

    pub fn validators(&self) -> &Validators {
        &self.validators
    }

    /// Keeps a valid record until `expires` (an IPNS record only if it beats the one kept).
    pub fn put(&mut self, record: Record, expires: Instant, now_unix_nanos: i128) -> Result<(), RecordError> {
        self.validators.validate(&record.key, &record.value, now_unix_nanos)?;
        if let Some((old, _)) = self.records.get(&record.key) {
            if old.value != record.value && !self.validators.better(&record.key, &record.value, &old.value, now_unix_nanos) {
                return Err(RecordError::Older);
            }
        }
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

    const NOW: i128 = 1_800_000_000 * 1_000_000_000;

    /// An IPNS record is kept only while it is valid, and replaced only by a better one: a higher
    /// sequence, or the same sequence with a later expiry.
    #[test]
    fn store_keeps_the_best_ipns_record() {
        use super::super::ipns;
        let kp = Keypair::generate_ed25519(&mut rng::from_seed([4; 32]));
        let key = ipns::key(&kp.peer_id());
        let hour = 3_600_000_000_000i128;
        let rec = |seq, eol| Record { key: key.clone(), value: ipns::create(&kp, b"/ipfs/x", seq, NOW + eol, 1), time_received: None };
        let mut s = Store::new(Limits::default());
        let t = Instant(0) + Duration::from_secs(10);
        s.put(rec(2, hour), t, NOW).unwrap();
        assert_eq!(s.put(rec(1, 2 * hour), t, NOW), Err(RecordError::Older));
        assert_eq!(s.put(rec(2, hour / 2), t, NOW), Err(RecordError::Older));
        s.put(rec(2, 2 * hour), t, NOW).unwrap();
        s.put(rec(3, hour), t, NOW).unwrap();
        let kept = s.get(&key, Instant(0)).unwrap().value.clone();
        assert_eq!(ipns::validate(&kp.peer_id(), &kept, NOW).unwrap().sequence, 3);
        assert!(matches!(s.put(rec(4, hour), t, NOW + 2 * hour), Err(RecordError::Ipns(ipns::IpnsError::Expired(_)))));
        let other = Keypair::generate_ed25519(&mut rng::from_seed([5; 32]));
        let forged = Record { key: key.clone(), value: ipns::create(&other, b"/ipfs/evil", 9, NOW + hour, 1), time_received: None };
        assert!(matches!(s.put(forged, t, NOW), Err(RecordError::Ipns(_))), "signed by another key");
    }

    #[test]
    fn store_validates_pk_records_and_bounds_providers() {
        let kp = Keypair::generate_ed25519(&mut rng::from_seed([1; 32]));
        let other = Keypair::generate_ed25519(&mut rng::from_seed([2; 32]));
        let key = pk_key(&kp.peer_id());
        assert_eq!(validate(&key, &kp.public().encode_protobuf(), NOW), Ok(()));
        assert_eq!(validate(&key, &other.public().encode_protobuf(), NOW), Err(RecordError::Mismatch));
        assert_eq!(validate(b"/app/x", b"v", NOW), Err(RecordError::UnknownNamespace));
        let mut s = Store::new(Limits { max_records: 1, max_provider_keys: 1, max_providers_per_key: 2 });
        let t = Instant(0) + Duration::from_secs(10);
        s.put(Record { key: key.clone(), value: kp.public().encode_protobuf(), time_received: None }, t, NOW).unwrap();
        let k2 = pk_key(&other.peer_id());
        assert_eq!(s.put(Record { key: k2, value: other.public().encode_protobuf(), time_received: None }, t, NOW), Err(RecordError::Full));
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
