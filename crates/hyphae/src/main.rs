//! The `hyphae` binary: `node`, `ping`, `id`.

use hyphae::{keyfile, Host, HostConfig, HostEvent, KeyType, Keypair, Multiaddr};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  hyphae node [--listen MULTIADDR]... [--key FILE] [--key-type ed25519|secp256k1|ecdsa|rsa]
      Runs a node. Without --listen it listens on /ip4/0.0.0.0/tcp/4001 and /ip6/::/tcp/4001 (port 0
      if taken); without --key it keeps its key in $XDG_DATA_HOME/hyphae/identity.key. Prints each
      listen address with /p2p/<id> on stdout, then logs connections and pings. Ctrl-C stops it.
  hyphae ping MULTIADDR [--count N] [--key FILE] [--key-type T]
      Dials MULTIADDR (ending in /p2p/<id>), prints the remote's identify info and N ping RTTs.
  hyphae id [--key FILE]
      Prints the peer ID of the key (the default key if none given).
logging: RUST_LOG=debug for more detail (default info, on stderr).";

struct Args {
    listen: Vec<Multiaddr>,
    key: Option<PathBuf>,
    key_type: KeyType,
    count: u32,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args { listen: vec![], key: None, key_type: KeyType::Ed25519, count: 5, positional: vec![] };
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
            "--count" | "-c" => {
                let v = val("--count")?;
                a.count = v.parse().map_err(|_| format!("--count {v}: not a number"))?
            }
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown flag {s}")),
            s => a.positional.push(s.to_string()),
        }
    }
    Ok(a)
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
            "ping" => ping(args).await,
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

/// The key: `--key FILE` (created if missing), else the default key file (`persistent`), else ephemeral.
fn load_key(args: &Args, persistent: bool) -> Result<Keypair, String> {
    match (&args.key, persistent) {
        (Some(p), _) => keyfile::load_or_generate(p, args.key_type),
        (None, true) => keyfile::load_or_generate(&keyfile::default_path(), args.key_type),
        (None, false) => Ok(Keypair::generate(args.key_type, &mut rand_core::OsRng)),
    }
}

async fn node(args: Args) -> Result<(), String> {
    let key = load_key(&args, true)?;
    let host = Host::new(HostConfig::new(key)).await.map_err(|e| e.to_string())?;
    let mut events = host.events();
    let mut addrs = Vec::new();
    if args.listen.is_empty() {
        for (fixed, any) in [("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/tcp/0"), ("/ip6/::/tcp/4001", "/ip6/::/tcp/0")] {
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
    for a in &addrs {
        println!("{a}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
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

async fn ping(args: Args) -> Result<(), String> {
    let [target] = &args.positional[..] else { return Err("ping needs exactly one MULTIADDR".into()) };
    let addr: Multiaddr = target.parse().map_err(|e| format!("{target}: {e}"))?;
    if addr.peer_id().is_none() {
        return Err(format!("{addr} has no /p2p/<peer id>"));
    }
    let key = load_key(&args, false)?;
    let host = Host::new(HostConfig::new(key)).await.map_err(|e| e.to_string())?;
    let t0 = std::time::Instant::now();
    let peer = host.connect(&addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    println!("connected to {peer} in {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
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
