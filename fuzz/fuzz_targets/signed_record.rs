//! Signed peer records (RFC 0002 envelopes of RFC 0003 records) from arbitrary bytes: never a panic;
//! whatever opens was signed by the key of the peer it names and respects the limits.
#![no_main]
use hyphae_core::record::{Limits, PeerRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok((rec, key)) = PeerRecord::open(data, &limits) {
        assert_eq!(key.to_peer_id(), rec.peer);
        assert!(rec.addrs.len() <= limits.max_addrs);
        assert!(data.len() <= limits.max_envelope_len);
    }
});
