//! The tokio driver of one TCP connection: a reader task feeds socket bytes into the sans-IO
//! [`Connection`], a writer task drains its output and fires its timer. Every event of the machine goes to
//! the node machine first (`Node::on_conn_event`); what it hands back is the application's. Stream
//! handles share the connection's state (a short-held mutex) and wakers, so the byte path needs no
//! channel hop per chunk.

use crate::handle::{since, Action, ConnShared, ConnState, Direction, HostLink, READ_CHUNK};
use crate::live::SendGate;
use hyphae_core::conn::{CloseReason, Connection, Role};
use hyphae_core::node::ConnId;
use hyphae_core::{Multiaddr, PeerId};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Hands the TCP machine's events to the node machine (the router takes its own streams' events and runs
/// policy), then turns the application's into waker calls and host actions (run outside the lock). Lock
/// order: this connection's state, then the node machine.
pub(crate) fn dispatch(shared: &ConnShared, st: &mut ConnState, inner: &dyn HostLink) -> Vec<Action> {
    let mut actions = Vec::new();
    let now = shared.now();
    let cid = ConnId(shared.id);
    // Only events the node machine took (its own streams, connection life) can make it report something
    // or move its timer; the application's stream events are handed straight back, so the byte path
    // neither drains the node nor wakes its timer task.
    let mut node_took = false;
    while let Some(ev) = st.conn.as_mut().and_then(|c| c.poll_event()) {
        // Established and Closed (no stream) are always the node's business.
        let lifecycle = ev.stream().is_none();
        let back = inner.node().on_conn_event(now, cid, ev, st.tcp());
        node_took |= lifecycle || back.is_none();
        let Some(ev) = back else { continue };
        st.app_event(ev, &mut actions);
    }
    if node_took {
        actions.push(Action::Node(inner.take_node_events()));
    }
    actions
}

/// Starts the tasks of a new TCP connection. `established` learns the outcome of the upgrade.
/// `id` was admitted by the node machine (`Node::on_transport_up` or `Node::dial`).
pub(crate) fn spawn_connection(
    inner: Arc<dyn HostLink>,
    id: ConnId,
    socket: TcpStream,
    direction: Direction,
    established: Option<oneshot::Sender<Result<PeerId, CloseReason>>>,
    lazy_security: bool,
) {
    let _ = socket.set_nodelay(true);
    if inner.send_gate().is_on() {
        // Accepted by the socket then means nearly sent (see `SendGate`).
        if let Err(e) = socket2::SockRef::from(&socket).set_tcp_notsent_lowat(SendGate::NOTSENT_LOWAT) {
            tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
        }
    }
    let local_addr = socket.local_addr().map(Multiaddr::from_tcp).unwrap_or_default();
    let remote_addr = socket.peer_addr().map(Multiaddr::from_tcp).unwrap_or_default();
    let role = match direction {
        Direction::Outbound => Role::Dialer,
        Direction::Inbound => Role::Listener,
    };
    let epoch = inner.epoch();
    let now = since(epoch);
    let (seed, expected) = {
        let mut n = inner.node();
        if role == Role::Dialer {
            // Accepted connections were admitted with this address when accepted.
            let _ = n.on_transport_up(id, role, remote_addr.clone());
        }
        (n.child_seed(), n.expected_peer(id).cloned())
    };
    let mut config = inner.conn_config();
    config.lazy_security = lazy_security;
    let conn = Connection::new(role, config, expected, now, seed);
    let shared = Arc::new(ConnShared::new_tcp(id.0, direction, local_addr, remote_addr, epoch, conn, established));
    inner.conn_started(&shared);
    let (rd, wr) = socket.into_split();
    let reader = tokio::spawn(read_loop(inner.clone(), shared.clone(), rd));
    tokio::spawn(write_loop(inner, shared, wr, reader));
}

async fn read_loop(inner: Arc<dyn HostLink>, shared: Arc<ConnShared>, mut rd: tokio::net::tcp::OwnedReadHalf) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut backed_up = false;
    loop {
        // Local work before new remote work: while the muxer's outgoing buffer is full (the socket is not
        // taking our bytes), nothing we read could be answered; stop reading and let TCP push back on
        // the peer instead of parsing its flood.
        while backed_up {
            shared.drained.notified().await;
            backed_up = shared.lock().conn.as_ref().is_some_and(Connection::is_backed_up);
        }
        let r = rd.read(&mut buf).await;
        let (actions, done, wake) = {
            let mut st = shared.lock();
            let done = match r {
                Ok(0) | Err(_) => {
                    st.tcp().handle_eof();
                    true
                }
                Ok(n) => {
                    inner.live().tcp_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    let now = shared.now();
                    st.tcp().handle_input(now, &buf[..n]);
                    false
                }
            };
            backed_up = st.tcp().is_backed_up();
            let actions = dispatch(&shared, &mut st, &*inner);
            (actions, done, done || writer_has_work(&mut st))
        };
        // Woken for nothing, the writer costs a receiver two context switches per read (a 1 GiB
        // TCP+Noise upload over the 60 ms path: 37,000 of them at the receiver).
        if wake {
            shared.wake_writer();
        }
        inner.handle_actions(&shared, actions);
        if done {
            return;
        }
    }
}

async fn write_loop(
    inner: Arc<dyn HostLink>,
    shared: Arc<ConnShared>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    reader: tokio::task::JoinHandle<()>,
) {
    let gated = inner.send_gate().is_on();
    loop {
        let (out, deadline, closed, actions) = {
            let mut st = shared.lock();
            let now = shared.now();
            if st.tcp().poll_timeout().is_some_and(|d| d <= now) {
                st.tcp().handle_timeout(now);
            }
            let out = st.tcp().poll_transmit();
            if let (true, Some(o)) = (gated, &out) {
                count_taken(inner.send_gate(), &mut st, o.len());
            }
            let actions = dispatch(&shared, &mut st, &*inner);
            let deadline = st.tcp().poll_timeout();
            st.writer_deadline = deadline;
            (out, deadline, st.closed.is_some(), actions)
        };
        inner.handle_actions(&shared, actions);
        if let Some(out) = out {
            let r = if gated { write_gated(&*inner, &shared, &mut wr, &out).await } else { wr.write_all(&out).await };
            if r.is_ok() {
                inner.live().tcp_out.fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            shared.drained.notify_one();
            if let Err(e) = r {
                tracing::debug!(error = %e, "socket write failed");
                let actions = {
                    let mut st = shared.lock();
                    st.tcp().handle_eof();
                    dispatch(&shared, &mut st, &*inner)
                };
                inner.handle_actions(&shared, actions);
                break;
            }
            continue;
        }
        if closed {
            break;
        }
        crate::handle::wait_for_wake_or_deadline(&shared.notify, shared.epoch, deadline).await;
    }
    // Whatever it still counted will not be sent.
    let counted = std::mem::take(&mut shared.lock().gate_counted);
    inner.send_gate().sub(counted);
    let _ = wr.shutdown().await;
    reader.abort();
    inner.conn_finished(&shared);
}

/// Whether the writer has something to do after the reader's turn: bytes to send, a closed connection
/// to finish, or a deadline earlier than the one it sleeps until.
fn writer_has_work(st: &mut ConnState) -> bool {
    let due = st.tcp().poll_timeout();
    st.closed.is_some() || st.tcp().buffered_output() > 0 || due.is_some_and(|d| st.writer_deadline.is_none_or(|w| d < w))
}

/// The writer took `n` bytes for the socket: all of them count in the send gate (the node's own writes
/// among them may be counted already, by `Inner::node_flush`), unless the connection is stalled.
fn count_taken(gate: &SendGate, st: &mut ConnState, n: usize) {
    if !st.gate_stalled && n > st.gate_counted {
        gate.add(n - st.gate_counted);
        st.gate_counted = n;
    }
}

/// `write_all` for a host with a send gate: each write the socket accepts leaves the count; a socket
/// that accepts nothing for `SendGate::STALL` stops its connection counting until it moves again.
async fn write_gated(
    inner: &dyn HostLink,
    shared: &ConnShared,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    out: &[u8],
) -> std::io::Result<()> {
    let gate = inner.send_gate();
    let mut off = 0;
    while off < out.len() {
        let n = match tokio::time::timeout(SendGate::STALL, wr.write(&out[off..])).await {
            Ok(r) => r?,
            Err(_) => {
                {
                    let mut st = shared.lock();
                    if !st.gate_stalled {
                        st.gate_stalled = true;
                        gate.stalls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(
                            conn = shared.id,
                            counted = st.gate_counted,
                            "send gate: socket took nothing for 100 ms, stops counting"
                        );
                    }
                    gate.sub(std::mem::take(&mut st.gate_counted));
                }
                // Cancel-safe: a write that timed out wrote nothing.
                wr.write(&out[off..]).await?
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        off += n;
        let mut st = shared.lock();
        st.gate_stalled = false;
        let d = n.min(st.gate_counted);
        st.gate_counted -= d;
        gate.sub(d);
    }
    Ok(())
}
