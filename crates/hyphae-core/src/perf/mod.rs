//! The perf protocol (`/perf/1.0.0`, libp2p/specs perf/perf.md).
//!
//! Client: send the number of bytes it wants back (big-endian u64), upload any amount, close its write
//! side, read until EOF. Server: read the u64, read until EOF, then send that many bytes and close.
//! spec(perf): "This MUST NOT be run concurrently with step 2."

use crate::identity::PeerId;
use crate::stream::{ConnId, OpenError};
use crate::time::Duration;

pub mod service;

pub const PROTOCOL_ID: &str = "/perf/1.0.0";

/// One perf exchange asked for with `service::PerfService::start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub u64);

/// What the perf service reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// About once a second while a run moves bytes: what moved since the last report.
    Progress {
        run: RunId,
        elapsed: Duration,
        uploaded: u64,
        downloaded: u64,
    },
    /// A run finished: everything asked for came back and the server closed.
    Done {
        run: RunId,
        peer: PeerId,
        elapsed: Duration,
        uploaded: u64,
        downloaded: u64,
    },
    Failed {
        run: RunId,
        peer: PeerId,
        error: Failure,
    },
    /// We served one exchange.
    Served {
        peer: PeerId,
        conn: ConnId,
        uploaded: u64,
        downloaded: u64,
    },
}

/// Why a perf run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    #[error("could not open the stream: {0}")]
    Open(OpenError),
    #[error("stream reset (by the peer, or it does not serve /perf/1.0.0)")]
    Reset,
    #[error("connection closed")]
    Closed,
    #[error("received {got} bytes, asked for {asked}")]
    Short { got: u64, asked: u64 },
}
/// Bytes either side sends come from this fixed block (the spec allows any predetermined bytes).
///
/// Its size matters to QUIC. quinn keeps each write as one segment until it is acknowledged and finds
/// a packet's data by walking the segments from the oldest (quinn-proto 0.11 `SendBuffer::get`): with
/// 64 KiB blocks a 60 ms path at 3-4 Gbit/s holds ~450 segments in flight, and that walk was 19% of
/// the sender's CPU. 512 KiB blocks cut it to ~3% (BENCHMARKS.md). It stays below the outbox's
/// per-connection limit (`node::Limits::max_queued_bytes_per_conn`, 1 MiB): a block is written only
/// once the one before has drained.
pub static BLOCK: [u8; 512 * 1024] = [0u8; 512 * 1024];

/// The server side of one perf stream, as a machine over stream bytes.
#[derive(Debug, Default)]
pub struct Server {
    header: Vec<u8>,
    requested: Option<u64>,
    uploaded: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Keep reading.
    Reading,
    /// The upload ended: send this many bytes, then close.
    Send(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PerfError {
    #[error("perf stream ended before the 8-byte size header")]
    NoHeader,
}

impl Server {
    /// Feeds uploaded bytes.
    pub fn handle_input(&mut self, mut data: &[u8]) {
        if self.requested.is_none() {
            let need = 8 - self.header.len();
            let k = need.min(data.len());
            self.header.extend_from_slice(&data[..k]);
            data = &data[k..];
            if self.header.len() == 8 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header);
                self.requested = Some(u64::from_be_bytes(b));
            }
        }
        self.uploaded += data.len() as u64;
    }

    /// The client closed its write side.
    pub fn handle_eof(&mut self) -> Result<ServerState, PerfError> {
        self.requested.map(ServerState::Send).ok_or(PerfError::NoHeader)
    }

    pub fn uploaded(&self) -> u64 {
        self.uploaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_server_reads_split_header_then_counts() {
        let mut s = Server::default();
        s.handle_input(&[0, 0, 0]);
        s.handle_input(&[0, 0, 0, 1, 0, 9, 9, 9]);
        assert_eq!(s.uploaded(), 3);
        assert_eq!(s.handle_eof(), Ok(ServerState::Send(256)));
        assert_eq!(Server::default().handle_eof(), Err(PerfError::NoHeader));
    }
}
