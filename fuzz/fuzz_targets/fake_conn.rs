//! Shared by the node-machine fuzz targets: a connection whose streams return what the fuzzer says.
use hyphae_core::conn::{Event, ReadResult, StreamError, StreamId, Streams};
use hyphae_core::{Instant, Keypair};
use std::sync::OnceLock;

/// A connection whose streams return what the fuzzer says.
pub struct Fake<'a> {
    pub data: &'a [u8],
    pub next: u32,
}

impl Fake<'_> {
    pub fn byte(&mut self) -> u8 {
        let (b, rest) = self.data.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.data = rest;
        b
    }
}

impl Streams for Fake<'_> {
    fn open_stream(&mut self, _now: Instant, _p: Vec<String>) -> Result<StreamId, StreamError> {
        self.next += 2;
        Ok(StreamId(self.next))
    }
    fn stream_read(&mut self, _now: Instant, _s: StreamId, buf: &mut [u8]) -> ReadResult {
        match self.byte() % 8 {
            0 => ReadResult::Pending,
            1 => ReadResult::Eof,
            2 => ReadResult::Reset,
            _ => {
                let n = (self.byte() as usize).min(buf.len()).min(self.data.len());
                if n == 0 {
                    return ReadResult::Pending;
                }
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                ReadResult::Data(n)
            }
        }
    }
    fn stream_write(&mut self, _now: Instant, _s: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        // Partial writes too, so the router's per-stream buffers fill and drain.
        Ok(data.len().min(usize::from(self.byte()) * 4))
    }
    fn stream_close(&mut self, _now: Instant, _s: StreamId) {}
    fn stream_reset(&mut self, _now: Instant, _s: StreamId) {}
    fn stream_release(&mut self, _now: Instant, _s: StreamId) {}
    fn close(&mut self, _now: Instant) {}
    fn num_streams(&self) -> usize {
        self.data.len() % 3
    }
}

/// The events a real connection machine reports when it is established.
pub fn established(peer: &hyphae_core::PeerId, key: &Keypair) -> Event {
    Event::Established {
        peer: peer.clone(),
        public_key: Box::new(key.public()),
        security: "/noise".into(),
        muxer: "/yamux/1.0.0".into(),
        early_muxer: true,
    }
}

pub fn keys() -> &'static (Keypair, Keypair) {
    static K: OnceLock<(Keypair, Keypair)> = OnceLock::new();
    K.get_or_init(|| {
        let mut r = hyphae_core::rng::from_seed([7; 32]);
        (Keypair::generate_ed25519(&mut r), Keypair::generate_ed25519(&mut r))
    })
}

