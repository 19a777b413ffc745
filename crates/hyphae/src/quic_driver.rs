//! The tokio driver of a QUIC endpoint: one UDP socket, one sans-IO [`quic::Endpoint`] behind a mutex,
//! a receive task and a send/timer task. Connections get the same `ConnShared` bookkeeping as TCP ones;
//! their stream I/O goes through the endpoint (wakers kept here).

use crate::driver::{Action, ConnShared};
use crate::host::{Direction, Inner};
use hyphae_core::conn::{ReadResult, StreamId};
use hyphae_core::node;
use hyphae_core::quic::{self, QuicConnId};
use hyphae_core::{Instant, Multiaddr, PeerId};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};

type Key = (QuicConnId, StreamId);

pub(crate) struct QuicState {
    pub ep: quic::Endpoint,
    read_wakers: BTreeMap<Key, Waker>,
    write_wakers: BTreeMap<Key, Waker>,
    pending_open: BTreeMap<Key, oneshot::Sender<Result<String, String>>>,
    /// Streams the application holds; events of the others go to the node machine.
    user_streams: BTreeSet<Key>,
    dialing: BTreeMap<QuicConnId, oneshot::Sender<Result<PeerId, String>>>,
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
    inner: Weak<Inner>,
}

impl QuicShared {
    fn now(&self) -> Instant {
        crate::driver::since(self.epoch)
    }

    fn lock(&self) -> MutexGuard<'_, QuicState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds `sa` and starts the endpoint's tasks.
    pub(crate) async fn start(inner: &Arc<Inner>, sa: SocketAddr, mut cfg: quic::Config) -> io::Result<Arc<QuicShared>> {
        let socket = Arc::new(UdpSocket::bind(sa).await?);
        let local = socket.local_addr()?;
        let udp = quinn_udp::UdpSocketState::new((&*socket).into())?;
        cfg.max_datagrams = udp.max_gso_segments().clamp(1, 32);
        tracing::debug!(gso = udp.max_gso_segments(), gro = udp.gro_segments(), "quic socket offloads");
        let ep = quic::Endpoint::new(cfg).map_err(|e| io::Error::other(e.to_string()))?;
        let shared = Arc::new(QuicShared {
            state: Mutex::new(QuicState {
                ep,
                read_wakers: BTreeMap::new(),
                write_wakers: BTreeMap::new(),
                pending_open: BTreeMap::new(),
                user_streams: BTreeSet::new(),
                dialing: BTreeMap::new(),
                conns: BTreeMap::new(),
            }),
            notify: Notify::new(),
            socket,
            udp,
            local,
            epoch: inner.epoch,
            inner: Arc::downgrade(inner),
        });
        tokio::spawn(recv_loop(shared.clone()));
        tokio::spawn(send_loop(shared.clone()));
        Ok(shared)
    }

    pub(crate) fn dial(&self, addr: SocketAddr, expected: Option<PeerId>) -> Result<oneshot::Receiver<Result<PeerId, String>>, String> {
        let now = self.now();
        let mut st = self.lock();
        let cid = st.ep.dial(now, addr, expected).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        st.dialing.insert(cid, tx);
        drop(st);
        self.notify.notify_one();
        Ok(rx)
    }

    pub(crate) fn set_protocols(&self, protocols: Vec<String>) {
        self.lock().ep.set_protocols(protocols);
    }

    pub(crate) fn open_stream(
        &self,
        cid: QuicConnId,
        protocols: Vec<String>,
    ) -> Result<(StreamId, oneshot::Receiver<Result<String, String>>), String> {
        let now = self.now();
        let mut st = self.lock();
        let id = st.ep.open_stream(now, cid, protocols).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        st.pending_open.insert((cid, id), tx);
        st.user_streams.insert((cid, id));
        drop(st);
        self.notify.notify_one();
        Ok((id, rx))
    }

    pub(crate) fn poll_read(&self, cid: QuicConnId, id: StreamId, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
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

    pub(crate) fn poll_write(&self, cid: QuicConnId, id: StreamId, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
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

    pub(crate) fn stream_close(&self, cid: QuicConnId, id: StreamId) {
        let now = self.now();
        self.lock().ep.stream_close(now, cid, id);
        self.notify.notify_one();
    }

    pub(crate) fn stream_reset(&self, cid: QuicConnId, id: StreamId) {
        let now = self.now();
        let mut st = self.lock();
        st.user_streams.remove(&(cid, id));
        st.ep.stream_reset(now, cid, id);
        drop(st);
        self.notify.notify_one();
    }

    pub(crate) fn stream_release(&self, cid: QuicConnId, id: StreamId) {
        let now = self.now();
        let mut st = self.lock();
        st.ep.stream_release(now, cid, id);
        st.user_streams.remove(&(cid, id));
        st.read_wakers.remove(&(cid, id));
        st.write_wakers.remove(&(cid, id));
        drop(st);
        self.notify.notify_one();
    }

    /// Runs `f` on one connection's streams under the endpoint's lock (for the node machine's timers).
    pub(crate) fn with_streams(&self, cid: QuicConnId, f: impl FnOnce(&mut dyn node::Streams)) {
        let mut st = self.lock();
        f(&mut quic::ConnStreams { ep: &mut st.ep, conn: cid });
        drop(st);
        self.notify.notify_one();
    }

    pub(crate) fn close(&self, cid: QuicConnId) {
        let now = self.now();
        self.lock().ep.close(now, cid);
        self.notify.notify_one();
    }

    /// Turns endpoint events into waker calls and host actions (run outside the lock).
    fn dispatch(self: &Arc<Self>, st: &mut QuicState, inner: &Arc<Inner>) -> Vec<(Arc<ConnShared>, Vec<Action>)> {
        let mut out = Vec::new();
        let now = self.now();
        let mut node_touched = None;
        while let Some(ev) = st.ep.poll_event() {
            // Stream events the node machine may own (see `ConnState::user_streams`).
            let for_node = ev.stream_event().filter(|(qc, cev)| node::may_take(cev, |s| st.user_streams.contains(&(*qc, s))));
            if let Some((qc, cev)) = for_node {
                if let Some(sh) = st.conns.get(&qc).cloned() {
                    node_touched = Some(sh.clone());
                    if inner.node().on_event(now, node::ConnId(sh.id), &cev, &mut quic::ConnStreams { ep: &mut st.ep, conn: qc }) {
                        continue;
                    }
                }
            }
            match ev {
                quic::Event::Established { conn, peer, public_key, remote, outbound } => {
                    let direction = if outbound { Direction::Outbound } else { Direction::Inbound };
                    if !outbound && !inner.try_reserve_connection() {
                        st.ep.close(self.now(), conn);
                        continue;
                    }
                    let shared = Arc::new(ConnShared::new_quic(
                        inner.next_conn_id(),
                        direction,
                        Multiaddr::from_quic(self.local),
                        Multiaddr::from_quic(remote),
                        self.epoch,
                        peer.clone(),
                        self.clone(),
                        conn,
                    ));
                    inner.conn_registered(&shared);
                    st.conns.insert(conn, shared.clone());
                    let role = if outbound { hyphae_core::conn::Role::Dialer } else { hyphae_core::conn::Role::Listener };
                    inner.node().on_established(
                        now,
                        node::ConnId(shared.id),
                        peer.clone(),
                        role,
                        shared.remote_addr.clone(),
                        &mut quic::ConnStreams { ep: &mut st.ep, conn },
                    );
                    node_touched = Some(shared.clone());
                    let waiter = st.dialing.remove(&conn);
                    out.push((shared, vec![Action::Established(peer, public_key, waiter)]));
                }
                quic::Event::InboundStream { conn, id, protocol } => {
                    if let Some(s) = st.conns.get(&conn) {
                        out.push((s.clone(), vec![Action::Inbound(id, protocol)]));
                        st.user_streams.insert((conn, id));
                    }
                }
                quic::Event::OutboundReady { conn, id, protocol } => {
                    if let Some(tx) = st.pending_open.remove(&(conn, id)) {
                        let _ = tx.send(Ok(protocol));
                    }
                }
                quic::Event::OutboundFailed { conn, id, reason } => {
                    st.user_streams.remove(&(conn, id));
                    if let Some(tx) = st.pending_open.remove(&(conn, id)) {
                        let _ = tx.send(Err(reason));
                    }
                }
                quic::Event::Readable { conn, id } => {
                    if let Some(w) = st.read_wakers.remove(&(conn, id)) {
                        w.wake();
                    }
                }
                quic::Event::Writable { conn, id } => {
                    if let Some(w) = st.write_wakers.remove(&(conn, id)) {
                        w.wake();
                    }
                }
                quic::Event::Reset { conn, id } => {
                    for m in [&mut st.read_wakers, &mut st.write_wakers] {
                        if let Some(w) = m.remove(&(conn, id)) {
                            w.wake();
                        }
                    }
                }
                quic::Event::Closed { conn, reason } => {
                    if let Some(tx) = st.dialing.remove(&conn) {
                        let _ = tx.send(Err(reason.clone()));
                    }
                    let keys: Vec<Key> = st.pending_open.keys().filter(|k| k.0 == conn).copied().collect();
                    for k in keys {
                        if let Some(tx) = st.pending_open.remove(&k) {
                            let _ = tx.send(Err(format!("connection closed: {reason}")));
                        }
                    }
                    for m in [&mut st.read_wakers, &mut st.write_wakers] {
                        let keys: Vec<Key> = m.keys().filter(|k| k.0 == conn).copied().collect();
                        for k in keys {
                            if let Some(w) = m.remove(&k) {
                                w.wake();
                            }
                        }
                    }
                    st.user_streams.retain(|k| k.0 != conn);
                    if let Some(s) = st.conns.remove(&conn) {
                        s.lock().closed = Some(reason.clone());
                        inner.node().on_closed(node::ConnId(s.id), &reason);
                        node_touched = Some(s.clone());
                        out.push((s, vec![Action::Closed(reason)]));
                    }
                }
            }
        }
        if let Some(s) = node_touched {
            out.push((s, vec![Action::Node(inner.take_node_events())]));
        }
        out
    }
}

async fn recv_loop(shared: Arc<QuicShared>) {
    // quinn-udp receives up to BATCH datagrams per syscall (recvmmsg); with GRO each one may hold several
    // datagrams of `stride` bytes back to back.
    const BATCH: usize = 32;
    let slot = 64 * 1024;
    let mut storage = vec![0u8; slot * BATCH];
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
        let actions = {
            let now = shared.now();
            let mut st = shared.lock();
            for (i, m) in meta.iter().take(n).enumerate() {
                let buf = &storage[i * slot..i * slot + m.len];
                for d in buf.chunks(m.stride.max(1)) {
                    st.ep.handle_datagram(now, m.addr, d);
                }
            }
            st.ep.flush(now);
            shared.dispatch(&mut st, &inner)
        };
        shared.notify.notify_one();
        for (c, a) in actions {
            inner.handle_actions(&c, a);
        }
    }
}

async fn send_loop(shared: Arc<QuicShared>) {
    loop {
        let Some(inner) = shared.inner.upgrade() else { return };
        let (datagrams, deadline, actions) = {
            let now = shared.now();
            let mut st = shared.lock();
            if st.ep.poll_timeout().is_some_and(|t| t <= now) {
                st.ep.handle_timeout(now);
            }
            st.ep.flush(now);
            let mut d = Vec::new();
            while let Some(x) = st.ep.poll_transmit() {
                d.push(x);
            }
            let a = shared.dispatch(&mut st, &inner);
            (d, st.ep.poll_timeout(), a)
        };
        for (c, a) in actions {
            inner.handle_actions(&c, a);
        }
        drop(inner);
        let sent = !datagrams.is_empty();
        for t in datagrams {
            let tr = quinn_udp::Transmit { destination: t.to, ecn: None, contents: &t.data, segment_size: t.segment_size, src_ip: None };
            let r = shared.socket.async_io(tokio::io::Interest::WRITABLE, || shared.udp.try_send((&*shared.socket).into(), &tr)).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, to = %t.to, "udp send failed");
            }
        }
        if sent {
            continue;
        }
        crate::driver::wait_for_wake_or_deadline(&shared.notify, shared.epoch, deadline).await;
    }
}
