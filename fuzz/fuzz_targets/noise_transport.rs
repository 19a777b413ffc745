#![no_main]
//! Noise transport frames (hyphae's in-place ChaChaPoly on ring) over one real session: what one side
//! encrypts, the other decrypts whole in any delivery pieces; a tampered byte never yields the whole
//! message; arbitrary bytes as ciphertext never panic.
use hyphae_core::noise::{Handshake, Transport};
use hyphae_core::stream::Role;
use hyphae_core::{rng, Keypair};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Both transports of a finished handshake between two fixed keys.
fn session() -> (Transport, Transport) {
    static KEYS: OnceLock<(Keypair, Keypair)> = OnceLock::new();
    let (a, b) = KEYS.get_or_init(|| {
        let mut r = rng::from_seed([9; 32]);
        (Keypair::generate_ed25519(&mut r), Keypair::generate_ed25519(&mut r))
    });
    let mut i = Handshake::new(a, Role::Dialer, None, Vec::new(), [1; 32]).unwrap();
    let mut r = Handshake::new(b, Role::Listener, None, Vec::new(), [2; 32]).unwrap();
    let (mut to_r, mut to_i) = (Vec::new(), Vec::new());
    while !(i.is_done() && r.is_done()) {
        if let Some(m) = i.poll_transmit() {
            to_r.extend(m);
        }
        r.handle_input(&mut to_r).unwrap();
        if let Some(m) = r.poll_transmit() {
            to_i.extend(m);
        }
        i.handle_input(&mut to_i).unwrap();
    }
    (i.into_transport().unwrap().0, r.into_transport().unwrap().0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, msg)) = data.split_first() else { return };
    let (mut ti, mut tr) = session();
    let mut wire = Vec::new();
    ti.encrypt(msg, &mut wire);
    let tamper = ctl & 1 == 1 && !wire.is_empty();
    if tamper {
        let at = (usize::from(ctl) * 7919 + msg.len()) % wire.len();
        wire[at] ^= ctl | 1;
    }
    let step = usize::from(ctl >> 1) * 97 + 1;
    let (mut buf, mut out, mut ok) = (Vec::new(), Vec::new(), true);
    for piece in wire.chunks(step) {
        buf.extend_from_slice(piece);
        if tr.decrypt(&mut buf, &mut out).is_err() {
            ok = false;
            break;
        }
    }
    let whole = ok && buf.is_empty() && out == msg;
    assert_eq!(whole, !tamper, "tampered {tamper}, ok {ok}, {} of {} bytes", out.len(), msg.len());
    // The input itself as ciphertext, on the other direction: errors, never a panic.
    let _ = ti.decrypt(&mut data.to_vec(), &mut Vec::new());
});
