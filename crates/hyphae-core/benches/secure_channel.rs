//! CPU per GiB of the secure channels' bulk path, one thread, no sockets: what each end of a transfer
//! pays for its crypto and framing, against the bare AEADs beneath them. On a machine where both peers
//! and the path share the cores (the 60 ms path of BENCHMARKS.md), these floors are a large part of
//! what a TCP+Noise or QUIC transfer costs.
//!
//! `cargo bench -p hyphae-core --bench secure_channel [MiB]` (MiB per row, default 1024); prints a table.
//! Rows: Noise transport frames (ChaChaPoly, the libp2p Noise spec's only cipher) sealed and opened from
//! 512 KiB writes, as a TCP+Noise connection does; TLS 1.3 records (rustls, AES-GCM) the same way; and
//! ring's AEADs alone at a Noise frame's size (65,519 bytes) and a QUIC packet's (1,452).

use hyphae_core::identity::Keypair;
use hyphae_core::stream::Role;
use hyphae_core::{noise, tls};
use ring::aead;
use std::time::Instant;

const NOW: i64 = 1_800_000_000;
const WRITE: usize = 512 * 1024;

fn noise_pair() -> (noise::Transport, noise::Transport) {
    let mut rng = hyphae_core::rng::from_seed([7; 32]);
    let (a, b) = (Keypair::generate_ed25519(&mut rng), Keypair::generate_ed25519(&mut rng));
    let mut c = noise::Handshake::new(&a, Role::Dialer, Some(b.peer_id()), vec![], [1; 32]).expect("dialer");
    let mut s = noise::Handshake::new(&b, Role::Listener, None, vec![], [2; 32]).expect("listener");
    while !(c.is_done() && s.is_done()) {
        while let Some(mut m) = c.poll_transmit() {
            s.handle_input(&mut m).expect("handshake");
        }
        while let Some(mut m) = s.poll_transmit() {
            c.handle_input(&mut m).expect("handshake");
        }
    }
    (c.into_transport().expect("done").0, s.into_transport().expect("done").0)
}

fn tls_pair() -> (tls::Session, tls::Session) {
    let mut rng = hyphae_core::rng::from_seed([9; 32]);
    let (a, b) = (Keypair::generate_ed25519(&mut rng), Keypair::generate_ed25519(&mut rng));
    let (ca, cb) = (tls::Certificate::generate(&a, NOW, &mut rng), tls::Certificate::generate(&b, NOW, &mut rng));
    let m = vec!["/yamux/1.0.0".to_string()];
    let mut c = tls::Session::new(&ca, Role::Dialer, Some(b.peer_id()), &m, NOW, [3; 32]).expect("dialer");
    let mut s = tls::Session::new(&cb, Role::Listener, None, &m, NOW, [4; 32]).expect("listener");
    let (mut to_s, mut to_c, mut pc, mut ps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while c.is_handshaking() || s.is_handshaking() {
        c.poll_transmit(&mut to_s);
        s.handle_input(&mut to_s, &mut ps).expect("handshake");
        s.poll_transmit(&mut to_c);
        c.handle_input(&mut to_c, &mut pc).expect("handshake");
    }
    (c, s)
}

/// Seconds per GiB of `f` run over `total` bytes in pieces of `piece`.
fn per_gib(total: usize, piece: usize, mut f: impl FnMut(usize)) -> f64 {
    let n = total / piece;
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_secs_f64() * (1u64 << 30) as f64 / (n * piece) as f64
}

fn row(what: &str, size: usize, seal: f64, open: f64) {
    println!("| {what} | {size} | {seal:.3} | {open:.3} | {:.2} |", (1u64 << 30) as f64 / seal / 1e9);
}

/// A secure channel's row, from `WRITE`-byte writes: `seal` alone on one session; then, on a fresh
/// pair (frames open only in the order sealed, with nonces in step), `seal_too` and `open` one write at
/// a time, the open being that less the seal. `open` appends the plaintext of the wire bytes it is
/// given and returns how many it took and whether all authenticated.
fn channel_row(
    what: &str,
    total: usize,
    mut seal: impl FnMut(&mut Vec<u8>),
    mut seal_too: impl FnMut(&mut Vec<u8>),
    mut open: impl FnMut(&[u8], &mut Vec<u8>) -> (usize, bool),
) {
    let mut wire = Vec::with_capacity(2 * WRITE);
    let sealed = per_gib(total, WRITE, |_| {
        wire.clear();
        seal(&mut wire);
    });
    let mut plain = Vec::with_capacity(2 * WRITE);
    let both = per_gib(total, WRITE, |_| {
        wire.clear();
        seal_too(&mut wire);
        plain.clear();
        let (used, ok) = open(&wire, &mut plain);
        assert!(ok && used == wire.len() && plain.len() == WRITE);
    });
    row(what, WRITE, sealed, (both - sealed).max(0.0));
}

fn aead_row(name: &str, alg: &'static aead::Algorithm, size: usize, total: usize) {
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(alg, &[7u8; 32][..alg.key_len()]).expect("key"));
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_le_bytes());
        aead::Nonce::assume_unique_for_key(n)
    };
    let mut buf = vec![1u8; size];
    let mut tags = Vec::with_capacity(total / size);
    let seal = per_gib(total, size, |i| {
        tags.push(key.seal_in_place_separate_tag(nonce(i), aead::Aad::empty(), &mut buf).expect("seal"));
    });
    // Opens what the last seal made, again and again: the same work per byte as opening each one.
    let sealed = buf.clone();
    let last = tags.len() - 1;
    let open = per_gib(total, size, |_| {
        buf.copy_from_slice(&sealed);
        key.open_in_place_separate_tag(nonce(last), aead::Aad::empty(), tags[last], &mut buf, 0..).expect("open");
    });
    row(&format!("ring {name} alone"), size, seal, open);
}

fn main() {
    let mib: usize = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let total = mib << 20;
    let data = vec![0u8; WRITE];
    println!("| row | bytes per write or packet | seal, s per GiB | open, s per GiB | seal GB/s |");
    println!("|---|---:|---:|---:|---:|");

    let (mut a, _) = noise_pair();
    let (mut c, mut s) = noise_pair();
    channel_row(
        "Noise transport (ChaChaPoly frames)",
        total,
        |w| a.encrypt(&data, w),
        |w| c.encrypt(&data, w),
        |w, p| {
            let (used, r) = s.decrypt_from(w, p);
            (used, r.is_ok())
        },
    );
    let (mut a, _) = tls_pair();
    let (mut c, mut s) = tls_pair();
    channel_row(
        "TLS 1.3 records (rustls, AES-GCM)",
        total,
        |w| a.encrypt(&data, w),
        |w| c.encrypt(&data, w),
        |w, p| {
            let (used, r) = s.handle_input_from(w, p);
            (used, r.is_ok())
        },
    );

    aead_row("ChaCha20-Poly1305", &aead::CHACHA20_POLY1305, noise::MAX_PLAINTEXT_LEN, total);
    aead_row("AES-128-GCM", &aead::AES_128_GCM, noise::MAX_PLAINTEXT_LEN, total);
    aead_row("AES-128-GCM", &aead::AES_128_GCM, 1452, total);
    aead_row("ChaCha20-Poly1305", &aead::CHACHA20_POLY1305, 1452, total);
}
