//! multistream-select 1.0 (multiformats/multistream-select, libp2p/specs connections/README.md).
//!
//! Messages are varint-length-prefixed UTF-8 lines ending in `\n`. Both sides send the header
//! `/multistream/1.0.0`; the dialer proposes protocols one by one, the listener echoes one it supports or
//! answers `na`. The dialer sends its header and first proposal together (as go-libp2p does), saving a
//! round trip when the first proposal is accepted.
//!
//! The negotiator consumes complete messages from the front of the caller's receive buffer and leaves
//! anything after the final echo there: those bytes belong to the negotiated protocol.

use crate::{varint, DecodeError};

pub const PROTOCOL_ID: &str = "/multistream/1.0.0";
/// Longest message (protocol id + newline) we accept; go-multistream also caps messages at 1 KiB.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Bytes a connection buffers for one stream while its protocol is negotiated (TCP muxers and QUIC
/// alike); beyond it the negotiation is judged on what arrived.
pub const MAX_BUFFERED: usize = 64 * 1024;
/// A listener gives up after this many rejected proposals, so a dialer cannot keep it busy forever.
pub const MAX_PROPOSALS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MssError {
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    #[error("expected header {PROTOCOL_ID:?}, got {0:?}")]
    BadHeader(String),
    #[error("unexpected response {0:?}")]
    UnexpectedResponse(String),
    #[error("no protocol in common (proposed {0:?})")]
    NoCommonProtocol(Vec<String>),
    #[error("too many proposals")]
    TooManyProposals,
}

/// Which side of the negotiation, with its state.
enum Side {
    Dialer { proposals: Vec<String>, idx: usize },
    Listener { supported: Vec<String>, rejected: usize },
}

pub struct Negotiator {
    role: Side,
    header_received: bool,
    /// A failed negotiation stays failed (rustls's sticky error): driving it again returns the same error.
    failed: Option<MssError>,
    done: bool,
    out: Vec<u8>,
}

pub fn encode_message(msg: &str, out: &mut Vec<u8>) {
    varint::encode(msg.len() as u64 + 1, out);
    out.extend_from_slice(msg.as_bytes());
    out.push(b'\n');
}

/// Decodes one message from the front of `buf`: `Ok(None)` = need more bytes.
pub fn decode_message(buf: &[u8]) -> Result<Option<(String, usize)>, DecodeError> {
    let Some((r, used)) = varint::decode_frame(buf, MAX_MESSAGE_LEN)? else { return Ok(None) };
    let body = &buf[r];
    let Some((&b'\n', line)) = body.split_last() else { return Err(DecodeError::Invalid("message does not end in newline")) };
    let s = std::str::from_utf8(line).map_err(|_| DecodeError::Invalid("message is not utf-8"))?;
    Ok(Some((s.to_string(), used)))
}

impl Negotiator {
    /// A dialer proposing `proposals` in order of preference. Must not be empty.
    pub fn dialer<S: Into<String>>(proposals: impl IntoIterator<Item = S>) -> Self {
        let proposals: Vec<String> = proposals.into_iter().map(Into::into).collect();
        let mut out = Vec::new();
        encode_message(PROTOCOL_ID, &mut out);
        if let Some(p) = proposals.first() {
            encode_message(p, &mut out);
        }
        Negotiator { role: Side::Dialer { proposals, idx: 0 }, header_received: false, done: false, failed: None, out }
    }

    pub fn listener<S: Into<String>>(supported: impl IntoIterator<Item = S>) -> Self {
        let mut out = Vec::new();
        encode_message(PROTOCOL_ID, &mut out);
        Negotiator {
            role: Side::Listener { supported: supported.into_iter().map(Into::into).collect(), rejected: 0 },
            header_received: false,
            done: false,
            failed: None,
            out,
        }
    }

    /// Bytes to send. Drain after every `handle_input`.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        crate::take_output(&mut self.out)
    }

    /// Consumes messages from the front of `buf`. `Ok(Some(protocol))` once negotiated (further bytes in
    /// `buf` are the protocol's), `Ok(None)` while more input is needed.
    pub fn handle_input(&mut self, buf: &mut Vec<u8>) -> Result<Option<String>, MssError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.advance(buf);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn advance(&mut self, buf: &mut Vec<u8>) -> Result<Option<String>, MssError> {
        if let Side::Dialer { proposals, .. } = &self.role {
            if proposals.is_empty() {
                return Err(MssError::NoCommonProtocol(vec![]));
            }
        }
        let mut consumed = 0;
        let result = loop {
            if self.done {
                break Ok(None);
            }
            let msg = match decode_message(&buf[consumed..]) {
                Ok(Some((m, n))) => {
                    consumed += n;
                    m
                }
                Ok(None) => break Ok(None),
                Err(e) => break Err(e.into()),
            };
            if !self.header_received {
                if msg != PROTOCOL_ID {
                    break Err(MssError::BadHeader(msg));
                }
                self.header_received = true;
                continue;
            }
            match &mut self.role {
                Side::Dialer { proposals, idx } => {
                    if msg == proposals[*idx] {
                        self.done = true;
                        break Ok(Some(msg));
                    } else if msg == "na" {
                        *idx += 1;
                        match proposals.get(*idx) {
                            Some(p) => encode_message(p, &mut self.out),
                            None => break Err(MssError::NoCommonProtocol(proposals.clone())),
                        }
                    } else {
                        break Err(MssError::UnexpectedResponse(msg));
                    }
                }
                Side::Listener { supported, rejected } => {
                    if supported.contains(&msg) {
                        encode_message(&msg, &mut self.out);
                        self.done = true;
                        break Ok(Some(msg));
                    }
                    *rejected += 1;
                    if *rejected > MAX_PROPOSALS {
                        break Err(MssError::TooManyProposals);
                    }
                    encode_message("na", &mut self.out);
                }
            }
        };
        buf.drain(..consumed);
        result
    }
}

/// What a failed negotiation of a stream we opened means for its opener.
pub(crate) fn open_error(e: MssError) -> crate::stream::OpenError {
    match e {
        MssError::NoCommonProtocol(_) => crate::stream::OpenError::Unsupported,
        e => crate::stream::OpenError::Negotiation(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mss_driven_after_failure_stays_failed() {
        let mut d = Negotiator::dialer(["/a"]);
        let _ = d.poll_transmit();
        let mut na = Vec::new();
        encode_message(PROTOCOL_ID, &mut na);
        encode_message("na", &mut na);
        assert_eq!(d.handle_input(&mut na), Err(MssError::NoCommonProtocol(vec!["/a".into()])));
        // A late message after the failure (it used to index past the proposals and panic).
        let mut late = Vec::new();
        encode_message("na", &mut late);
        assert_eq!(d.handle_input(&mut late), Err(MssError::NoCommonProtocol(vec!["/a".into()])));
    }

    fn run(mut d: Negotiator, mut l: Negotiator) -> (Result<Option<String>, MssError>, Result<Option<String>, MssError>) {
        let (mut to_l, mut to_d) = (Vec::new(), Vec::new());
        let (mut rd, mut rl) = (Ok(None), Ok(None));
        for _ in 0..10 {
            if let Some(b) = d.poll_transmit() {
                to_l.extend(b);
            }
            if let Some(b) = l.poll_transmit() {
                to_d.extend(b);
            }
            if matches!(rl, Ok(None)) {
                rl = l.handle_input(&mut to_l);
            }
            if matches!(rd, Ok(None)) {
                rd = d.handle_input(&mut to_d);
            }
        }
        (rd, rl)
    }

    #[test]
    fn mss_first_proposal_accepted() {
        let (d, l) = run(Negotiator::dialer(["/noise"]), Negotiator::listener(["/tls/1.0.0", "/noise"]));
        assert_eq!(d, Ok(Some("/noise".into())));
        assert_eq!(l, Ok(Some("/noise".into())));
    }

    #[test]
    fn mss_na_then_fallback() {
        let (d, l) = run(Negotiator::dialer(["/tls/1.0.0", "/noise"]), Negotiator::listener(["/noise"]));
        assert_eq!(d, Ok(Some("/noise".into())));
        assert_eq!(l, Ok(Some("/noise".into())));
    }

    #[test]
    fn mss_no_common_protocol_fails() {
        let (d, _) = run(Negotiator::dialer(["/a"]), Negotiator::listener(["/b"]));
        assert_eq!(d, Err(MssError::NoCommonProtocol(vec!["/a".into()])));
    }

    #[test]
    fn mss_wire_bytes_match_spec_example() {
        let mut d = Negotiator::dialer(["/noise"]);
        let b = d.poll_transmit().unwrap();
        assert_eq!(b, b"\x13/multistream/1.0.0\n\x07/noise\n");
    }

    #[test]
    fn mss_leftover_bytes_stay_for_next_layer() {
        let mut d = Negotiator::dialer(["/p"]);
        let _ = d.poll_transmit();
        let mut buf = Vec::new();
        encode_message(PROTOCOL_ID, &mut buf);
        encode_message("/p", &mut buf);
        buf.extend_from_slice(b"hello");
        assert_eq!(d.handle_input(&mut buf), Ok(Some("/p".into())));
        assert_eq!(buf, b"hello");
    }

    #[test]
    fn mss_garbage_is_an_error() {
        let mut l = Negotiator::listener(["/p"]);
        assert!(l.handle_input(&mut vec![0x05, b'h', b'e', b'l', b'l', b'o']).is_err());
        let mut l = Negotiator::listener(["/p"]);
        assert!(matches!(l.handle_input(&mut vec![0xff, 0xff, 0x03]), Err(MssError::Decode(DecodeError::TooLarge { .. }))));
    }
}
