//! `host.pubsub()`: gossipsub of the node machine's gossipsub service, as async calls (go-libp2p-pubsub's
//! `Join`/`Subscribe`/`Publish` are the model). A topic may have several [`Subscription`]s; the node
//! stays in the topic's mesh until [`Pubsub::unsubscribe`] (or until every subscription is dropped and
//! the next message for the topic finds no reader).

use crate::handle::HostLink;
use crate::host::{Error, Host, Inner};
use hyphae_core::gossipsub::{self, service::GossipsubService, Acceptance, PublishError};
use hyphae_core::PeerId;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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

/// An application validator: its verdict on each message of its topic (see [`Pubsub::set_validator`]).
pub(crate) type Validator = Arc<dyn Fn(PubsubMessage) -> Pin<Box<dyn Future<Output = Acceptance> + Send>> + Send + Sync>;

fn to_message(id: &[u8], source: PeerId, author: Option<PeerId>, message: &gossipsub::Message) -> PubsubMessage {
    let seqno = message.seqno.as_deref().and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_be_bytes);
    PubsubMessage { topic: message.topic.clone(), data: message.data.clone(), from: author, seqno, id: id.to_vec(), source }
}

/// Receives a topic's messages, in arrival order.
pub struct Subscription {
    topic: String,
    rx: mpsc::Receiver<PubsubMessage>,
}

impl Subscription {
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The next message; `None` once the topic was unsubscribed or the host closed.
    pub async fn next(&mut self) -> Option<PubsubMessage> {
        self.rx.recv().await
    }
    /// A message already received, without waiting.
    pub fn next_now(&mut self) -> Option<PubsubMessage> {
        self.rx.try_recv().ok()
    }
}

/// A borrowed handle on the host's gossipsub.
pub struct Pubsub<'a> {
    host: &'a Host,
}

impl Host {
    pub fn pubsub(&self) -> Pubsub<'_> {
        Pubsub { host: self }
    }
}

impl Inner {
    pub(crate) fn with_gossipsub<R>(self: &Arc<Self>, f: impl FnOnce(&mut GossipsubService, &mut hyphae_core::service::Cx<'_>) -> R) -> R {
        let r = {
            let now = self.now();
            self.node().with_service::<GossipsubService, _>(now, f).expect("invariant: the Host registers gossipsub")
        };
        self.drain_node();
        r
    }

    fn report(&self, id: gossipsub::MessageId, verdict: Acceptance) {
        let now = self.now();
        self.node().with_service::<GossipsubService, _>(now, |g, cx| g.report_validation(cx, &id, verdict));
        if let Some(me) = self.weak().upgrade() {
            me.drain_node();
        }
    }

    /// Hands a received message (or one to validate) to the application.
    pub(crate) fn pubsub_event(&self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Validate { id, source, author, message } => {
                let v = crate::host::lock(&self.pubsub_validators).get(&message.topic).cloned();
                let Some(v) = v else {
                    // The validator was removed meanwhile: drop it without blame.
                    return self.report(id, Acceptance::Ignore);
                };
                let m = to_message(&id, source, author, &message);
                let inner = self.weak();
                tokio::spawn(async move {
                    let verdict = v(m).await;
                    if let Some(inner) = inner.upgrade() {
                        inner.report(id, verdict);
                    }
                });
            }
            gossipsub::Event::Message { id, source, author, message } => {
                let m = to_message(&id, source, author, &message);
                let mut subs = crate::host::lock(&self.pubsub_subs);
                if let Some(v) = subs.get_mut(&m.topic) {
                    v.retain(|tx| !tx.is_closed());
                    for tx in v.iter() {
                        if tx.try_send(m.clone()).is_err() {
                            self.pubsub_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::debug!(topic = %m.topic, "subscription not read: message dropped");
                        }
                    }
                }
            }
            gossipsub::Event::Subscribed { peer, topic } => tracing::debug!(%peer, %topic, "peer subscribed"),
            gossipsub::Event::Unsubscribed { peer, topic } => tracing::debug!(%peer, %topic, "peer unsubscribed"),
        }
    }
}

impl Pubsub<'_> {
    /// Subscribes to `topic` (joining its mesh on the first subscription).
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        crate::host::lock(&self.host.inner.pubsub_subs).entry(topic.to_string()).or_default().push(tx);
        self.host.inner.with_gossipsub(|g, cx| g.subscribe(cx, topic));
        Subscription { topic: topic.to_string(), rx }
    }

    /// Validates every message of `topic` with `f` before it is delivered or forwarded (go's
    /// `RegisterTopicValidator`): `Accept` delivers and forwards it, `Reject` drops it as invalid,
    /// `Ignore` drops it. Each verdict runs as its own task; at most `gossipsub::Config::
    /// max_pending_validation` messages wait for one, each at most `validation_timeout`.
    pub fn set_validator<F, Fut>(&self, topic: &str, f: F)
    where
        F: Fn(PubsubMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Acceptance> + Send + 'static,
    {
        let v: Validator = Arc::new(move |m| Box::pin(f(m)));
        crate::host::lock(&self.host.inner.pubsub_validators).insert(topic.to_string(), v);
        self.host.inner.with_gossipsub(|g, _| g.set_validated(topic, true));
    }

    /// Removes `topic`'s validator: its messages are delivered and forwarded without one.
    pub fn remove_validator(&self, topic: &str) {
        crate::host::lock(&self.host.inner.pubsub_validators).remove(topic);
        self.host.inner.with_gossipsub(|g, _| g.set_validated(topic, false));
    }

    /// Leaves `topic`: ends its subscriptions and the mesh. Returns whether we were subscribed.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        crate::host::lock(&self.host.inner.pubsub_subs).remove(topic);
        self.host.inner.with_gossipsub(|g, cx| g.unsubscribe(cx, topic))
    }

    /// Publishes `data` on `topic` (signed, to every subscribed peer: flood publishing); returns the
    /// message id. Fails when no connected peer is subscribed to the topic.
    pub fn publish(&self, topic: &str, data: impl Into<Vec<u8>>) -> Result<Vec<u8>, Error> {
        let data = data.into();
        self.host.inner.with_gossipsub(|g, cx| g.publish(cx, topic, data)).map(|id| id.to_vec()).map_err(Error::Publish)
    }

    /// Topics we are subscribed to.
    pub fn topics(&self) -> Vec<String> {
        self.host.inner.with_gossipsub(|g, _| g.router().topics())
    }

    /// Our mesh peers for `topic`.
    pub fn mesh_peers(&self, topic: &str) -> Vec<PeerId> {
        self.host.inner.with_gossipsub(|g, _| g.router().mesh_peers(topic))
    }

    /// Peers known to subscribe to `topic`; every pubsub peer when `None`.
    pub fn peers(&self, topic: Option<&str>) -> Vec<PeerId> {
        self.host.inner.with_gossipsub(|g, _| g.router().peers(topic))
    }

    /// The router's counters.
    pub fn stats(&self) -> gossipsub::Stats {
        self.host.inner.with_gossipsub(|g, _| g.router().stats().clone())
    }

    /// `peer`'s counters (messages, duplicates, IDONTWANT both ways), while it is a pubsub peer.
    pub fn peer_stats(&self, peer: &PeerId) -> Option<gossipsub::PeerStats> {
        self.host.inner.with_gossipsub(|g, _| g.router().peer_stats(peer))
    }

    /// Bytes queued for `peer` that its stream has not taken yet (a publisher paces itself on it).
    pub fn queued(&self, peer: &PeerId) -> usize {
        self.host.inner.with_gossipsub(|g, _| g.router().queued(peer))
    }

    /// Messages dropped because a subscription was not read fast enough.
    pub fn dropped(&self) -> u64 {
        self.host.inner.pubsub_dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl From<PublishError> for Error {
    fn from(e: PublishError) -> Error {
        Error::Publish(e)
    }
}
