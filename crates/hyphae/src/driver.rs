//! The tokio driver of one connection: a reader task feeds socket bytes into the sans-IO
//! [`Connection`], a writer task drains its output and fires its timer. Stream handles share the
//! connection's state (a short-held mutex) and wakers, so the byte path needs no channel hop per chunk.

use crate::host::{Direction, Inner};
use hyphae_core::conn::{CloseReason, Connection, Event, OpenError, ReadResult, Role, StreamId};
use hyphae_core::node::{self, ConnId};
use hyphae_core::{Instant, Multiaddr, PeerId, PublicKey};
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

/// Socket read size per syscall.
const READ_CHUNK: usize = 256 * 1024;

pub(crate) struct ConnShared {
    pub id: u64,
    pub direction: Direction,
    pub local_addr: Multiaddr,
    pub remote_addr: Multiaddr,
    epoch: std::time::Instant,
    state: Mutex<ConnState>,
    /// Wakes the writer task: output is pending or the timer changed.
    notify: Notify,
    /// Outcome of the identify exchange run once per connection.
    pub identify: tokio::sync::watch::Sender<IdentifyState>,
    /// For QUIC connections: the socket's endpoint and this connection's id there.
    pub quic: Option<(Arc<crate::quic_driver::QuicShared>, hyphae_core::quic::QuicConnId)>,
}

#[derive(Debug, Clone)]
pub(crate) enum IdentifyState {
    Pending,
    Done(Arc<hyphae_core::identify::Info>),
    Failed(hyphae_core::identify::Failure),
}

pub(crate) struct ConnState {
    /// The TCP connection machine; `None` for QUIC connections, whose machine is the socket's endpoint.
    pub conn: Option<Connection>,
    read_wakers: BTreeMap<StreamId, Waker>,
    write_wakers: BTreeMap<StreamId, Waker>,
    pending_open: BTreeMap<StreamId, oneshot::Sender<Result<String, OpenError>>>,
    established: Option<oneshot::Sender<Result<PeerId, CloseReason>>>,
    pub peer: Option<PeerId>,
    /// The muxer was agreed inside the security handshake (one round trip saved).
    pub early_muxer: bool,
    pub security: String,
    pub muxer: String,
    pub closed: Option<CloseReason>,
}

/// What the host must do after the connection machine produced events (done outside the lock).
#[derive(Debug)]
pub(crate) enum Action {
    /// The upgrade finished; the sender (a dialer waiting in `connect`) is answered by the host once
    /// the connection is registered, so `connect` never returns before `new_stream` can find it.
    Established(PeerId, PublicKey, Option<oneshot::Sender<Result<PeerId, CloseReason>>>),
    Inbound(StreamId, String),
    Closed(CloseReason),
    /// What the node machine reported (identify results, pings).
    Node(Vec<node::Event>),
}

impl ConnShared {
    /// Bookkeeping for a QUIC connection (its machine lives in the endpoint).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_quic(
        id: u64,
        direction: Direction,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        epoch: std::time::Instant,
        peer: PeerId,
        ep: Arc<crate::quic_driver::QuicShared>,
        cid: hyphae_core::quic::QuicConnId,
    ) -> ConnShared {
        ConnShared {
            id,
            direction,
            local_addr,
            remote_addr,
            epoch,
            state: Mutex::new(ConnState {
                conn: None,
                read_wakers: BTreeMap::new(),
                write_wakers: BTreeMap::new(),
                pending_open: BTreeMap::new(),
                established: None,
                peer: Some(peer),
                early_muxer: false,
                security: hyphae_core::tls::PROTOCOL_ID.into(),
                muxer: "quic-v1".into(),
                closed: None,
            }),
            notify: Notify::new(),
            identify: tokio::sync::watch::channel(IdentifyState::Pending).0,
            quic: Some((ep, cid)),
        }
    }

    pub fn reset_stream(&self, id: StreamId) {
        match &self.quic {
            Some((ep, cid)) => ep.stream_reset(*cid, id),
            None => {
                self.lock().tcp().stream_reset(id);
                self.wake_writer();
            }
        }
    }

    pub fn set_protocols(&self, protocols: Vec<String>) {
        match &self.quic {
            Some((ep, _)) => ep.set_protocols(protocols),
            None => self.lock().tcp().set_protocols(protocols),
        }
    }

    pub fn now(&self) -> Instant {
        since(self.epoch)
    }

    pub fn lock(&self) -> MutexGuard<'_, ConnState> {
        // A panic while holding this lock is a bug; keep serving the other streams rather than cascade.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wake_writer(&self) {
        self.notify.notify_one();
    }

    /// Opens a stream; resolves once its protocol is negotiated.
    pub fn open_stream(&self, protocols: Vec<String>) -> Result<(StreamId, oneshot::Receiver<Result<String, OpenError>>), OpenError> {
        if let Some((ep, cid)) = &self.quic {
            if self.lock().closed.is_some() {
                return Err(OpenError::ConnectionClosed);
            }
            return ep.open_stream(*cid, protocols);
        }
        let mut st = self.lock();
        if st.closed.is_some() {
            return Err(OpenError::ConnectionClosed);
        }
        let id = st.tcp().open_stream(protocols).map_err(OpenError::Refused)?;
        let (tx, rx) = oneshot::channel();
        st.pending_open.insert(id, tx);
        drop(st);
        self.wake_writer();
        Ok((id, rx))
    }

    pub fn close(&self) {
        match &self.quic {
            Some((ep, cid)) => ep.close(*cid),
            None => {
                self.lock().tcp().close();
                self.wake_writer();
            }
        }
    }
}

impl ConnState {
    /// The TCP machine (the reader/writer tasks and TCP streams only run for TCP connections).
    pub fn tcp(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("invariant: tcp connection state")
    }
}

impl ConnShared {
    /// Hands the TCP machine's events to the node machine (the router takes its own streams' events and
    /// runs policy), then turns the application's into waker calls and host actions (run outside the
    /// lock). Lock order: this connection's state, then the node machine.
    fn dispatch(&self, st: &mut ConnState, inner: &Inner) -> Vec<Action> {
        let mut actions = Vec::new();
        let now = self.now();
        let cid = ConnId(self.id);
        let mut touched = false;
        while let Some(ev) = st.conn.as_mut().and_then(|c| c.poll_event()) {
            touched = true;
            let Some(ev) = inner.node().on_conn_event(now, cid, ev, st.tcp()) else { continue };
            self.app_event(st, ev, &mut actions);
        }
        if touched {
            actions.push(Action::Node(inner.take_node_events()));
        }
        actions
    }

    /// What the application sees of a connection event the node machine handed back (TCP and QUIC).
    pub(crate) fn app_event(&self, st: &mut ConnState, ev: Event, actions: &mut Vec<Action>) {
        match ev {
            Event::Established { peer, public_key, security, muxer, early_muxer } => {
                tracing::debug!(%peer, %security, %muxer, early_muxer, "connection established");
                st.peer = Some(peer.clone());
                st.early_muxer = early_muxer;
                st.security = security;
                st.muxer = muxer;
                actions.push(Action::Established(peer, public_key, st.established.take()));
            }
            Event::InboundStream { id, protocol } => actions.push(Action::Inbound(id, protocol)),
            Event::OutboundReady { id, protocol } => {
                if let Some(tx) = st.pending_open.remove(&id) {
                    if tx.send(Ok(protocol)).is_err() {
                        self.reset_locked(st, id);
                    }
                }
            }
            Event::OutboundFailed { id, reason } => {
                if let Some(tx) = st.pending_open.remove(&id) {
                    let _ = tx.send(Err(reason));
                }
            }
            Event::Readable(id) => {
                if let Some(w) = st.read_wakers.remove(&id) {
                    w.wake();
                }
            }
            Event::Writable(id) => {
                if let Some(w) = st.write_wakers.remove(&id) {
                    w.wake();
                }
            }
            Event::Reset(id) => {
                if let Some(w) = st.read_wakers.remove(&id) {
                    w.wake();
                }
                if let Some(w) = st.write_wakers.remove(&id) {
                    w.wake();
                }
            }
            Event::Closed { reason } => {
                st.closed = Some(reason.clone());
                if let Some(tx) = st.established.take() {
                    let _ = tx.send(Err(reason.clone()));
                }
                for (_, tx) in std::mem::take(&mut st.pending_open) {
                    let _ = tx.send(Err(OpenError::ConnectionClosed));
                }
                for (_, w) in std::mem::take(&mut st.read_wakers).into_iter().chain(std::mem::take(&mut st.write_wakers)) {
                    w.wake();
                }
                actions.push(Action::Closed(reason));
            }
        }
    }

    /// Resets a stream whose opener went away (TCP under the held lock; QUIC through its endpoint).
    fn reset_locked(&self, st: &mut ConnState, id: StreamId) {
        match &self.quic {
            Some(_) => {}
            None => st.tcp().stream_reset(id),
        }
    }
}

/// Starts the tasks of a new TCP connection. `established` learns the outcome of the upgrade.
/// `id` was admitted by the node machine (`Node::admit` or `Node::dial`).
pub(crate) fn spawn_connection(
    inner: Arc<Inner>,
    id: ConnId,
    socket: TcpStream,
    direction: Direction,
    established: Option<oneshot::Sender<Result<PeerId, CloseReason>>>,
) {
    let _ = socket.set_nodelay(true);
    let local_addr = socket.local_addr().map(Multiaddr::from_tcp).unwrap_or_default();
    let remote_addr = socket.peer_addr().map(Multiaddr::from_tcp).unwrap_or_default();
    let role = match direction {
        Direction::Outbound => Role::Dialer,
        Direction::Inbound => Role::Listener,
    };
    let epoch = inner.epoch;
    let now = since(epoch);
    let (seed, expected) = {
        let mut n = inner.node();
        (n.child_seed(), n.expected_peer(id).cloned())
    };
    let conn = Connection::new(role, inner.conn_config(), expected, now, seed);
    let shared = Arc::new(ConnShared {
        id: id.0,
        direction,
        local_addr,
        remote_addr,
        epoch,
        state: Mutex::new(ConnState {
            conn: Some(conn),
            read_wakers: BTreeMap::new(),
            write_wakers: BTreeMap::new(),
            pending_open: BTreeMap::new(),
            established,
            peer: None,
            early_muxer: false,
            security: String::new(),
            muxer: String::new(),
            closed: None,
        }),
        notify: Notify::new(),
        identify: tokio::sync::watch::channel(IdentifyState::Pending).0,
        quic: None,
    });
    inner.conn_started(&shared);
    let (rd, wr) = socket.into_split();
    let reader = tokio::spawn(read_loop(inner.clone(), shared.clone(), rd));
    tokio::spawn(write_loop(inner, shared, wr, reader));
}

async fn read_loop(inner: Arc<Inner>, shared: Arc<ConnShared>, mut rd: tokio::net::tcp::OwnedReadHalf) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let r = rd.read(&mut buf).await;
        let (actions, done) = {
            let mut st = shared.lock();
            let done = match r {
                Ok(0) | Err(_) => {
                    st.tcp().handle_eof();
                    true
                }
                Ok(n) => {
                    let now = shared.now();
                    st.tcp().handle_input(now, &buf[..n]);
                    false
                }
            };
            (shared.dispatch(&mut st, &inner), done)
        };
        shared.wake_writer();
        inner.handle_actions(&shared, actions);
        if done {
            return;
        }
    }
}

async fn write_loop(
    inner: Arc<Inner>,
    shared: Arc<ConnShared>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    reader: tokio::task::JoinHandle<()>,
) {
    loop {
        let (out, deadline, closed, actions) = {
            let mut st = shared.lock();
            let now = shared.now();
            if st.tcp().poll_timeout().is_some_and(|d| d <= now) {
                st.tcp().handle_timeout(now);
            }
            let out = st.tcp().poll_transmit();
            let actions = shared.dispatch(&mut st, &inner);
            (out, st.tcp().poll_timeout(), st.closed.is_some(), actions)
        };
        inner.handle_actions(&shared, actions);
        if let Some(out) = out {
            if let Err(e) = wr.write_all(&out).await {
                tracing::debug!(error = %e, "socket write failed");
                let actions = {
                    let mut st = shared.lock();
                    st.tcp().handle_eof();
                    shared.dispatch(&mut st, &inner)
                };
                inner.handle_actions(&shared, actions);
                break;
            }
            continue;
        }
        if closed {
            break;
        }
        crate::driver::wait_for_wake_or_deadline(&shared.notify, shared.epoch, deadline).await;
    }
    let _ = wr.shutdown().await;
    reader.abort();
    inner.conn_finished(&shared);
}

/// The machines' time: the wall clock's monotonic time since the host's `epoch` (the driver reads the
/// clock; the sans-IO core only ever gets this value).
pub(crate) fn since(epoch: std::time::Instant) -> Instant {
    Instant::from_nanos(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// Sleeps until `notify` fires or the machine's `deadline` (an `Instant` since `epoch`) passes.
pub(crate) async fn wait_for_wake_or_deadline(notify: &Notify, epoch: std::time::Instant, deadline: Option<Instant>) {
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until((epoch + std::time::Duration::from_nanos(d.as_nanos())).into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = notify.notified() => {}
        _ = sleep => {}
    }
}

/// A negotiated stream: tokio `AsyncRead` + `AsyncWrite`. `shutdown` half-closes (FIN); dropping the
/// handle closes our side and discards what the remote still sends.
pub struct Stream {
    pub(crate) id: StreamId,
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) protocol: String,
    pub(crate) peer: PeerId,
}

impl Stream {
    pub fn protocol(&self) -> &str {
        &self.protocol
    }
    pub fn remote_peer(&self) -> &PeerId {
        &self.peer
    }
    pub fn remote_addr(&self) -> &Multiaddr {
        &self.shared.remote_addr
    }
    /// Abortive close (RST).
    pub fn reset(self) {
        self.shared.reset_stream(self.id);
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stream({} {} on conn {} to {})", self.id, self.protocol, self.shared.id, self.peer)
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some((ep, cid)) = &self.shared.quic {
            return ep.poll_read(*cid, self.id, cx, buf);
        }
        let mut st = self.shared.lock();
        let want = buf.remaining().min(READ_CHUNK);
        match st.tcp().stream_read(self.id, buf.initialize_unfilled_to(want)) {
            ReadResult::Data(n) => {
                buf.advance(n);
                drop(st);
                self.shared.wake_writer();
                Poll::Ready(Ok(()))
            }
            ReadResult::Eof => Poll::Ready(Ok(())),
            ReadResult::Reset => Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "stream reset"))),
            ReadResult::Pending => {
                if let Some(r) = &st.closed {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, format!("connection closed: {r}"))));
                }
                st.read_wakers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if let Some((ep, cid)) = &self.shared.quic {
            return ep.poll_write(*cid, self.id, cx, data);
        }
        let mut st = self.shared.lock();
        match st.tcp().stream_write(self.id, data) {
            Ok(0) if !data.is_empty() => {
                st.write_wakers.insert(self.id, cx.waker().clone());
                drop(st);
                // The writer may be idle with output pending; make sure it drains so we get Writable.
                self.shared.wake_writer();
                Poll::Pending
            }
            Ok(n) => {
                drop(st);
                self.shared.wake_writer();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((ep, cid)) = &self.shared.quic {
            ep.stream_close(*cid, self.id);
            return Poll::Ready(Ok(()));
        }
        self.shared.lock().tcp().stream_close(self.id);
        self.shared.wake_writer();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some((ep, cid)) = &self.shared.quic {
            ep.stream_release(*cid, self.id);
            return;
        }
        let mut st = self.shared.lock();
        st.tcp().stream_release(self.id);
        st.read_wakers.remove(&self.id);
        st.write_wakers.remove(&self.id);
        drop(st);
        self.shared.wake_writer();
    }
}
