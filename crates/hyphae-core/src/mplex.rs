//! mplex stream multiplexer (`/mplex/6.7.0`, libp2p/specs mplex/README.md), for older peers.
//!
//! Frames: varint header `(stream id << 3) | flag`, varint length, data. mplex has no flow control, so
//! every bound is ours: a message is at most 1 MiB (spec), a stream buffers at most
//! `Limits::max_buffered` unread bytes (beyond: the stream is reset, as rust-libp2p's `ResetStream`
//! policy does), streams are capped, and writes are pushed back when the output buffer is full.
//!
//! Both sides allocate stream ids independently; a stream is named by (id, who opened it). Our handles
//! are `StreamId(id << 1 | opened_by_remote)`.

use crate::stream::{ReadResult, ReadSink, StreamError, StreamId};
use crate::varint;
use crate::yamux::Event;
use std::collections::{BTreeMap, VecDeque};

pub const PROTOCOL_ID: &str = "/mplex/6.7.0";
/// spec(mplex): "up to 1MiB per message"
pub const MAX_MESSAGE_LEN: usize = 1024 * 1024;

const NEW_STREAM: u64 = 0;
const MSG_RECEIVER: u64 = 1;
const MSG_INITIATOR: u64 = 2;
const CLOSE_RECEIVER: u64 = 3;
const CLOSE_INITIATOR: u64 = 4;
const RESET_RECEIVER: u64 = 5;
const RESET_INITIATOR: u64 = 6;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Streams open at once. Default 512.
    pub max_streams: usize,
    /// Unread bytes per stream before it is reset (mplex has no flow control). Default 4 MiB.
    pub max_buffered: usize,
    /// Largest data message we send. Default 64 KiB.
    pub max_frame_len: usize,
    /// Outgoing bytes buffered before writers are pushed back. Default 1 MiB.
    pub max_out_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_streams: 512, max_buffered: 4 << 20, max_frame_len: 64 * 1024, max_out_buffer: 1 << 20 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MplexError {
    #[error("mplex protocol violation: {0}")]
    Protocol(&'static str),
    #[error("mplex message of {0} bytes exceeds 1 MiB")]
    TooLarge(u64),
}

#[derive(Default)]
struct Stream {
    recv: VecDeque<u8>,
    local_closed: bool,
    remote_closed: bool,
    reset: bool,
    released: bool,
    write_blocked: bool,
}

pub struct Mplex {
    limits: Limits,
    next_id: u64,
    streams: BTreeMap<u32, Stream>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    pub refused: u64,
    /// The node's memory budget: every byte buffered unread is reserved from it first (a data frame
    /// that does not fit resets its stream, as a full buffer does); `buffered` is what we hold.
    memory: Option<crate::rcmgr::Memory>,
    buffered: u64,
    /// Streams reset because the memory budget could not hold their data.
    pub refused_memory: u64,
}

impl Drop for Mplex {
    fn drop(&mut self) {
        if let Some(m) = &self.memory {
            m.release(self.buffered);
        }
    }
}

fn handle(id: u64, remote_opened: bool) -> Option<StreamId> {
    let h = id.checked_mul(2)? + u64::from(remote_opened);
    u32::try_from(h).ok().map(StreamId)
}

fn parts(h: StreamId) -> (u64, bool) {
    (u64::from(h.0 >> 1), h.0 & 1 == 1)
}

impl Mplex {
    pub fn new(limits: Limits) -> Self {
        Mplex {
            limits,
            next_id: 0,
            streams: BTreeMap::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            refused: 0,
            memory: None,
            buffered: 0,
            refused_memory: 0,
        }
    }

    /// Reserves buffered bytes from `memory` from now on (set before any stream).
    pub fn set_memory(&mut self, memory: crate::rcmgr::Memory) {
        self.memory = Some(memory);
    }

    /// `n` buffered bytes were read or dropped.
    fn unbuffer(&mut self, n: usize) {
        self.buffered -= n as u64;
        if let Some(m) = &self.memory {
            m.release(n as u64);
        }
    }

    pub fn num_streams(&self) -> usize {
        self.streams.len()
    }

    fn frame(&mut self, id: u64, flag: u64, data: &[u8]) {
        varint::encode((id << 3) | flag, &mut self.out);
        varint::encode_frame(data, &mut self.out);
    }

    /// The flag for a message we send on stream `h`: initiator flags if we opened it.
    fn flag(h: StreamId, initiator_flag: u64, receiver_flag: u64) -> u64 {
        let (_, remote_opened) = parts(h);
        if remote_opened {
            receiver_flag
        } else {
            initiator_flag
        }
    }

    pub fn open_stream(&mut self) -> Result<StreamId, StreamError> {
        if self.streams.len() >= self.limits.max_streams {
            return Err(StreamError::TooManyStreams);
        }
        let id = self.next_id;
        let h = handle(id, false).ok_or(StreamError::TooManyStreams)?;
        self.next_id += 1;
        self.streams.insert(h.0, Stream::default());
        self.frame(id, NEW_STREAM, id.to_string().as_bytes());
        Ok(h)
    }

    pub fn write(&mut self, h: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let budget = self.limits.max_out_buffer.saturating_sub(self.out.len());
        let s = self.streams.get_mut(&h.0).ok_or(StreamError::Unknown)?;
        if s.reset {
            return Err(StreamError::Reset);
        }
        if s.local_closed {
            return Err(StreamError::Closed);
        }
        let n = data.len().min(budget);
        if n < data.len() {
            // Cut short or refused: the writer hears `Writable` once the buffer went out.
            s.write_blocked = true;
            if n == 0 {
                return Ok(0);
            }
        }
        let (id, _) = parts(h);
        let flag = Self::flag(h, MSG_INITIATOR, MSG_RECEIVER);
        for chunk in data[..n].chunks(self.limits.max_frame_len.max(1)) {
            self.frame(id, flag, chunk);
        }
        Ok(n)
    }

    pub fn read(&mut self, h: StreamId, buf: &mut [u8]) -> ReadResult {
        self.read_to(h, &mut ReadSink::copy(buf))
    }

    pub(crate) fn read_to(&mut self, h: StreamId, sink: &mut ReadSink<'_>) -> ReadResult {
        let Some(s) = self.streams.get_mut(&h.0) else { return ReadResult::Reset };
        if s.reset {
            return ReadResult::Reset;
        }
        if s.recv.is_empty() {
            return if s.remote_closed { ReadResult::Eof } else { ReadResult::Pending };
        }
        let n = crate::yamux::drain_into(&mut s.recv, sink);
        self.unbuffer(n);
        ReadResult::Data(n)
    }

    pub fn close(&mut self, h: StreamId) {
        let Some(s) = self.streams.get_mut(&h.0) else { return };
        if s.local_closed || s.reset {
            return;
        }
        s.local_closed = true;
        let (id, _) = parts(h);
        let flag = Self::flag(h, CLOSE_INITIATOR, CLOSE_RECEIVER);
        self.frame(id, flag, &[]);
        self.maybe_remove(h);
    }

    pub fn reset(&mut self, h: StreamId) {
        if let Some(s) = self.streams.remove(&h.0) {
            self.unbuffer(s.recv.len());
            if !s.reset {
                let (id, _) = parts(h);
                let flag = Self::flag(h, RESET_INITIATOR, RESET_RECEIVER);
                self.frame(id, flag, &[]);
            }
        }
    }

    pub fn release(&mut self, h: StreamId) {
        if let Some(s) = self.streams.get_mut(&h.0) {
            s.released = true;
            let n = s.recv.len();
            s.recv.clear();
            self.unbuffer(n);
        }
        self.close(h);
        self.maybe_remove(h);
    }

    fn maybe_remove(&mut self, h: StreamId) {
        if let Some(s) = self.streams.get(&h.0) {
            if s.released && (s.reset || (s.local_closed && s.remote_closed)) {
                self.streams.remove(&h.0);
            }
        }
    }

    #[must_use]
    /// The outgoing buffer is at its limit (writes wait).
    /// Bytes of frames waiting to be taken by `poll_transmit`.
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    pub fn is_output_full(&self) -> bool {
        // A frame header is two varints of at most 10 bytes each.
        self.out.len() + 20 >= self.limits.max_out_buffer
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let out = crate::take_output(&mut self.out)?;
        for (h, s) in self.streams.iter_mut() {
            if s.write_blocked {
                s.write_blocked = false;
                self.events.push_back(Event::Writable(StreamId(*h)));
            }
        }
        Some(out)
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Consumes whole messages from the front of `buf`. An error is a protocol violation: close the
    /// connection.
    pub fn handle_input(&mut self, buf: &mut Vec<u8>) -> Result<(), MplexError> {
        let mut pos = 0;
        let r = loop {
            let rest = &buf[pos..];
            let (header, n) = match varint::decode(rest) {
                Ok(Some(x)) => x,
                Ok(None) => break Ok(()),
                Err(_) => break Err(MplexError::Protocol("bad header varint")),
            };
            let (len, m) = match varint::decode(&rest[n..]) {
                Ok(Some(x)) => x,
                Ok(None) => break Ok(()),
                Err(_) => break Err(MplexError::Protocol("bad length varint")),
            };
            if len > MAX_MESSAGE_LEN as u64 {
                break Err(MplexError::TooLarge(len));
            }
            let len = len as usize;
            if rest.len() < n + m + len {
                break Ok(());
            }
            let data = rest[n + m..n + m + len].to_vec();
            pos += n + m + len;
            if let Err(e) = self.on_message(header >> 3, header & 7, &data) {
                break Err(e);
            }
        };
        buf.drain(..pos);
        r
    }

    fn on_message(&mut self, id: u64, flag: u64, data: &[u8]) -> Result<(), MplexError> {
        // Messages with *Initiator flags come from the side that opened the stream: the remote.
        let remote_opened = matches!(flag, NEW_STREAM | MSG_INITIATOR | CLOSE_INITIATOR | RESET_INITIATOR);
        let Some(h) = handle(id, remote_opened) else {
            return Err(MplexError::Protocol("stream id out of range"));
        };
        match flag {
            NEW_STREAM => {
                if self.streams.contains_key(&h.0) {
                    return Err(MplexError::Protocol("stream opened twice"));
                }
                if self.streams.len() >= self.limits.max_streams {
                    self.refused += 1;
                    self.frame(id, RESET_RECEIVER, &[]);
                    return Ok(());
                }
                self.streams.insert(h.0, Stream::default());
                self.events.push_back(Event::InboundStream(h));
            }
            MSG_RECEIVER | MSG_INITIATOR => {
                let max = self.limits.max_buffered;
                let Some(s) = self.streams.get_mut(&h.0) else { return Ok(()) };
                if s.released || s.reset {
                    return Ok(());
                }
                if s.remote_closed {
                    return Err(MplexError::Protocol("data after close"));
                }
                let fits = s.recv.len() + data.len() <= max;
                if !fits || !self.memory.as_ref().is_none_or(|m| m.try_reserve(data.len() as u64)) {
                    tracing::debug!(stream = h.0, full = !fits, "mplex stream buffer or memory budget full; reset");
                    if fits {
                        self.refused_memory += 1;
                    }
                    self.reset(h);
                    self.events.push_back(Event::Reset(h));
                    return Ok(());
                }
                self.buffered += data.len() as u64;
                let s = self.streams.get_mut(&h.0).expect("invariant: checked above");
                s.recv.extend(data);
                let ev = Event::Readable(h);
                if self.events.back() != Some(&ev) {
                    self.events.push_back(ev);
                }
            }
            CLOSE_RECEIVER | CLOSE_INITIATOR => {
                let Some(s) = self.streams.get_mut(&h.0) else { return Ok(()) };
                s.remote_closed = true;
                self.events.push_back(Event::Readable(h));
                self.maybe_remove(h);
            }
            RESET_RECEIVER | RESET_INITIATOR => {
                let Some(s) = self.streams.get_mut(&h.0) else { return Ok(()) };
                s.reset = true;
                let n = s.recv.len();
                s.recv.clear();
                self.unbuffer(n);
                let s = self.streams.get_mut(&h.0).expect("invariant: present");
                if s.released {
                    self.streams.remove(&h.0);
                } else {
                    self.events.push_back(Event::Reset(h));
                }
            }
            _ => return Err(MplexError::Protocol("unknown flag")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pump(a: &mut Mplex, b: &mut Mplex) {
        for _ in 0..4 {
            if let Some(mut x) = a.poll_transmit() {
                b.handle_input(&mut x).unwrap();
            }
            if let Some(mut x) = b.poll_transmit() {
                a.handle_input(&mut x).unwrap();
            }
        }
    }

    #[test]
    fn mplex_both_sides_open_id_zero_without_confusion() {
        let (mut a, mut b) = (Mplex::new(Limits::default()), Mplex::new(Limits::default()));
        let sa = a.open_stream().unwrap();
        let sb = b.open_stream().unwrap();
        a.write(sa, b"from a").unwrap();
        b.write(sb, b"from b").unwrap();
        pump(&mut a, &mut b);
        let ea: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
        let eb: Vec<_> = std::iter::from_fn(|| b.poll_event()).collect();
        let in_a = ea.iter().find_map(|e| if let Event::InboundStream(h) = e { Some(*h) } else { None }).unwrap();
        let in_b = eb.iter().find_map(|e| if let Event::InboundStream(h) = e { Some(*h) } else { None }).unwrap();
        assert_ne!(in_a, sa);
        let mut buf = [0u8; 16];
        assert_eq!(a.read(in_a, &mut buf), ReadResult::Data(6));
        assert_eq!(&buf[..6], b"from b");
        assert_eq!(b.read(in_b, &mut buf), ReadResult::Data(6));
        assert_eq!(&buf[..6], b"from a");
        // Replies travel back on the same stream with receiver flags.
        b.write(in_b, b"reply").unwrap();
        b.close(in_b);
        pump(&mut a, &mut b);
        assert_eq!(a.read(sa, &mut buf), ReadResult::Data(5));
        assert_eq!(a.read(sa, &mut buf), ReadResult::Eof);
    }

    /// Unread bytes are reserved from the memory budget; a frame that does not fit resets its stream;
    /// reading, resetting and dropping give the bytes back.
    #[test]
    fn mplex_buffers_are_reserved_from_the_memory_budget() {
        let mem = crate::rcmgr::Memory::new(10);
        let (mut a, mut b) = (Mplex::new(Limits::default()), Mplex::new(Limits::default()));
        b.set_memory(mem.clone());
        let s1 = a.open_stream().unwrap();
        let s2 = a.open_stream().unwrap();
        a.write(s1, b"12345678").unwrap();
        pump(&mut a, &mut b);
        assert_eq!(mem.used(), 8);
        a.write(s2, b"abcdefgh").unwrap();
        pump(&mut a, &mut b);
        assert_eq!((mem.used(), b.refused_memory), (8, 1), "the second stream's data did not fit");
        let ev: Vec<_> = std::iter::from_fn(|| b.poll_event()).collect();
        let h1 = ev.iter().find_map(|e| if let Event::InboundStream(h) = e { Some(*h) } else { None }).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(b.read(h1, &mut buf), ReadResult::Data(4));
        assert_eq!(mem.used(), 4);
        drop(b);
        assert_eq!(mem.used(), 0);
    }

    #[test]
    fn mplex_wire_format_matches_spec() {
        let mut a = Mplex::new(Limits::default());
        let s = a.open_stream().unwrap();
        a.write(s, b"hi").unwrap();
        a.close(s);
        // NewStream id 0 name "0"; MessageInitiator (2); CloseInitiator (4).
        assert_eq!(a.poll_transmit().unwrap(), vec![0x00, 0x01, b'0', 0x02, 0x02, b'h', b'i', 0x04, 0x00]);
    }

    #[test]
    fn mplex_limits_hold() {
        let mut b = Mplex::new(Limits { max_buffered: 10, max_streams: 1, ..Limits::default() });
        let mut a = Mplex::new(Limits::default());
        let s = a.open_stream().unwrap();
        let _ = a.open_stream().unwrap();
        a.write(s, &[1u8; 11]).unwrap();
        pump(&mut a, &mut b);
        assert_eq!(b.refused, 1);
        let evs: Vec<_> = std::iter::from_fn(|| b.poll_event()).collect();
        assert!(evs.iter().any(|e| matches!(e, Event::Reset(_))), "{evs:?}");
        let mut big = Vec::new();
        varint::encode(2, &mut big);
        varint::encode((MAX_MESSAGE_LEN + 1) as u64, &mut big);
        assert_eq!(Mplex::new(Limits::default()).handle_input(&mut big), Err(MplexError::TooLarge((MAX_MESSAGE_LEN + 1) as u64)));
    }
}
