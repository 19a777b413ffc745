#![no_main]
//! Yamux session fed arbitrary frames: never panic; the stream limit and per-stream buffers hold.
use hyphae_core::yamux::{Limits, ReadResult, Role, Yamux};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_streams: 8, stream_window: 256 * 1024, ..Limits::default() };
    for role in [Role::Listener, Role::Dialer] {
        let mut y = Yamux::new(role, limits.clone());
        let mut buf = Vec::new();
        for piece in data.chunks(37) {
            buf.extend_from_slice(piece);
            if y.handle_input(&mut buf).is_err() {
                break;
            }
            assert!(y.num_streams() <= 8);
            let _ = y.poll_transmit();
            while let Some(ev) = y.poll_event() {
                if let hyphae_core::yamux::Event::Readable(id) = ev {
                    let mut b = [0u8; 4096];
                    let _: ReadResult = y.read(id, &mut b);
                }
            }
        }
    }
});
