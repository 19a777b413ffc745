//! The connection manager on the Host (go's `host.ConnManager()`): tags give peers value, protections
//! keep them, and a trim closes the least valuable peers' connections down to the low watermark. The
//! policy is the node machine's (`hyphae_core::node::connmgr`), so the simulator runs it too.

use crate::handle::HostLink;
use crate::host::Host;
use hyphae_core::PeerId;
use std::collections::BTreeMap;

impl Host {
    /// Sets `peer`'s tag `tag` to `weight` (go's `TagPeer`): a peer's value is the sum of its tags.
    /// Tags go when the peer's last connection closes. False when the tag tables are full.
    pub fn tag_peer(&self, peer: &PeerId, tag: &str, weight: i32) -> bool {
        self.inner.node().connmgr_mut().tag(peer, tag, weight)
    }
    pub fn untag_peer(&self, peer: &PeerId, tag: &str) {
        self.inner.node().connmgr_mut().untag(peer, tag)
    }
    /// `peer`'s tags and their weights.
    pub fn peer_tags(&self, peer: &PeerId) -> BTreeMap<String, i32> {
        self.inner.node().connmgr().tags(peer).cloned().unwrap_or_default()
    }
    /// Never trims `peer` while any protection tag holds (go's `Protect`).
    pub fn protect_peer(&self, peer: &PeerId, tag: &str) -> bool {
        self.inner.node().connmgr_mut().protect(peer, tag)
    }
    /// Lifts protection `tag`; whether another tag still protects `peer`.
    pub fn unprotect_peer(&self, peer: &PeerId, tag: &str) -> bool {
        self.inner.node().connmgr_mut().unprotect(peer, tag)
    }
    pub fn is_protected(&self, peer: &PeerId, tag: Option<&str>) -> bool {
        self.inner.node().connmgr().is_protected(peer, tag)
    }
    /// Closes the least valuable connections down to the low watermark now (go's `TrimOpenConns`);
    /// returns how many are being closed.
    pub fn trim_connections(&self) -> usize {
        let n = {
            let now = self.inner.now();
            self.inner.node().trim(now)
        };
        self.inner.drain_node();
        n
    }
}
