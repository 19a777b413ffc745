#![no_main]
//! The QUIC session's post-handshake TLS reader (NewSessionTicket skipped, anything else refused): never
//! panic; the same bytes in two CRYPTO frames split anywhere give the same outcome as in one; what it
//! keeps between frames is bounded (a partial 4-byte header and a 24-bit skip count).
use hyphae_core::quic::PostHandshake;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let cut = usize::from(cut).min(bytes.len());
    let mut whole = PostHandshake::default();
    let one = whole.read(bytes).map_err(|e| e.reason);
    let mut split = PostHandshake::default();
    let two = split.read(&bytes[..cut]).and_then(|()| split.read(&bytes[cut..])).map_err(|e| e.reason);
    assert_eq!(one, two);
    if one.is_ok() {
        assert_eq!(whole, split);
        let (have, skip) = whole.pending();
        assert!(have < 4 && skip < 1 << 24);
    }
});
