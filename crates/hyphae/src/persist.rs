//! The Host's side of the persistent peerstore: load the saved records into the node machine at
//! start, then write its journal of changes (`Peerstore::take_changes`) in batches.

use crate::handle::HostLink;
use crate::host::{unix_now, Error, Host, Inner};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often what changed in the peerstore is written.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(5);

impl Inner {
    /// Loads every saved record (a malformed one is skipped and logged).
    pub(crate) fn load_peerstore(&self) {
        let Some(db) = &self.peerdb else { return };
        let rows = match db.load_all() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "peerstore not loaded");
                return;
            }
        };
        let (now, unix) = (self.now(), unix_now().max(0) as u64);
        let mut n = self.node();
        let (mut ok, mut bad) = (0usize, 0usize);
        for (peer, rec) in &rows {
            match n.peerstore_mut().load(peer, rec, now, unix) {
                Ok(()) => ok += 1,
                Err(e) => {
                    bad += 1;
                    tracing::debug!(error = %e, "skipping a malformed peerstore record");
                }
            }
        }
        tracing::info!(peers = ok, skipped = bad, "peerstore loaded");
    }

    /// Writes what changed since the last write; the number of records written.
    pub(crate) async fn persist_now(&self) -> Result<usize, Error> {
        let Some(db) = self.peerdb.clone() else { return Ok(0) };
        // One batch at a time, in the order they were taken: a later batch never lands first.
        let _order = self.persist.lock().await;
        let changes = {
            let (now, unix) = (self.now(), unix_now().max(0) as u64);
            self.node().peerstore_mut().take_changes(now, unix)
        };
        let n = changes.len();
        if n == 0 {
            return Ok(0);
        }
        tokio::task::spawn_blocking(move || db.apply(&changes))
            .await
            .map_err(|e| Error::Protocol(format!("peer store task: {e}")))?
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(n)
    }
}

impl Inner {
    /// Writes the peerstore's changes every `PERSIST_INTERVAL` while the host lives.
    pub(crate) fn spawn_persist(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PERSIST_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.persist_now().await {
                    tracing::warn!(error = %e, "peerstore write failed (kept in memory; retried)");
                }
            }
        })
    }
}

impl Host {
    /// Writes what changed in the peerstore to `HostConfig::data_dir` now; returns once it is durable
    /// (the number of records written; 0 without a data dir).
    pub async fn flush_peerstore(&self) -> Result<usize, Error> {
        let inner: Arc<Inner> = self.inner.clone();
        inner.persist_now().await
    }

    /// Known peers that announced `protocol`, with their unexpired addresses, most recently added
    /// first: what a restarted node re-bootstraps from.
    pub fn known_peers_supporting(&self, protocol: &str) -> Vec<(hyphae_core::PeerId, Vec<hyphae_core::Multiaddr>)> {
        let now = self.inner.now();
        let n = self.inner.node();
        let ps = n.peerstore();
        let mut v: Vec<_> = ps
            .peers()
            .filter(|p| ps.supports(p, protocol))
            .map(|p| {
                let a = ps.addrs(&p, now);
                (p, a)
            })
            .filter(|(_, a)| !a.is_empty())
            .collect();
        v.reverse();
        v
    }
}
