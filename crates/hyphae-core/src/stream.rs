//! The stream vocabulary every layer above shares: stream ids, read results, stream errors, the
//! connection role, the events a secured and muxed connection reports, why a connection closed, and the
//! [`Streams`] trait through which the node machine and its services touch a connection.
//!
//! This module is the bottom of the layering: it imports nothing but identities and time, so the muxers
//! (`yamux`, `mplex`), the connection machines (`conn`, `quic`) and the node (`node`, its services) can all
//! import it without importing each other. `tests/layers.rs` fails on any import cycle.

use crate::identity::{PeerId, PublicKey};
use crate::time::{Duration, Instant};

/// A connection of the node (TCP or QUIC), unique for the node's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stream of one connection (the muxer's or QUIC's stream number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which side opened the connection (and so, which side proposes in multistream-select, initiates the
/// security handshake and uses odd yamux stream ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Dialer,
    Listener,
}

impl Role {
    pub fn is_dialer(self) -> bool {
        self == Role::Dialer
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("stream reset")]
    Reset,
    #[error("stream closed for writing")]
    Closed,
    #[error("unknown stream")]
    Unknown,
    #[error("too many streams")]
    TooManyStreams,
    /// The node's memory budget cannot hold another stream's receive window.
    #[error("memory limit reached")]
    MemoryLimit,
    #[error("session is going away")]
    GoingAway,
    #[error("connection closed")]
    ConnectionClosed,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadResult {
    Data(usize),
    Pending,
    Eof,
    Reset,
}

/// Why a stream we opened never became ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The peer answered `na` to every protocol we proposed.
    #[error("protocol not supported by the peer")]
    Unsupported,
    #[error("stream reset during negotiation")]
    Reset,
    #[error("stream closed during negotiation")]
    Eof,
    /// multistream-select broke (bad message, too many proposals).
    #[error("negotiation failed: {0}")]
    Negotiation(String),
    #[error("connection closed")]
    ConnectionClosed,
    #[error("timed out")]
    Timeout,
    /// The connection would not open another stream.
    #[error("could not open: {0}")]
    Refused(StreamError),
    /// Negotiated, then reset here: the resource manager's outbound stream budget for this peer or
    /// protocol is full.
    #[error("resource limit: {0}")]
    Limit(crate::rcmgr::Refusal),
}

/// What kind of rule a peer broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViolationKind {
    /// A message that does not decode.
    #[error("malformed message: {0}")]
    Malformed(crate::DecodeError),
    /// A message that decodes but is not allowed here (wrong state, wrong key, bad frame).
    #[error("{0}")]
    Protocol(String),
    /// More than a documented limit allows.
    #[error("{what} over the limit of {limit}")]
    Limit { what: &'static str, limit: usize },
}

/// A peer misbehaved: which peer (when known), in which protocol, how. What scoring, metrics and the
/// daemon's error codes match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{protocol}: {kind}")]
pub struct Violation {
    pub peer: Option<PeerId>,
    pub protocol: &'static str,
    pub kind: ViolationKind,
}

/// Why a connection closed (or never opened).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// We closed it (API call, shutdown).
    #[error("closed locally")]
    Local,
    /// The remote ended the transport (EOF, GoAway then EOF, QUIC close).
    #[error("closed by remote")]
    Remote,
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The security or muxer handshake failed (bad certificate, bad signature, no common protocol).
    #[error("{stage}: {detail}")]
    Handshake { stage: &'static str, detail: String },
    /// The peer is not the one the address named.
    #[error("remote is {actual}, expected {expected}")]
    PeerIdMismatch { expected: PeerId, actual: PeerId },
    #[error("{0}")]
    Violation(Violation),
    /// A local limit refused or ended it.
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// The connection manager closed it to get back under its watermark.
    #[error("trimmed by the connection manager")]
    Trimmed,
    /// The resource manager refused it (which scope, which resource).
    #[error("resource limit: {0}")]
    Refused(crate::rcmgr::Refusal),
    /// The transport failed (I/O error, QUIC idle timeout, dial refused).
    #[error("connection lost: {0}")]
    Lost(String),
}

impl CloseReason {
    /// A short stable label of the variant (metrics labels, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            CloseReason::Local => "local",
            CloseReason::Remote => "remote",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::Handshake { .. } => "handshake_failed",
            CloseReason::PeerIdMismatch { .. } => "peer_id_mismatch",
            CloseReason::Violation(_) => "violation",
            CloseReason::Limit(_) => "limit",
            CloseReason::Trimmed => "trimmed",
            CloseReason::Refused(_) => "refused",
            CloseReason::Lost(_) => "lost",
        }
    }
}

/// What a secured, muxed connection reports, TCP or QUIC alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    Established {
        peer: PeerId,
        /// Boxed: keys are large (RSA) and this event is rare; every other event stays small.
        public_key: Box<PublicKey>,
        security: String,
        muxer: String,
        early_muxer: bool,
        /// The handshake's last round trip: from our last handshake flight to the answer that completed
        /// it (TCP: the dialer's Noise/TLS first flight → the listener's; the listener's → the dialer's
        /// last; QUIC: quinn's estimate from the handshake's packets). A first measure of the path's RTT.
        rtt: Duration,
    },
    /// A remote-opened stream whose protocol we negotiated.
    InboundStream {
        id: StreamId,
        protocol: String,
    },
    /// A stream we opened is ready for this protocol.
    OutboundReady {
        id: StreamId,
        protocol: String,
    },
    OutboundFailed {
        id: StreamId,
        reason: OpenError,
    },
    Readable(StreamId),
    Writable(StreamId),
    /// The remote reset a negotiated stream.
    Reset(StreamId),
    Closed {
        reason: CloseReason,
    },
}

impl ConnEvent {
    /// The stream this event is about (`None` for `Established` and `Closed`).
    pub fn stream(&self) -> Option<StreamId> {
        match self {
            ConnEvent::InboundStream { id, .. } | ConnEvent::OutboundReady { id, .. } | ConnEvent::OutboundFailed { id, .. } => Some(*id),
            ConnEvent::Readable(id) | ConnEvent::Writable(id) | ConnEvent::Reset(id) => Some(*id),
            ConnEvent::Established { .. } | ConnEvent::Closed { .. } => None,
        }
    }
}

/// The stream surface of one secured, muxed connection: all the node machine needs of it. Implemented by
/// the TCP `conn::Connection` and by one connection of a QUIC endpoint (`quic::ConnStreams`).
pub trait Streams {
    fn open_stream(&mut self, now: Instant, protocols: Vec<String>) -> Result<StreamId, StreamError>;
    /// Opens a stream for one protocol optimistically: ready at once, writable right behind the
    /// proposal; a refusal shows as a reset. Machines without a lazy mode negotiate as usual.
    fn open_stream_lazy(&mut self, now: Instant, protocol: String) -> Result<StreamId, StreamError> {
        self.open_stream(now, vec![protocol])
    }
    fn stream_read(&mut self, now: Instant, s: StreamId, buf: &mut [u8]) -> ReadResult;
    /// As `stream_read`, but the bytes are lent to `f` where the machine keeps them, rather than copied
    /// into `buf`: in one or more slices, at most `buf.len()` bytes in all (`Data` says how many), for as
    /// long as `f` returns true (it takes more in this read; false: the rest waits for the next read).
    /// The node reads services' streams this way. The TCP muxers lend their stream buffer (one slice,
    /// two when it wraps), QUIC each received frame's bytes where quinn keeps them; the default copies
    /// into `buf` and lends that.
    fn stream_read_with(&mut self, now: Instant, s: StreamId, buf: &mut [u8], f: &mut dyn FnMut(&[u8]) -> bool) -> ReadResult {
        let r = self.stream_read(now, s, buf);
        if let ReadResult::Data(n) = r {
            f(&buf[..n]);
        }
        r
    }
    fn stream_write(&mut self, now: Instant, s: StreamId, data: &[u8]) -> Result<usize, StreamError>;
    /// As `stream_write`, for bytes that live as long as the program: a machine that keeps written
    /// bytes until the peer acknowledges them (QUIC) keeps a view of them instead of a copy.
    fn stream_write_static(&mut self, now: Instant, s: StreamId, data: &'static [u8]) -> Result<usize, StreamError> {
        self.stream_write(now, s, data)
    }
    /// Half-close: we send no more.
    fn stream_close(&mut self, now: Instant, s: StreamId);
    fn stream_reset(&mut self, now: Instant, s: StreamId);
    /// We are done with the stream (the handle is dropped).
    fn stream_release(&mut self, now: Instant, s: StreamId);
    /// Close the whole connection (GoAway / CONNECTION_CLOSE).
    fn close(&mut self, now: Instant);
    /// Streams open or being negotiated, in either direction (the idle-connection check).
    fn num_streams(&self) -> usize;
}

/// Serves bytes that arrived right after a stream's protocol negotiation (they were read together with
/// it) before anything from the muxer or QUIC stream. Shared by the TCP and QUIC machines.
pub(crate) fn read_leftover(prebuf: &mut Vec<u8>, sink: &mut ReadSink<'_>) -> Option<ReadResult> {
    if prebuf.is_empty() {
        return None;
    }
    let n = prebuf.len().min(sink.room());
    sink.put(&prebuf[..n]);
    prebuf.drain(..n);
    Some(ReadResult::Data(n))
}

/// Where a muxer's read puts a stream's bytes: copied into a buffer (`Streams::stream_read`), or lent
/// in place to a function (`Streams::stream_read_with`), slice by slice while it returns true; at most
/// `room()` bytes in all.
pub(crate) struct ReadSink<'a> {
    to: SinkTo<'a>,
    room: usize,
}

enum SinkTo<'a> {
    Copy { buf: &'a mut [u8], n: usize },
    Lend(&'a mut dyn FnMut(&[u8]) -> bool),
}

impl<'a> ReadSink<'a> {
    pub(crate) fn copy(buf: &'a mut [u8]) -> Self {
        ReadSink { room: buf.len(), to: SinkTo::Copy { buf, n: 0 } }
    }

    pub(crate) fn lend(max: usize, f: &'a mut dyn FnMut(&[u8]) -> bool) -> Self {
        ReadSink { room: max, to: SinkTo::Lend(f) }
    }

    /// Bytes it still takes.
    pub(crate) fn room(&self) -> usize {
        self.room
    }

    /// Takes `d` (at most `room()` bytes).
    pub(crate) fn put(&mut self, d: &[u8]) {
        debug_assert!(d.len() <= self.room, "a read sink takes at most its room");
        if d.is_empty() {
            return;
        }
        match &mut self.to {
            SinkTo::Copy { buf, n } => {
                buf[*n..*n + d.len()].copy_from_slice(d);
                *n += d.len();
            }
            SinkTo::Lend(f) => {
                if !f(d) {
                    // The function takes no more in this read: the rest waits for the next one.
                    self.room = 0;
                    return;
                }
            }
        }
        self.room -= d.len();
    }
}
