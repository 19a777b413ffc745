#![no_main]
//! A listening connection machine (mss, noise, yamux upgrade) fed arbitrary bytes: never panic; once
//! closed it stays closed; the handshake buffer limit holds.
use hyphae_core::conn::{Config, Connection, Role};
use hyphae_core::{Instant, Keypair};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static KEY: OnceLock<Keypair> = OnceLock::new();
    let key = KEY.get_or_init(|| Keypair::generate_ed25519(&mut hyphae_core::rng::from_seed([1; 32])));
    let mut c = Connection::new(Role::Listener, Config::new(key.clone()), None, Instant(0), [2; 32]);
    for (i, piece) in data.chunks(64).enumerate() {
        c.handle_input(Instant(i as u64), piece);
        let _ = c.poll_transmit();
        while c.poll_event().is_some() {}
        if c.is_closed() {
            c.handle_input(Instant(i as u64), piece);
            assert!(c.is_closed());
            break;
        }
    }
});
