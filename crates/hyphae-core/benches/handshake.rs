//! CPU per security handshake, both ends in one thread (sans-IO sessions, no sockets): what a node pays
//! per new connection, and most of what the simulator pays per simulated one.
//!
//! `cargo bench -p hyphae-core --bench handshake [N]` (N handshakes per row, default 300); prints a table.

use hyphae_core::identity::Keypair;
use hyphae_core::stream::Role;
use hyphae_core::{noise, tls};
use std::time::Instant;

const NOW: i64 = 1_800_000_000;

fn tls_pair(ca: &tls::Certificate, cb: &tls::Certificate, b: &Keypair, i: u32) {
    let m = vec!["/yamux/1.0.0".to_string()];
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    let mut c = tls::Session::new(ca, Role::Dialer, Some(b.peer_id()), &m, NOW, seed).unwrap();
    seed[4] = 1;
    let mut s = tls::Session::new(cb, Role::Listener, None, &m, NOW, seed).unwrap();
    let (mut to_s, mut to_c, mut pc, mut ps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while c.is_handshaking() || s.is_handshaking() {
        c.poll_transmit(&mut to_s);
        s.handle_input(&mut to_s, &mut ps).unwrap();
        s.poll_transmit(&mut to_c);
        c.handle_input(&mut to_c, &mut pc).unwrap();
    }
    assert_eq!(c.remote().unwrap().peer_id, b.peer_id());
}

fn noise_pair(a: &noise::StaticKey, bk: &noise::StaticKey, b: &Keypair, i: u32) {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    let mut c = noise::Handshake::with_static_key(a, Role::Dialer, Some(b.peer_id()), vec![], seed).unwrap();
    seed[4] = 1;
    let mut s = noise::Handshake::with_static_key(bk, Role::Listener, None, vec![], seed).unwrap();
    while !(c.is_done() && s.is_done()) {
        while let Some(mut m) = c.poll_transmit() {
            s.handle_input(&mut m).unwrap();
        }
        while let Some(mut m) = s.poll_transmit() {
            c.handle_input(&mut m).unwrap();
        }
    }
    assert_eq!(c.into_transport().unwrap().1.peer_id, b.peer_id());
}

fn main() {
    let n: u32 = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(300);
    let mut rng = hyphae_core::rng::from_seed([7; 32]);
    let a = Keypair::generate_ed25519(&mut rng);
    let b = Keypair::generate_ed25519(&mut rng);
    let ca = tls::Certificate::generate(&a, NOW, &mut rng);
    let cb = tls::Certificate::generate(&b, NOW, &mut rng);
    let ka = noise::StaticKey::generate(&a, [1; 32]).unwrap();
    let kb = noise::StaticKey::generate(&b, [2; 32]).unwrap();
    println!("| handshake (both ends, one thread) | handshakes | µs each |");
    println!("|---|---:|---:|");
    let t = Instant::now();
    for i in 0..n {
        tls_pair(&ca, &cb, &b, i);
    }
    println!("| TLS 1.3 (libp2p certificates) | {n} | {:.0} |", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let t = Instant::now();
    for i in 0..n {
        noise_pair(&ka, &kb, &b, i);
    }
    println!("| Noise XX | {n} | {:.0} |", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
