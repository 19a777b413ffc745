//! Yamux stream multiplexer (`/yamux/1.0.0`, libp2p/specs yamux/README.md).
//!
//! A 12-byte header (version, type, flags, stream id, length) precedes every frame. Streams start with a
//! 256 KiB window; we grant a larger one (`Limits::stream_window`) in the SYN/ACK window update, as the
//! spec allows. Frame bodies are consumed incrementally, so a large data frame never has to be buffered
//! whole before it is delivered. Every limit is explicit in [`Limits`].
//!
//! Receive windows grow with the path (as go-yamux's do): a fixed window caps a stream at window / RTT
//! (1 MiB over 60 ms is 0.14 Gbit/s). The session measures its round trip with a yamux ping, first when
//! data first arrives (so the first window update can already grow the window) and again while streams
//! move data. Credit goes back each time a quarter of the window was read (go-yamux waits for half; on a
//! long path that leaves half the window idle: 1 GiB over 60 ms took 3.00 s with half, 2.46 s with a
//! quarter, BENCHMARKS.md). When the reader consumed at a rate of a window per four round trips or more
//! (go-yamux's half a window in two), the window was what held the sender back, and that update doubles
//! it, up to [`Limits::max_stream_window`] (64 MiB) and within the connection's
//! [`Limits::max_window_growth`]. A stream that is not read fast never grows, so idle connections keep the
//! small initial window.

use crate::time::{Duration, Instant};

use crate::stream::ReadSink;
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
    /// Receive window first granted per stream. Default 1 MiB.
    pub stream_window: u32,
    /// The most a stream's receive window grows to (and so the most bytes buffered per stream); equal to
    /// `stream_window` turns growth off. Default 64 MiB (go-yamux: 16 MiB). Credit goes back when a
    /// quarter of the window was read, and bytes in both sockets' buffers use it too, so the window must
    /// be well above the bandwidth-delay product: 64 MiB carries 6 Gbit/s over 60 ms (BENCHMARKS.md).
    pub max_stream_window: u32,
    /// The most bytes all of a connection's streams together may have been granted beyond
    /// `stream_window` each: a bound on what growth adds to the connection's buffers. Default 128 MiB.
    pub max_window_growth: u64,
    /// The first receive windows of a connection's streams together (each stream holds 256 KiB, or
    /// `stream_window` while they are within half of this): beyond, a new stream is refused. With the
    /// defaults, 32 streams at 1 MiB then 128 at 256 KiB. A peer that opens streams and never uses them
    /// holds at most this per connection (go's connection scope: 32 MiB). Default 64 MiB.
    pub max_stream_memory: u64,
    /// Largest data frame we emit. Default 64 KiB.
    pub max_frame_len: u32,
    /// Outgoing bytes buffered before writers are pushed back. Default 1 MiB.
    pub max_out_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 512,
            max_ack_backlog: 256,
            stream_window: 1024 * 1024,
            max_stream_window: 64 << 20,
            max_window_growth: 128 << 20,
            max_stream_memory: 64 << 20,
            max_frame_len: 64 * 1024,
            max_out_buffer: 1024 * 1024,
        }
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
    /// The receive window this stream has now (credit left + unread + consumed-not-returned).
    window: u32,
    /// When the last window update was sent (or the stream was opened): the start of the epoch in which
    /// a quarter of the window is consumed.
    epoch: Instant,
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
    /// The window it started with (what it reserved at admission; growth beyond it is `grown`).
    base: u32,
}

impl Stream {
    /// A window update is due: a quarter of the window was read (or discarded) since the last one.
    fn credit_due(&self) -> bool {
        self.consumed >= self.window / 4
    }
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

/// The frames [`Yamux::take_pieces`] hands over: the bytes copied into yamux's buffer, and the payloads
/// of [`Yamux::write_static`] that go between them, each after the first `.0` copied bytes.
#[derive(Debug)]
pub struct Frames {
    copied: Vec<u8>,
    statics: Vec<(usize, &'static [u8])>,
    len: usize,
}

impl Frames {
    /// Bytes on the wire, static payloads included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes copied into yamux's buffer (headers, and the payloads of `write`).
    #[must_use]
    pub fn copied_len(&self) -> usize {
        self.copied.len()
    }

    /// The frames' bytes in wire order, as the slices they lie in.
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        let mut from = 0;
        let tail = &self.copied[self.statics.last().map_or(0, |s| s.0)..];
        self.statics
            .iter()
            .flat_map(move |&(at, data)| {
                let before = &self.copied[from..at];
                from = at;
                [before, data]
            })
            .chain(std::iter::once(tail))
            .filter(|p| !p.is_empty())
    }
}

/// Moves up to `sink.room()` bytes from the front of a stream's receive queue into `sink` (shared by
/// yamux and mplex).
pub(crate) fn drain_into(q: &mut VecDeque<u8>, sink: &mut ReadSink<'_>) -> usize {
    let (a, b) = q.as_slices();
    let ka = a.len().min(sink.room());
    sink.put(&a[..ka]);
    let kb = b.len().min(sink.room());
    sink.put(&b[..kb]);
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
    /// Times a stream's receive window doubled, and times it would have but `max_window_growth` was spent.
    pub windows_grown: u64,
    pub window_growth_refused: u64,
    /// Streams refused (inbound: RST; outbound: `StreamError::MemoryLimit`) because the memory budget
    /// could not hold their receive window.
    pub streams_refused_memory: u64,
}

pub struct Yamux {
    role: Role,
    limits: Limits,
    next_id: u32,
    streams: BTreeMap<u32, Stream>,
    out: Vec<u8>,
    /// Payloads of `write_static`, not copied: each with the length `out` had when it was written (it
    /// follows those bytes on the wire), in order.
    statics: Vec<(usize, &'static [u8])>,
    /// Bytes in `statics`.
    statics_len: usize,
    events: VecDeque<Event>,
    /// Body bytes of the current data frame still to come: (stream id, remaining, the frame's flags,
    /// applied once the body is delivered).
    body: Option<(u32, u32, u16)>,
    goaway_received: bool,
    goaway_sent: bool,
    stats: Stats,
    /// The time of the latest input or read (see [`Yamux::set_now`]).
    now: Instant,
    /// The session's round trip, from our latest answered ping.
    rtt: Option<Duration>,
    /// The opaque value of our RTT probe in flight, and when the last probe was sent.
    rtt_probe: Option<u32>,
    rtt_probed_at: Option<Instant>,
    /// Bytes granted beyond each stream's first window, over the open streams.
    grown: u64,
    /// The open streams' first windows together (bounded by `Limits::max_stream_memory`).
    base_reserved: u64,
    /// The node's memory budget, which every stream's receive window is reserved from (all of it
    /// released as streams go and when the session is dropped).
    memory: Option<crate::rcmgr::Memory>,
}

impl Drop for Yamux {
    fn drop(&mut self) {
        if let Some(m) = &self.memory {
            m.release(self.streams.values().map(|s| u64::from(s.window)).sum());
        }
    }
}

/// How often the round trip is measured again while streams move data.
const RTT_INTERVAL: Duration = Duration::from_secs(30);
/// Opaque values of our RTT pings: a fixed high prefix, so a keep-alive ping's answer is not mistaken for one.
const RTT_OPAQUE: u32 = 0x7974_0000;

impl Yamux {
    pub fn new(role: Role, limits: Limits) -> Self {
        Yamux {
            role,
            limits,
            // spec(yamux): "The client side should use odd ID's, and the server even."
            next_id: if role.is_dialer() { 1 } else { 2 },
            streams: BTreeMap::new(),
            out: Vec::new(),
            statics: Vec::new(),
            statics_len: 0,
            events: VecDeque::new(),
            body: None,
            goaway_received: false,
            goaway_sent: false,
            stats: Stats::default(),
            now: Instant::ZERO,
            rtt: None,
            rtt_probe: None,
            rtt_probed_at: None,
            grown: 0,
            base_reserved: 0,
            memory: None,
        }
    }

    /// Reserves every stream's receive window from `memory` from now on (set before any stream).
    pub fn set_memory(&mut self, memory: crate::rcmgr::Memory) {
        debug_assert!(self.streams.is_empty(), "invariant: set before streams exist");
        self.memory = Some(memory);
    }

    /// Reserves `n` bytes of window from the budget (always fits without one).
    fn reserve(&mut self, n: u64) -> bool {
        self.memory.as_ref().is_none_or(|m| m.try_reserve(n))
    }

    /// Tells the session the time: its driver calls this before each input and read, so window growth
    /// and the RTT it is measured against use the caller's clock (virtual in the simulator).
    pub fn set_now(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// The session's round trip as last measured (None before the first streams moved data).
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// The receive window the stream has now.
    pub fn stream_window(&self, id: StreamId) -> Option<u32> {
        self.streams.get(&id.0).map(|s| s.window)
    }

    /// Sends the window update for a stream whose bytes `s.consumed` were read (or discarded): the credit
    /// given back, with the window doubled when `grow` and the window held the sender back (read at a
    /// window per four round trips or faster). A growing stream also starts an RTT probe when none is known or
    /// the last is old.
    fn window_update(&mut self, id: u32, grow: bool) {
        let now = self.now;
        let rtt = self.rtt.filter(|_| grow);
        // A probe the peer never answered is given up at the next interval and replaced.
        let probe_due = grow && self.rtt_probed_at.is_none_or(|t| now.saturating_duration_since(t) >= RTT_INTERVAL);
        let Some(s) = self.streams.get_mut(&id) else { return };
        let mut credit = s.consumed;
        if let Some(rtt) = rtt {
            // Held back by the window: read at a rate of at least a window per four round trips since
            // the last update (half a window in two round trips, as go-yamux tests; checked at each
            // quarter, so the window also grows as soon as that is seen).
            let elapsed = now.saturating_duration_since(s.epoch).as_nanos();
            let fast = u128::from(s.consumed) * 4 * rtt.as_nanos() > u128::from(s.window) * elapsed;
            let target = s.window.saturating_mul(2).min(self.limits.max_stream_window);
            if fast && target > s.window {
                let grow = target - s.window;
                let fits = self.grown + grow as u64 <= self.limits.max_window_growth;
                if fits && self.memory.as_ref().is_none_or(|m| m.try_reserve(grow as u64)) {
                    self.grown += grow as u64;
                    s.window = target;
                    credit += grow;
                    self.stats.windows_grown += 1;
                } else {
                    self.stats.window_growth_refused += 1;
                }
            }
        }
        s.epoch = now;
        s.recv_window += credit;
        s.consumed = 0;
        put_header(&mut self.out, TY_WINDOW_UPDATE, 0, id, credit);
        if probe_due {
            self.probe_rtt();
        }
    }

    /// Sends a ping whose answer measures the session's round trip.
    fn probe_rtt(&mut self) {
        let opaque = RTT_OPAQUE | (self.now.as_nanos() as u32 & 0xffff);
        self.rtt_probe = Some(opaque);
        self.rtt_probed_at = Some(self.now);
        put_header(&mut self.out, TY_PING, F_SYN, 0, opaque);
    }

    /// The window a stream starts with.
    fn initial_window(&self) -> u32 {
        self.limits.stream_window.max(INITIAL_WINDOW)
    }

    /// Forgets a stream, returning what its window grew to the connection's budget.
    fn remove_stream(&mut self, id: u32) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        self.grown -= u64::from(s.window - s.base);
        self.base_reserved -= u64::from(s.base);
        if let Some(m) = &self.memory {
            m.release(u64::from(s.window));
        }
        Some(s)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn num_streams(&self) -> usize {
        self.streams.len()
    }

    fn extra_window(&self) -> u32 {
        self.initial_window() - INITIAL_WINDOW
    }

    /// The receive window a new stream gets, reserved from the memory budget: the spec's 256 KiB or
    /// refused (`None`); then `stream_window` if the budget holds it too, else the stream starts at
    /// 256 KiB (slower, as go-yamux degrades under memory pressure).
    ///
    /// The connection's first windows together stay within `Limits::max_stream_memory`, and the larger
    /// first window is given only while they are within half of it: a peer opening streams it never
    /// uses holds at most that much of the node's budget per connection.
    fn admit_stream(&mut self) -> Option<u32> {
        let cap = self.limits.max_stream_memory;
        if self.base_reserved + u64::from(INITIAL_WINDOW) > cap || !self.reserve(u64::from(INITIAL_WINDOW)) {
            self.stats.streams_refused_memory += 1;
            return None;
        }
        let extra = self.extra_window();
        let big = self.base_reserved + u64::from(self.initial_window()) <= cap / 2;
        let window = if extra > 0 && big && self.reserve(u64::from(extra)) {
            self.initial_window()
        } else {
            if extra > 0 {
                self.stats.window_growth_refused += 1;
            }
            INITIAL_WINDOW
        };
        self.base_reserved += u64::from(window);
        Some(window)
    }

    fn new_stream(&self, outbound: bool, window: u32) -> Stream {
        Stream {
            recv_window: window,
            window,
            base: window,
            epoch: self.now,
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
        let Some(window) = self.admit_stream() else { return Err(StreamError::MemoryLimit) };
        self.next_id += 2;
        let s = self.new_stream(true, window);
        self.streams.insert(id, s);
        put_header(&mut self.out, TY_WINDOW_UPDATE, F_SYN, id, window - INITIAL_WINDOW);
        self.stats.streams_opened += 1;
        Ok(StreamId(id))
    }

    /// Writes as much of `data` as the stream's window and the output buffer allow. 0 = try again after
    /// a `Writable` event.
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        self.write_frames(id, data, None)
    }

    /// As [`Yamux::write`], for bytes that live as long as the program (perf's block): the frames keep
    /// a view of them, and they are copied once, by whoever takes the output ([`Yamux::take_pieces`]).
    pub fn write_static(&mut self, id: StreamId, data: &'static [u8]) -> Result<usize, StreamError> {
        self.write_frames(id, data, Some(data))
    }

    fn write_frames(&mut self, id: StreamId, data: &[u8], keep: Option<&'static [u8]>) -> Result<usize, StreamError> {
        let budget = self.limits.max_out_buffer.saturating_sub(self.output_len());
        let max_frame = self.limits.max_frame_len as usize;
        let s = self.streams.get_mut(&id.0).ok_or(StreamError::Unknown)?;
        if s.reset {
            return Err(StreamError::Reset);
        }
        if s.local_fin {
            return Err(StreamError::Closed);
        }
        let n = data.len().min(s.send_window as usize).min(budget);
        if n < data.len() {
            // The writer has more: tell it (`Writable`) when window or buffer space frees up. A partial
            // write needs this as much as a refused one, or a sender whose last write was cut short by
            // the window waits for ever once the window update arrives.
            s.write_blocked = true;
            if n == 0 {
                return Ok(0);
            }
        }
        let mut at = 0;
        for chunk in data[..n].chunks(max_frame.max(1)) {
            let mut flags = 0;
            if !s.acked && !s.outbound {
                // Inbound streams are ACKed on accept; this only covers a race with a fresh stream.
                flags |= F_ACK;
                s.acked = true;
            }
            put_header(&mut self.out, TY_DATA, flags, id.0, chunk.len() as u32);
            match keep {
                Some(k) => {
                    self.statics.push((self.out.len(), &k[at..at + chunk.len()]));
                    self.statics_len += chunk.len();
                }
                None => self.out.extend_from_slice(chunk),
            }
            at += chunk.len();
        }
        s.send_window -= n as u32;
        self.stats.bytes_out += n as u64;
        Ok(n)
    }

    /// Reads buffered data into `buf`.
    pub fn read(&mut self, id: StreamId, buf: &mut [u8]) -> ReadResult {
        self.read_to(id, &mut ReadSink::copy(buf))
    }

    /// Reads buffered data into `sink`.
    pub(crate) fn read_to(&mut self, id: StreamId, sink: &mut ReadSink<'_>) -> ReadResult {
        let Some(s) = self.streams.get_mut(&id.0) else { return ReadResult::Reset };
        if s.reset {
            return ReadResult::Reset;
        }
        if s.recv.is_empty() {
            return if s.remote_fin { ReadResult::Eof } else { ReadResult::Pending };
        }
        let n = drain_into(&mut s.recv, sink);
        s.consumed += n as u32;
        if s.credit_due() && !s.remote_fin {
            self.window_update(id.0, true);
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
        if let Some(s) = self.remove_stream(id.0) {
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
                self.remove_stream(id);
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

    /// The frames written since the last call, as one buffer (static payloads copied in).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let frames = self.take_pieces()?;
        if frames.statics.is_empty() {
            return Some(frames.copied);
        }
        let mut all = Vec::with_capacity(frames.len());
        for piece in frames.pieces() {
            all.extend_from_slice(piece);
        }
        Some(all)
    }

    /// The frames written since the last call, with the static payloads where they lie
    /// ([`Frames::pieces`] walks them in wire order): a secure channel that copies while it encrypts
    /// (Noise) takes them from there, one copy in all.
    pub fn take_pieces(&mut self) -> Option<Frames> {
        let len = self.output_len();
        let copied = crate::take_output(&mut self.out)?;
        let statics = std::mem::take(&mut self.statics);
        self.statics_len = 0;
        for (id, s) in self.streams.iter_mut() {
            if s.write_blocked && s.send_window > 0 {
                s.write_blocked = false;
                self.events.push_back(Event::Writable(StreamId(*id)));
            }
        }
        Some(Frames { copied, statics, len })
    }

    /// The outgoing buffer cannot take another frame: writes wait and control replies are dropped.
    pub fn is_output_full(&self) -> bool {
        self.output_len() + HEADER_LEN > self.limits.max_out_buffer
    }

    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes of frames waiting to be taken by `poll_transmit`.
    pub fn output_len(&self) -> usize {
        self.out.len() + self.statics_len
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
                let mut credit_due = false;
                if let Some(s) = self.streams.get_mut(&id) {
                    if s.released {
                        // Nobody reads: return the credit at once so the peer is not stalled.
                        s.consumed += avail as u32;
                        credit_due = s.credit_due();
                    } else if !s.reset {
                        s.recv.extend(chunk);
                        self.readable(id);
                    }
                }
                if credit_due {
                    self.window_update(id, false);
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
                        match (self.rtt_probe, self.rtt_probed_at) {
                            (Some(opaque), Some(sent)) if opaque == h.len => {
                                self.rtt = Some(self.now.saturating_duration_since(sent));
                                self.rtt_probe = None;
                            }
                            _ => self.events.push_back(Event::Pong(h.len)),
                        }
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
        if self.output_len() + HEADER_LEN > self.limits.max_out_buffer {
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
            let window = if self.goaway_sent || self.streams.len() >= self.limits.max_streams { None } else { self.admit_stream() };
            let Some(window) = window else {
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
            };
            let mut s = self.new_stream(false, window);
            s.acked = true;
            self.streams.insert(h.id, s);
            // Accept at once: ACK with the extra window we grant.
            let extra = window - INITIAL_WINDOW;
            put_header(&mut self.out, TY_WINDOW_UPDATE, F_ACK, h.id, extra);
            self.stats.streams_accepted += 1;
            self.events.push_back(Event::InboundStream(StreamId(h.id)));
        }
        let Some(s) = self.streams.get_mut(&h.id) else {
            // A frame for a stream we already forgot (e.g. we reset it): skip its body.
            if h.ty == TY_DATA && h.len > 0 {
                if h.len > self.limits.max_stream_window.max(self.initial_window()) {
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
                    // The first data the session receives starts its round-trip measurement, so a
                    // window that fills in slow start can grow at its first update, a round trip
                    // sooner than a probe sent with that update would allow (go-yamux measures at start).
                    if self.rtt_probed_at.is_none() {
                        self.probe_rtt();
                    }
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
                self.remove_stream(id);
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

    #[test]
    fn yamux_lent_reads_give_slices_while_taken_and_copied_reads_both_parts_of_a_wrapped_buffer() {
        // A ring buffer whose bytes 5..20 wrap around its end (a clone would not keep that layout).
        let wrapped = || {
            let mut q: VecDeque<u8> = VecDeque::with_capacity(16);
            q.extend(0..12u8);
            q.drain(..5);
            q.extend(12..20u8);
            assert!(!q.as_slices().1.is_empty(), "the test needs a wrapped buffer");
            q
        };
        let mut copy = wrapped();
        let mut buf = [0u8; 64];
        assert_eq!(drain_into(&mut copy, &mut ReadSink::copy(&mut buf)), 15);
        assert_eq!(&buf[..15], &(5..20u8).collect::<Vec<_>>()[..]);
        // A reader that takes one slice per read gets the second part on the next read.
        let mut one = wrapped();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut f = |d: &[u8]| {
            seen.push(d.to_vec());
            false
        };
        let first = drain_into(&mut one, &mut ReadSink::lend(64, &mut f));
        let second = drain_into(&mut one, &mut ReadSink::lend(64, &mut f));
        let third = drain_into(&mut one, &mut ReadSink::lend(3, &mut f));
        let back = wrapped().as_slices().0.len();
        assert_eq!((first, second, third, one.len()), (back, 15 - back, 0, 0));
        assert_eq!(seen.concat(), (5..20u8).collect::<Vec<_>>());
        // One that takes more gets both parts in one read, in order.
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut f = |d: &[u8]| {
            seen.push(d.to_vec());
            true
        };
        assert_eq!(drain_into(&mut wrapped(), &mut ReadSink::lend(64, &mut f)), 15);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen.concat(), (5..20u8).collect::<Vec<_>>());
        // A lent read takes no more than its room.
        let mut q: VecDeque<u8> = (0..10u8).collect();
        let mut got = Vec::new();
        let mut f = |d: &[u8]| {
            got.extend_from_slice(d);
            true
        };
        assert_eq!(drain_into(&mut q, &mut ReadSink::lend(4, &mut f)), 4);
        assert_eq!((got, q.len()), (vec![0, 1, 2, 3], 6));
    }

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

    /// Static writes put the same frames on the wire as copied ones, in order with the frames around
    /// them, whether taken as one buffer or as pieces; they count against the output limit the same way.
    #[test]
    fn yamux_static_writes_frame_like_copied_ones_without_a_copy_until_taken() {
        static BIG: [u8; 150_000] = [7; 150_000];
        let lim = Limits { max_out_buffer: 200_000, ..Limits::default() };
        let run = |static_writes: bool, as_pieces: bool| {
            let mut c = Yamux::new(Role::Dialer, lim.clone());
            let id = c.open_stream().unwrap();
            let mut wrote = Vec::new();
            for (i, data) in [&BIG[..], &BIG[..1], &BIG[..100_000]].into_iter().enumerate() {
                c.write(id, &[i as u8; 3]).unwrap();
                wrote.push(if static_writes { c.write_static(id, data).unwrap() } else { c.write(id, data).unwrap() });
            }
            let len = c.output_len();
            assert!(c.is_output_full() || len + HEADER_LEN <= 200_000);
            let wire = if as_pieces {
                let frames = c.take_pieces().unwrap();
                assert_eq!(frames.pieces().map(<[u8]>::len).sum::<usize>(), len);
                assert_eq!(frames.len(), len);
                assert!(!static_writes || frames.copied_len() < 1000, "payloads were copied: {} bytes", frames.copied_len());
                frames.pieces().flat_map(|p| p.iter().copied()).collect()
            } else {
                c.poll_transmit().unwrap()
            };
            assert_eq!((wire.len(), c.output_len()), (len, 0));
            (wrote, wire)
        };
        let copied = run(false, false);
        // The third write is cut short by the output limit (the 256 KiB window is not reached).
        assert!(copied.0[..2] == [150_000, 1] && (40_000..100_000).contains(&copied.0[2]), "{:?}", copied.0);
        assert_eq!(run(true, false), copied);
        assert_eq!(run(true, true), copied);
        assert_eq!(run(false, true), copied);
        // The peer reads what was written.
        let mut c = Yamux::new(Role::Dialer, Limits::default());
        let mut s = Yamux::new(Role::Listener, Limits::default());
        let id = c.open_stream().unwrap();
        assert_eq!(c.write_static(id, &BIG[..70_000]).unwrap(), 70_000);
        c.write(id, b"end").unwrap();
        pump(&mut c, &mut s);
        let mut buf = vec![0u8; 80_000];
        let ReadResult::Data(n) = s.read(id, &mut buf) else { panic!("no data") };
        assert_eq!((n, &buf[n - 4..n]), (70_003, &b"\x07end"[..]));
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

    /// The memory budget: each stream reserves its receive window; a stream that does not fit is
    /// refused with RST; reads do not change it (the window is the bound), closing a stream and
    /// dropping the session give everything back. One-byte frames cost no more than their bytes.
    #[test]
    fn yamux_streams_reserve_their_window_from_the_memory_budget() {
        let lim = Limits { stream_window: INITIAL_WINDOW, ..Limits::default() };
        let mem = crate::rcmgr::Memory::new(3 * INITIAL_WINDOW as u64);
        let mut s = Yamux::new(Role::Listener, lim);
        s.set_memory(mem.clone());
        let mut f = Vec::new();
        for id in [1u32, 3, 5, 7] {
            put_header(&mut f, TY_WINDOW_UPDATE, F_SYN, id, 0);
        }
        // A trickle of one-byte frames on stream 1, up to its whole window.
        for _ in 0..INITIAL_WINDOW {
            put_header(&mut f, TY_DATA, 0, 1, 1);
            f.push(0xAB);
        }
        s.handle_input(&mut f).unwrap();
        assert_eq!(s.num_streams(), 3);
        assert_eq!(s.stats().streams_refused_memory, 1);
        assert_eq!(mem.used(), 3 * INITIAL_WINDOW as u64);
        // One byte beyond the window is a protocol error, not more memory.
        let mut more = Vec::new();
        put_header(&mut more, TY_DATA, 0, 1, 1);
        more.push(0);
        assert!(s.handle_input(&mut more).is_err());
        assert_eq!(mem.used(), 3 * INITIAL_WINDOW as u64);
        s.reset(StreamId(3));
        s.release(StreamId(3));
        assert_eq!(mem.used(), 2 * INITIAL_WINDOW as u64);
        drop(s);
        assert_eq!(mem.used(), 0);
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

    #[test]
    fn yamux_writer_cut_short_by_the_window_hears_writable_when_credit_comes() {
        // The bug this guards: a write cut short (not refused) left the stream unmarked, so the window
        // update that followed never told the writer, and a node-owned sender stalled for good.
        let (mut c, mut s) = (Yamux::new(Role::Dialer, Limits::default()), Yamux::new(Role::Listener, Limits::default()));
        let id = c.open_stream().unwrap();
        pump(&mut c, &mut s);
        let window = Limits::default().stream_window as usize;
        let big = vec![1u8; window + 1000];
        assert_eq!(c.write(id, &big).unwrap(), window, "cut short by the window");
        events(&mut c);
        pump(&mut c, &mut s);
        let mut buf = vec![0u8; window];
        while let ReadResult::Data(_) = s.read(id, &mut buf) {}
        pump(&mut c, &mut s);
        assert!(events(&mut c).contains(&Event::Writable(id)), "credit returned: the writer is told");
    }

    /// One stream from `a` to `b` over a path with a 30 ms one-way delay, in 30 ms steps: the sender
    /// writes all its window allows, the reader reads everything every `read_every` steps. Returns the
    /// bytes `b` read in each step.
    fn transfer(limits: Limits, steps: usize, read_every: usize) -> (Yamux, Yamux, StreamId, Vec<usize>) {
        let (mut a, mut b) = (Yamux::new(Role::Dialer, limits.clone()), Yamux::new(Role::Listener, limits));
        let id = a.open_stream().unwrap();
        let chunk = vec![7u8; 256 * 1024];
        let mut buf = vec![0u8; 1 << 20];
        let (mut ab, mut ba) = (Vec::new(), Vec::new());
        let mut per_step = Vec::new();
        for step in 1..=steps {
            let now = Instant::from_nanos(step as u64 * 30_000_000);
            a.set_now(now);
            b.set_now(now);
            b.handle_input(&mut ab).unwrap();
            a.handle_input(&mut ba).unwrap();
            let mut got = 0;
            if step % read_every == 0 {
                while let ReadResult::Data(n) = b.read(id, &mut buf) {
                    got += n;
                }
            }
            per_step.push(got);
            loop {
                let n = a.write(id, &chunk).unwrap();
                if let Some(x) = a.poll_transmit() {
                    ab.extend_from_slice(&x);
                }
                if n == 0 {
                    break;
                }
            }
            while let Some(x) = b.poll_transmit() {
                ba.extend_from_slice(&x);
            }
            events(&mut a);
            events(&mut b);
        }
        (a, b, id, per_step)
    }

    #[test]
    fn yamux_window_grows_on_a_long_path_up_to_its_limit() {
        let lim = Limits::default();
        let (_, b, id, per_step) = transfer(lim.clone(), 60, 1);
        assert_eq!(b.rtt(), Some(Duration::from_millis(60)), "ping out at one step, answer two steps later");
        assert_eq!(b.stream_window(id), Some(lim.max_stream_window));
        // A fixed 1 MiB window moves 1 MiB per round trip; grown, the last second moves about a full
        // 64 MiB window per round trip (two 30 ms steps).
        let last_rtt: usize = per_step[per_step.len() - 2..].iter().sum();
        assert!(last_rtt >= 60 << 20, "{last_rtt} bytes in the last round trip");
        assert_eq!(b.stats().windows_grown, 6, "1 MiB doubled to 64 MiB: {:?}", b.stats());
    }

    #[test]
    fn yamux_round_trip_is_measured_from_the_first_data_before_any_window_update() {
        // Nothing is read in four steps, so no window update is sent; the first data (step 2) sent the
        // probe, answered at step 3 and back at step 4: the window can grow at its first update.
        let (_, b, _, per_step) = transfer(Limits::default(), 4, 1000);
        assert_eq!(per_step.iter().sum::<usize>(), 0);
        assert_eq!(b.rtt(), Some(Duration::from_millis(60)));
        assert_eq!(b.stats().windows_grown, 0);
    }

    #[test]
    fn yamux_window_of_a_slow_reader_does_not_grow() {
        // The reader takes 1.2 s between reads: the sender is not held back by the window.
        let (_, b, id, per_step) = transfer(Limits::default(), 200, 40);
        assert!(per_step.iter().sum::<usize>() > 0);
        assert_eq!(b.stream_window(id), Some(Limits::default().stream_window));
        assert_eq!(b.stats().windows_grown, 0);
    }

    #[test]
    fn yamux_window_growth_stays_within_the_connection_budget_and_is_returned_with_the_stream() {
        let lim = Limits { max_window_growth: 3 << 20, ..Limits::default() };
        let (_, mut b, id, _) = transfer(lim, 40, 1);
        // 1 → 2 MiB (+1) → 4 MiB (+2) = 3 MiB of growth; the next doubling would exceed it.
        assert_eq!(b.stream_window(id), Some(4 << 20));
        assert!(b.stats().window_growth_refused > 0);
        assert_eq!(b.grown, 3 << 20);
        b.reset(id);
        assert_eq!(b.grown, 0, "a closed stream's growth is free for others");
    }
}
