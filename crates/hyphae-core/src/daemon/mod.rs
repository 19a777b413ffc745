//! The libp2p daemon's control protocol (`p2pd.proto`, go-libp2p-daemon's with hivemind's additions):
//! what a client program sends `hyphae daemon` over its control socket, decoded into [`Request`] under
//! explicit [`Limits`], and the responses encoded back. Sans-IO like every codec here: the daemon's
//! server (crate `hyphae`) does the sockets.
//!
//! A client is a local program, not a trusted one: a malformed or oversized request is a
//! [`DecodeError`] (the server answers ERROR or closes that control connection), never a panic.

use crate::identity::PeerId;
use crate::multiaddr::Multiaddr;
use crate::time::Duration;
use crate::DecodeError;

#[allow(clippy::all, clippy::pedantic, non_snake_case, non_upper_case_globals, non_camel_case_types, unused_imports, unknown_lints)]
#[rustfmt::skip]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/p2pd.rs"));
}

use pb::mod_Request::Type as Rt;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest control message (a PUBSUB publish carries a message). Default 4 MiB.
    pub max_message_len: usize,
    /// Addresses or protocols in one request. Default 64.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message_len: 4 << 20, max_items: 64 }
    }
}

/// The connection-manager operations (CONNMANAGER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnManagerOp {
    Tag { peer: PeerId, tag: String, weight: i64 },
    Untag { peer: PeerId, tag: String },
    Trim,
}

/// The DHT operations (DHT), each with the fields it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtOp {
    FindPeer {
        peer: PeerId,
    },
    FindPeersConnectedToPeer {
        peer: PeerId,
    },
    /// `cid`: the CID's bytes; `count`: how many providers (default 20).
    FindProviders {
        cid: Vec<u8>,
        count: usize,
    },
    GetClosestPeers {
        key: Vec<u8>,
    },
    GetPublicKey {
        peer: PeerId,
    },
    GetValue {
        key: Vec<u8>,
    },
    SearchValue {
        key: Vec<u8>,
    },
    PutValue {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Provide {
        cid: Vec<u8>,
    },
}

/// The pubsub operations (PUBSUB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubsubOp {
    GetTopics,
    /// Peers subscribed to `topic` (all pubsub peers when empty).
    ListPeers {
        topic: String,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
    },
    /// The control connection then carries the topic's messages, each a length-prefixed `PSMessage`.
    Subscribe {
        topic: String,
    },
}

/// A decoded control request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    Identify,
    Connect {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        timeout: Option<Duration>,
    },
    StreamOpen {
        peer: PeerId,
        protocols: Vec<String>,
        timeout: Option<Duration>,
    },
    /// Serve `protocols` by connecting to the client's socket `addr` for each inbound stream.
    StreamHandler {
        addr: Multiaddr,
        protocols: Vec<String>,
        balanced: bool,
    },
    RemoveStreamHandler {
        addr: Multiaddr,
        protocols: Vec<String>,
    },
    ListPeers,
    Disconnect {
        peer: PeerId,
    },
    ConnManager(ConnManagerOp),
    Dht {
        op: DhtOp,
        timeout: Option<Duration>,
    },
    Pubsub(PubsubOp),
    /// hivemind's persistent connection: after the OK answer, the control connection carries
    /// [`PersistentRequest`]s and their responses.
    PersistentConnUpgrade,
    /// js-libp2p-daemon's PEERSTORE: the protocols the peerstore knows for `peer` (GET_PROTOCOLS), or its
    /// addresses too (GET_PEER_INFO, which js's own daemon leaves unimplemented).
    Peerstore {
        peer: PeerId,
        info: bool,
    },
    /// A request type this daemon does not serve yet (its name, for the error answer).
    Unsupported(&'static str),
}

/// Decodes one varint-length-prefixed request from the front of `buf` (`Ok(None)`: more bytes needed).
pub fn decode_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, DecodeError> {
    // Every request body is an embedded message (its own fields are scalars, strings and bytes).
    const NESTED: &[crate::pb::Nest] = &[
        crate::pb::Nest(2, &[]),
        crate::pb::Nest(3, &[]),
        crate::pb::Nest(4, &[]),
        crate::pb::Nest(5, &[]),
        crate::pb::Nest(6, &[]),
        crate::pb::Nest(7, &[]),
        crate::pb::Nest(8, &[]),
        crate::pb::Nest(9, &[]),
    ];
    let Some((r, used)) = crate::varint::decode_frame(buf, limits.max_message_len)? else { return Ok(None) };
    // Type 9 (protobuf writers put field 1 first) with a body: js's PEERSTORE, not hivemind's upgrade.
    if buf[r.clone()].starts_with(&[0x08, 0x09]) {
        let env: pb::PeerstoreEnvelope =
            crate::pb::read_message(&buf[r.clone()], &[crate::pb::Nest(9, &[])], "malformed PEERSTORE request")?;
        if let Some(ps) = env.peerStore {
            use pb::mod_PeerstoreRequest::Type as T;
            let p = peer(ps.id.as_deref().ok_or(DecodeError::Invalid("PEERSTORE request lacks its peer"))?)?;
            let info = match ps.type_pb {
                Some(T::GET_PROTOCOLS) => false,
                Some(T::GET_PEER_INFO) => true,
                _ => return Err(DecodeError::Invalid("PEERSTORE request of unknown type")),
            };
            return Ok(Some((Request::Peerstore { peer: p, info }, used)));
        }
    }
    let Some((m, used)) = crate::pb::read_frame::<pb::Request>(buf, limits.max_message_len, NESTED, "malformed control request")? else {
        return Ok(None);
    };
    Ok(Some((request(m, limits)?, used)))
}

fn peer(b: &[u8]) -> Result<PeerId, DecodeError> {
    PeerId::from_bytes(b)
}

fn timeout(t: Option<i64>) -> Option<Duration> {
    // Seconds, as go's daemon reads it; zero or negative: the daemon's default.
    t.filter(|&s| s > 0).map(|s| Duration::from_secs(s.min(3600) as u64))
}

fn bounded<T>(v: Vec<T>, limits: &Limits) -> Result<Vec<T>, DecodeError> {
    if v.len() > limits.max_items {
        return Err(DecodeError::TooLarge { len: v.len(), limit: limits.max_items });
    }
    Ok(v)
}

fn addrs(v: Vec<Vec<u8>>, limits: &Limits) -> Result<Vec<Multiaddr>, DecodeError> {
    bounded(v, limits)?.iter().map(|a| Multiaddr::from_bytes(a).map_err(|_| DecodeError::Invalid("bad multiaddr"))).collect()
}

fn request(m: pb::Request, limits: &Limits) -> Result<Request, DecodeError> {
    let missing = DecodeError::Invalid("request lacks its body");
    Ok(match m.type_pb {
        Rt::IDENTIFY => Request::Identify,
        Rt::CONNECT => {
            let c = m.connect.ok_or(missing)?;
            Request::Connect { peer: peer(&c.peer)?, addrs: addrs(c.addrs, limits)?, timeout: timeout(c.timeout) }
        }
        Rt::STREAM_OPEN => {
            let s = m.streamOpen.ok_or(missing)?;
            Request::StreamOpen { peer: peer(&s.peer)?, protocols: bounded(s.proto, limits)?, timeout: timeout(s.timeout) }
        }
        Rt::STREAM_HANDLER => {
            let s = m.streamHandler.ok_or(missing)?;
            let addr = Multiaddr::from_bytes(&s.addr).map_err(|_| DecodeError::Invalid("bad handler address"))?;
            Request::StreamHandler { addr, protocols: bounded(s.proto, limits)?, balanced: s.balanced.unwrap_or(false) }
        }
        Rt::REMOVE_STREAM_HANDLER => {
            let s = m.removeStreamHandler.ok_or(missing)?;
            let addr = Multiaddr::from_bytes(&s.addr).map_err(|_| DecodeError::Invalid("bad handler address"))?;
            Request::RemoveStreamHandler { addr, protocols: bounded(s.proto, limits)? }
        }
        Rt::LIST_PEERS => Request::ListPeers,
        Rt::DISCONNECT => Request::Disconnect { peer: peer(&m.disconnect.ok_or(missing)?.peer)? },
        Rt::CONNMANAGER => {
            use pb::mod_ConnManagerRequest::Type as C;
            let c = m.connManager.ok_or(missing)?;
            let p = || c.peer.as_deref().map(peer).unwrap_or(Err(DecodeError::Invalid("CONNMANAGER lacks its peer")));
            Request::ConnManager(match c.type_pb {
                C::TAG_PEER => ConnManagerOp::Tag { peer: p()?, tag: c.tag.clone().unwrap_or_default(), weight: c.weight.unwrap_or(0) },
                C::UNTAG_PEER => ConnManagerOp::Untag { peer: p()?, tag: c.tag.clone().unwrap_or_default() },
                C::TRIM => ConnManagerOp::Trim,
            })
        }
        Rt::DHT => {
            use pb::mod_DHTRequest::Type as D;
            let d = m.dht.ok_or(missing)?;
            let need = |v: Option<Vec<u8>>, what: &'static str| v.ok_or(DecodeError::Invalid(what));
            let p = |v: Option<Vec<u8>>| need(v, "DHT request lacks its peer").and_then(|b| peer(&b));
            let op = match d.type_pb {
                D::FIND_PEER => DhtOp::FindPeer { peer: p(d.peer)? },
                D::FIND_PEERS_CONNECTED_TO_PEER => DhtOp::FindPeersConnectedToPeer { peer: p(d.peer)? },
                D::FIND_PROVIDERS => DhtOp::FindProviders {
                    cid: need(d.cid, "DHT request lacks its cid")?,
                    count: d.count.filter(|&c| c > 0).map_or(20, |c| c.min(1000) as usize),
                },
                D::GET_CLOSEST_PEERS => DhtOp::GetClosestPeers { key: need(d.key, "DHT request lacks its key")? },
                D::GET_PUBLIC_KEY => DhtOp::GetPublicKey { peer: p(d.peer)? },
                D::GET_VALUE => DhtOp::GetValue { key: need(d.key, "DHT request lacks its key")? },
                D::SEARCH_VALUE => DhtOp::SearchValue { key: need(d.key, "DHT request lacks its key")? },
                D::PUT_VALUE => {
                    DhtOp::PutValue { key: need(d.key, "DHT request lacks its key")?, value: need(d.value, "DHT request lacks its value")? }
                }
                D::PROVIDE => DhtOp::Provide { cid: need(d.cid, "DHT request lacks its cid")? },
            };
            Request::Dht { op, timeout: timeout(d.timeout) }
        }
        Rt::PUBSUB => {
            use pb::mod_PSRequest::Type as P;
            let r = m.pubsub.ok_or(missing)?;
            let topic = || r.topic.clone().ok_or(DecodeError::Invalid("PUBSUB request lacks its topic"));
            Request::Pubsub(match r.type_pb {
                P::GET_TOPICS => PubsubOp::GetTopics,
                P::LIST_PEERS => PubsubOp::ListPeers { topic: r.topic.clone().unwrap_or_default() },
                P::PUBLISH => PubsubOp::Publish { topic: topic()?, data: r.data.clone().unwrap_or_default() },
                P::SUBSCRIBE => PubsubOp::Subscribe { topic: topic()? },
            })
        }
        Rt::PERSISTENT_CONN_UPGRADE => Request::PersistentConnUpgrade,
    })
}

fn response(r: &pb::Response, out: &mut Vec<u8>) {
    crate::pb::write_frame(r, out);
}

fn base(ok: bool) -> pb::Response {
    pb::Response { type_pb: if ok { pb::mod_Response::Type::OK } else { pb::mod_Response::Type::ERROR }, ..Default::default() }
}

/// `OK` with nothing else.
pub fn encode_ok(out: &mut Vec<u8>) {
    response(&base(true), out);
}

/// `ERROR` with its message.
pub fn encode_error(msg: &str, out: &mut Vec<u8>) {
    let mut r = base(false);
    r.error = Some(pb::ErrorResponse { msg: msg.to_string() });
    response(&r, out);
}

/// IDENTIFY's answer: our peer id and listen addresses.
pub fn encode_identify(id: &PeerId, addrs: &[Multiaddr], out: &mut Vec<u8>) {
    let mut r = base(true);
    r.identify = Some(pb::IdentifyResponse { id: id.to_bytes(), addrs: addrs.iter().map(Multiaddr::to_bytes).collect() });
    response(&r, out);
}

/// PEERSTORE's answer: the protocols, and with `addrs` (GET_PEER_INFO) the peer and its addresses.
pub fn encode_peerstore(peer: &PeerId, protocols: &[String], addrs: Option<&[Multiaddr]>, out: &mut Vec<u8>) {
    let mut r = base(true);
    r.peerStore = Some(pb::PeerstoreResponse {
        peer: addrs.map(|a| pb::PeerInfo { id: peer.to_bytes(), addrs: a.iter().map(Multiaddr::to_bytes).collect() }),
        protos: protocols.to_vec(),
    });
    response(&r, out);
}

/// LIST_PEERS's answer.
pub fn encode_peers(peers: &[(PeerId, Vec<Multiaddr>)], out: &mut Vec<u8>) {
    let mut r = base(true);
    r.peers = peers.iter().map(|(p, a)| pb::PeerInfo { id: p.to_bytes(), addrs: a.iter().map(Multiaddr::to_bytes).collect() }).collect();
    response(&r, out);
}

fn stream_info(peer: &PeerId, addr: &Multiaddr, protocol: &str) -> pb::StreamInfo {
    pb::StreamInfo { peer: peer.to_bytes(), addr: addr.to_bytes(), proto: protocol.to_string() }
}

/// STREAM_OPEN's answer (then the control connection carries the stream's bytes).
pub fn encode_stream_opened(peer: &PeerId, addr: &Multiaddr, protocol: &str, out: &mut Vec<u8>) {
    let mut r = base(true);
    r.streamInfo = Some(stream_info(peer, addr, protocol));
    response(&r, out);
}

/// What the daemon writes first on a connection to a handler's socket (then the stream's bytes).
pub fn encode_inbound_stream(peer: &PeerId, addr: &Multiaddr, protocol: &str, out: &mut Vec<u8>) {
    crate::pb::write_frame(&stream_info(peer, addr, protocol), out);
}

fn dht_response(ty: pb::mod_DHTResponse::Type, peer: Option<(&PeerId, &[Multiaddr])>, value: Option<&[u8]>) -> pb::DHTResponse {
    pb::DHTResponse {
        type_pb: ty,
        peer: peer.map(|(p, a)| pb::PeerInfo { id: p.to_bytes(), addrs: a.iter().map(Multiaddr::to_bytes).collect() }),
        value: value.map(<[u8]>::to_vec),
    }
}

/// A DHT answer of one value (FIND_PEER, GET_PUBLIC_KEY, GET_VALUE): `Response{OK, dht: VALUE}`.
pub fn encode_dht_value(peer: Option<(&PeerId, &[Multiaddr])>, value: Option<&[u8]>, out: &mut Vec<u8>) {
    let mut r = base(true);
    r.dht = Some(dht_response(pb::mod_DHTResponse::Type::VALUE, peer, value));
    response(&r, out);
}

/// The start of a streamed DHT answer: `Response{OK, dht: BEGIN}`; then [`encode_dht_item`]s and
/// [`encode_dht_end`], each a bare `DHTResponse`.
pub fn encode_dht_begin(out: &mut Vec<u8>) {
    let mut r = base(true);
    r.dht = Some(dht_response(pb::mod_DHTResponse::Type::BEGIN, None, None));
    response(&r, out);
}

pub fn encode_dht_item(peer: Option<(&PeerId, &[Multiaddr])>, value: Option<&[u8]>, out: &mut Vec<u8>) {
    crate::pb::write_frame(&dht_response(pb::mod_DHTResponse::Type::VALUE, peer, value), out);
}

pub fn encode_dht_end(out: &mut Vec<u8>) {
    crate::pb::write_frame(&dht_response(pb::mod_DHTResponse::Type::END, None, None), out);
}

/// PUBSUB GET_TOPICS / LIST_PEERS answers.
pub fn encode_pubsub(topics: &[String], peers: &[PeerId], out: &mut Vec<u8>) {
    let mut r = base(true);
    r.pubsub = Some(pb::PSResponse { topics: topics.to_vec(), peerIDs: peers.iter().map(PeerId::to_bytes).collect() });
    response(&r, out);
}

/// One message of a subscription (after SUBSCRIBE's OK): a length-prefixed `PSMessage`.
pub fn encode_ps_message(from: Option<&PeerId>, data: &[u8], seqno: Option<u64>, topic: &str, out: &mut Vec<u8>) {
    let m = pb::PSMessage {
        from: from.map(PeerId::to_bytes),
        data: Some(data.to_vec()),
        seqno: seqno.map(|s| s.to_be_bytes().to_vec()),
        topicIDs: vec![topic.to_string()],
        signature: None,
        key: None,
    };
    crate::pb::write_frame(&m, out);
}

/// The outcome of a unary call: the handler's answer or its error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnaryResult {
    Response(Vec<u8>),
    Error(Vec<u8>),
}

/// What a client sends on a persistent connection (and one daemon sends another on a unary stream:
/// `CallUnary` to ask, `UnaryResponse` to answer). `call` is the 16-byte call id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistentRequest {
    AddUnaryHandler { call: Vec<u8>, proto: String, balanced: bool },
    RemoveUnaryHandler { call: Vec<u8>, proto: String },
    CallUnary { call: Vec<u8>, peer: PeerId, proto: String, data: Vec<u8> },
    UnaryResponse { call: Vec<u8>, result: UnaryResult },
    Cancel { call: Vec<u8> },
}

impl PersistentRequest {
    pub fn call(&self) -> &[u8] {
        match self {
            PersistentRequest::AddUnaryHandler { call, .. }
            | PersistentRequest::RemoveUnaryHandler { call, .. }
            | PersistentRequest::CallUnary { call, .. }
            | PersistentRequest::UnaryResponse { call, .. }
            | PersistentRequest::Cancel { call } => call,
        }
    }
}

fn unary_result(r: pb::CallUnaryResponse) -> UnaryResult {
    use pb::mod_CallUnaryResponse::OneOfresult as R;
    match r.result {
        R::response(b) => UnaryResult::Response(b),
        R::error(b) => UnaryResult::Error(b),
        R::None => UnaryResult::Response(Vec::new()),
    }
}

fn unary_pb(r: &UnaryResult) -> pb::CallUnaryResponse {
    use pb::mod_CallUnaryResponse::OneOfresult as R;
    pb::CallUnaryResponse {
        result: match r {
            UnaryResult::Response(b) => R::response(b.clone()),
            UnaryResult::Error(b) => R::error(b.clone()),
        },
    }
}

/// Decodes one length-prefixed `PersistentConnectionRequest` (`Ok(None)`: more bytes needed).
pub fn decode_persistent_request(buf: &[u8], limits: &Limits) -> Result<Option<(PersistentRequest, usize)>, DecodeError> {
    use pb::mod_PersistentConnectionRequest::OneOfmessage as M;
    const NESTED: &[crate::pb::Nest] =
        &[crate::pb::Nest(2, &[]), crate::pb::Nest(3, &[]), crate::pb::Nest(4, &[]), crate::pb::Nest(5, &[]), crate::pb::Nest(6, &[])];
    let Some((m, used)) =
        crate::pb::read_frame::<pb::PersistentConnectionRequest>(buf, limits.max_message_len, NESTED, "malformed persistent request")?
    else {
        return Ok(None);
    };
    if m.callId.len() != 16 {
        return Err(DecodeError::Invalid("call id is not 16 bytes"));
    }
    let call = m.callId;
    let r = match m.message {
        M::addUnaryHandler(a) => PersistentRequest::AddUnaryHandler { call, proto: a.proto, balanced: a.balanced.unwrap_or(false) },
        M::removeUnaryHandler(r) => PersistentRequest::RemoveUnaryHandler { call, proto: r.proto },
        M::callUnary(c) => PersistentRequest::CallUnary { call, peer: peer(&c.peer)?, proto: c.proto, data: c.data },
        M::unaryResponse(r) => PersistentRequest::UnaryResponse { call, result: unary_result(r) },
        M::cancel(_) => PersistentRequest::Cancel { call },
        M::None => return Err(DecodeError::Invalid("persistent request without a message")),
    };
    Ok(Some((r, used)))
}

fn persistent_response(call: &[u8], message: pb::mod_PersistentConnectionResponse::OneOfmessage, out: &mut Vec<u8>) {
    crate::pb::write_frame(&pb::PersistentConnectionResponse { callId: call.to_vec(), message }, out);
}

/// A request done (handler added or removed): the call id alone.
pub fn encode_persistent_ok(call: &[u8], out: &mut Vec<u8>) {
    persistent_response(call, pb::mod_PersistentConnectionResponse::OneOfmessage::None, out);
}

pub fn encode_persistent_error(call: &[u8], msg: &str, out: &mut Vec<u8>) {
    let e = pb::DaemonError { message: Some(msg.to_string()) };
    persistent_response(call, pb::mod_PersistentConnectionResponse::OneOfmessage::daemonError(e), out);
}

pub fn encode_persistent_cancel(call: &[u8], out: &mut Vec<u8>) {
    persistent_response(call, pb::mod_PersistentConnectionResponse::OneOfmessage::cancel(pb::Cancel {}), out);
}

/// The answer to a client's unary call.
pub fn encode_call_response(call: &[u8], result: &UnaryResult, out: &mut Vec<u8>) {
    persistent_response(call, pb::mod_PersistentConnectionResponse::OneOfmessage::callUnaryResponse(unary_pb(result)), out);
}

/// A call for a handler of this client: `caller` asks `proto` with `data`.
pub fn encode_request_handling(call: &[u8], caller: &PeerId, proto: &str, data: &[u8], out: &mut Vec<u8>) {
    let c = pb::CallUnaryRequest { peer: caller.to_bytes(), proto: proto.to_string(), data: data.to_vec() };
    persistent_response(call, pb::mod_PersistentConnectionResponse::OneOfmessage::requestHandling(c), out);
}

/// What a daemon sends on a unary stream: the call (as the client sent it) or the answer.
pub fn encode_persistent_request(r: &PersistentRequest, out: &mut Vec<u8>) {
    use pb::mod_PersistentConnectionRequest::OneOfmessage as M;
    let message = match r {
        PersistentRequest::AddUnaryHandler { proto, balanced, .. } => {
            M::addUnaryHandler(pb::AddUnaryHandlerRequest { proto: proto.clone(), balanced: Some(*balanced) })
        }
        PersistentRequest::RemoveUnaryHandler { proto, .. } => {
            M::removeUnaryHandler(pb::RemoveUnaryHandlerRequest { proto: proto.clone() })
        }
        PersistentRequest::CallUnary { peer, proto, data, .. } => {
            M::callUnary(pb::CallUnaryRequest { peer: peer.to_bytes(), proto: proto.clone(), data: data.clone() })
        }
        PersistentRequest::UnaryResponse { result, .. } => M::unaryResponse(unary_pb(result)),
        PersistentRequest::Cancel { .. } => M::cancel(pb::Cancel {}),
    };
    crate::pb::write_frame(&pb::PersistentConnectionRequest { callId: r.call().to_vec(), message }, out);
}

/// A daemon's answer to a client's persistent request, decoded (for clients and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistentResponse {
    Ok { call: Vec<u8> },
    CallResponse { call: Vec<u8>, result: UnaryResult },
    RequestHandling { call: Vec<u8>, caller: PeerId, proto: String, data: Vec<u8> },
    Error { call: Vec<u8>, message: String },
    Cancel { call: Vec<u8> },
}

pub fn decode_persistent_response(buf: &[u8], limits: &Limits) -> Result<Option<(PersistentResponse, usize)>, DecodeError> {
    use pb::mod_PersistentConnectionResponse::OneOfmessage as M;
    const NESTED: &[crate::pb::Nest] =
        &[crate::pb::Nest(2, &[]), crate::pb::Nest(3, &[]), crate::pb::Nest(4, &[]), crate::pb::Nest(5, &[])];
    let Some((m, used)) =
        crate::pb::read_frame::<pb::PersistentConnectionResponse>(buf, limits.max_message_len, NESTED, "malformed persistent response")?
    else {
        return Ok(None);
    };
    let call = m.callId;
    let r = match m.message {
        M::None => PersistentResponse::Ok { call },
        M::callUnaryResponse(r) => PersistentResponse::CallResponse { call, result: unary_result(r) },
        M::requestHandling(c) => PersistentResponse::RequestHandling { call, caller: peer(&c.peer)?, proto: c.proto, data: c.data },
        M::daemonError(e) => PersistentResponse::Error { call, message: e.message.unwrap_or_default() },
        M::cancel(_) => PersistentResponse::Cancel { call },
    };
    Ok(Some((r, used)))
}

/// A control request of `type` alone (IDENTIFY, LIST_PEERS, PERSISTENT_CONN_UPGRADE): for clients.
pub fn encode_bare_request(upgrade: bool, out: &mut Vec<u8>) {
    let r = pb::Request { type_pb: if upgrade { Rt::PERSISTENT_CONN_UPGRADE } else { Rt::IDENTIFY }, ..Default::default() };
    crate::pb::write_frame(&r, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(r: &pb::Request) -> Vec<u8> {
        let mut out = Vec::new();
        crate::pb::write_frame(r, &mut out);
        out
    }

    /// Type 9 is two requests: js's PEERSTORE (with its body in field 9) and hivemind's upgrade (bare).
    #[test]
    fn type_nine_is_peerstore_with_a_body_and_the_upgrade_without() {
        let l = Limits::default();
        let p = crate::identity::Keypair::generate_ed25519(&mut crate::rng::from_seed([1; 32])).peer_id();
        let env = |ty: Option<pb::mod_PeerstoreRequest::Type>| {
            let e = pb::PeerstoreEnvelope {
                type_pb: Rt::PERSISTENT_CONN_UPGRADE,
                peerStore: Some(pb::PeerstoreRequest { type_pb: ty, id: Some(p.to_bytes()), protos: vec![] }),
            };
            let mut out = Vec::new();
            crate::pb::write_frame(&e, &mut out);
            out
        };
        let got = |b: &[u8]| decode_request(b, &l).map(|r| r.map(|(r, _)| r));
        use pb::mod_PeerstoreRequest::Type as T;
        assert_eq!(got(&env(Some(T::GET_PROTOCOLS))), Ok(Some(Request::Peerstore { peer: p.clone(), info: false })));
        assert_eq!(got(&env(Some(T::GET_PEER_INFO))), Ok(Some(Request::Peerstore { peer: p.clone(), info: true })));
        assert!(got(&env(None)).is_err());
        let mut bare = Vec::new();
        encode_bare_request(true, &mut bare);
        assert_eq!(got(&bare), Ok(Some(Request::PersistentConnUpgrade)));
        let mut out = Vec::new();
        encode_peerstore(&p, &["/a".into()], None, &mut out);
        assert!(out.len() > 4 && out[1..3] == [0x08, 0x00], "OK: {out:?}");
    }

    #[test]
    fn daemon_requests_decode_and_bad_ones_are_errors() {
        let p = crate::Keypair::generate_ed25519(&mut crate::rng::from_seed([1; 32])).peer_id();
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let r = pb::Request {
            type_pb: Rt::CONNECT,
            connect: Some(pb::ConnectRequest { peer: p.to_bytes(), addrs: vec![a.to_bytes()], timeout: Some(5) }),
            ..Default::default()
        };
        let buf = frame(&r);
        let (got, used) = decode_request(&buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(got, Request::Connect { peer: p.clone(), addrs: vec![a], timeout: Some(Duration::from_secs(5)) });
        assert_eq!(decode_request(&buf[..buf.len() - 1], &Limits::default()).unwrap(), None, "need more bytes");
        // A handler request without `balanced` (p2pclient 0.3.0) is fine.
        let r = pb::Request {
            type_pb: Rt::STREAM_HANDLER,
            streamHandler: Some(pb::StreamHandlerRequest { addr: b"\x90\x03".to_vec(), proto: vec!["/x".into()], balanced: None }),
            ..Default::default()
        };
        assert!(decode_request(&frame(&r), &Limits::default()).is_err(), "a unix multiaddr without its path is malformed");
        // Missing bodies, bad peer ids, oversized lists and garbage: errors, not panics.
        let r = pb::Request { type_pb: Rt::STREAM_OPEN, ..Default::default() };
        assert!(decode_request(&frame(&r), &Limits::default()).is_err());
        let r =
            pb::Request { type_pb: Rt::DISCONNECT, disconnect: Some(pb::DisconnectRequest { peer: vec![1, 2, 3] }), ..Default::default() };
        assert!(decode_request(&frame(&r), &Limits::default()).is_err());
        let r = pb::Request {
            type_pb: Rt::STREAM_OPEN,
            streamOpen: Some(pb::StreamOpenRequest { peer: p.to_bytes(), proto: vec!["/p".into(); 65], timeout: None }),
            ..Default::default()
        };
        assert!(matches!(decode_request(&frame(&r), &Limits::default()), Err(DecodeError::TooLarge { len: 65, .. })));
        assert!(decode_request(&[0x05, 0xff, 0xff, 0xff, 0xff, 0xff], &Limits::default()).is_err());
        // Found by the fuzz smoke run: an embedded message longer than its parent (quick-protobuf
        // subtracts with overflow on it); the nested check refuses it first.
        assert!(decode_request(&[0x06, 0x32, 0x01, 0x10, 0x00, 0x32, 0x00, 0x00, 0x00], &Limits::default()).is_err());
        let huge = [0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(decode_request(&huge, &Limits::default()), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn daemon_persistent_messages_round_trip() {
        let p = crate::Keypair::generate_ed25519(&mut crate::rng::from_seed([3; 32])).peer_id();
        let call = vec![7u8; 16];
        let r = PersistentRequest::CallUnary { call: call.clone(), peer: p.clone(), proto: "/u/1".into(), data: b"x".to_vec() };
        let mut out = Vec::new();
        encode_persistent_request(&r, &mut out);
        assert_eq!(decode_persistent_request(&out, &Limits::default()).unwrap().unwrap().0, r);
        let r = PersistentRequest::UnaryResponse { call: call.clone(), result: UnaryResult::Error(b"no".to_vec()) };
        let mut out = Vec::new();
        encode_persistent_request(&r, &mut out);
        assert_eq!(decode_persistent_request(&out, &Limits::default()).unwrap().unwrap().0, r);
        let mut out = Vec::new();
        encode_request_handling(&call, &p, "/u/1", b"hi", &mut out);
        let (got, _) = decode_persistent_response(&out, &Limits::default()).unwrap().unwrap();
        assert_eq!(got, PersistentResponse::RequestHandling { call: call.clone(), caller: p, proto: "/u/1".into(), data: b"hi".to_vec() });
        // A call id that is not a UUID's 16 bytes is refused.
        let bad = PersistentRequest::Cancel { call: vec![1, 2, 3] };
        let mut out = Vec::new();
        encode_persistent_request(&bad, &mut out);
        assert!(decode_persistent_request(&out, &Limits::default()).is_err());
    }

    #[test]
    fn daemon_responses_encode_as_the_protocol_says() {
        let p = crate::Keypair::generate_ed25519(&mut crate::rng::from_seed([2; 32])).peer_id();
        let mut out = Vec::new();
        encode_identify(&p, &["/ip4/1.2.3.4/tcp/1".parse().unwrap()], &mut out);
        let (r, _) = crate::pb::read_frame::<pb::Response>(&out, 1 << 20, &[], "x").unwrap().unwrap();
        assert_eq!(r.type_pb, pb::mod_Response::Type::OK);
        assert_eq!(r.identify.unwrap().id, p.to_bytes());
        let mut out = Vec::new();
        encode_error("no route", &mut out);
        let (r, _) = crate::pb::read_frame::<pb::Response>(&out, 1 << 20, &[], "x").unwrap().unwrap();
        assert_eq!((r.type_pb, r.error.unwrap().msg), (pb::mod_Response::Type::ERROR, "no route".to_string()));
    }
}
