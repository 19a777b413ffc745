#![no_main]
//! An mplex session fed arbitrary frames: never panic; the stream cap holds.
use hyphae_core::mplex::{Limits, Mplex};
use hyphae_core::yamux::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = Mplex::new(Limits { max_streams: 8, max_buffered: 4096, ..Limits::default() });
    let mut buf = Vec::new();
    for piece in data.chunks(29) {
        buf.extend_from_slice(piece);
        if m.handle_input(&mut buf).is_err() {
            break;
        }
        assert!(m.num_streams() <= 8);
        let _ = m.poll_transmit();
        while let Some(ev) = m.poll_event() {
            if let Event::Readable(id) = ev {
                let mut b = [0u8; 512];
                let _ = m.read(id, &mut b);
            }
        }
    }
});
