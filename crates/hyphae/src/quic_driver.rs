//! The tokio driver of a QUIC endpoint: one UDP socket, one sans-IO [`quic::Endpoint`] behind a mutex,
//! one task that receives, runs the endpoint and sends ([`run`]). Connections get the same `ConnShared`
//! bookkeeping as TCP ones; their stream I/O goes through the endpoint (wakers kept here).

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
            }),
            notify: Notify::new(),
            socket,
            udp,
            local,
            epoch: inner.epoch(),
            inner: Arc::downgrade(inner),
        });
        tokio::spawn(run(shared.clone()));
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

/// Datagram batches (each up to 64 KiB: one GRO batch) one `recvmmsg` takes.
const RECV_BATCH: usize = 32;

/// A datagram up to this size carries no stream data worth a second round (ACKs, flow-control credit).
const SMALL_DATAGRAM: usize = 256;

/// The endpoint's one task: it receives, runs the endpoint and the node machine, and sends, in turn, so
/// an endpoint's work never runs on two threads at once (as quinn's own driver and quic-go run a
/// connection's receive processing and its sends). It replaced a receive task and a send/timer task,
/// which starved a runtime with one worker (`current_thread`, or a container with one core): the
/// receive task always found data, so it held the worker until the runtime's budget ran out, and the
/// ACKs and data it left to the send task waited behind it. 1 GiB over the 60 ms path with both peers
/// on one worker: 4.37 s with two tasks, 3.33 s with one; on two workers the two are even
/// (BENCHMARKS.md, the long path).
///
/// Each round takes at most one receive batch, so a receiver answers (ACKs, flow-control credit) after
/// every batch, and a sender sends what the ACKs it just read let out before it reads the next ones.
async fn run(shared: Arc<QuicShared>) {
    // quinn-udp receives up to RECV_BATCH datagrams per syscall (recvmmsg); with GRO each one may hold
    // several datagrams of `stride` bytes back to back.
    let slot = 64 * 1024;
    let mut storage = vec![0u8; slot * RECV_BATCH];
    // Each batch goes to the endpoint in recycled memory (`slab::SlabPool`): slabs of two slots, enough
    // of them (2 MiB) for what one round holds until the application reads it.
    let mut pool = hyphae_core::slab::SlabPool::new(2 * slot, RECV_BATCH / 2);
    // Buffers of the last round's datagrams, handed back to the endpoint for its next batches (it keeps
    // the batch-sized ones, up to `quic::SPARE_BUFFERS`).
    let mut sent_bufs: Vec<Vec<u8>> = Vec::new();
    let mut meta = [quinn_udp::RecvMeta::default(); RECV_BATCH];
    // Whether this round runs though nothing was received: the task was woken (by the application, a
    // timer, or the socket), or the last round sent data. A round drains everything the endpoint can send
    // at that moment; a sender whose data waited for pacing finds more sendable right after, so it goes
    // around once more rather than sleep on the runtime's timer, whose millisecond ticks are a 500 KB
    // gap at 4 Gbit/s (measured: the 60 ms path's unlimited row 19% slower). A round that sent only
    // small datagrams (a receiver's ACKs and credit) does not: at 100 Mbit/s, with a datagram per
    // receive, that empty round cost the receiver half again as much CPU.
    let mut woken = true;
    // Pacing deadlines are ~1.6 ms apart: tokio's millisecond wheel would slow the pacer (`timer`).
    let timer = crate::timer::DeadlineTimer::new();
    loop {
        let r = {
            let mut bufs: Vec<std::io::IoSliceMut<'_>> = storage.chunks_mut(slot).map(std::io::IoSliceMut::new).collect();
            shared.socket.try_io(tokio::io::Interest::READABLE, || shared.udp.recv((&*shared.socket).into(), &mut bufs, &mut meta))
        };
        let received = match r {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                // The socket stays readable after an error: back off rather than spin on it.
                tracing::debug!(error = %e, "udp receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                0
            }
        };
        if received == 0 && !woken {
            let deadline = shared.lock().ep.poll_timeout();
            wait(&shared, &timer, deadline).await;
            woken = true;
            continue;
        }
        let Some(inner) = shared.inner.upgrade() else { return };
        let (datagrams, actions) = {
            let now = shared.now();
            let mut st = shared.lock();
            for b in sent_bufs.drain(..) {
                st.ep.recycle(b);
            }
            let got: usize = meta.iter().take(received).map(|m| m.len).sum();
            inner.live().udp_in.fetch_add(got as u64, std::sync::atomic::Ordering::Relaxed);
            for (i, m) in meta.iter().take(received).enumerate() {
                let batch = pool.copy(&storage[i * slot..i * slot + m.len]);
                st.ep.handle_batch(now, m.addr, batch, m.stride);
            }
            if st.ep.poll_timeout().is_some_and(|t| t <= now) {
                st.ep.handle_timeout(now);
            }
            st.ep.flush(now);
            // The node machine reads (freeing flow-control credit, driven at once) and writes (sent by
            // the flush after it) here.
            let a = shared.dispatch(&mut st, &inner);
            st.ep.flush(now);
            (drain_transmits(&mut st.ep), a)
        };
        let (actions, events) = actions;
        for (c, a) in actions {
            inner.handle_actions(&c, a);
        }
        inner.handle_node_events(events);
        count_sent(&inner, &datagrams);
        // Not held across the sends and waits: the host's tasks end once it is gone.
        drop(inner);
        woken = datagrams.iter().any(|t| t.data.len() > SMALL_DATAGRAM);
        send_all(&shared, datagrams, &mut sent_bufs).await;
        // A socket that always has data would hold the worker: the runtime's budget lets its other tasks
        // run now and then.
        tokio::task::coop::consume_budget().await;
    }
}

/// Waits for the socket to be readable, the application's wake-up, or the endpoint's `deadline`.
async fn wait(shared: &QuicShared, timer: &crate::timer::DeadlineTimer, deadline: Option<Instant>) {
    tokio::select! {
        r = shared.socket.readable() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "udp socket not readable");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        _ = shared.notify.notified() => {}
        _ = timer.sleep_until(shared.epoch, deadline) => {}
    }
}

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
