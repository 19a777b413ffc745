//! `host.pubsub()`: gossipsub of the node machine's gossipsub service, as async calls (go-libp2p-pubsub's
//! `Join`/`Subscribe`/`Publish` are the model). A topic may have several [`Subscription`]s; the node
//! stays in the topic's mesh until [`Pubsub::unsubscribe`] (or until every subscription is dropped and
//! the next message for the topic finds no reader).

use crate::host::{Error, Host};
use crate::topics::{PubsubMessage, Validator};
use hyphae_core::gossipsub::{self, Acceptance, PublishError};
use hyphae_core::PeerId;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

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

impl Pubsub<'_> {
    /// Subscribes to `topic` (joining its mesh on the first subscription).
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let rx = self.host.inner.topics.subscribe(topic);
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
        self.host.inner.topics.set_validator(topic, v);
        self.host.inner.with_gossipsub(|g, _| g.set_validated(topic, true));
    }

    /// Removes `topic`'s validator: its messages are delivered and forwarded without one.
    pub fn remove_validator(&self, topic: &str) {
        self.host.inner.topics.remove_validator(topic);
        self.host.inner.with_gossipsub(|g, _| g.set_validated(topic, false));
    }

    /// Leaves `topic`: ends its subscriptions and the mesh. Returns whether we were subscribed.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        self.host.inner.topics.unsubscribe(topic);
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

    /// `peer`'s score (0 with scoring off, or for a peer never seen).
    pub fn peer_score(&self, peer: &PeerId) -> f64 {
        let now = self.host.inner.now();
        self.host.inner.with_gossipsub(|g, _| g.router().peer_score(peer, now))
    }

    /// The application's score for `peer` (P5, weighted by `score::Params::app_specific_weight`).
    pub fn set_app_score(&self, peer: &PeerId, score: f64) {
        self.host.inner.with_gossipsub(|g, _| g.set_app_score(peer, score));
    }

    /// Messages dropped because a subscription was not read fast enough.
    pub fn dropped(&self) -> u64 {
        self.host.inner.topics.dropped()
    }
}

impl From<PublishError> for Error {
    fn from(e: PublishError) -> Error {
        Error::Publish(e)
    }
}
