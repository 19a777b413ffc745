//! The connection handle the Host, its stream handles and both drivers share: one type for TCP and QUIC
//! connections (`ConnShared`), the application's `Stream`, and the two seams that keep the drivers below
//! the Host: [`HostLink`] (what a driver needs of the host) and [`QuicHandle`] (what a QUIC connection's
//! handle needs of its endpoint). Imports nothing of the crate: `driver` and `quic_driver` sit on it,
//! `host` on them.

use hyphae_core::conn::{self, CloseReason, Connection, Event, OpenError, ReadResult, StreamId, Streams};
use hyphae_core::node::{self, Node};
use hyphae_core::quic::QuicConnId;
use hyphae_core::{Instant, Multiaddr, PeerId};
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, Notify};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// What a driver needs of the host (implemented by the Host's `Inner`).
pub(crate) trait HostLink: Send + Sync + 'static {
    /// The node machine. Lock order: a connection's (or the QUIC endpoint's) state first, then this.
    fn node(&self) -> MutexGuard<'_, Node>;
    /// What the node machine reported since the last call; its timer is re-armed.
    fn take_node_events(&self) -> Vec<node::Event>;
    fn handle_node_events(&self, events: Vec<node::Event>);
    /// Runs what a connection's events asked of the host (outside every lock).
    fn handle_actions(&self, shared: &Arc<ConnShared>, actions: Vec<Action>);
    fn conn_config(&self) -> conn::Config;
    fn conn_started(&self, shared: &Arc<ConnShared>);
    fn conn_finished(&self, shared: &Arc<ConnShared>);
    /// The instant the machines' `Instant(0)` stands for.
    fn epoch(&self) -> std::time::Instant;
    /// Counters the drivers keep (bytes on the wire).
    fn live(&self) -> &crate::live::Live;
    /// The shared-uplink gate on services' TCP writes (`HostConfig::send_limit`).
    fn send_gate(&self) -> &crate::live::SendGate;
    /// An inbound stream handed to the application is gone (its handle dropped): it leaves the
    /// resource manager's stream budgets. Called without any lock held.
    fn stream_gone(&self, conn: u64, stream: StreamId);
}

/// What a QUIC connection's handle needs of its endpoint (implemented by the QUIC driver).
pub(crate) trait QuicHandle: Send + Sync + 'static {
    fn open_stream(
        &self,
        cid: QuicConnId,
        protocols: Vec<String>,
    ) -> Result<(StreamId, oneshot::Receiver<Result<String, OpenError>>), OpenError>;
    fn poll_read(&self, cid: QuicConnId, id: StreamId, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>>;
    fn poll_write(&self, cid: QuicConnId, id: StreamId, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>>;
    fn stream_close(&self, cid: QuicConnId, id: StreamId);
    fn stream_reset(&self, cid: QuicConnId, id: StreamId);
    fn stream_release(&self, cid: QuicConnId, id: StreamId);
    fn close(&self, cid: QuicConnId);
    fn set_protocols(&self, protocols: Vec<String>);
    /// Runs `f` on one connection's streams under the endpoint's lock (for the node machine).
    fn with_streams(&self, cid: QuicConnId, f: &mut dyn FnMut(&mut dyn Streams));
}

/// Socket read size per syscall.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

pub(crate) struct ConnShared {
    pub id: u64,
    pub direction: Direction,
    pub local_addr: Multiaddr,
    pub remote_addr: Multiaddr,
    pub(crate) epoch: std::time::Instant,
    pub(crate) state: Mutex<ConnState>,
    /// Wakes the writer task: output is pending or the timer changed.
    pub(crate) notify: Notify,
    /// The writer finished a socket write (a reader paused on backed-up output may go on).
    pub(crate) drained: Notify,
    /// Outcome of the identify exchange run once per connection.
    pub identify: tokio::sync::watch::Sender<IdentifyState>,
    /// For QUIC connections: the socket's endpoint and this connection's id there.
    pub quic: Option<(Arc<dyn QuicHandle>, QuicConnId)>,
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
    /// Bytes of this connection's output counted in the host's `SendGate` (flushed by the node or taken
    /// by the writer, not yet accepted by the socket).
    pub gate_counted: usize,
    /// The socket took nothing for `SendGate::STALL`: this connection does not count until it moves.
    pub gate_stalled: bool,
    /// The deadline the TCP writer last went to sleep with (the machine's `poll_timeout` then; `None`:
    /// none). The reader wakes the writer only for output, the end, or an earlier deadline.
    pub writer_deadline: Option<Instant>,
}

/// What the host must do after the connection machine produced events (done outside the lock).
#[derive(Debug)]
pub(crate) enum Action {
    /// The upgrade finished; the sender (a dialer waiting in `connect`) is answered by the host once
    /// the connection is registered, so `connect` never returns before `new_stream` can find it.
    Established(PeerId, Option<oneshot::Sender<Result<PeerId, CloseReason>>>),
    Inbound(StreamId, String),
    /// A stream we opened is ready but its opener went away: reset here, uncounted by the host.
    Gone(StreamId),
    Closed(CloseReason),
    /// What the node machine reported (identify results, pings).
    Node(Vec<node::Event>),
}

impl ConnShared {
    fn new(
        id: u64,
        direction: Direction,
        (local_addr, remote_addr): (Multiaddr, Multiaddr),
        epoch: std::time::Instant,
        state: ConnState,
        quic: Option<(Arc<dyn QuicHandle>, QuicConnId)>,
    ) -> ConnShared {
        ConnShared {
            id,
            direction,
            local_addr,
            remote_addr,
            epoch,
            state: Mutex::new(state),
            notify: Notify::new(),
            drained: Notify::new(),
            identify: tokio::sync::watch::channel(IdentifyState::Pending).0,
            quic,
        }
    }

    /// A TCP connection's handle, owning its machine.
    pub(crate) fn new_tcp(
        id: u64,
        direction: Direction,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        epoch: std::time::Instant,
        conn: Connection,
        established: Option<oneshot::Sender<Result<PeerId, CloseReason>>>,
    ) -> ConnShared {
        Self::new(id, direction, (local_addr, remote_addr), epoch, ConnState::new(Some(conn), established), None)
    }

    /// Bookkeeping for a QUIC connection (its machine lives in the endpoint; it is established already).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_quic(
        id: u64,
        direction: Direction,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        epoch: std::time::Instant,
        peer: PeerId,
        ep: Arc<dyn QuicHandle>,
        cid: QuicConnId,
    ) -> ConnShared {
        let mut st = ConnState::new(None, None);
        st.peer = Some(peer);
        st.security = hyphae_core::tls::PROTOCOL_ID.into();
        st.muxer = hyphae_core::quic::MUXER.into();
        Self::new(id, direction, (local_addr, remote_addr), epoch, st, Some((ep, cid)))
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
        lock(&self.state)
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
    fn new(conn: Option<Connection>, established: Option<oneshot::Sender<Result<PeerId, CloseReason>>>) -> ConnState {
        ConnState {
            conn,
            read_wakers: BTreeMap::new(),
            write_wakers: BTreeMap::new(),
            pending_open: BTreeMap::new(),
            established,
            peer: None,
            early_muxer: false,
            security: String::new(),
            muxer: String::new(),
            closed: None,
            gate_counted: 0,
            gate_stalled: false,
            writer_deadline: None,
        }
    }

    /// The TCP machine (the reader/writer tasks and TCP streams only run for TCP connections).
    pub fn tcp(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("invariant: tcp connection state")
    }
}

impl ConnState {
    /// What the application sees of a TCP connection's event the node machine handed back (the QUIC
    /// driver keeps its wakers per endpoint and maps its own).
    pub(crate) fn app_event(&mut self, ev: Event, actions: &mut Vec<Action>) {
        match ev {
            Event::Established { peer, security, muxer, early_muxer, .. } => {
                tracing::debug!(%peer, %security, %muxer, early_muxer, "connection established");
                self.peer = Some(peer.clone());
                self.early_muxer = early_muxer;
                self.security = security;
                self.muxer = muxer;
                actions.push(Action::Established(peer, self.established.take()));
            }
            Event::InboundStream { id, protocol } => actions.push(Action::Inbound(id, protocol)),
            Event::OutboundReady { id, protocol } => {
                if let Some(tx) = self.pending_open.remove(&id) {
                    if tx.send(Ok(protocol)).is_err() {
                        // The opener went away.
                        self.tcp().stream_reset(id);
                        actions.push(Action::Gone(id));
                    }
                }
            }
            Event::OutboundFailed { id, reason } => {
                if let Some(tx) = self.pending_open.remove(&id) {
                    let _ = tx.send(Err(reason));
                }
            }
            Event::Readable(id) => {
                if let Some(w) = self.read_wakers.remove(&id) {
                    w.wake();
                }
            }
            Event::Writable(id) => {
                if let Some(w) = self.write_wakers.remove(&id) {
                    w.wake();
                }
            }
            Event::Reset(id) => {
                if let Some(w) = self.read_wakers.remove(&id) {
                    w.wake();
                }
                if let Some(w) = self.write_wakers.remove(&id) {
                    w.wake();
                }
            }
            Event::Closed { reason } => {
                self.closed = Some(reason.clone());
                if let Some(tx) = self.established.take() {
                    let _ = tx.send(Err(reason.clone()));
                }
                for (_, tx) in std::mem::take(&mut self.pending_open) {
                    let _ = tx.send(Err(OpenError::ConnectionClosed));
                }
                for (_, w) in std::mem::take(&mut self.read_wakers).into_iter().chain(std::mem::take(&mut self.write_wakers)) {
                    w.wake();
                }
                actions.push(Action::Closed(reason));
            }
        }
    }
}

/// Locks `m`, taking the data of a poisoned lock as it is (a panicked holder leaves it consistent: every
/// critical section here either completes or changes nothing).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The machines' time: the wall clock's monotonic time since the host's `epoch` (the driver reads the
/// clock; the sans-IO core only ever gets this value).
pub(crate) fn since(epoch: std::time::Instant) -> Instant {
    Instant::from_nanos(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// Sleeps until `notify` fires or the machine's `deadline` (an `Instant` since `epoch`) passes.
pub(crate) async fn wait_for_wake_or_deadline(notify: &Notify, epoch: std::time::Instant, deadline: Option<Instant>) {
    tokio::select! {
        _ = notify.notified() => {}
        _ = sleep_until_deadline(epoch, deadline) => {}
    }
}

/// Sleeps until `deadline` (a machine's time since `epoch`) on tokio's millisecond timer; forever if
/// `None`. The QUIC endpoint's finer one is `timer::DeadlineTimer`, which falls back on this.
pub(crate) async fn sleep_until_deadline(epoch: std::time::Instant, deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until((epoch + std::time::Duration::from_nanos(d.as_nanos())).into()).await,
        None => std::future::pending().await,
    }
}

/// A negotiated stream: tokio `AsyncRead` + `AsyncWrite`. `shutdown` half-closes (FIN); dropping the
/// handle closes our side and discards what the remote still sends.
pub struct Stream {
    pub(crate) id: StreamId,
    pub(crate) shared: Arc<ConnShared>,
    pub(crate) protocol: String,
    pub(crate) peer: PeerId,
    /// For an inbound stream: the host to tell when the handle is dropped (its stream budgets).
    pub(crate) counted: Option<std::sync::Weak<dyn HostLink>>,
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
        } else {
            let mut st = self.shared.lock();
            st.tcp().stream_release(self.id);
            st.read_wakers.remove(&self.id);
            st.write_wakers.remove(&self.id);
            drop(st);
            self.shared.wake_writer();
        }
        // After the connection's lock is released (lock order: connection, then node).
        if let Some(host) = self.counted.take().and_then(|w| w.upgrade()) {
            host.stream_gone(self.shared.id, self.id);
        }
    }
}

/// A non-blocking socket for `sa`, not yet bound. IPv6 sockets are v6-only, so `/ip4/0.0.0.0/…/P` and
/// `/ip6/::/…/P` can both be bound (Linux otherwise lets the IPv6 socket claim the IPv4 port too).
pub(crate) fn new_socket(sa: std::net::SocketAddr, ty: socket2::Type, proto: socket2::Protocol) -> std::io::Result<socket2::Socket> {
    let domain = if sa.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
    let s = socket2::Socket::new(domain, ty, Some(proto))?;
    if sa.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}
