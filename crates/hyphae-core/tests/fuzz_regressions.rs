//! Inputs the fuzzers found, kept as regression tests.

use hyphae_core::Multiaddr;

fn text_roundtrips_through_binary(input: &[u8]) {
    if let Ok(s) = std::str::from_utf8(input) {
        if let Ok(m) = s.parse::<Multiaddr>() {
            let back = Multiaddr::from_bytes(&m.to_bytes());
            assert_eq!(back.as_ref(), Ok(&m), "{s:?}");
        }
    }
}

#[test]
fn fuzz_multiaddr_crash_663577f8() {
    let input = include_bytes!("fixtures/fuzz-multiaddr-663577f8");
    text_roundtrips_through_binary(input);
}
