//! The `hyphae` binary: `node`, `pubsub`, `ping`, `id`, `perf`, `dht`, `sim`.

use hyphae::core::kad::keys;
use hyphae::{keyfile, Host, HostConfig, HostEvent, KeyType, Keypair, Multiaddr};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  hyphae node [--listen MULTIADDR]... [--key FILE] [--key-type ed25519|secp256k1|ecdsa|rsa]
             [--bootstrap MULTIADDR]... [--dht-mode auto|client|server] [--provide CID]...
             [--connect MULTIADDR]... [--subscribe TOPIC]...
      Runs a node. Without --listen it listens on /ip4/0.0.0.0/tcp/4001, /ip6/::/tcp/4001 and
      /ip4/0.0.0.0/udp/4001/quic-v1 (port 0 if taken); without --key it keeps its key in $XDG_DATA_HOME/hyphae/identity.key. Prints each
      listen address with /p2p/<id> on stdout, then logs connections and pings. Ctrl-C stops it.
      --bootstrap joins the Kademlia DHT through those peers (mode auto: a client until AutoNAT v1
      confirms a public address; --dht-mode pins it); --provide keeps announcing CID while it runs.
      The node serves AutoNAT v1 to others. --connect dials those peers at start; --subscribe joins
      a gossipsub topic and logs each message received on it.
  hyphae pubsub TOPIC [--connect MULTIADDR]... [--listen MULTIADDR]... [--key FILE]
      A terminal chat on a gossipsub topic: prints each message received as \"<sender peer ID>: <text>\"
      on stdout, publishes each line typed on stdin. Listens as node does (its addresses go to stderr).
  hyphae dht find-peer PEER_ID | closest KEY | put KEY VALUE_FILE | get KEY | provide CID |
             find-providers CID [--limit N]   --bootstrap MULTIADDR... [--quorum N]
      Joins the DHT through the bootstrap peers (as a client), runs one operation and prints its
      results one per line (get: the value's raw bytes). KEY: /pk/PEER_ID, /ipns/PEER_ID or other
      text; CID: CIDv0 (Qm…) or CIDv1 base32 (b…).
  hyphae ping MULTIADDR [--count N] [--key FILE] [--key-type T]
      Dials MULTIADDR (ending in /p2p/<id>), prints the time from the dial to the first ping answer
      (in round trips: the set-up cost), the remote's identify info and N ping RTTs.
  hyphae id [--key FILE]
      Prints the peer ID of the key (the default key if none given).
  hyphae perf --server [--listen MULTIADDR]... [--key FILE]
      Serves /perf/1.0.0; prints its listen addresses with /p2p/<id>.
  hyphae perf MULTIADDR --upload BYTES --download BYTES
      Runs the perf protocol against MULTIADDR; prints JSON lines, the last one
      {\"type\":\"final\",\"timeSeconds\":..,\"uploadBytes\":..,\"downloadBytes\":..} like rust-libp2p's perf.
  hyphae sim FILE [--seed N] [--out DIR] [--check] [--threads N]
      Runs a simulation scenario (see scenarios/ and the README) on virtual time and prints a summary
      table; --out writes metrics.csv, metrics.json, rtt_over_time.csv and rtt_over_time.svg; --check
      runs it twice and compares the trace hash of every event. HYPHAE_SEED also sets the seed.
      --threads (or HYPHAE_SIM_THREADS; default: the cores, at most 8) never changes the outcome.
common flags: --security noise,tls (order of preference; default both, noise first)
              --muxer yamux,mplex (default both, yamux first)
logging: RUST_LOG=debug for more detail (default info, on stderr).";

struct Args {
    security: Vec<String>,
    muxers: Vec<String>,
    server: bool,
    upload: u64,
    download: u64,
    seed: Option<u64>,
    out: Option<PathBuf>,
    check: bool,
    threads: Option<usize>,
    listen: Vec<Multiaddr>,
    key: Option<PathBuf>,
    key_type: KeyType,
    count: u32,
    bootstrap: Vec<Multiaddr>,
    dht_mode: Option<hyphae::core::kad::Mode>,
    provide: Vec<String>,
    connect: Vec<Multiaddr>,
    subscribe: Vec<String>,
    limit: usize,
    quorum: usize,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        security: vec![],
        muxers: vec![],
        server: false,
        upload: 0,
        download: 0,
        seed: None,
        out: None,
        check: false,
        threads: None,
        listen: vec![],
        key: None,
        key_type: KeyType::Ed25519,
        count: 5,
        bootstrap: vec![],
        dht_mode: None,
        provide: vec![],
        connect: vec![],
        subscribe: vec![],
        limit: 20,
        quorum: 1,
        positional: vec![],
    };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        let mut val = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match x.as_str() {
            "--listen" | "-l" => {
                let v = val("--listen")?;
                a.listen.push(v.parse().map_err(|e| format!("--listen {v}: {e}"))?)
            }
            "--key" => a.key = Some(PathBuf::from(val("--key")?)),
            "--key-type" => a.key_type = val("--key-type")?.parse()?,
            "--count" | "-c" => a.count = number("--count", &val("--count")?, "a number")?,
            "--seed" => a.seed = Some(number("--seed", &val("--seed")?, "a number")?),
            "--out" => a.out = Some(PathBuf::from(val("--out")?)),
            "--check" => a.check = true,
            "--threads" => a.threads = Some(number("--threads", &val("--threads")?, "a number")?),
            "--security" => a.security.extend(protocol_list(
                "--security",
                &val("--security")?,
                &[("noise", hyphae::core::noise::PROTOCOL_ID), ("tls", hyphae::core::tls::PROTOCOL_ID)],
            )?),
            "--muxer" => a.muxers.extend(protocol_list(
                "--muxer",
                &val("--muxer")?,
                &[("yamux", hyphae::core::yamux::PROTOCOL_ID), ("mplex", hyphae::core::mplex::PROTOCOL_ID)],
            )?),
            "--server" => a.server = true,
            "--bootstrap" | "-b" => {
                let v = val("--bootstrap")?;
                let m: Multiaddr = v.parse().map_err(|e| format!("--bootstrap {v}: {e}"))?;
                if m.peer_id().is_none() {
                    return Err(format!("--bootstrap {v}: needs /p2p/<peer id>"));
                }
                a.bootstrap.push(m)
            }
            "--dht-mode" => a.dht_mode = Some(val("--dht-mode")?.parse()?),
            "--provide" => a.provide.push(val("--provide")?),
            "--connect" => {
                let v = val("--connect")?;
                let m: Multiaddr = v.parse().map_err(|e| format!("--connect {v}: {e}"))?;
                if m.peer_id().is_none() {
                    return Err(format!("--connect {v}: needs /p2p/<peer id>"));
                }
                a.connect.push(m)
            }
            "--subscribe" => a.subscribe.push(val("--subscribe")?),
            "--limit" => a.limit = number("--limit", &val("--limit")?, "a number")?,
            "--quorum" => a.quorum = number("--quorum", &val("--quorum")?, "a number")?,
            "--upload" | "--upload-bytes" => a.upload = number("--upload", &val("--upload")?, "a number of bytes")?,
            "--download" | "--download-bytes" => a.download = number("--download", &val("--download")?, "a number of bytes")?,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown flag {s}")),
            s => a.positional.push(s.to_string()),
        }
    }
    Ok(a)
}

/// A comma-separated list of short names (`noise,tls`) as protocol ids, in the order given.
fn protocol_list(flag: &str, v: &str, known: &[(&str, &str)]) -> Result<Vec<String>, String> {
    v.split(',')
        .map(|x| {
            known.iter().find(|(name, _)| *name == x).map(|(_, id)| id.to_string()).ok_or_else(|| {
                let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                format!("{flag} {x}: {}", names.join(" or "))
            })
        })
        .collect()
}

/// A flag's numeric value, or the message the CLI prints for it.
fn number<T: std::str::FromStr>(flag: &str, v: &str, what: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag} {v}: not {what}"))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = match parse(&argv[1..]) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    if cmd == "sim" {
        return match sim(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match cmd.as_str() {
            "node" => node(args).await,
            "pubsub" => pubsub(args).await,
            "ping" => ping(args).await,
            "perf" => perf(args).await,
            "dht" => dht(args).await,
            "id" => {
                let k = load_key(&args, true)?;
                println!("{}", k.peer_id());
                Ok(())
            }
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                Ok(())
            }
            other => Err(format!("unknown command {other:?}\n{USAGE}")),
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn host_config(args: &Args, key: Keypair) -> HostConfig {
    let mut c = HostConfig::new(key);
    if !args.security.is_empty() {
        c.security = args.security.clone();
    }
    if !args.muxers.is_empty() {
        c.muxers = args.muxers.clone();
    }
    if let Some(m) = args.dht_mode {
        c.dht.mode = m;
    }
    c
}

/// The key: `--key FILE` (created if missing), else the default key file (`persistent`), else ephemeral.
fn load_key(args: &Args, persistent: bool) -> Result<Keypair, String> {
    match (&args.key, persistent) {
        (Some(p), _) => keyfile::load_or_generate(p, args.key_type),
        (None, true) => keyfile::load_or_generate(&keyfile::default_path(), args.key_type),
        (None, false) => Ok(Keypair::generate(args.key_type, &mut rand_core::OsRng)),
    }
}

async fn node(args: Args) -> Result<(), String> {
    let provide = args.provide.iter().map(|c| keys::provider_key(c)).collect::<Result<Vec<_>, _>>()?;
    let key = load_key(&args, true)?;
    let mut config = host_config(&args, key);
    // A running node helps others learn their reachability (as kubo does); its own DHT mode follows
    // its AutoNAT verdict unless --dht-mode pins it.
    config.autonat.server = true;
    let host = Host::new(config).await.map_err(|e| e.to_string())?;
    if !args.bootstrap.is_empty() || !provide.is_empty() {
        // Joins once listening (the DHT announces our listen addresses); the node runs meanwhile.
        let h = host.clone();
        let boot = args.bootstrap.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if !boot.is_empty() {
                match h.dht().bootstrap(&boot).await {
                    Ok(o) => tracing::info!(peers = h.dht().routing_table_size(), answered = o.answered, "joined the DHT"),
                    Err(e) => tracing::warn!(error = %e, "DHT bootstrap failed"),
                }
            }
            for k in provide {
                // Re-announced every 22 h by the DHT service while the node runs.
                match h.dht().provide(&k).await {
                    Ok(n) => tracing::info!(cid = %keys::cid_v1_raw(&k), peers = n, "providing"),
                    Err(e) => tracing::warn!(cid = %keys::cid_v1_raw(&k), error = %e, "provide failed (retried at the next reprovide)"),
                }
            }
        });
    }
    serve(host, args).await
}

/// `hyphae dht OP ARG`: join as a client, run one operation, print its results.
async fn dht(args: Args) -> Result<(), String> {
    let (op, arg, file) = match &args.positional[..] {
        [op, _] if op == "put" => return Err("dht put needs KEY VALUE_FILE".into()),
        [op, arg] => (op.as_str(), arg.as_str(), None),
        [op, k, file] if op == "put" => ("put", k.as_str(), Some(file)),
        _ => return Err("dht needs an operation and its argument (see usage)".into()),
    };
    if args.bootstrap.is_empty() {
        return Err("dht needs --bootstrap MULTIADDR (a DHT server to join through)".into());
    }
    let key = load_key(&args, false)?;
    let mut config = host_config(&args, key);
    if args.dht_mode.is_none() {
        // A process that runs one operation and exits never serves.
        config.dht.mode = hyphae::core::kad::Mode::Client;
    }
    let host = Host::new(config).await.map_err(|e| e.to_string())?;
    // Listening makes `provide` announce reachable addresses (providers without addresses are ignored).
    let listen = if args.listen.is_empty() { vec!["/ip4/0.0.0.0/tcp/0".parse().expect("invariant: literal")] } else { args.listen.clone() };
    for l in &listen {
        host.listen(l.clone()).await.map_err(|e| format!("listen {l}: {e}"))?;
    }
    host.dht().bootstrap(&args.bootstrap).await.map_err(|e| format!("bootstrap: {e}"))?;
    let d = host.dht();
    let r = match op {
        "find-peer" => {
            let peer: hyphae::PeerId = arg.parse().map_err(|e| format!("{arg}: {e}"))?;
            let info = d.find_peer(&peer).await.map_err(|e| format!("find-peer {peer}: {e}"))?;
            for a in info.addrs {
                println!("{a}");
            }
            Ok(())
        }
        "closest" => {
            let k = keys::record_key(arg)?;
            for p in d.get_closest_peers(&k).await.map_err(|e| format!("closest: {e}"))? {
                println!("{}", p.peer);
            }
            Ok(())
        }
        "put" => {
            let file = file.expect("invariant: put comes with its file (checked above)");
            let value = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
            let k = keys::record_key(arg)?;
            let n = d.put_value(&k, &value).await.map_err(|e| format!("put: {e}"))?;
            println!("stored on {n} peers");
            Ok(())
        }
        "get" => {
            let k = keys::record_key(arg)?;
            let v = d.get_value(&k, args.quorum).await.map_err(|e| format!("get: {e}"))?;
            let (_, value) = v.into_iter().next().ok_or("get: not found")?;
            use std::io::Write;
            std::io::stdout().write_all(&value).map_err(|e| e.to_string())
        }
        "provide" => {
            let k = keys::provider_key(arg)?;
            let n = d.provide(&k).await.map_err(|e| format!("provide: {e}"))?;
            println!("provided to {n} peers");
            Ok(())
        }
        "find-providers" => {
            let k = keys::provider_key(arg)?;
            let found = d
                .find_providers(&k, args.limit, |p| {
                    let addrs: Vec<String> = p.addrs.iter().map(|a| a.to_string()).collect();
                    println!("{} {}", p.peer, addrs.join(" "));
                })
                .await
                .map_err(|e| format!("find-providers: {e}"))?;
            if found.is_empty() {
                Err("find-providers: none found".into())
            } else {
                Ok(())
            }
        }
        other => Err(format!("unknown dht operation {other:?}")),
    };
    host.close().await;
    r
}

async fn perf(args: Args) -> Result<(), String> {
    if args.server {
        let key = load_key(&args, false)?;
        let host = Host::new(host_config(&args, key)).await.map_err(|e| e.to_string())?;
        host.enable_perf_server();
        return serve(host, args).await;
    }
    let [target] = &args.positional[..] else { return Err("perf needs --server or exactly one MULTIADDR".into()) };
    let addr: Multiaddr = target.parse().map_err(|e| format!("{target}: {e}"))?;
    let key = load_key(&args, false)?;
    let host = Host::new(host_config(&args, key)).await.map_err(|e| e.to_string())?;
    let t0 = std::time::Instant::now();
    let peer = host.connect(&addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let r = host
        .perf(&peer, args.upload, args.download, |d, up, down| {
            println!("{{\"type\":\"intermediate\",\"timeSeconds\":{:.6},\"uploadBytes\":{up},\"downloadBytes\":{down}}}", d.as_secs_f64());
        })
        .await
        .map_err(|e| format!("perf: {e}"))?;
    let _ = r;
    // Like rust-libp2p's perf, the final time includes connection establishment.
    println!(
        "{{\"type\":\"final\",\"timeSeconds\":{:.9},\"uploadBytes\":{},\"downloadBytes\":{}}}",
        t0.elapsed().as_secs_f64(),
        args.upload,
        args.download
    );
    host.close().await;
    Ok(())
}

/// Listens (defaults for `node`: port 4001 on all interfaces), prints the addresses, runs until Ctrl-C.
async fn serve(host: Host, args: Args) -> Result<(), String> {
    let mut events = host.events();
    let addrs = listen_all(&host, &args).await?;
    for a in &addrs {
        println!("{a}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    connect_all(&host, &args.connect);
    for t in &args.subscribe {
        let mut sub = host.pubsub().subscribe(t);
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let from = m.from.map(|p| p.to_string()).unwrap_or_default();
                tracing::info!(topic = %m.topic, %from, len = m.data.len(), data = %String::from_utf8_lossy(&m.data), "pubsub message");
            }
        });
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            ev = events.recv() => match ev {
                Ok(HostEvent::InboundPing { peer }) => tracing::info!(%peer, "ping stream opened by peer"),
                Ok(HostEvent::Identified { peer, info }) => tracing::info!(%peer, agent = ?info.agent_version, "peer identified"),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(n, "missed host events"),
                Err(_) => break,
            }
        }
    }
    tracing::info!("shutting down");
    host.close().await;
    Ok(())
}

/// Dials each `--connect` peer in the background (a failure is logged; the node keeps running).
fn connect_all(host: &Host, peers: &[Multiaddr]) {
    for a in peers {
        let (h, a) = (host.clone(), a.clone());
        tokio::spawn(async move {
            match h.connect(&a).await {
                Ok(p) => tracing::info!(peer = %p, addr = %a, "connected"),
                Err(e) => tracing::warn!(addr = %a, error = %e, "cannot connect"),
            }
        });
    }
}

/// `hyphae pubsub TOPIC`: a terminal chat.
async fn pubsub(args: Args) -> Result<(), String> {
    let [topic] = &args.positional[..] else { return Err("pubsub needs exactly one TOPIC".into()) };
    let key = load_key(&args, false)?;
    let host = Host::new(host_config(&args, key)).await.map_err(|e| e.to_string())?;
    for a in listen_all(&host, &args).await? {
        eprintln!("listening on {a}");
    }
    let mut sub = host.pubsub().subscribe(topic);
    for a in &args.connect {
        host.connect(a).await.map_err(|e| format!("connecting to {a}: {e}"))?;
    }
    let mut stdin = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    let mut open = true;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            m = sub.next() => {
                let Some(m) = m else { break };
                let from = m.from.unwrap_or(m.source);
                println!("{from}: {}", String::from_utf8_lossy(&m.data));
            }
            line = stdin.next_line(), if open => match line {
                Ok(Some(l)) => {
                    if let Err(e) = host.pubsub().publish(topic, l.into_bytes()) {
                        eprintln!("not sent: {e}");
                    }
                }
                // End of input: keep printing what arrives until Ctrl-C.
                _ => open = false,
            },
        }
    }
    host.close().await;
    Ok(())
}

/// Listens on `--listen`, or on the default addresses (port 4001, else any port).
async fn listen_all(host: &Host, args: &Args) -> Result<Vec<Multiaddr>, String> {
    let mut addrs = Vec::new();
    if args.listen.is_empty() {
        for (fixed, any) in [
            ("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/tcp/0"),
            ("/ip6/::/tcp/4001", "/ip6/::/tcp/0"),
            ("/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/udp/0/quic-v1"),
        ] {
            let r = match host.listen(fixed.parse().expect("invariant: literal multiaddr")).await {
                Ok(a) => Ok(a),
                Err(_) => host.listen(any.parse().expect("invariant: literal multiaddr")).await,
            };
            match r {
                Ok(a) => addrs.extend(a),
                Err(e) => tracing::warn!(error = %e, addr = any, "cannot listen"),
            }
        }
    } else {
        for l in &args.listen {
            addrs.extend(host.listen(l.clone()).await.map_err(|e| format!("listen {l}: {e}"))?);
        }
    }
    if addrs.is_empty() {
        return Err("no listen address".into());
    }
    Ok(addrs)
}

async fn ping(args: Args) -> Result<(), String> {
    let [target] = &args.positional[..] else { return Err("ping needs exactly one MULTIADDR".into()) };
    let addr: Multiaddr = target.parse().map_err(|e| format!("{target}: {e}"))?;
    if addr.peer_id().is_none() {
        return Err(format!("{addr} has no /p2p/<peer id>"));
    }
    let key = load_key(&args, false)?;
    let host = Host::new(host_config(&args, key)).await.map_err(|e| e.to_string())?;
    let t0 = std::time::Instant::now();
    let peer = host.connect(&addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let connected = t0.elapsed();
    // The set-up cost a user sees: from the dial to the first ping answer (the ping goes out with its
    // protocol proposal, so on a fresh connection this is the handshake plus one round trip).
    let first = host.ping(&peer).await.map_err(|e| format!("ping: {e}"))?;
    let answered = t0.elapsed();
    println!("connected to {peer} in {:.2} ms", connected.as_secs_f64() * 1e3);
    println!(
        "first ping answer {:.2} ms after dialing ({:.1} round trips of {:.2} ms)",
        answered.as_secs_f64() * 1e3,
        answered.as_secs_f64() / first.as_secs_f64(),
        first.as_secs_f64() * 1e3
    );
    let info = host.identify(&peer).await.map_err(|e| format!("identify: {e}"))?;
    println!("agent: {}", info.agent_version.as_deref().unwrap_or("?"));
    println!("protocol version: {}", info.protocol_version.as_deref().unwrap_or("?"));
    println!("protocols: {}", info.protocols.join(" "));
    let mut s = host.new_stream(&peer, &[hyphae::core::ping::PROTOCOL_ID]).await.map_err(|e| format!("ping stream: {e}"))?;
    for i in 1..=args.count {
        let rtt = host.ping_on(&mut s).await.map_err(|e| format!("ping {i}: {e}"))?;
        println!("ping {i}: rtt {:.3} ms", rtt.as_secs_f64() * 1e3);
        if i < args.count {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    drop(s);
    host.close().await;
    Ok(())
}

fn sim(args: Args) -> Result<(), String> {
    let [file] = &args.positional[..] else { return Err("sim needs exactly one scenario FILE".into()) };
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let sc = hyphae_sim::parse(&text).map_err(|e| format!("{file}: {e}"))?;
    let seed = args.seed.or_else(|| std::env::var("HYPHAE_SEED").ok().and_then(|s| s.parse().ok())).unwrap_or(sc.seed);
    println!("scenario {file}: {} nodes, {:?} virtual, seed {seed}", sc.total_nodes(), sc.duration);
    if args.check {
        return match hyphae_sim::check_determinism(&sc, seed) {
            Ok(h) => {
                println!("determinism check passed: two runs, identical trace hash {h:016x}");
                Ok(())
            }
            Err((i, a, b)) => {
                eprintln!("expanded scenario:\n{sc:#?}");
                Err(format!("runs diverge at event {i} ({a:016x} vs {b:016x}); seed {seed}"))
            }
        };
    }
    let mut s = hyphae_sim::Sim::new(sc.clone(), seed);
    if let Some(t) = args.threads {
        s.set_threads(t);
    }
    let started = std::time::Instant::now();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    s.progress = Some(Box::new(move |done, total| {
        let pct = done as f64 * 100.0 / total.max(1) as f64;
        let el = started.elapsed().as_secs_f64();
        if interactive {
            eprint!("\r  {pct:5.1}%  virtual {:.0}s  wall {el:.1}s  ", done as f64 / 1e9);
        } else if (pct as u64).is_multiple_of(10) && el > 5.0 {
            eprintln!("  {pct:5.1}%  virtual {:.0}s  wall {el:.1}s", done as f64 / 1e9);
        }
    }));
    let r = s.run();
    let wall = started.elapsed();
    if interactive {
        eprintln!();
    }
    print!("{}", hyphae_sim::report::table(&r));
    println!(
        "wall time {:.2}s, {:.1}x real time, {} events ({:.0} events/s)",
        wall.as_secs_f64(),
        r.virtual_time.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        r.events,
        r.events as f64 / wall.as_secs_f64().max(1e-9)
    );
    if let Some(dir) = &args.out {
        hyphae_sim::report::write_outputs(&r, dir).map_err(|e| format!("writing {}: {e}", dir.display()))?;
        println!("wrote {}/{{metrics.csv,metrics.json,rtt_over_time.csv,rtt_over_time.svg}}", dir.display());
    }
    let fails = hyphae_sim::check_asserts(&sc, &r);
    if fails.is_empty() {
        if !sc.asserts.is_empty() {
            println!("all {} assertions hold", sc.asserts.len());
        }
        Ok(())
    } else {
        eprintln!("expanded scenario:\n{sc:#?}");
        Err(format!("{} assertion(s) failed (seed {seed}; replay with --seed {seed}):\n  {}", fails.len(), fails.join("\n  ")))
    }
}
