//! The Host's side of gossipsub below the Host itself: received messages as the application sees them,
//! the subscriptions and validators per topic, and handing messages out. `host.rs` feeds it the
//! gossipsub service's events; `pubsub.rs` (the `host.pubsub()` API) adds and removes subscriptions.

use crate::handle::lock;
use hyphae_core::gossipsub::{self, Acceptance};
use hyphae_core::PeerId;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Messages a subscription holds before it drops new ones (counted in `Pubsub::dropped`).
pub const SUBSCRIPTION_BUFFER: usize = 1024;

/// A message received on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubsubMessage {
    pub topic: String,
    pub data: Vec<u8>,
    /// The author, for signed messages.
    pub from: Option<PeerId>,
    /// The author's sequence number (8 bytes big-endian, as all implementations send it).
    pub seqno: Option<u64>,
    /// The message id (go's `from ‖ seqno` by default).
    pub id: Vec<u8>,
    /// The peer we received it from.
    pub source: PeerId,
}

impl PubsubMessage {
    pub(crate) fn new(id: &[u8], source: PeerId, author: Option<PeerId>, message: &gossipsub::Message) -> PubsubMessage {
        let seqno = message.seqno.as_deref().and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_be_bytes);
        PubsubMessage { topic: message.topic.clone(), data: message.data().to_vec(), from: author, seqno, id: id.to_vec(), source }
    }
}

/// An application validator: its verdict on each message of its topic.
pub(crate) type Validator = Arc<dyn Fn(PubsubMessage) -> Pin<Box<dyn Future<Output = Acceptance> + Send>> + Send + Sync>;

/// Subscriptions and validators by topic.
#[derive(Default)]
pub(crate) struct Topics {
    subs: Mutex<BTreeMap<String, Vec<mpsc::Sender<PubsubMessage>>>>,
    validators: Mutex<BTreeMap<String, Validator>>,
    dropped: AtomicU64,
}

impl Topics {
    pub fn subscribe(&self, topic: &str) -> mpsc::Receiver<PubsubMessage> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        lock(&self.subs).entry(topic.to_string()).or_default().push(tx);
        rx
    }

    /// Ends every subscription of `topic`.
    pub fn unsubscribe(&self, topic: &str) {
        lock(&self.subs).remove(topic);
    }

    pub fn set_validator(&self, topic: &str, v: Validator) {
        lock(&self.validators).insert(topic.to_string(), v);
    }

    pub fn remove_validator(&self, topic: &str) {
        lock(&self.validators).remove(topic);
    }

    pub fn validator(&self, topic: &str) -> Option<Validator> {
        lock(&self.validators).get(topic).cloned()
    }

    /// Hands `m` to each subscription of its topic; a full one drops it (counted).
    pub fn deliver(&self, m: PubsubMessage) {
        let mut subs = lock(&self.subs);
        if let Some(v) = subs.get_mut(&m.topic) {
            v.retain(|tx| !tx.is_closed());
            for tx in v.iter() {
                if tx.try_send(m.clone()).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %m.topic, "subscription not read: message dropped");
                }
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
