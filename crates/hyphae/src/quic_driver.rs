//! The tokio driver of a QUIC endpoint: one UDP socket, one sans-IO [`quic::Endpoint`] behind a mutex,
//! a receive task and a send/timer task. Connections get the same `ConnShared` bookkeeping as TCP ones;
//! their stream I/O goes through the endpoint (wakers kept here).

use crate::handle::{Action, ConnShared, Direction, HostLink, QuicHandle};
use hyphae_core::conn::{CloseReason, Event as ConnEvent, OpenError, ReadResult, StreamId};
use hyphae_core::node::ConnId;
use hyphae_core::quic::{self, QuicConnId};
use hyphae_core::{Instant, Multiaddr, PeerId};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};

type Key = (QuicConnId, StreamId);

/// Host actions per connection, and what the node machine reported (both run outside the lock).
type Dispatched = (Vec<(Arc<ConnShared>, Vec<Action>)>, Vec<hyphae_core::node::Event>);

pub(crate) struct QuicState {
    pub ep: quic::Endpoint,
    read_wakers: BTreeMap<Key, Waker>,
    write_wakers: BTreeMap<Key, Waker>,
    pending_open: BTreeMap<Key, oneshot::Sender<Result<String, OpenError>>>,
    /// Our dials: the node's id for each, and who waits for the outcome.
    dialing: BTreeMap<QuicConnId, (ConnId, oneshot::Sender<Result<PeerId, CloseReason>>)>,
    /// Accepted connections still handshaking have no node id yet; every established one has.
    ids: BTreeMap<QuicConnId, ConnId>,
    conns: BTreeMap<QuicConnId, Arc<ConnShared>>,
    /// The endpoint timer the send task last armed (`None`: none). The receive task sends a batch's
    /// small answers (ACKs) itself, and wakes the send task only when the batch set an earlier timer or
    /// left it more to send.
    armed: Option<Instant>,
}

pub(crate) struct QuicShared {
    state: Mutex<QuicState>,
    notify: Notify,
    pub socket: Arc<UdpSocket>,
    /// quinn-udp's socket state: GSO on send, GRO on receive, where the kernel has them.
    udp: quinn_udp::UdpSocketState,
    pub local: SocketAddr,
    epoch: std::time::Instant,
    inner: Weak<dyn HostLink>,
}

/// Socket buffers asked for (as quic-go asks for 7 MiB): the default (~200 KiB) overflows at a few
/// hundred Mbit/s when the receiving task falls behind a burst, and every overflow is a loss QUIC's
/// congestion control backs off from. The kernel caps the request at `net.core.rmem_max`/`wmem_max`;
/// a process with CAP_NET_ADMIN gets the full size past that cap (SO_RCVBUFFORCE/SO_SNDBUFFORCE, as
/// quic-go does). On the 60 ms path at ~4 Gbit/s a 4 MiB cap (`rmem_max` there) dropped ~3% of the
/// datagrams at the receiver (BENCHMARKS.md, the long path). 8 MiB still overflowed there: a receiver
/// that shares two cores with its sender and the delay line is off its core for longer than 8 MiB lasts
/// at 3–4 Gbit/s (~20 ms), 100–900 bursts of GRO datagrams lost per GiB, each a backoff; 32 MiB lost
/// none and moved 1 GiB ~10% faster (3 alternating pairs). It is a cap, not an allocation: the kernel
/// holds only what the receiver has not read yet, one buffer per endpoint socket (not per connection).
const UDP_BUFFER: usize = 32 << 20;

/// Datagrams per GSO send: as many as one IP packet can carry (65,507 bytes of UDP payload) at the
/// largest datagram quinn builds (1,452 bytes, its path-MTU search's default ceiling; 44 still fit at
/// 1,472, an IPv4 1500-byte MTU's). Each send is one system call and one packet through the kernel's
/// path; 44 in place of 32 cut both by a quarter (BENCHMARKS.md, the long path).
const MAX_GSO_SEGMENTS: usize = 44;

fn bind_udp(sa: SocketAddr) -> io::Result<UdpSocket> {
    let s = crate::handle::new_socket(sa, socket2::Type::DGRAM, socket2::Protocol::UDP)?;
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    // The kernel reports twice what it granted (its bookkeeping overhead): below 2× is capped.
    if s.recv_buffer_size().unwrap_or(0) < 2 * UDP_BUFFER {
        force_buffer(&s, true);
    }
    if s.send_buffer_size().unwrap_or(0) < 2 * UDP_BUFFER {
        force_buffer(&s, false);
    }
    let (rcv, snd) = (s.recv_buffer_size().unwrap_or(0), s.send_buffer_size().unwrap_or(0));
    if rcv < 2 * UDP_BUFFER {
        tracing::debug!(rcv, snd, wanted = UDP_BUFFER, "quic socket buffers capped by net.core.rmem_max / wmem_max");
    }
    s.bind(&sa.into())?;
    UdpSocket::from_std(s.into())
}

/// Asks for [`UDP_BUFFER`] past the sysctl cap; without CAP_NET_ADMIN the kernel refuses (EPERM) and
/// the capped size stays.
#[cfg(target_os = "linux")]
fn force_buffer(s: &socket2::Socket, recv: bool) {
    use rustix::net::sockopt;
    let r = if recv {
        sockopt::set_socket_recv_buffer_size_force(s, UDP_BUFFER)
    } else {
        sockopt::set_socket_send_buffer_size_force(s, UDP_BUFFER)
    };
    if let Err(e) = r {
        tracing::trace!(recv, error = %e, "quic socket buffer not forced");
    }
}

#[cfg(not(target_os = "linux"))]
fn force_buffer(_: &socket2::Socket, _: bool) {}

impl QuicShared {
    fn now(&self) -> Instant {
        crate::handle::since(self.epoch)
    }

    /// Inbound QUIC handshakes refused so far (the endpoint's limits).
    pub(crate) fn handshakes_refused(&self) -> u64 {
        self.lock().ep.handshake_stats().1
    }

    /// Our stream opens that waited for, or were refused at, peers' stream limits.
    pub(crate) fn open_stats(&self) -> quic::OpenStats {
        self.lock().ep.open_stats()
    }

    /// Losses judged by the congestion controller, and receive-window doublings.
    pub(crate) fn flow_stats(&self) -> (quic::LossStats, quic::WindowStats) {
        let st = self.lock();
        (st.ep.loss_stats(), st.ep.window_stats())
    }

    fn lock(&self) -> MutexGuard<'_, QuicState> {
        crate::handle::lock(&self.state)
    }

    /// Binds `sa` and starts the endpoint's tasks.
    pub(crate) async fn start(inner: &Arc<dyn HostLink>, sa: SocketAddr, mut cfg: quic::Config) -> io::Result<Arc<QuicShared>> {
        let socket = Arc::new(bind_udp(sa)?);
        let local = socket.local_addr()?;
        let udp = quinn_udp::UdpSocketState::new((&*socket).into())?;
        // At most MAX_GSO_SEGMENTS per send, though the kernel reports 64: with 64 a 2 GiB QUIC upload
        // over the delay line's offload path took 116–121 s instead of 5 (BENCHMARKS.md, the unlimited
        // row), because 64 × 1452 B is past the 64 KiB an IP packet can carry.
        cfg.max_datagrams = udp.max_gso_segments().clamp(1, MAX_GSO_SEGMENTS);
        tracing::debug!(gso = udp.max_gso_segments(), gro = udp.gro_segments(), "quic socket offloads");
        let ep = quic::Endpoint::new(cfg).map_err(|e| io::Error::other(e.to_string()))?;
        let shared = Arc::new(QuicShared {
            state: Mutex::new(QuicState {
                ep,
                read_wakers: BTreeMap::new(),
                write_wakers: BTreeMap::new(),
                pending_open: BTreeMap::new(),
                dialing: BTreeMap::new(),
                ids: BTreeMap::new(),
                conns: BTreeMap::new(),
                armed: None,
            }),
            notify: Notify::new(),
            socket,
            udp,
            local,
            epoch: inner.epoch(),
            inner: Arc::downgrade(inner),
        });
        tokio::spawn(recv_loop(shared.clone()));
        tokio::spawn(send_loop(shared.clone()));
        Ok(shared)
    }

    /// Dials `addr` as the node's connection `id` (admitted by `Node::dial`).
    pub(crate) fn dial(
        &self,
        id: ConnId,
        addr: SocketAddr,
        expected: Option<PeerId>,
    ) -> Result<oneshot::Receiver<Result<PeerId, CloseReason>>, CloseReason> {
        let now = self.now();
        let mut st = self.lock();
        let cid = st.ep.dial(now, addr, expected).map_err(|e| CloseReason::Lost(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        st.dialing.insert(cid, (id, tx));
        st.ids.insert(cid, id);
        drop(st);
        self.notify.notify_one();
        Ok(rx)
    }

    /// Hands endpoint events to the node machine (which takes its own streams' events and runs policy),
    /// then turns the application's into waker calls and host actions (run outside the lock).
    fn dispatch(self: &Arc<Self>, st: &mut QuicState, inner: &Arc<dyn HostLink>) -> Dispatched {
        let mut out = Vec::new();
        let now = self.now();
        // As in the TCP driver: only what the node machine took can make it report something.
        let mut node_took = false;
        while let Some(ev) = st.ep.poll_event() {
            if let quic::Event::Established { conn, peer, remote, role, .. } = &ev {
                let (conn, remote, role) = (*conn, *remote, *role);
                let admitted = {
                    let mut n = inner.node();
                    let id = st.ids.get(&conn).copied().unwrap_or_else(|| n.next_conn_id());
                    n.on_transport_up(id, role, Multiaddr::from_quic(remote)).map(|()| id)
                };
                let Ok(id) = admitted else {
                    st.ep.close(now, conn);
                    continue;
                };
                st.ids.insert(conn, id);
                let direction = if role.is_dialer() { Direction::Outbound } else { Direction::Inbound };
                let shared = Arc::new(ConnShared::new_quic(
                    id.0,
                    direction,
                    Multiaddr::from_quic(self.local),
                    Multiaddr::from_quic(remote),
                    self.epoch,
                    peer.clone(),
                    self.clone() as Arc<dyn QuicHandle>,
                    conn,
                ));
                inner.conn_started(&shared);
                st.conns.insert(conn, shared);
            }
            let (qc, cev) = ev.into_conn_event();
            let Some(&id) = st.ids.get(&qc) else { continue };
            let shared = st.conns.get(&qc).cloned();
            // Established and Closed (no stream) are always the node's business.
            let lifecycle = cev.stream().is_none();
            let back = inner.node().on_conn_event(now, id, cev, &mut quic::ConnStreams { ep: &mut st.ep, conn: qc });
            node_took |= lifecycle || back.is_none();
            let Some(ev) = back else { continue };
            match ev {
                ConnEvent::Established { peer, .. } => {
                    let waiter = st.dialing.remove(&qc).map(|(_, tx)| tx);
                    if let Some(s) = shared {
                        out.push((s, vec![Action::Established(peer, waiter)]));
                    }
                }
                ConnEvent::InboundStream { id: s, protocol } => {
                    if let Some(sh) = shared {
                        out.push((sh, vec![Action::Inbound(s, protocol)]));
                    }
                }
                ConnEvent::OutboundReady { id: s, protocol } => {
                    if let Some(tx) = st.pending_open.remove(&(qc, s)) {
                        if tx.send(Ok(protocol)).is_err() {
                            // The opener went away.
                            st.ep.stream_reset(now, qc, s);
                            if let Some(sh) = shared {
                                out.push((sh, vec![Action::Gone(s)]));
                            }
                        }
                    }
                }
                ConnEvent::OutboundFailed { id: s, reason } => {
                    if let Some(tx) = st.pending_open.remove(&(qc, s)) {
                        let _ = tx.send(Err(reason));
                    }
                }
                ConnEvent::Readable(s) => {
                    if let Some(w) = st.read_wakers.remove(&(qc, s)) {
                        w.wake();
                    }
                }
                ConnEvent::Writable(s) => {
                    if let Some(w) = st.write_wakers.remove(&(qc, s)) {
                        w.wake();
                    }
                }
                ConnEvent::Reset(s) => {
                    for m in [&mut st.read_wakers, &mut st.write_wakers] {
                        if let Some(w) = m.remove(&(qc, s)) {
                            w.wake();
                        }
                    }
                }
                ConnEvent::Closed { reason } => {
                    st.ids.remove(&qc);
                    if let Some((_, tx)) = st.dialing.remove(&qc) {
                        let _ = tx.send(Err(reason.clone()));
                    }
                    let keys: Vec<Key> = st.pending_open.keys().filter(|k| k.0 == qc).copied().collect();
                    for k in keys {
                        if let Some(tx) = st.pending_open.remove(&k) {
                            let _ = tx.send(Err(OpenError::ConnectionClosed));
                        }
                    }
                    for m in [&mut st.read_wakers, &mut st.write_wakers] {
                        let keys: Vec<Key> = m.keys().filter(|k| k.0 == qc).copied().collect();
                        for k in keys {
                            if let Some(w) = m.remove(&k) {
                                w.wake();
                            }
                        }
                    }
                    if let Some(s) = st.conns.remove(&qc) {
                        s.lock().closed = Some(reason.clone());
                        out.push((s, vec![Action::Closed(reason)]));
                    }
                }
            }
        }
        let events = if node_took { inner.take_node_events() } else { Vec::new() };
        (out, events)
    }
}

async fn recv_loop(shared: Arc<QuicShared>) {
    // quinn-udp receives up to BATCH datagrams per syscall (recvmmsg); with GRO each one may hold several
    // datagrams of `stride` bytes back to back.
    const BATCH: usize = 32;
    let slot = 64 * 1024;
    let mut storage = vec![0u8; slot * BATCH];
    // Each batch goes to the endpoint in recycled memory (`slab::SlabPool`): slabs of two slots, enough
    // of them (2 MiB) for what one pass of this loop holds until the application reads it.
    let mut pool = hyphae_core::slab::SlabPool::new(2 * slot, BATCH / 2);
    let mut sent_bufs: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut meta = [quinn_udp::RecvMeta::default(); BATCH];
        let r = {
            let mut bufs: Vec<std::io::IoSliceMut<'_>> = storage.chunks_mut(slot).map(std::io::IoSliceMut::new).collect();
            shared.socket.async_io(tokio::io::Interest::READABLE, || shared.udp.recv((&*shared.socket).into(), &mut bufs, &mut meta)).await
        };
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "udp receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(inner) = shared.inner.upgrade() else { return };
        let (datagrams, wake, actions) = {
            let now = shared.now();
            let mut st = shared.lock();
            for b in sent_bufs.drain(..) {
                st.ep.recycle(b);
            }
            let got: usize = meta.iter().take(n).map(|m| m.len).sum();
            inner.live().udp_in.fetch_add(got as u64, std::sync::atomic::Ordering::Relaxed);
            for (i, m) in meta.iter().take(n).enumerate() {
                let batch = pool.copy(&storage[i * slot..i * slot + m.len]);
                st.ep.handle_batch(now, m.addr, batch, m.stride);
            }
            st.ep.flush(now);
            let a = shared.dispatch(&mut st, &inner);
            // A receiver's answer to a batch is a few small datagrams (ACKs): they go out from here, as
            // waking the send task for them cost a thread switch per batch (a third of a 100 Mbit/s QUIC
            // receiver's CPU). Anything bigger (at a sender, the data its ACKs let out) is the send task's:
            // sent from here it would delay reading the next ACKs, and the congestion controller reads
            // that delay as a queue (measured: a 1 GiB upload 3–6× slower).
            let small = got <= INLINE_AFTER && {
                let mut q = st.ep.queued_transmits();
                q.len() <= INLINE_DATAGRAMS && q.all(|t| t.data.len() <= INLINE_BYTES)
            };
            let d = if small { drain_transmits(&mut st.ep) } else { Vec::new() };
            let more = st.ep.queued_transmits().len() > 0;
            let wake = more || st.ep.poll_timeout().is_some_and(|t| st.armed.is_none_or(|a| t < a));
            (d, wake, a)
        };
        if wake {
            shared.notify.notify_one();
        }
        let (actions, events) = actions;
        for (c, a) in actions {
            inner.handle_actions(&c, a);
        }
        inner.handle_node_events(events);
        count_sent(&inner, &datagrams);
        // Not held across the sends: the host's tasks end once it is gone.
        drop(inner);
        send_all(&shared, datagrams, &mut sent_bufs).await;
    }
}

/// What the receive task sends itself: at most this many datagrams of at most this many bytes each,
/// after a receive of at most `INLINE_AFTER` bytes. A bigger receive means a busy connection, where the
/// send task on the other thread sends in parallel with the next receive: sending from the receive task
/// there made a 1 GiB QUIC upload on loopback ~10% slower.
const INLINE_DATAGRAMS: usize = 4;
const INLINE_BYTES: usize = 256;
const INLINE_AFTER: usize = 16 * 1024;

/// Every datagram the endpoint has ready.
fn drain_transmits(ep: &mut quic::Endpoint) -> Vec<quic::Transmit> {
    let mut d = Vec::new();
    while let Some(x) = ep.poll_transmit() {
        d.push(x);
    }
    d
}

/// Counts the bytes of `datagrams` as sent (the host's live counters).
fn count_sent(inner: &Arc<dyn HostLink>, datagrams: &[quic::Transmit]) {
    let out: usize = datagrams.iter().map(|t| t.data.len()).sum();
    inner.live().udp_out.fetch_add(out as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Sends `datagrams` (waiting while the socket's buffer is full), keeping their buffers for the endpoint
/// to reuse.
async fn send_all(shared: &QuicShared, datagrams: Vec<quic::Transmit>, sent_bufs: &mut Vec<Vec<u8>>) {
    for t in datagrams {
        let tr = quinn_udp::Transmit { destination: t.to, ecn: None, contents: &t.data, segment_size: t.segment_size, src_ip: None };
        let r = shared.socket.async_io(tokio::io::Interest::WRITABLE, || shared.udp.try_send((&*shared.socket).into(), &tr)).await;
        if let Err(e) = r {
            tracing::debug!(error = %e, to = %t.to, "udp send failed");
        }
        sent_bufs.push(t.data);
    }
}

async fn send_loop(shared: Arc<QuicShared>) {
    // Buffers of the last round's datagrams, handed back to the endpoint for its next batches (it keeps
    // the batch-sized ones, up to `quic::SPARE_BUFFERS`).
    let mut sent_bufs: Vec<Vec<u8>> = Vec::new();
    loop {
        let Some(inner) = shared.inner.upgrade() else { return };
        let (datagrams, deadline, actions) = {
            let now = shared.now();
            let mut st = shared.lock();
            for b in sent_bufs.drain(..) {
                st.ep.recycle(b);
            }
            if st.ep.poll_timeout().is_some_and(|t| t <= now) {
                st.ep.handle_timeout(now);
            }
            st.ep.flush(now);
            let d = drain_transmits(&mut st.ep);
            let a = shared.dispatch(&mut st, &inner);
            let deadline = st.ep.poll_timeout();
            // Armed under the lock, so the receive task's comparison sees either this or a later value.
            st.armed = deadline;
            (d, deadline, a)
        };
        let (actions, events) = actions;
        for (c, a) in actions {
            inner.handle_actions(&c, a);
        }
        inner.handle_node_events(events);
        count_sent(&inner, &datagrams);
        drop(inner);
        let sent = !datagrams.is_empty();
        send_all(&shared, datagrams, &mut sent_bufs).await;
        if sent {
            continue;
        }
        crate::handle::wait_for_wake_or_deadline(&shared.notify, shared.epoch, deadline).await;
    }
}

impl QuicHandle for QuicShared {
    fn set_protocols(&self, protocols: Vec<String>) {
        self.lock().ep.set_protocols(protocols);
    }

    fn open_stream(
        &self,
        cid: QuicConnId,
        protocols: Vec<String>,
    ) -> Result<(StreamId, oneshot::Receiver<Result<String, OpenError>>), OpenError> {
        let now = self.now();
        let mut st = self.lock();
        let id = st.ep.open_stream(now, cid, protocols).map_err(OpenError::Refused)?;
        let (tx, rx) = oneshot::channel();
        st.pending_open.insert((cid, id), tx);
        drop(st);
        self.notify.notify_one();
        Ok((id, rx))
    }

    fn poll_read(&self, cid: QuicConnId, id: StreamId, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let now = self.now();
        let mut st = self.lock();
        let want = buf.remaining().min(256 * 1024);
        let r = st.ep.stream_read(now, cid, id, buf.initialize_unfilled_to(want));
        match r {
            ReadResult::Data(n) => {
                buf.advance(n);
                drop(st);
                self.notify.notify_one();
                Poll::Ready(Ok(()))
            }
            ReadResult::Eof => Poll::Ready(Ok(())),
            ReadResult::Reset => Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "stream reset"))),
            ReadResult::Pending => {
                st.read_wakers.insert((cid, id), cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn poll_write(&self, cid: QuicConnId, id: StreamId, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let now = self.now();
        let mut st = self.lock();
        match st.ep.stream_write(now, cid, id, data) {
            Ok(0) if !data.is_empty() => {
                st.write_wakers.insert((cid, id), cx.waker().clone());
                drop(st);
                self.notify.notify_one();
                Poll::Pending
            }
            Ok(n) => {
                drop(st);
                self.notify.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e))),
        }
    }

    fn stream_close(&self, cid: QuicConnId, id: StreamId) {
        let now = self.now();
        self.lock().ep.stream_close(now, cid, id);
        self.notify.notify_one();
    }

    fn stream_reset(&self, cid: QuicConnId, id: StreamId) {
        let now = self.now();
        let mut st = self.lock();
        st.ep.stream_reset(now, cid, id);
        drop(st);
        self.notify.notify_one();
    }

    fn stream_release(&self, cid: QuicConnId, id: StreamId) {
        let now = self.now();
        let mut st = self.lock();
        st.ep.stream_release(now, cid, id);
        st.read_wakers.remove(&(cid, id));
        st.write_wakers.remove(&(cid, id));
        drop(st);
        self.notify.notify_one();
    }

    fn close(&self, cid: QuicConnId) {
        let now = self.now();
        self.lock().ep.close(now, cid);
        self.notify.notify_one();
    }

    fn with_streams(&self, cid: QuicConnId, f: &mut dyn FnMut(&mut dyn hyphae_core::stream::Streams)) {
        let mut st = self.lock();
        f(&mut quic::ConnStreams { ep: &mut st.ep, conn: cid });
        drop(st);
        self.notify.notify_one();
    }
}
