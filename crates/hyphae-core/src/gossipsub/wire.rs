//! The pubsub RPC on the wire (`rpc.proto`): varint-length-prefixed frames, decoded into [`Rpc`] under
//! explicit [`Limits`] that are checked while reading, before anything is kept.
//!
//! Why by hand here, when kad and identify decode with the code pb-rs generates: a generated reader
//! builds every repeated entry before a limit can look at it (an RPC of 500,000 empty IHAVEs costs
//! ~24× its size in memory), and a message's signature covers the message's own bytes minus two
//! fields, which a generated reader has already thrown away. So this reader counts as it goes and
//! keeps each published message's bytes ([`Message::raw`]), which also lets the router forward a
//! message without encoding it again. The generated code stays the reference: the tests decode what
//! this writes with it.

use crate::pb::{put_bytes, put_varint, Reader, Value};
use crate::{varint, DecodeError};
use std::sync::Arc;

/// What a peer may send in one RPC. Over a limit the RPC is refused (the router resets the stream and
/// counts a violation): every implementation we interoperate with stays far inside them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest RPC frame, both ways (checked on the length prefix, before buffering). Default 1 MiB, as
    /// go-libp2p-pubsub (rust-libp2p defaults to 64 KiB, js to 4 MiB: a message larger than the
    /// receiver's limit is lost, see PEERS.md).
    pub max_rpc_len: usize,
    /// Subscription changes per RPC. Default 200 (the 2026 subscription floods sent tens of thousands).
    pub max_subscriptions: usize,
    /// Messages per RPC. Default 1,024.
    pub max_messages: usize,
    /// Message ids per RPC, over all IHAVE, IWANT and IDONTWANT entries. Default 5,000 (go's
    /// `MaxIHaveLength`).
    pub max_message_ids: usize,
    /// GRAFT, PRUNE and IHAVE entries per RPC (topics named in control). Default 1,000.
    pub max_control_entries: usize,
    /// Peers offered in one PRUNE (peer exchange). Default 16 (go's `PrunePeers`); more are dropped.
    pub max_px_peers: usize,
    /// Bytes of a peer-exchange entry's signed peer record. Default 4 KiB (a record of a dozen
    /// addresses takes ~600 B); a longer one is dropped and the entry kept without it.
    pub max_px_record_len: usize,
    /// Bytes of a topic. Default 1,024.
    pub max_topic_len: usize,
    /// Bytes of a message id. Default 256.
    pub max_id_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rpc_len: 1 << 20,
            max_subscriptions: 200,
            max_messages: 1024,
            max_message_ids: 5000,
            max_control_entries: 1000,
            max_px_peers: 16,
            max_px_record_len: 4096,
            max_topic_len: 1024,
            max_id_len: 256,
        }
    }
}

pub type MessageId = Arc<[u8]>;

/// A published message as it travels. `from` and `key` are kept as bytes: the router validates them
/// (a bad one is a rejected message, scored, not a broken RPC).
/// The data is not kept apart: [`Message::data`] is a view into `raw`, so a cached or forwarded message
/// costs its size once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub from: Option<Vec<u8>>,
    pub seqno: Option<Vec<u8>>,
    pub topic: String,
    pub signature: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    /// The message's encoding as received (or as we encoded it): forwarded as it is.
    pub raw: Arc<[u8]>,
    /// Where the data lies in `raw`.
    data_at: std::ops::Range<usize>,
}

impl Message {
    /// Builds a message and its encoding.
    pub fn new(
        from: Option<Vec<u8>>,
        data: Vec<u8>,
        seqno: Option<Vec<u8>>,
        topic: String,
        signature: Option<Vec<u8>>,
        key: Option<Vec<u8>>,
    ) -> Message {
        let mut raw = Vec::with_capacity(data.len() + topic.len() + 160);
        if let Some(f) = &from {
            put_bytes(&mut raw, 1, f);
        }
        put_bytes(&mut raw, 2, &data);
        let data_at = raw.len() - data.len()..raw.len();
        if let Some(s) = &seqno {
            put_bytes(&mut raw, 3, s);
        }
        put_bytes(&mut raw, 4, topic.as_bytes());
        if let Some(s) = &signature {
            put_bytes(&mut raw, 5, s);
        }
        if let Some(k) = &key {
            put_bytes(&mut raw, 6, k);
        }
        Message { from, seqno, topic, signature, key, raw: raw.into(), data_at }
    }

    /// The message's payload.
    pub fn data(&self) -> &[u8] {
        &self.raw[self.data_at.clone()]
    }

    /// This message signed: the same fields with `signature` and `key` (the encoding is made anew).
    pub fn with_signature(self, signature: Vec<u8>, key: Option<Vec<u8>>) -> Message {
        let data = self.data().to_vec();
        Message::new(self.from, data, self.seqno, self.topic, Some(signature), key)
    }

    /// The bytes a signature covers: the received encoding without fields 5 and 6, in the order the
    /// sender wrote them.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"libp2p-pubsub:".to_vec();
        for f in Reader::new(&self.raw) {
            let Ok((n, v)) = f else { break };
            match (n, v) {
                (5 | 6, _) => {}
                (_, Value::Bytes(b)) => put_bytes(&mut out, n, b),
                (_, Value::Varint(x)) => put_varint(&mut out, n, x),
                // No fixed-width field exists in the schema; an unknown one is left out (and fails).
                _ => {}
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOpt {
    pub subscribe: bool,
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IHave {
    pub topic: String,
    pub ids: Vec<MessageId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    pub topic: String,
    /// Peer exchange: peers to connect to instead.
    pub peers: Vec<PxPeer>,
    /// Seconds (v1.1).
    pub backoff: Option<u64>,
}

/// A peer offered by peer exchange (the spec's `PeerInfo`): its id as bytes and, when the sender has
/// one, its signed peer record (an envelope, opened by whoever acts on it), which carries its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PxPeer {
    pub id: Vec<u8>,
    pub record: Option<Vec<u8>>,
}

/// v1.3's extensions control message: what its sender supports (unknown extensions are skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extensions {
    /// v1.4's large message handling: PREAMBLE and IMRECEIVING (field 11).
    pub large_messages: bool,
    /// The experimental test extension (field 6492434): both sides that support it send one
    /// [`Rpc::test_extension`].
    pub test: bool,
}

/// v1.4's PREAMBLE: the message `id` of `size` bytes on `topic` follows on this stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preamble {
    pub id: MessageId,
    pub size: u64,
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Control {
    pub ihave: Vec<IHave>,
    /// The ids of every IWANT entry.
    pub iwant: Vec<MessageId>,
    pub graft: Vec<String>,
    pub prune: Vec<Prune>,
    /// The ids of every IDONTWANT entry.
    pub idontwant: Vec<MessageId>,
    /// v1.3: sent once, in the first RPC on a stream.
    pub extensions: Option<Extensions>,
    /// v1.4: large messages about to arrive, and ids of large messages the sender is receiving.
    pub preamble: Vec<Preamble>,
    pub imreceiving: Vec<MessageId>,
}

impl Control {
    pub fn is_empty(&self) -> bool {
        self.ihave.is_empty()
            && self.iwant.is_empty()
            && self.graft.is_empty()
            && self.prune.is_empty()
            && self.idontwant.is_empty()
            && self.extensions.is_none()
            && self.preamble.is_empty()
            && self.imreceiving.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rpc {
    pub subscriptions: Vec<SubOpt>,
    pub publish: Vec<Message>,
    pub control: Control,
    /// v1.3's experimental test extension message (an empty message in field 6492434).
    pub test_extension: bool,
}

impl Rpc {
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty() && self.publish.is_empty() && self.control.is_empty() && !self.test_extension
    }
}

/// Field numbers of v1.3's extensions (extensions.proto).
const LARGE_MESSAGES_FIELD: u32 = 11;
const TEST_EXTENSION_FIELD: u32 = 6_492_434;

/// Counts what one RPC holds against the limits while it is read.
struct Budget<'a> {
    l: &'a Limits,
    ids: usize,
    entries: usize,
}

impl Budget<'_> {
    fn id(&mut self, b: &[u8]) -> Result<MessageId, DecodeError> {
        self.ids += 1;
        if self.ids > self.l.max_message_ids {
            return Err(DecodeError::TooLarge { len: self.ids, limit: self.l.max_message_ids });
        }
        if b.len() > self.l.max_id_len {
            return Err(DecodeError::TooLarge { len: b.len(), limit: self.l.max_id_len });
        }
        Ok(Arc::from(b))
    }
    fn entry(&mut self) -> Result<(), DecodeError> {
        self.entries += 1;
        if self.entries > self.l.max_control_entries {
            return Err(DecodeError::TooLarge { len: self.entries, limit: self.l.max_control_entries });
        }
        Ok(())
    }
    fn topic(&self, v: Value<'_>) -> Result<String, DecodeError> {
        let t = v.string()?;
        if t.len() > self.l.max_topic_len {
            return Err(DecodeError::TooLarge { len: t.len(), limit: self.l.max_topic_len });
        }
        Ok(t.to_string())
    }
}

/// Decodes one length-prefixed RPC from the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the RPC and the bytes it took. Unknown fields are skipped (extensions we do not support among
/// them).
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Rpc, usize)>, DecodeError> {
    let Some((range, used)) = varint::decode_frame(buf, limits.max_rpc_len)? else { return Ok(None) };
    let body = &buf[range];
    let mut b = Budget { l: limits, ids: 0, entries: 0 };
    let mut rpc = Rpc::default();
    for f in Reader::new(body) {
        match f? {
            (1, v) => {
                if rpc.subscriptions.len() >= limits.max_subscriptions {
                    return Err(DecodeError::TooLarge { len: rpc.subscriptions.len() + 1, limit: limits.max_subscriptions });
                }
                let (mut subscribe, mut topic) = (false, String::new());
                for f in Reader::new(v.bytes()?) {
                    match f? {
                        (1, v) => subscribe = v.varint()? != 0,
                        (2, v) => topic = b.topic(v)?,
                        _ => {}
                    }
                }
                rpc.subscriptions.push(SubOpt { subscribe, topic });
            }
            (2, v) => {
                if rpc.publish.len() >= limits.max_messages {
                    return Err(DecodeError::TooLarge { len: rpc.publish.len() + 1, limit: limits.max_messages });
                }
                rpc.publish.push(decode_message(v.bytes()?, &b)?);
            }
            (3, v) => decode_control(v.bytes()?, &mut b, &mut rpc.control)?,
            (TEST_EXTENSION_FIELD, v) => {
                v.bytes()?;
                rpc.test_extension = true;
            }
            _ => {}
        }
    }
    Ok(Some((rpc, used)))
}

fn decode_message(raw: &[u8], b: &Budget<'_>) -> Result<Message, DecodeError> {
    let mut m = Message::default();
    let mut topics = 0;
    for f in Reader::new(raw) {
        match f? {
            (1, v) => m.from = Some(v.bytes()?.to_vec()),
            (2, v) => {
                let b = v.bytes()?;
                // `b` lies inside `raw`: its offset from the start is where the data is.
                let at = b.as_ptr() as usize - raw.as_ptr() as usize;
                m.data_at = at..at + b.len();
            }
            (3, v) => m.seqno = Some(v.bytes()?.to_vec()),
            (4, v) => {
                topics += 1;
                m.topic = b.topic(v)?;
            }
            (5, v) => m.signature = Some(v.bytes()?.to_vec()),
            (6, v) => m.key = Some(v.bytes()?.to_vec()),
            _ => {}
        }
    }
    if topics != 1 {
        return Err(DecodeError::Invalid("a message must name exactly one topic"));
    }
    m.raw = Arc::from(raw);
    Ok(m)
}

fn decode_control(buf: &[u8], b: &mut Budget<'_>, c: &mut Control) -> Result<(), DecodeError> {
    for f in Reader::new(buf) {
        let (n, v) = f?;
        if !(1..=8).contains(&n) {
            // A field of a later version or an extension we do not know: skipped, whatever its type.
            continue;
        }
        let inner = v.bytes()?;
        match n {
            1 => {
                b.entry()?;
                let mut h = IHave { topic: String::new(), ids: Vec::new() };
                for f in Reader::new(inner) {
                    match f? {
                        (1, v) => h.topic = b.topic(v)?,
                        (2, v) => h.ids.push(b.id(v.bytes()?)?),
                        _ => {}
                    }
                }
                c.ihave.push(h);
            }
            2 | 5 => {
                for f in Reader::new(inner) {
                    if let (1, v) = f? {
                        let id = b.id(v.bytes()?)?;
                        if n == 2 { &mut c.iwant } else { &mut c.idontwant }.push(id);
                    }
                }
            }
            3 => {
                b.entry()?;
                // `topicID` is an optional field: repeated, the last one counts (protobuf's rule). Found by
                // fuzzing: pushing each one let one GRAFT entry carry any number of topics past the
                // control-entry limit.
                let mut topic = None;
                for f in Reader::new(inner) {
                    if let (1, v) = f? {
                        topic = Some(b.topic(v)?);
                    }
                }
                c.graft.extend(topic);
            }
            4 => {
                b.entry()?;
                let mut p = Prune { topic: String::new(), peers: Vec::new(), backoff: None };
                for f in Reader::new(inner) {
                    match f? {
                        (1, v) => p.topic = b.topic(v)?,
                        (2, v) => {
                            let mut px = PxPeer::default();
                            for f in Reader::new(v.bytes()?) {
                                match f? {
                                    (1, v) => px.id = v.bytes()?.to_vec(),
                                    (2, v) => {
                                        let r = v.bytes()?;
                                        px.record = (r.len() <= b.l.max_px_record_len).then(|| r.to_vec());
                                    }
                                    _ => {}
                                }
                            }
                            if p.peers.len() < b.l.max_px_peers && !px.id.is_empty() {
                                p.peers.push(px);
                            }
                        }
                        (3, v) => p.backoff = Some(v.varint()?),
                        _ => {}
                    }
                }
                c.prune.push(p);
            }
            6 => {
                // Optional: a repeated field merges (protobuf's rule), so a second one adds to the first.
                let e = c.extensions.get_or_insert_with(Extensions::default);
                for f in Reader::new(inner) {
                    match f? {
                        (LARGE_MESSAGES_FIELD, v) => e.large_messages = v.varint()? != 0,
                        (TEST_EXTENSION_FIELD, v) => e.test = v.varint()? != 0,
                        _ => {}
                    }
                }
            }
            7 => {
                b.entry()?;
                let (mut id, mut size, mut topic) = (None, 0, String::new());
                for f in Reader::new(inner) {
                    match f? {
                        (1, v) => id = Some(b.id(v.bytes()?)?),
                        (2, v) => size = v.varint()?,
                        (3, v) => topic = b.topic(v)?,
                        _ => {}
                    }
                }
                c.preamble.extend(id.map(|id| Preamble { id, size, topic }));
            }
            8 => {
                for f in Reader::new(inner) {
                    if let (1, v) = f? {
                        c.imreceiving.push(b.id(v.bytes()?)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes the body of a control message (without its tag).
fn encode_control(c: &Control, out: &mut Vec<u8>) {
    let mut e = Vec::new();
    for h in &c.ihave {
        e.clear();
        put_bytes(&mut e, 1, h.topic.as_bytes());
        for id in &h.ids {
            put_bytes(&mut e, 2, id);
        }
        put_bytes(out, 1, &e);
    }
    if !c.iwant.is_empty() {
        e.clear();
        for id in &c.iwant {
            put_bytes(&mut e, 1, id);
        }
        put_bytes(out, 2, &e);
    }
    for t in &c.graft {
        e.clear();
        put_bytes(&mut e, 1, t.as_bytes());
        put_bytes(out, 3, &e);
    }
    for p in &c.prune {
        e.clear();
        put_bytes(&mut e, 1, p.topic.as_bytes());
        for peer in &p.peers {
            let mut pi = Vec::new();
            put_bytes(&mut pi, 1, &peer.id);
            if let Some(r) = &peer.record {
                put_bytes(&mut pi, 2, r);
            }
            put_bytes(&mut e, 2, &pi);
        }
        if let Some(b) = p.backoff {
            put_varint(&mut e, 3, b);
        }
        put_bytes(out, 4, &e);
    }
    if !c.idontwant.is_empty() {
        e.clear();
        for id in &c.idontwant {
            put_bytes(&mut e, 1, id);
        }
        put_bytes(out, 5, &e);
    }
    if let Some(x) = &c.extensions {
        e.clear();
        if x.large_messages {
            put_varint(&mut e, LARGE_MESSAGES_FIELD, 1);
        }
        if x.test {
            put_varint(&mut e, TEST_EXTENSION_FIELD, 1);
        }
        put_bytes(out, 6, &e);
    }
    for p in &c.preamble {
        e.clear();
        put_bytes(&mut e, 1, &p.id);
        put_varint(&mut e, 2, p.size);
        put_bytes(&mut e, 3, p.topic.as_bytes());
        put_bytes(out, 7, &e);
    }
    for id in &c.imreceiving {
        e.clear();
        put_bytes(&mut e, 1, id);
        put_bytes(out, 8, &e);
    }
}

/// The RPC's body, without the length prefix.
pub fn encode_body(rpc: &Rpc, out: &mut Vec<u8>) {
    for s in &rpc.subscriptions {
        let mut e = Vec::with_capacity(s.topic.len() + 4);
        put_varint(&mut e, 1, u64::from(s.subscribe));
        put_bytes(&mut e, 2, s.topic.as_bytes());
        put_bytes(out, 1, &e);
    }
    for m in &rpc.publish {
        put_bytes(out, 2, &m.raw);
    }
    if !rpc.control.is_empty() {
        let mut e = Vec::new();
        encode_control(&rpc.control, &mut e);
        put_bytes(out, 3, &e);
    }
    if rpc.test_extension {
        put_bytes(out, TEST_EXTENSION_FIELD, &[]);
    }
}

/// Writes `rpc` as one length-prefixed frame.
pub fn encode(rpc: &Rpc, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    encode_body(rpc, &mut body);
    varint::encode(body.len() as u64, out);
    out.extend_from_slice(&body);
}

/// The frame of an RPC carrying only `m` (the common forward), written without building an [`Rpc`].
pub fn encode_message(m: &Message, out: &mut Vec<u8>) {
    let inner = m.raw.len();
    let body = 1 + varint::encoded_len(inner as u64) + inner;
    varint::encode(body as u64, out);
    out.push(0x12);
    varint::encode(inner as u64, out);
    out.extend_from_slice(&m.raw);
}

/// Bytes of the frame [`encode_message`] writes for `m`.
pub fn message_frame_len(m: &Message) -> usize {
    let inner = m.raw.len();
    let body = 1 + varint::encoded_len(inner as u64) + inner;
    varint::encoded_len(body as u64) + body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::all, clippy::pedantic, non_snake_case, non_upper_case_globals, non_camel_case_types, unused_imports, unknown_lints, dead_code)]
    #[rustfmt::skip]
    mod pb {
        include!(concat!(env!("OUT_DIR"), "/rpc.rs"));
    }

    fn id(b: &[u8]) -> MessageId {
        Arc::from(b)
    }

    fn sample() -> Rpc {
        Rpc {
            subscriptions: vec![SubOpt { subscribe: true, topic: "a".into() }, SubOpt { subscribe: false, topic: "b".into() }],
            publish: vec![Message::new(
                Some(vec![1, 2]),
                b"hello".to_vec(),
                Some(vec![0, 0, 0, 0, 0, 0, 0, 7]),
                "a".into(),
                Some(vec![9; 64]),
                None,
            )],
            control: Control {
                ihave: vec![IHave { topic: "a".into(), ids: vec![id(b"x"), id(b"y")] }],
                iwant: vec![id(b"z")],
                graft: vec!["a".into()],
                prune: vec![Prune {
                    topic: "b".into(),
                    peers: vec![PxPeer { id: vec![0, 1, 2], record: Some(vec![9; 5]) }, PxPeer { id: vec![3], record: None }],
                    backoff: Some(60),
                }],
                idontwant: vec![id(b"w")],
                extensions: Some(Extensions { large_messages: true, test: true }),
                preamble: vec![Preamble { id: id(b"p"), size: 131_072, topic: "a".into() }],
                imreceiving: vec![id(b"r")],
            },
            test_extension: true,
        }
    }

    #[test]
    fn gossipsub_wire_round_trips_and_needs_the_whole_frame() {
        let r = sample();
        let mut b = Vec::new();
        encode(&r, &mut b);
        let (d, used) = decode(&b, &Limits::default()).unwrap().unwrap();
        assert_eq!((d, used), (r, b.len()));
        assert_eq!(decode(&b[..b.len() - 1], &Limits::default()), Ok(None));
    }

    #[test]
    fn gossipsub_wire_agrees_with_the_code_generated_from_rpc_proto() {
        let r = sample();
        let mut b = Vec::new();
        encode(&r, &mut b);
        let (range, _) = varint::decode_frame(&b, 1 << 20).unwrap().unwrap();
        let body = &b[range];
        use quick_protobuf::MessageRead;
        let g = pb::RPC::from_reader(&mut quick_protobuf::BytesReader::from_bytes(body), body).unwrap();
        assert_eq!(g.subscriptions[1].subscribe, Some(false));
        assert_eq!(g.publish[0].topic, vec!["a".to_string()]);
        assert_eq!(g.publish[0].seqno.as_deref(), Some(&[0, 0, 0, 0, 0, 0, 0, 7][..]));
        let c = g.control.as_ref().unwrap();
        assert_eq!(c.prune[0].backoff, Some(60));
        assert_eq!(c.prune[0].peers[0].peerID.as_deref(), Some(&[0, 1, 2][..]));
        assert_eq!(c.prune[0].peers[0].signedPeerRecord.as_deref(), Some(&[9; 5][..]));
        assert_eq!(c.prune[0].peers[1].signedPeerRecord, None);
        assert_eq!(c.idontwant[0].messageIDs, vec![b"w".to_vec()]);
        let x = c.extensions.as_ref().unwrap();
        assert_eq!((x.largeMessageHandling, x.testExtension), (Some(true), Some(true)));
        assert_eq!(c.preamble[0].messageID.as_deref(), Some(&b"p"[..]));
        assert_eq!(c.preamble[0].messageSize, Some(131_072));
        assert_eq!(c.preamble[0].topicID.as_deref(), Some("a"));
        assert_eq!(c.imreceiving[0].messageID.as_deref(), Some(&b"r"[..]));
        assert!(g.testExtension.is_some());
        // And the generated writer's frame decodes here to the same RPC.
        let f = quick_protobuf::serialize_into_vec(&g).unwrap();
        let (d, _) = decode(&f, &Limits::default()).unwrap().unwrap();
        assert_eq!(d, r);
    }

    #[test]
    fn gossipsub_wire_signed_bytes_leave_out_signature_and_key() {
        let m = Message::new(Some(vec![1]), b"d".to_vec(), Some(vec![2]), "t".into(), Some(vec![3]), Some(vec![4]));
        let mut want = b"libp2p-pubsub:".to_vec();
        want.extend_from_slice(&[0x0a, 1, 1, 0x12, 1, b'd', 0x1a, 1, 2, 0x22, 1, b't']);
        assert_eq!(m.signed_bytes(), want);
        let mut f = Vec::new();
        encode_message(&m, &mut f);
        assert_eq!(f.len(), message_frame_len(&m));
        let (d, _) = decode(&f, &Limits::default()).unwrap().unwrap();
        assert_eq!(d.publish, vec![m]);
    }

    #[test]
    fn gossipsub_wire_takes_the_last_topic_of_a_graft_as_protobuf_says() {
        // Found by fuzzing (fuzz/artifacts/gossipsub_wire): one GRAFT entry repeating its optional
        // topicID field became one graft per repetition, past `max_control_entries`.
        let mut graft = Vec::new();
        for t in [b"a", b"b", b"c"] {
            put_bytes(&mut graft, 1, t);
        }
        let mut control = Vec::new();
        put_bytes(&mut control, 3, &graft);
        let mut body = Vec::new();
        put_bytes(&mut body, 3, &control);
        let mut f = Vec::new();
        varint::encode_frame(&body, &mut f);
        let l = Limits { max_control_entries: 1, ..Limits::default() };
        let (r, _) = decode(&f, &l).unwrap().unwrap();
        assert_eq!(r.control.graft, vec!["c".to_string()]);
    }

    #[test]
    fn gossipsub_wire_refuses_floods_before_keeping_them() {
        // 6,000 IHAVE ids in one RPC.
        let ids = (0..6000u32).map(|i| id(&i.to_be_bytes())).collect();
        let r = Rpc { control: Control { ihave: vec![IHave { topic: "t".into(), ids }], ..Control::default() }, ..Rpc::default() };
        let mut b = Vec::new();
        encode(&r, &mut b);
        assert_eq!(decode(&b, &Limits::default()), Err(DecodeError::TooLarge { len: 5001, limit: 5000 }));
        // 201 subscriptions.
        let subs = (0..201).map(|i| SubOpt { subscribe: true, topic: format!("t{i}") }).collect();
        let mut b = Vec::new();
        encode(&Rpc { subscriptions: subs, ..Rpc::default() }, &mut b);
        assert!(matches!(decode(&b, &Limits::default()), Err(DecodeError::TooLarge { limit: 200, .. })));
        // A length prefix over the limit is refused before any body arrives.
        let mut b = Vec::new();
        varint::encode(2 << 20, &mut b);
        assert!(matches!(decode(&b, &Limits::default()), Err(DecodeError::TooLarge { .. })));
        // A message with two topics.
        let mut raw = Vec::new();
        put_bytes(&mut raw, 4, b"a");
        put_bytes(&mut raw, 4, b"b");
        let mut body = Vec::new();
        put_bytes(&mut body, 2, &raw);
        let mut b = Vec::new();
        varint::encode_frame(&body, &mut b);
        assert_eq!(decode(&b, &Limits::default()), Err(DecodeError::Invalid("a message must name exactly one topic")));
    }
}
