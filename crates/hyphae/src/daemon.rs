//! The p2pd-compatible control server: clients (Python `p2pclient`, `@libp2p/daemon-client`, hivemind)
//! drive a Host over a unix (or TCP) control socket with the requests of `p2pd.proto`
//! (`hyphae_core::daemon`). Each control connection carries requests in turn; STREAM_OPEN turns it into
//! the stream's byte pipe; for a STREAM_HANDLER protocol the daemon connects to the client's own socket
//! for each inbound stream, writes a `StreamInfo`, then pipes the stream's bytes.
//!
//! Bad input: a malformed or oversized request gets an ERROR answer and its control connection is
//! closed, logged; nothing a client sends reaches a panic or leaks a stream.

use crate::host::{Error, Host};
use crate::Stream;
use hyphae_core::daemon::{self as proto, ConnManagerOp, DhtOp, Limits, PersistentRequest, PubsubOp, Request, UnaryResult};
use hyphae_core::{Multiaddr, PeerId, Protocol};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The default timeout of CONNECT and STREAM_OPEN without one (go's daemon: 60 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Control connections served at once (beyond: closed at once, logged).
const MAX_CONTROL_CONNS: usize = 256;

/// Where clients reach the daemon: a unix socket path or a TCP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl ControlAddr {
    /// `/unix/PATH`, or `/ip4|ip6/../tcp/PORT`.
    pub fn from_multiaddr(m: &Multiaddr) -> Option<ControlAddr> {
        match m.iter().next()? {
            // go writes the path's leading slash into the bytes, py-multiaddr leaves it out: a unix
            // socket path here is always absolute.
            Protocol::Unix(p) if p.starts_with('/') => Some(ControlAddr::Unix(PathBuf::from(p))),
            Protocol::Unix(p) => Some(ControlAddr::Unix(PathBuf::from(format!("/{p}")))),
            _ => m.socket_addr().filter(|(_, tcp)| *tcp).map(|(sa, _)| ControlAddr::Tcp(sa)),
        }
    }
    pub fn to_multiaddr(&self) -> Multiaddr {
        match self {
            ControlAddr::Unix(p) => Multiaddr::empty().with(Protocol::Unix(p.display().to_string())),
            ControlAddr::Tcp(sa) => Multiaddr::from_tcp(*sa),
        }
    }
}

/// A stream handler a client registered: where to deliver each inbound stream of its protocols.
#[derive(Default)]
struct Handlers {
    /// Protocol → the clients' sockets (several only for `balanced` handlers, served in turn) and the
    /// next one's index.
    by_protocol: BTreeMap<String, (Vec<ControlAddr>, usize)>,
}

/// A persistent connection serving a unary protocol: its tag and the queue to its client.
type UnaryClient = (u64, tokio::sync::mpsc::Sender<Vec<u8>>);

/// hivemind's unary handlers and calls, shared by every persistent control connection.
#[derive(Default)]
struct Unary {
    /// Protocol → the persistent connections serving it, and the next one's index.
    handlers: BTreeMap<String, (Vec<UnaryClient>, usize)>,
    /// Remote peers' calls waiting for a client's answer, by call id.
    waiting: BTreeMap<Vec<u8>, tokio::sync::oneshot::Sender<UnaryResult>>,
    /// Our clients' calls in flight, to cancel, by call id.
    cancels: BTreeMap<Vec<u8>, tokio::sync::oneshot::Sender<()>>,
    next_conn: u64,
}

/// Messages queued to one persistent connection's client (beyond: the client is too slow; calls
/// for it fail).
const PERSISTENT_QUEUE: usize = 1024;

/// The daemon's shared state.
#[derive(Default)]
struct State {
    handlers: Mutex<Handlers>,
    unary: Mutex<Unary>,
    limits: Limits,
}

/// The next of a protocol's handlers, round-robin (balanced handlers, stream or unary).
fn in_turn<T: Clone>((v, next): &mut (Vec<T>, usize)) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    let t = v[*next % v.len()].clone();
    *next = next.wrapping_add(1);
    Some(t)
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running daemon (drop it or call `stop` to close the control socket).
pub struct Daemon {
    task: tokio::task::JoinHandle<()>,
    addr: ControlAddr,
}

impl Daemon {
    pub fn addr(&self) -> &ControlAddr {
        &self.addr
    }
    /// Stops serving and removes a unix socket file.
    pub fn stop(&self) {
        self.task.abort();
        if let ControlAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves the control protocol for `host` at `addr` (a stale unix socket file is replaced).
pub async fn serve(host: Host, addr: ControlAddr) -> Result<Daemon, Error> {
    serve_with(host, addr, Limits::default()).await
}

/// `serve` with explicit limits (p2pd's `-persistentConnMaxMsgSize` sets the largest message).
pub async fn serve_with(host: Host, addr: ControlAddr, limits: Limits) -> Result<Daemon, Error> {
    let handlers = Arc::new(State { limits, ..State::default() });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNS));
    let task = match &addr {
        ControlAddr::Unix(path) => {
            if path.exists() {
                std::fs::remove_file(path)?;
            }
            let l = tokio::net::UnixListener::bind(path)?;
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = l.accept().await else { continue };
                    spawn_control(host.clone(), handlers.clone(), slots.clone(), s);
                }
            })
        }
        ControlAddr::Tcp(sa) => {
            let l = tokio::net::TcpListener::bind(sa).await?;
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = l.accept().await else { continue };
                    spawn_control(host.clone(), handlers.clone(), slots.clone(), s);
                }
            })
        }
    };
    Ok(Daemon { task, addr })
}

fn spawn_control<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    host: Host,
    handlers: Arc<State>,
    slots: Arc<tokio::sync::Semaphore>,
    s: S,
) {
    let Ok(permit) = slots.try_acquire_owned() else {
        tracing::warn!("daemon: too many control connections; closing a new one");
        return;
    };
    tokio::spawn(async move {
        if let Err(e) = control(host, handlers, s).await {
            tracing::debug!(error = %e, "daemon: control connection ended");
        }
        drop(permit);
    });
}

/// Reads one varint-length-prefixed message, its length checked before reading it.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, limits: &Limits) -> std::io::Result<Option<Vec<u8>>> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return if i == 0 { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            if len > limits.max_message_len as u64 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("control message of {len} bytes exceeds the limit"),
                ));
            }
            let mut frame = Vec::with_capacity(len as usize + 10);
            hyphae_core::varint::encode(len, &mut frame);
            let start = frame.len();
            frame.resize(start + len as usize, 0);
            s.read_exact(&mut frame[start..]).await?;
            return Ok(Some(frame));
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "bad length prefix"))
}

async fn control<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(host: Host, handlers: Arc<State>, mut s: S) -> std::io::Result<()> {
    let limits = handlers.limits.clone();
    loop {
        let frame = match read_frame(&mut s, &limits).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                let mut out = Vec::new();
                proto::encode_error(&e.to_string(), &mut out);
                let _ = s.write_all(&out).await;
                return Err(e);
            }
        };
        let req = match proto::decode_request(&frame, &limits) {
            Ok(Some((r, _))) => r,
            Ok(None) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) => {
                tracing::debug!(error = %e, "daemon: malformed control request; closing");
                let mut out = Vec::new();
                proto::encode_error(&format!("malformed request: {e}"), &mut out);
                let _ = s.write_all(&out).await;
                return Ok(());
            }
        };
        let mut out = Vec::new();
        match req {
            Request::StreamOpen { peer, protocols, timeout } => {
                let protos: Vec<&str> = protocols.iter().map(String::as_str).collect();
                let r = tokio::time::timeout(timeout.unwrap_or(DEFAULT_TIMEOUT), host.new_stream(&peer, &protos)).await;
                match r {
                    Ok(Ok(stream)) => {
                        proto::encode_stream_opened(stream.remote_peer(), stream.remote_addr(), stream.protocol(), &mut out);
                        s.write_all(&out).await?;
                        // From here the control connection is the stream.
                        pipe(s, stream).await;
                        return Ok(());
                    }
                    Ok(Err(e)) => proto::encode_error(&e.to_string(), &mut out),
                    Err(_) => proto::encode_error("stream open timed out", &mut out),
                }
            }
            Request::Pubsub(PubsubOp::Subscribe { topic }) => {
                let mut sub = host.pubsub().subscribe(&topic);
                proto::encode_ok(&mut out);
                s.write_all(&out).await?;
                // From here the control connection carries the topic's messages, until the client
                // closes it (a read returns) or the subscription ends.
                let mut probe = [0u8; 1];
                loop {
                    tokio::select! {
                        m = sub.next() => {
                            let Some(m) = m else { return Ok(()) };
                            let mut b = Vec::new();
                            proto::encode_ps_message(m.from.as_ref(), &m.data, m.seqno, &m.topic, &mut b);
                            s.write_all(&b).await?;
                        }
                        r = s.read(&mut probe) => {
                            if matches!(r, Ok(0) | Err(_)) {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            Request::PersistentConnUpgrade => {
                proto::encode_ok(&mut out);
                s.write_all(&out).await?;
                persistent(host, handlers, s).await;
                return Ok(());
            }
            other => handle(&host, &handlers, other, &mut out).await,
        }
        s.write_all(&out).await?;
    }
}

/// A persistent connection (hivemind's): requests read here, each served by its own task; every
/// answer goes through one writer. When the client goes, its unary handlers go with it.
async fn persistent<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(host: Host, state: Arc<State>, s: S) {
    let (mut rd, mut wr) = tokio::io::split(s);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(PERSISTENT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let me = {
        let mut u = locked(&state.unary);
        u.next_conn += 1;
        u.next_conn
    };
    let limits = state.limits.clone();
    loop {
        let frame = match read_frame(&mut rd, &limits).await {
            Ok(Some(f)) => f,
            _ => break,
        };
        let req = match proto::decode_persistent_request(&frame, &limits) {
            Ok(Some((r, _))) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "daemon: malformed persistent request; closing");
                break;
            }
        };
        let reply = |b: Vec<u8>| {
            let _ = tx.try_send(b);
        };
        match req {
            PersistentRequest::AddUnaryHandler { call, proto: p, balanced } => {
                let mut out = Vec::new();
                let new = {
                    let mut u = locked(&state.unary);
                    match u.handlers.get_mut(&p) {
                        None => {
                            u.handlers.insert(p.clone(), (vec![(me, tx.clone())], 0));
                            Ok(true)
                        }
                        Some(_) if !balanced => Err(format!("handler for protocol {p} already set")),
                        Some((v, _)) => {
                            v.push((me, tx.clone()));
                            Ok(false)
                        }
                    }
                };
                match new {
                    Ok(first) => {
                        if first {
                            register_unary(&host, &state, &p);
                        }
                        proto::encode_persistent_ok(&call, &mut out);
                    }
                    Err(e) => proto::encode_persistent_error(&call, &e, &mut out),
                }
                reply(out);
            }
            PersistentRequest::RemoveUnaryHandler { call, proto: p } => {
                let mut out = Vec::new();
                let r = {
                    let mut u = locked(&state.unary);
                    match u.handlers.get_mut(&p) {
                        None => Err(format!("handler for protocol {p} does not exist")),
                        Some((v, _)) => {
                            let before = v.len();
                            v.retain(|(c, _)| *c != me);
                            if v.len() == before {
                                Err(format!("handler for protocol {p} was not created in this persistent connection"))
                            } else {
                                let empty = v.is_empty();
                                if empty {
                                    u.handlers.remove(&p);
                                }
                                Ok(empty)
                            }
                        }
                    }
                };
                match r {
                    Ok(empty) => {
                        if empty {
                            host.remove_stream_handler(&p);
                        }
                        proto::encode_persistent_ok(&call, &mut out);
                    }
                    Err(e) => proto::encode_persistent_error(&call, &e, &mut out),
                }
                reply(out);
            }
            PersistentRequest::CallUnary { call, peer, proto: p, data } => {
                let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
                locked(&state.unary).cancels.insert(call.clone(), cancel_tx);
                let (host, state, tx) = (host.clone(), state.clone(), tx.clone());
                tokio::spawn(async move {
                    let req = PersistentRequest::CallUnary { call: call.clone(), peer: peer.clone(), proto: p.clone(), data };
                    let mut out = Vec::new();
                    tokio::select! {
                        r = unary_call(&host, &peer, &p, &req, &state.limits) => match r {
                            Ok(result) => proto::encode_call_response(&call, &result, &mut out),
                            Err(e) => proto::encode_persistent_error(&call, &e, &mut out),
                        },
                        _ = cancel_rx => proto::encode_persistent_cancel(&call, &mut out),
                    }
                    locked(&state.unary).cancels.remove(&call);
                    let _ = tx.send(out).await;
                });
            }
            PersistentRequest::UnaryResponse { call, result } => {
                if let Some(w) = locked(&state.unary).waiting.remove(&call) {
                    let _ = w.send(result);
                }
            }
            PersistentRequest::Cancel { call } => {
                if let Some(c) = locked(&state.unary).cancels.remove(&call) {
                    let _ = c.send(());
                }
            }
        }
    }
    // The client is gone: so are its handlers.
    let emptied: Vec<String> = {
        let mut u = locked(&state.unary);
        let mut gone = Vec::new();
        for (p, (v, _)) in u.handlers.iter_mut() {
            v.retain(|(c, _)| *c != me);
            if v.is_empty() {
                gone.push(p.clone());
            }
        }
        for p in &gone {
            u.handlers.remove(p);
        }
        gone
    };
    for p in emptied {
        host.remove_stream_handler(&p);
    }
    drop(tx);
    let _ = writer.await;
}

/// One unary call to `peer`: the request (as the client sent it) on a new stream, one answer back.
async fn unary_call(host: &Host, peer: &PeerId, protocol: &str, req: &PersistentRequest, limits: &Limits) -> Result<UnaryResult, String> {
    let mut s = tokio::time::timeout(DEFAULT_TIMEOUT, host.new_stream(peer, &[protocol]))
        .await
        .map_err(|_| "stream open timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    proto::encode_persistent_request(req, &mut out);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let frame = read_frame(&mut s, limits).await.map_err(|e| e.to_string())?.ok_or("the peer closed the stream without an answer")?;
    match proto::decode_persistent_request(&frame, limits) {
        Ok(Some((PersistentRequest::UnaryResponse { result, .. }, _))) => Ok(result),
        Ok(_) => Err("the peer answered with something else than a unary response".into()),
        Err(e) => Err(format!("malformed answer: {e}")),
    }
}

/// Serves unary protocol `protocol`: each inbound stream's call goes to one of its clients (in
/// turn), whose answer goes back on the stream; if the caller gives up first, the client hears Cancel.
fn register_unary(host: &Host, state: &Arc<State>, protocol: &str) {
    let state = state.clone();
    let name = protocol.to_string();
    host.set_stream_handler(protocol, move |mut stream: Stream| {
        let (state, name) = (state.clone(), name.clone());
        async move {
            let limits = state.limits.clone();
            let Ok(Some(frame)) = read_frame(&mut stream, &limits).await else { return };
            let Ok(Some((PersistentRequest::CallUnary { call, data, .. }, _))) = proto::decode_persistent_request(&frame, &limits) else {
                tracing::debug!("daemon: a unary stream without a call");
                return;
            };
            let caller = stream.remote_peer().clone();
            let (wtx, wrx) = tokio::sync::oneshot::channel();
            let target = {
                let mut u = locked(&state.unary);
                let t = u.handlers.get_mut(&name).and_then(in_turn).map(|(_, tx)| tx);
                if t.is_some() {
                    u.waiting.insert(call.clone(), wtx);
                }
                t
            };
            let Some(target) = target else { return };
            let mut out = Vec::new();
            proto::encode_request_handling(&call, &caller, &name, &data, &mut out);
            if target.send(out).await.is_err() {
                locked(&state.unary).waiting.remove(&call);
                return;
            }
            let mut probe = [0u8; 1];
            tokio::select! {
                r = wrx => {
                    if let Ok(result) = r {
                        let mut out = Vec::new();
                        proto::encode_persistent_request(&PersistentRequest::UnaryResponse { call: call.clone(), result }, &mut out);
                        let _ = stream.write_all(&out).await;
                        let _ = stream.shutdown().await;
                    }
                }
                _ = stream.read(&mut probe) => {
                    let mut out = Vec::new();
                    proto::encode_persistent_cancel(&call, &mut out);
                    let _ = target.send(out).await;
                }
            }
            locked(&state.unary).waiting.remove(&call);
        }
    });
}

/// DHT requests, answered as go's daemon does: one value in the response, or BEGIN, values, END.
async fn dht(host: &Host, op: DhtOp, timeout: Duration, out: &mut Vec<u8>) {
    let d = host.dht();
    let r: Result<(), String> = async {
        let t = |e: Error| e.to_string();
        match op {
            DhtOp::FindPeer { peer } => {
                let info = tokio::time::timeout(timeout, d.find_peer(&peer)).await.map_err(|_| "timed out".to_string())?.map_err(t)?;
                proto::encode_dht_value(Some((&info.peer, &info.addrs)), None, out);
            }
            DhtOp::FindPeersConnectedToPeer { .. } => {
                return Err("FIND_PEERS_CONNECTED_TO_PEER is not supported (go's p2pd does not either)".into())
            }
            DhtOp::FindProviders { cid, count } => {
                let key = hyphae_core::kad::keys::provider_key_from_bytes(&cid)?;
                let found = tokio::time::timeout(timeout, d.find_providers(&key, count, |_| {}))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(t)?;
                proto::encode_dht_begin(out);
                for p in &found {
                    proto::encode_dht_item(Some((&p.peer, &p.addrs)), None, out);
                }
                proto::encode_dht_end(out);
            }
            DhtOp::GetClosestPeers { key } => {
                let peers =
                    tokio::time::timeout(timeout, d.get_closest_peers(&key)).await.map_err(|_| "timed out".to_string())?.map_err(t)?;
                proto::encode_dht_begin(out);
                for p in &peers {
                    proto::encode_dht_item(None, Some(&p.peer.to_bytes()), out);
                }
                proto::encode_dht_end(out);
            }
            DhtOp::GetPublicKey { peer } => {
                let k = tokio::time::timeout(timeout, d.get_public_key(&peer)).await.map_err(|_| "timed out".to_string())?.map_err(t)?;
                proto::encode_dht_value(None, Some(&k.encode_protobuf()), out);
            }
            DhtOp::GetValue { key } => {
                let v = tokio::time::timeout(timeout, d.get_value(&key, 1)).await.map_err(|_| "timed out".to_string())?.map_err(t)?;
                let (_, value) = v.into_iter().next().ok_or("not found")?;
                proto::encode_dht_value(None, Some(&value), out);
            }
            DhtOp::SearchValue { key } => {
                let v = tokio::time::timeout(timeout, d.get_value(&key, 1)).await.map_err(|_| "timed out".to_string())?.map_err(t)?;
                proto::encode_dht_begin(out);
                for (_, value) in &v {
                    proto::encode_dht_item(None, Some(value), out);
                }
                proto::encode_dht_end(out);
            }
            DhtOp::PutValue { key, value } => {
                tokio::time::timeout(timeout, d.put_value(&key, &value)).await.map_err(|_| "timed out".to_string())?.map_err(t)?;
                proto::encode_ok(out);
            }
            DhtOp::Provide { cid } => {
                let key = hyphae_core::kad::keys::provider_key_from_bytes(&cid)?;
                tokio::time::timeout(timeout, d.provide(&key)).await.map_err(|_| "timed out".to_string())?.map_err(t)?;
                proto::encode_ok(out);
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        out.clear();
        proto::encode_error(&e, out);
    }
}

/// Copies both ways until both sides are done, then closes the libp2p stream.
async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, mut stream: Stream) {
    let _ = tokio::io::copy_bidirectional(&mut s, &mut stream).await;
    let _ = stream.shutdown().await;
}

async fn handle(host: &Host, handlers: &Arc<State>, req: Request, out: &mut Vec<u8>) {
    match req {
        Request::Identify => proto::encode_identify(&host.peer_id(), &host.listen_addrs(), out),
        Request::Connect { peer, addrs, timeout } => match connect(host, &peer, &addrs, timeout.unwrap_or(DEFAULT_TIMEOUT)).await {
            Ok(()) => proto::encode_ok(out),
            Err(e) => proto::encode_error(&e, out),
        },
        Request::StreamHandler { addr, protocols, balanced } => {
            let Some(client) = ControlAddr::from_multiaddr(&addr) else {
                return proto::encode_error(&format!("handler address {addr} is not a unix socket or TCP address"), out);
            };
            for p in &protocols {
                register(host, handlers, p, client.clone(), balanced);
            }
            proto::encode_ok(out);
        }
        Request::RemoveStreamHandler { addr, protocols } => {
            let client = ControlAddr::from_multiaddr(&addr);
            for p in &protocols {
                let gone = {
                    let mut h = locked(&handlers.handlers);
                    match h.by_protocol.get_mut(p) {
                        Some((v, _)) => {
                            v.retain(|a| Some(a) != client.as_ref());
                            if v.is_empty() {
                                h.by_protocol.remove(p);
                                true
                            } else {
                                false
                            }
                        }
                        None => false,
                    }
                };
                if gone {
                    host.remove_stream_handler(p);
                }
            }
            proto::encode_ok(out);
        }
        Request::ListPeers => {
            let mut peers: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
            for c in host.connections() {
                peers.entry(c.peer).or_default().push(c.remote_addr);
            }
            let list: Vec<(PeerId, Vec<Multiaddr>)> = peers.into_iter().collect();
            proto::encode_peers(&list, out);
        }
        Request::Disconnect { peer } => {
            host.disconnect(&peer);
            proto::encode_ok(out);
        }
        Request::ConnManager(op) => {
            match op {
                ConnManagerOp::Tag { peer, tag, weight } => {
                    host.tag_peer(&peer, &tag, weight.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
                }
                ConnManagerOp::Untag { peer, tag } => host.untag_peer(&peer, &tag),
                ConnManagerOp::Trim => {
                    host.trim_connections();
                }
            }
            proto::encode_ok(out);
        }
        Request::Dht { op, timeout } => dht(host, op, timeout.unwrap_or(DEFAULT_TIMEOUT), out).await,
        Request::Pubsub(op) => match op {
            PubsubOp::GetTopics => proto::encode_pubsub(&host.pubsub().topics(), &[], out),
            PubsubOp::ListPeers { topic } => {
                let t = (!topic.is_empty()).then_some(topic.as_str());
                proto::encode_pubsub(&[], &host.pubsub().peers(t), out);
            }
            PubsubOp::Publish { topic, data } => match host.pubsub().publish(&topic, data) {
                Ok(_) => proto::encode_ok(out),
                // go's daemon answers OK when nobody is subscribed yet (go-libp2p-pubsub's Publish
                // does not wait for peers); its clients expect that.
                Err(Error::Publish(hyphae_core::gossipsub::PublishError::InsufficientPeers)) => {
                    tracing::debug!(%topic, "daemon: published with no subscribed peer");
                    proto::encode_ok(out)
                }
                Err(e) => proto::encode_error(&e.to_string(), out),
            },
            PubsubOp::Subscribe { .. } => unreachable!("invariant: handled by the caller"),
        },
        Request::StreamOpen { .. } => unreachable!("invariant: handled by the caller"),
        Request::Peerstore { peer, info } => match host.peer_info(&peer) {
            Some(r) => proto::encode_peerstore(&peer, &r.protocols, info.then_some(&r.addrs[..]), out),
            None => proto::encode_error(&format!("{peer} is not in the peerstore"), out),
        },
        Request::Unsupported(what) => proto::encode_error(&format!("{what} is not supported by hyphae daemon yet"), out),
        _ => proto::encode_error("unsupported request", out),
    }
}

/// As go's daemon: the addresses go into the peerstore, then the peer is dialed at what it knows.
async fn connect(host: &Host, peer: &PeerId, addrs: &[Multiaddr], timeout: Duration) -> Result<(), String> {
    if host.peers().contains(peer) {
        return Ok(());
    }
    host.add_addrs(peer, addrs);
    match tokio::time::timeout(timeout, host.connect_known(peer)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("failed to dial {peer}: {e}")),
        Err(_) => Err(format!("failed to dial {peer}: timed out")),
    }
}

/// Serves `protocol` by handing each inbound stream to the client at `client` (round-robin over
/// `balanced` registrations; a plain registration replaces the others).
fn register(host: &Host, handlers: &Arc<State>, protocol: &str, client: ControlAddr, balanced: bool) {
    {
        let mut h = locked(&handlers.handlers);
        let e = h.by_protocol.entry(protocol.to_string()).or_default();
        if !balanced {
            e.0.clear();
        }
        if !e.0.contains(&client) {
            e.0.push(client);
        }
    }
    let handlers = handlers.clone();
    let proto_name = protocol.to_string();
    host.set_stream_handler(protocol, move |stream: Stream| {
        let target = {
            let mut h = locked(&handlers.handlers);
            h.by_protocol.get_mut(&proto_name).and_then(in_turn)
        };
        async move {
            let Some(target) = target else { return };
            if let Err(e) = deliver(stream, &target).await {
                tracing::debug!(error = %e, "daemon: could not hand an inbound stream to its handler");
            }
        }
    });
}

async fn deliver(stream: Stream, target: &ControlAddr) -> std::io::Result<()> {
    let mut head = Vec::new();
    proto::encode_inbound_stream(stream.remote_peer(), stream.remote_addr(), stream.protocol(), &mut head);
    match target {
        ControlAddr::Unix(p) => {
            let mut c = tokio::net::UnixStream::connect(p).await?;
            c.write_all(&head).await?;
            pipe(c, stream).await;
        }
        ControlAddr::Tcp(sa) => {
            let mut c = tokio::net::TcpStream::connect(sa).await?;
            c.write_all(&head).await?;
            pipe(c, stream).await;
        }
    }
    Ok(())
}
