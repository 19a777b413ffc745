#![no_main]
//! multistream-select listener and dialer fed arbitrary bytes in arbitrary pieces: never panic, never
//! keep more than one partial message, consume only what they parsed.
use hyphae_core::mss::{Negotiator, MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    for dialer in [false, true] {
        let mut n = if dialer { Negotiator::dialer(["/a/1", "/b/1"]) } else { Negotiator::listener(["/a/1"]) };
        let mut buf = Vec::new();
        for piece in data.chunks(split) {
            buf.extend_from_slice(piece);
            let before = buf.len();
            match n.handle_input(&mut buf) {
                Ok(Some(p)) => {
                    assert!(p == "/a/1" || p == "/b/1");
                    break;
                }
                Ok(None) => assert!(buf.len() <= before && buf.len() <= MAX_MESSAGE_LEN + 10 + piece.len()),
                Err(_) => break,
            }
            let _ = n.poll_transmit();
        }
    }
});
