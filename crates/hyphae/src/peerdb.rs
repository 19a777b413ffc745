//! The persistent peerstore: the node machine's peerstore records (`Peerstore::take_changes`, a compact
//! binary format with expiries in unix seconds) in a redb file, one row per peer. The node journals
//! what changed (`Peerstore::take_changes`); the Host writes each batch as one transaction, whose
//! commit is durable when it returns (redb's default `Durability::Immediate`: the data and a
//! checksummed commit record are synced). A crash at any point leaves the file at its last commit.

use hyphae_core::node::peerstore::Change;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const PEERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peers");

/// A failure of the store (its file, a transaction, a commit), as text: the Host logs it and goes on
/// with the in-memory peerstore.
#[derive(Debug, thiserror::Error)]
#[error("peer store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// A stored row: the peer id's bytes and its record.
pub type Row = (Vec<u8>, Vec<u8>);

pub struct PeerDb {
    db: redb::Database,
}

impl PeerDb {
    /// Opens `path` (created if missing). A file left by a crash opens at its last commit.
    pub fn open(path: &Path) -> Result<PeerDb, StoreError> {
        let db = redb::Database::create(path).map_err(err)?;
        // The table exists from the first open on, so readers never see "no such table".
        let w = db.begin_write().map_err(err)?;
        w.open_table(PEERS).map_err(err)?;
        w.commit().map_err(err)?;
        Ok(PeerDb { db })
    }

    /// Every stored (peer id bytes, record), in key order.
    pub fn load_all(&self) -> Result<Vec<Row>, StoreError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(PEERS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes a batch of changes in one transaction; durable when this returns `Ok`.
    pub fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write().map_err(err)?;
        {
            let mut t = w.open_table(PEERS).map_err(err)?;
            for c in changes {
                match &c.record {
                    Some(r) => {
                        t.insert(&c.peer[..], &r[..]).map_err(err)?;
                    }
                    None => {
                        t.remove(&c.peer[..]).map_err(err)?;
                    }
                }
            }
        }
        w.commit().map_err(err)
    }
}
