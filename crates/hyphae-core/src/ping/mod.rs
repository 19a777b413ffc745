//! Ping (`/ipfs/ping/1.0.0`, libp2p/specs ping/ping.md): the dialer sends 32 random bytes, the listener
//! echoes them; repeated on one stream.

use crate::identity::PeerId;
use crate::stream::{ConnId, OpenError};
use crate::time::{Duration, Instant};

pub mod service;

/// What the ping service reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ok {
        peer: PeerId,
        conn: ConnId,
        rtt: Duration,
    },
    Failed {
        peer: PeerId,
        conn: ConnId,
        error: Failure,
    },
    /// The peer opened a ping stream to us.
    Inbound {
        peer: PeerId,
        conn: ConnId,
    },
}

/// Why a ping failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    #[error("timed out")]
    Timeout,
    #[error("could not open the stream: {0}")]
    Open(OpenError),
    #[error("stream reset")]
    Reset,
    #[error("stream closed")]
    Closed,
    #[error("{0}")]
    Answer(PingError),
}

pub const PROTOCOL_ID: &str = "/ipfs/ping/1.0.0";
/// spec(ping): "The dialing peer MUST send a 32 byte payload of random binary data"
pub const PING_SIZE: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    #[error("ping payload mismatch")]
    Mismatch,
    #[error("pong without a ping")]
    Unsolicited,
}

/// The dialer side: one ping in flight at a time.
#[derive(Debug, Default)]
pub struct Pinger {
    outstanding: Option<([u8; PING_SIZE], Instant)>,
    buf: Vec<u8>,
}

impl Pinger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a ping: returns the bytes to send.
    pub fn start(&mut self, now: Instant, payload: [u8; PING_SIZE]) -> [u8; PING_SIZE] {
        self.outstanding = Some((payload, now));
        self.buf.clear();
        payload
    }

    /// Feeds received bytes; returns the RTT once the whole echo arrived.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<Option<Duration>, PingError> {
        let Some((sent, at)) = self.outstanding else { return Err(PingError::Unsolicited) };
        let need = PING_SIZE - self.buf.len();
        if data.len() > need {
            return Err(PingError::Unsolicited);
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() < PING_SIZE {
            return Ok(None);
        }
        self.outstanding = None;
        if self.buf[..] != sent[..] {
            return Err(PingError::Mismatch);
        }
        self.buf.clear();
        Ok(Some(now.saturating_duration_since(at)))
    }
}

/// The listener side: echoes complete 32-byte payloads. Holds at most 31 bytes.
#[derive(Debug, Default)]
pub struct Echo {
    buf: Vec<u8>,
}

impl Echo {
    /// Feeds received bytes; returns the bytes to echo (whole payloads only).
    pub fn handle_input(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.buf.extend_from_slice(data);
        let whole = self.buf.len() / PING_SIZE * PING_SIZE;
        out.extend(self.buf.drain(..whole));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_rtt_measured_across_split_echo() {
        let mut p = Pinger::new();
        let mut e = Echo::default();
        let sent = p.start(Instant(1_000), [5; 32]);
        let mut echoed = Vec::new();
        e.handle_input(&sent[..10], &mut echoed);
        assert!(echoed.is_empty());
        e.handle_input(&sent[10..], &mut echoed);
        assert_eq!(p.handle_input(Instant(2_000), &echoed[..20]), Ok(None));
        assert_eq!(p.handle_input(Instant(3_500), &echoed[20..]), Ok(Some(Duration::from_nanos(2_500))));
    }

    #[test]
    fn ping_wrong_echo_is_error() {
        let mut p = Pinger::new();
        p.start(Instant(0), [1; 32]);
        assert_eq!(p.handle_input(Instant(1), &[2; 32]), Err(PingError::Mismatch));
    }
}
