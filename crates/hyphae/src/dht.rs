//! `host.dht()`: the Kademlia DHT of the node machine's kad service, as async calls (go's
//! `routing.Routing` is the model: bootstrap, find a peer, closest peers, put/get a value, provide, find
//! providers). Each call starts a query in the sans-IO service and awaits its events by query id.

use crate::host::{Error, Host};
use hyphae_core::kad::{self, store, Mode, Outcome, PeerInfo, Record};
use hyphae_core::{Multiaddr, PeerId, PublicKey};
use tokio::sync::mpsc::Receiver;

/// A borrowed handle on the host's DHT.
pub struct Dht<'a> {
    host: &'a Host,
}

impl Host {
    pub fn dht(&self) -> Dht<'_> {
        Dht { host: self }
    }
}

/// Waits for a query's end; `each` sees its streamed events (providers, values) as they come.
async fn finish(mut rx: Receiver<kad::Event>, mut each: impl FnMut(kad::Event)) -> Result<Outcome, Error> {
    while let Some(ev) = rx.recv().await {
        match ev {
            kad::Event::Finished { outcome, .. } => return outcome.map_err(Error::Dht),
            other => each(other),
        }
    }
    Err(Error::Dht(kad::QueryError::Timeout))
}

impl Dht<'_> {
    /// Joins the DHT: connects to each bootstrap address (`/p2p/<id>` required), adds the peers to the
    /// routing table and looks up our own key. Fails only if no bootstrap peer could be reached.
    pub async fn bootstrap(&self, peers: &[Multiaddr]) -> Result<Outcome, Error> {
        let mut last = None;
        let mut added = 0;
        for a in peers {
            let Some(id) = a.peer_id() else {
                last = Some(Error::Protocol(format!("bootstrap address {a} lacks /p2p/<peer id>")));
                continue;
            };
            match self.host.connect(a).await {
                Ok(_) => {
                    let addr = a.without_peer_id();
                    self.host.inner.with_kad(|k, cx| k.add_peer(cx, &id, std::slice::from_ref(&addr)));
                    added += 1;
                }
                Err(e) => {
                    tracing::warn!(addr = %a, error = %e, "bootstrap peer unreachable");
                    last = Some(e);
                }
            }
        }
        if added == 0 {
            return Err(last.unwrap_or(Error::Dht(kad::QueryError::NoPeers)));
        }
        let rx = self.host.inner.kad_query(|k, cx| k.bootstrap(cx))?;
        finish(rx, |_| {}).await
    }

    /// Finds `peer`'s addresses through the DHT.
    pub async fn find_peer(&self, peer: &PeerId) -> Result<PeerInfo, Error> {
        let rx = self.host.inner.kad_query(|k, cx| k.find_peer(cx, peer))?;
        let o = finish(rx, |_| {}).await?;
        o.found.ok_or(Error::Dht(kad::QueryError::NotFound))
    }

    /// The k closest DHT servers to `key`, closest first.
    pub async fn get_closest_peers(&self, key: &[u8]) -> Result<Vec<PeerInfo>, Error> {
        let rx = self.host.inner.kad_query(|k, cx| k.get_closest_peers(cx, key.to_vec()))?;
        Ok(finish(rx, |_| {}).await?.closest)
    }

    /// Stores `value` under `key` here and on the k closest peers; returns how many peers took it.
    /// Keys are validated per namespace (`/pk/` built in).
    pub async fn put_value(&self, key: &[u8], value: &[u8]) -> Result<usize, Error> {
        let record = Record { key: key.to_vec(), value: value.to_vec(), time_received: None };
        let rx = self.host.inner.kad_query(|k, cx| k.put_value(cx, record))?;
        Ok(finish(rx, |_| {}).await?.stored)
    }

    /// Valid records for `key` (ours first when we have one), until `quorum` were found.
    pub async fn get_value(&self, key: &[u8], quorum: usize) -> Result<Vec<(PeerId, Vec<u8>)>, Error> {
        let rx = self.host.inner.kad_query(|k, cx| k.get_value(cx, key.to_vec(), quorum))?;
        let mut v = Vec::new();
        finish(rx, |ev| {
            if let kad::Event::Value { record, from, .. } = ev {
                v.push((from, record.value));
            }
        })
        .await?;
        Ok(v)
    }

    /// Publishes an IPNS record of our own name (this host's peer id) pointing at `value` (a content
    /// path such as `/ipfs/bafy…`): signed with the host's key, valid for `lifetime` (the DHT keeps
    /// records 48 h at most), with `sequence`, which must grow with each update (peers keep the record
    /// with the highest). Returns how many peers stored it.
    pub async fn publish_ipns(&self, value: &[u8], sequence: u64, lifetime: std::time::Duration) -> Result<usize, Error> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let eol = i128::try_from((now + lifetime).as_nanos()).unwrap_or(i128::MAX);
        let rec = kad::ipns::create(self.host.keypair(), value, sequence, eol, kad::ipns::DEFAULT_TTL_NANOS);
        self.put_value(&kad::ipns::key(&self.host.peer_id()), &rec).await
    }

    /// The best valid IPNS record of `name` (highest sequence, then latest expiry) among the first
    /// `quorum` valid ones the DHT returns (go resolves with 16).
    pub async fn resolve_ipns(&self, name: &PeerId, quorum: usize) -> Result<kad::ipns::IpnsRecord, Error> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let now = i128::try_from(now.as_nanos()).unwrap_or(i128::MAX);
        let found = self.get_value(&kad::ipns::key(name), quorum).await?;
        found
            .iter()
            .filter_map(|(_, v)| kad::ipns::validate(name, v, now).ok())
            .max_by(kad::ipns::compare)
            .ok_or(Error::Dht(kad::QueryError::NotFound))
    }

    /// Announces us as a provider of `key` (a multihash, e.g. a CID's) to the k closest peers.
    pub async fn provide(&self, key: &[u8]) -> Result<usize, Error> {
        let rx = self.host.inner.kad_query(|k, cx| k.provide(cx, key.to_vec()))?;
        Ok(finish(rx, |_| {}).await?.stored)
    }

    /// Providers of `key`, each given to `each` as it is found; at most `limit`.
    pub async fn find_providers(&self, key: &[u8], limit: usize, mut each: impl FnMut(&PeerInfo)) -> Result<Vec<PeerInfo>, Error> {
        let rx = self.host.inner.kad_query(|k, cx| k.find_providers(cx, key.to_vec(), limit))?;
        let mut v = Vec::new();
        let r = finish(rx, |ev| {
            if let kad::Event::Provider { provider, .. } = ev {
                each(&provider);
                v.push(provider);
            }
        })
        .await;
        match r {
            Ok(_) => Ok(v),
            // A lookup that ran out of time still returns what it found.
            Err(_) if !v.is_empty() => Ok(v),
            Err(e) => Err(e),
        }
    }

    /// A peer's public key: from its `/pk/` record in the DHT, or inlined in an Ed25519 peer id.
    pub async fn get_public_key(&self, peer: &PeerId) -> Result<PublicKey, Error> {
        if let Some(k) = peer.inline_public_key() {
            return Ok(k);
        }
        for (_, v) in self.get_value(&store::pk_key(peer), 1).await? {
            if let Ok(k) = PublicKey::decode_protobuf(&v) {
                if peer.matches(&k) {
                    return Ok(k);
                }
            }
        }
        Err(Error::Dht(kad::QueryError::NotFound))
    }

    pub fn mode(&self) -> Mode {
        self.host.inner.with_kad(|k, _| k.mode())
    }

    /// Whether we serve the DHT now.
    pub fn is_server(&self) -> bool {
        self.host.inner.with_kad(|k, _| k.is_server())
    }

    /// Pins the mode; serving starts or stops at once and connected peers learn it by identify push.
    pub fn set_mode(&self, mode: Mode) {
        self.host.inner.with_kad(|k, cx| k.set_mode(cx, mode));
        self.host.inner.update_protocols();
        self.host.protocols_changed();
    }

    /// Peers in the routing table.
    pub fn routing_table_size(&self) -> usize {
        self.host.inner.with_kad(|k, _| k.table().len())
    }

    /// Requests sent and served, queries started and refused, table rejections.
    pub fn stats(&self) -> hyphae_core::kad::Stats {
        self.host.inner.with_kad(|k, _| k.stats().clone())
    }

    /// The running query ids (for diagnostics).
    pub fn queries_in_flight(&self) -> usize {
        self.host.inner.with_kad(|k, _| k.queries_in_flight())
    }
}
