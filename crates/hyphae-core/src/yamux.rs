//! Yamux stream multiplexer (`/yamux/1.0.0`, libp2p/specs yamux/README.md).
//!
//! A 12-byte header (version, type, flags, stream id, length) precedes every frame. Streams start with a
//! 256 KiB window; we grant a larger one (`Limits::stream_window`) in the SYN/ACK window update, as the
//! spec allows. Frame bodies are consumed incrementally, so a large data frame never has to be buffered
//! whole before it is delivered. Every limit is explicit in [`Limits`].

pub use crate::stream::{ReadResult, Role, StreamError, StreamId};
use std::collections::{BTreeMap, VecDeque};

pub const PROTOCOL_ID: &str = "/yamux/1.0.0";
/// spec(yamux): "Yamux initially starts each stream with a 256KiB window size."
pub const INITIAL_WINDOW: u32 = 256 * 1024;
const HEADER_LEN: usize = 12;

const TY_DATA: u8 = 0;
const TY_WINDOW_UPDATE: u8 = 1;
const TY_PING: u8 = 2;
const TY_GO_AWAY: u8 = 3;
const F_SYN: u16 = 1;
const F_ACK: u16 = 2;
const F_FIN: u16 = 4;
const F_RST: u16 = 8;

pub const GOAWAY_NORMAL: u32 = 0;
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;
pub const GOAWAY_INTERNAL_ERROR: u32 = 2;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Streams open at once (both directions). Inbound streams beyond it are reset. Default 512.
    pub max_streams: usize,
    /// spec(yamux): "SHOULD at most allow an ACK backlog of 256 streams" — outbound streams not yet ACKed.
    pub max_ack_backlog: usize,
    /// Receive window granted per stream; also the most bytes buffered per stream. Default 1 MiB.
    pub stream_window: u32,
    /// Largest data frame we emit. Default 64 KiB.
    pub max_frame_len: u32,
    /// Outgoing bytes buffered before writers are pushed back. Default 1 MiB.
    pub max_out_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_streams: 512, max_ack_backlog: 256, stream_window: 1024 * 1024, max_frame_len: 64 * 1024, max_out_buffer: 1024 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum YamuxError {
    #[error("yamux protocol violation: {0}")]
    Protocol(&'static str),
    #[error("yamux session closed (go away {0})")]
    GoAway(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    InboundStream(StreamId),
    Readable(StreamId),
    Writable(StreamId),
    /// The remote reset the stream.
    Reset(StreamId),
    /// Answer to our ping with this opaque value.
    Pong(u32),
    GoAway(u32),
}

#[derive(Debug, Default)]
struct Stream {
    recv: VecDeque<u8>,
    /// Credit the peer has left to send us.
    recv_window: u32,
    /// Bytes read by the application but not yet returned to the peer as window.
    consumed: u32,
    send_window: u32,
    local_fin: bool,
    remote_fin: bool,
    reset: bool,
    /// Inbound stream not yet acknowledged, or outbound not yet acknowledged by the peer.
    acked: bool,
    outbound: bool,
    write_blocked: bool,
    /// The application dropped its handle; data arriving is discarded.
    released: bool,
}

#[derive(Debug, Clone, Copy)]
struct Header {
    ty: u8,
    flags: u16,
    id: u32,
    len: u32,
}

impl Header {
    /// Parses a header from exactly its 12 bytes (the length check is the caller's `first_chunk`).
    fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, YamuxError> {
        if b[0] != 0 {
            return Err(YamuxError::Protocol("unsupported version"));
        }
        let ty = b[1];
        if ty > TY_GO_AWAY {
            return Err(YamuxError::Protocol("unknown frame type"));
        }
        Ok(Header {
            ty,
            flags: u16::from_be_bytes([b[2], b[3]]),
            id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

fn put_header(out: &mut Vec<u8>, ty: u8, flags: u16, id: u32, len: u32) {
    out.push(0);
    out.push(ty);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Moves up to `buf.len()` bytes from the front of a stream's receive queue into `buf`.
pub(crate) fn drain_into(q: &mut VecDeque<u8>, buf: &mut [u8]) -> usize {
    let (a, b) = q.as_slices();
    let ka = a.len().min(buf.len());
    buf[..ka].copy_from_slice(&a[..ka]);
    let kb = b.len().min(buf.len() - ka);
    buf[ka..ka + kb].copy_from_slice(&b[..kb]);
    q.drain(..ka + kb);
    ka + kb
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub streams_opened: u64,
    pub streams_accepted: u64,
    pub streams_refused: u64,
    /// Pongs and refusal RSTs not sent because the outgoing buffer was full (a peer that floods control
    /// frames without reading what we send).
    pub control_dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

pub struct Yamux {
    role: Role,
    limits: Limits,
    next_id: u32,
    streams: BTreeMap<u32, Stream>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    /// Body bytes of the current data frame still to come: (stream id, remaining, the frame's flags,
    /// applied once the body is delivered).
    body: Option<(u32, u32, u16)>,
    goaway_received: bool,
    goaway_sent: bool,
    stats: Stats,
}

impl Yamux {
    pub fn new(role: Role, limits: Limits) -> Self {
        Yamux {
            role,
            limits,
            // spec(yamux): "The client side should use odd ID's, and the server even."
            next_id: if role.is_dialer() { 1 } else { 2 },
            streams: BTreeMap::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            body: None,
            goaway_received: false,
            goaway_sent: false,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn num_streams(&self) -> usize {
        self.streams.len()
    }

    fn extra_window(&self) -> u32 {
        self.limits.stream_window.saturating_sub(INITIAL_WINDOW)
    }

    fn new_stream(&self, outbound: bool) -> Stream {
        Stream {
            recv_window: self.limits.stream_window.max(INITIAL_WINDOW),
            send_window: INITIAL_WINDOW,
            outbound,
            acked: false,
            ..Default::default()
        }
    }

    pub fn open_stream(&mut self) -> Result<StreamId, StreamError> {
        if self.goaway_received || self.goaway_sent {
            return Err(StreamError::GoingAway);
        }
        if self.streams.len() >= self.limits.max_streams {
            return Err(StreamError::TooManyStreams);
        }
        let backlog = self.streams.values().filter(|s| s.outbound && !s.acked).count();
        if backlog >= self.limits.max_ack_backlog {
            return Err(StreamError::TooManyStreams);
        }
        let id = self.next_id;
        if id > u32::MAX - 2 {
            return Err(StreamError::TooManyStreams);
        }
        self.next_id += 2;
        let s = self.new_stream(true);
        self.streams.insert(id, s);
        let extra = self.extra_window();
        put_header(&mut self.out, TY_WINDOW_UPDATE, F_SYN, id, extra);
        self.stats.streams_opened += 1;
        Ok(StreamId(id))
    }

    /// Writes as much of `data` as the stream's window and the output buffer allow. 0 = try again after
    /// a `Writable` event.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let budget = self.limits.max_out_buffer.saturating_sub(self.out.len());
        let max_frame = self.limits.max_frame_len as usize;
        let s = self.streams.get_mut(&id.0).ok_or(StreamError::Unknown)?;
        if s.reset {
            return Err(StreamError::Reset);
        }
        if s.local_fin {
            return Err(StreamError::Closed);
        }
        let n = data.len().min(s.send_window as usize).min(budget);
        if n == 0 && !data.is_empty() {
            s.write_blocked = true;
            return Ok(0);
        }
        for chunk in data[..n].chunks(max_frame.max(1)) {
            let mut flags = 0;
            if !s.acked && !s.outbound {
                // Inbound streams are ACKed on accept; this only covers a race with a fresh stream.
                flags |= F_ACK;
                s.acked = true;
            }
            put_header(&mut self.out, TY_DATA, flags, id.0, chunk.len() as u32);
            self.out.extend_from_slice(chunk);
        }
        s.send_window -= n as u32;
        self.stats.bytes_out += n as u64;
        Ok(n)
    }

    /// Reads buffered data into `buf`.
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> ReadResult {
        let Some(s) = self.streams.get_mut(&id.0) else { return ReadResult::Reset };
        if s.reset {
            return ReadResult::Reset;
        }
        if s.recv.is_empty() {
            return if s.remote_fin { ReadResult::Eof } else { ReadResult::Pending };
        }
        let n = drain_into(&mut s.recv, buf);
        s.consumed += n as u32;
        let window = self.limits.stream_window.max(INITIAL_WINDOW);
        if s.consumed >= window / 2 && !s.remote_fin {
            put_header(&mut self.out, TY_WINDOW_UPDATE, 0, id.0, s.consumed);
            s.recv_window += s.consumed;
            s.consumed = 0;
        }
        ReadResult::Data(n)
    }

    /// Half-closes our side (FIN).
    pub fn close(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id.0) {
            if !s.local_fin && !s.reset {
                s.local_fin = true;
                put_header(&mut self.out, TY_WINDOW_UPDATE, F_FIN, id.0, 0);
            }
        }
        self.maybe_remove(id.0);
    }

    /// Resets the stream (RST) and forgets it.
    pub fn reset(&mut self, id: StreamId) {
        if let Some(s) = self.streams.remove(&id.0) {
            if !s.reset {
                put_header(&mut self.out, TY_WINDOW_UPDATE, F_RST, id.0, 0);
            }
        }
    }

    /// The application dropped its handle: close our side if still open, discard further data.
    pub fn release(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id.0) {
            s.released = true;
            // Return the credit of what nobody will read.
            let unread = s.recv.len() as u32 + s.consumed;
            s.recv.clear();
            s.consumed = 0;
            if unread > 0 && !s.remote_fin && !s.reset {
                s.recv_window += unread;
                put_header(&mut self.out, TY_WINDOW_UPDATE, 0, id.0, unread);
            }
        }
        self.close(id);
    }

    fn maybe_remove(&mut self, id: u32) {
        // The application keeps its stream (to read EOF) until it releases it.
        if let Some(s) = self.streams.get(&id) {
            if s.released && (s.reset || (s.local_fin && s.remote_fin)) {
                self.streams.remove(&id);
            }
        }
    }

    pub fn ping(&mut self, opaque: u32) {
        put_header(&mut self.out, TY_PING, F_SYN, 0, opaque);
    }

    /// Sends GoAway; no new streams are accepted or opened afterwards.
    pub fn go_away(&mut self, code: u32) {
        if !self.goaway_sent {
            self.goaway_sent = true;
            put_header(&mut self.out, TY_GO_AWAY, 0, 0, code);
        }
    }

    pub fn is_go_away(&self) -> bool {
        self.goaway_received || self.goaway_sent
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let out = crate::take_output(&mut self.out)?;
        for (id, s) in self.streams.iter_mut() {
            if s.write_blocked && s.send_window > 0 {
                s.write_blocked = false;
                self.events.push_back(Event::Writable(StreamId(*id)));
            }
        }
        Some(out)
    }

    /// The outgoing buffer cannot take another frame: writes wait and control replies are dropped.
    pub fn is_output_full(&self) -> bool {
        self.out.len() + HEADER_LEN > self.limits.max_out_buffer
    }

    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn readable(&mut self, id: u32) {
        let ev = Event::Readable(StreamId(id));
        if self.events.back() != Some(&ev) {
            self.events.push_back(ev);
        }
    }

    /// Consumes frames (and partial data-frame bodies) from the front of `buf`. An error is a protocol
    /// violation by the peer: the caller sends GoAway and closes the connection.
    pub fn handle_input(&mut self, buf: &mut Vec<u8>) -> Result<(), YamuxError> {
        let mut pos = 0;
        let r = self.process(buf, &mut pos);
        buf.drain(..pos);
        if r.is_err() {
            self.go_away(GOAWAY_PROTOCOL_ERROR);
        }
        r
    }

    fn process(&mut self, buf: &[u8], pos: &mut usize) -> Result<(), YamuxError> {
        loop {
            if let Some((id, remaining, flags)) = self.body {
                let avail = (buf.len() - *pos).min(remaining as usize);
                if avail == 0 {
                    return Ok(());
                }
                let chunk = &buf[*pos..*pos + avail];
                *pos += avail;
                self.stats.bytes_in += avail as u64;
                let window = self.limits.stream_window.max(INITIAL_WINDOW);
                if let Some(s) = self.streams.get_mut(&id) {
                    if s.released {
                        // Nobody reads: return the credit at once so the peer is not stalled.
                        s.consumed += avail as u32;
                        if s.consumed >= window / 2 {
                            put_header(&mut self.out, TY_WINDOW_UPDATE, 0, id, s.consumed);
                            s.recv_window += s.consumed;
                            s.consumed = 0;
                        }
                    } else if !s.reset {
                        s.recv.extend(chunk);
                        self.readable(id);
                    }
                }
                let left = remaining - avail as u32;
                self.body = if left == 0 { None } else { Some((id, left, flags)) };
                if left == 0 {
                    self.apply_fin_rst(id, flags);
                }
                continue;
            }
            let Some(raw) = buf[*pos..].first_chunk::<HEADER_LEN>() else { return Ok(()) };
            let h = Header::parse(raw)?;
            *pos += HEADER_LEN;
            match h.ty {
                TY_PING => {
                    if h.id != 0 {
                        return Err(YamuxError::Protocol("ping on a stream"));
                    }
                    if h.flags & F_SYN != 0 {
                        self.control_reply(TY_PING, F_ACK, 0, h.len);
                    } else if h.flags & F_ACK != 0 {
                        self.events.push_back(Event::Pong(h.len));
                    }
                }
                TY_GO_AWAY => {
                    self.goaway_received = true;
                    self.events.push_back(Event::GoAway(h.len));
                }
                _ => self.on_stream_frame(h)?,
            }
        }
    }

    /// A frame answering the peer's own control traffic (pong, refusal RST). It obeys
    /// `Limits::max_out_buffer` like data does: beyond it the reply is dropped and counted, so a peer
    /// that sends pings or stream opens without reading cannot grow our buffer.
    fn control_reply(&mut self, ty: u8, flags: u16, id: u32, len: u32) {
        if self.out.len() + HEADER_LEN > self.limits.max_out_buffer {
            self.stats.control_dropped += 1;
            return;
        }
        put_header(&mut self.out, ty, flags, id, len);
    }

    fn on_stream_frame(&mut self, h: Header) -> Result<(), YamuxError> {
        if h.id == 0 {
            return Err(YamuxError::Protocol("data or window update on stream 0"));
        }
        if h.flags & F_SYN != 0 {
            let remote_parity = if self.role.is_dialer() { 0 } else { 1 };
            if h.id % 2 != remote_parity {
                return Err(YamuxError::Protocol("SYN with our own stream id parity"));
            }
            if self.streams.contains_key(&h.id) {
                return Err(YamuxError::Protocol("SYN for an existing stream"));
            }
            if self.goaway_sent || self.streams.len() >= self.limits.max_streams {
                // Refuse: RST, and swallow any body.
                self.control_reply(TY_WINDOW_UPDATE, F_RST, h.id, 0);
                self.stats.streams_refused += 1;
                if h.ty == TY_DATA && h.len > 0 {
                    if h.len > INITIAL_WINDOW {
                        return Err(YamuxError::Protocol("data frame exceeds the initial window"));
                    }
                    self.body = Some((h.id, h.len, 0));
                }
                return Ok(());
            }
            let mut s = self.new_stream(false);
            s.acked = true;
            self.streams.insert(h.id, s);
            // Accept at once: ACK with the extra window we grant.
            let extra = self.extra_window();
            put_header(&mut self.out, TY_WINDOW_UPDATE, F_ACK, h.id, extra);
            self.stats.streams_accepted += 1;
            self.events.push_back(Event::InboundStream(StreamId(h.id)));
        }
        let Some(s) = self.streams.get_mut(&h.id) else {
            // A frame for a stream we already forgot (e.g. we reset it): skip its body.
            if h.ty == TY_DATA && h.len > 0 {
                if h.len > self.limits.stream_window.max(INITIAL_WINDOW) {
                    return Err(YamuxError::Protocol("data frame exceeds any window we grant"));
                }
                self.body = Some((h.id, h.len, 0));
            }
            return Ok(());
        };
        if h.flags & F_ACK != 0 {
            s.acked = true;
        }
        match h.ty {
            TY_WINDOW_UPDATE => {
                s.send_window = s.send_window.saturating_add(h.len);
                if s.write_blocked && h.len > 0 {
                    s.write_blocked = false;
                    self.events.push_back(Event::Writable(StreamId(h.id)));
                }
                self.apply_fin_rst(h.id, h.flags);
            }
            _ => {
                // TY_DATA
                if h.len > s.recv_window {
                    return Err(YamuxError::Protocol("data exceeds the receive window"));
                }
                if s.remote_fin && h.len > 0 {
                    return Err(YamuxError::Protocol("data after FIN"));
                }
                s.recv_window -= h.len;
                if h.len > 0 {
                    self.body = Some((h.id, h.len, h.flags));
                } else {
                    self.apply_fin_rst(h.id, h.flags);
                }
            }
        }
        Ok(())
    }

    fn apply_fin_rst(&mut self, id: u32, flags: u16) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        if flags & F_RST != 0 {
            s.reset = true;
            s.recv.clear();
            if s.released {
                self.streams.remove(&id);
            } else {
                self.events.push_back(Event::Reset(StreamId(id)));
            }
            return;
        }
        if flags & F_FIN != 0 && !s.remote_fin {
            s.remote_fin = true;
            self.readable(id);
            self.maybe_remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pump(a: &mut Yamux, b: &mut Yamux) {
        for _ in 0..8 {
            if let Some(mut x) = a.poll_transmit() {
                b.handle_input(&mut x).unwrap();
                assert!(x.is_empty());
            }
            if let Some(mut x) = b.poll_transmit() {
                a.handle_input(&mut x).unwrap();
            }
        }
    }

    fn events(y: &mut Yamux) -> Vec<Event> {
        std::iter::from_fn(|| y.poll_event()).collect()
    }

    #[test]
    fn yamux_ping_flood_without_reading_keeps_output_within_the_limit() {
        let lim = Limits { max_out_buffer: 4096, ..Limits::default() };
        let mut s = Yamux::new(Role::Listener, lim);
        let mut flood = Vec::new();
        for i in 0..10_000u32 {
            put_header(&mut flood, TY_PING, F_SYN, 0, i);
        }
        // Also stream opens beyond the stream limit, each answered by a refusal RST.
        s.handle_input(&mut flood).unwrap();
        assert!(s.out.len() <= 4096, "pongs grew the output to {} bytes", s.out.len());
        assert_eq!(s.stats().control_dropped, 10_000 - 4096 / HEADER_LEN as u64);
    }

    #[test]
    fn yamux_open_write_read_close() {
        let (mut c, mut s) = (Yamux::new(Role::Dialer, Limits::default()), Yamux::new(Role::Listener, Limits::default()));
        let id = c.open_stream().unwrap();
        assert_eq!(id, StreamId(1));
        assert_eq!(c.write(id, b"hello").unwrap(), 5);
        c.close(id);
        pump(&mut c, &mut s);
        let ev = events(&mut s);
        assert_eq!(ev[0], Event::InboundStream(id));
        let mut buf = [0u8; 16];
        assert_eq!(s.read(id, &mut buf), ReadResult::Data(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(s.read(id, &mut buf), ReadResult::Eof);
        assert_eq!(s.write(id, b"bye").unwrap(), 3);
        s.close(id);
        s.release(id);
        pump(&mut c, &mut s);
        assert_eq!(c.read(id, &mut buf), ReadResult::Data(3));
        assert_eq!(c.read(id, &mut buf), ReadResult::Eof);
        c.release(id);
        assert_eq!(c.num_streams(), 0);
        assert_eq!(s.num_streams(), 0);
    }

    #[test]
    fn yamux_flow_control_blocks_then_resumes() {
        let lim = Limits { stream_window: INITIAL_WINDOW, max_out_buffer: 16 << 20, ..Limits::default() };
        let (mut c, mut s) = (Yamux::new(Role::Dialer, lim.clone()), Yamux::new(Role::Listener, lim));
        let id = c.open_stream().unwrap();
        let data = vec![1u8; 600 * 1024];
        let n = c.write(id, &data).unwrap();
        assert_eq!(n, INITIAL_WINDOW as usize);
        assert_eq!(c.write(id, &data[n..]).unwrap(), 0);
        pump(&mut c, &mut s);
        let mut buf = vec![0u8; 1 << 20];
        assert_eq!(s.read(id, &mut buf), ReadResult::Data(INITIAL_WINDOW as usize));
        pump(&mut c, &mut s);
        assert!(events(&mut c).contains(&Event::Writable(id)));
        assert!(c.write(id, &data[n..]).unwrap() > 0);
    }

    #[test]
    fn yamux_window_violation_is_protocol_error() {
        let mut s = Yamux::new(Role::Listener, Limits { stream_window: INITIAL_WINDOW, ..Limits::default() });
        let mut f = Vec::new();
        put_header(&mut f, TY_DATA, F_SYN, 1, INITIAL_WINDOW + 1);
        assert!(s.handle_input(&mut f).is_err());
    }

    #[test]
    fn yamux_ping_is_answered_and_pong_reported() {
        let (mut c, mut s) = (Yamux::new(Role::Dialer, Limits::default()), Yamux::new(Role::Listener, Limits::default()));
        c.ping(42);
        pump(&mut c, &mut s);
        assert_eq!(events(&mut c), vec![Event::Pong(42)]);
    }

    #[test]
    fn yamux_stream_limit_refuses_with_rst() {
        let lim = Limits { max_streams: 1, ..Limits::default() };
        let (mut c, mut s) = (Yamux::new(Role::Dialer, Limits::default()), Yamux::new(Role::Listener, lim));
        let a = c.open_stream().unwrap();
        let b = c.open_stream().unwrap();
        pump(&mut c, &mut s);
        assert_eq!(events(&mut s), vec![Event::InboundStream(a)]);
        assert!(events(&mut c).contains(&Event::Reset(b)));
        assert_eq!(s.stats().streams_refused, 1);
    }

    #[test]
    fn yamux_bad_version_and_type_rejected() {
        let mut s = Yamux::new(Role::Listener, Limits::default());
        assert!(s.handle_input(&mut vec![1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
        let mut s = Yamux::new(Role::Listener, Limits::default());
        assert!(s.handle_input(&mut vec![0, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn yamux_body_split_across_inputs() {
        let (mut c, mut s) = (Yamux::new(Role::Dialer, Limits::default()), Yamux::new(Role::Listener, Limits::default()));
        let id = c.open_stream().unwrap();
        c.write(id, &[9u8; 1000]).unwrap();
        let wire = c.poll_transmit().unwrap();
        let mut got = 0;
        let mut p = Vec::new();
        for piece in wire.chunks(7) {
            p.extend_from_slice(piece);
            s.handle_input(&mut p).unwrap();
            let mut b = [0u8; 2000];
            if let ReadResult::Data(n) = s.read(id, &mut b) {
                got += n;
            }
        }
        assert_eq!(got, 1000);
    }
}
