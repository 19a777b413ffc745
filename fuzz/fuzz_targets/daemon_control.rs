//! The daemon's control requests and persistent-connection messages from arbitrary client bytes: never
//! a panic, and what decodes respects the limits and consumed no more than it was given.
#![no_main]
use hyphae_core::daemon::{decode_persistent_request, decode_persistent_response, decode_request, Limits, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_message_len: 4096, max_items: 8 };
    if let Ok(Some((r, used))) = decode_request(data, &limits) {
        assert!(used <= data.len());
        match r {
            Request::Connect { addrs, .. } => assert!(addrs.len() <= 8),
            Request::StreamOpen { protocols, .. } | Request::StreamHandler { protocols, .. } => assert!(protocols.len() <= 8),
            _ => {}
        }
    }
    if let Ok(Some((r, used))) = decode_persistent_request(data, &limits) {
        assert!(used <= data.len());
        assert_eq!(r.call().len(), 16);
    }
    if let Ok(Some((_, used))) = decode_persistent_response(data, &limits) {
        assert!(used <= data.len());
    }
});
