#![no_main]
//! A listening QUIC endpoint fed arbitrary datagrams: never panic; connections stay within the cap.
use hyphae_core::quic::{Config, Endpoint};
use hyphae_core::{tls, Instant, Keypair};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fuzz_target!(|data: &[u8]| {
    static SETUP: OnceLock<(Keypair, Arc<tls::Certificate>, std::time::Instant)> = OnceLock::new();
    let (k, cert, base) = SETUP.get_or_init(|| {
        let mut rng = hyphae_core::rng::from_seed([1; 32]);
        let k = Keypair::generate_ed25519(&mut rng);
        let cert = Arc::new(tls::Certificate::generate(&k, 1_800_000_000, &mut rng));
        (k, cert, std::time::Instant::now())
    });
    let memory = hyphae_core::rcmgr::Memory::with_peer_limit(8 << 20, 2 << 20);
    let cfg = Config {
        keypair: k.clone(),
        cert: cert.clone(),
        protocols: vec!["/p".into()],
        unix_time: 1_800_000_000,
        seed: [2; 32],
        base: *base,
        max_streams: 8,
        max_connections: 4,
        max_inbound_handshakes: 3,
        ip_limits: hyphae_core::rcmgr::IpLimits::default(),
        max_datagrams: 1,
        stream_window: hyphae_core::quic::DEFAULT_STREAM_WINDOW,
        connection_window: hyphae_core::quic::DEFAULT_CONNECTION_WINDOW,
        congestion: Default::default(),
        memory: Some(memory.clone()),
    };
    let mut ep = Endpoint::new(cfg).expect("config");
    let from = "10.0.0.1:1".parse().unwrap();
    for (i, d) in data.split(|b| *b == 0xff).enumerate() {
        ep.handle_datagram(Instant(i as u64 * 1_000_000), from, d);
        ep.flush(Instant(i as u64 * 1_000_000));
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
        assert!(ep.num_connections() <= 4);
        assert!(memory.used() <= 8 << 20);
    }
    drop(ep);
    assert_eq!(memory.used(), 0, "every reservation given back");
});
