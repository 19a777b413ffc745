//! The `hyphae` binary: `node`, `pubsub`, `ping`, `id`, `perf`, `dht`, `sim`.

use hyphae::core::kad::keys;
use hyphae::{keyfile, Host, HostConfig, HostEvent, KeyType, Keypair, Multiaddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod daemon_cli;
mod metrics_http;
mod transport_interop;

/// hyphae: a libp2p node (TCP and QUIC-v1, Noise and TLS, Yamux and mplex, identify, ping, Kademlia,
/// AutoNAT, gossipsub), and the tools around it.
#[derive(Parser, Debug)]
#[command(name = "hyphae", version, about, after_help = "logging: RUST_LOG=debug for more detail (default info, on stderr)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs a node until Ctrl-C or SIGTERM. Without --listen it listens on /ip4/0.0.0.0/tcp/4001,
    /// /ip6/::/tcp/4001 and /ip4/0.0.0.0/udp/4001/quic-v1 (port 0 if taken); prints each listen address
    /// with /p2p/<id> on stdout, then logs connections and pings. It serves AutoNAT v1 to others.
    Node {
        #[command(flatten)]
        listen: ListenArgs,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        limits: LimitArgs,
        /// Join the Kademlia DHT through this peer (repeatable; needs /p2p/<id>).
        #[arg(long, short = 'b', value_name = "MULTIADDR", value_parser = peer_addr)]
        bootstrap: Vec<Multiaddr>,
        /// DHT mode: auto (a client until AutoNAT confirms a public address), client or server.
        #[arg(long, value_name = "MODE", value_parser = dht_mode)]
        dht_mode: Option<hyphae::core::kad::Mode>,
        /// DHT lookups on N disjoint paths (S/Kademlia; default 1: off).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=20))]
        dht_disjoint_paths: u8,
        /// Announce this CID as provided while the node runs (CIDv0 Qm… or CIDv1 base32 b…; repeatable).
        #[arg(long, value_name = "CID")]
        provide: Vec<String>,
        /// Dial this peer at start (repeatable; needs /p2p/<id>).
        #[arg(long, value_name = "MULTIADDR", value_parser = peer_addr)]
        connect: Vec<Multiaddr>,
        /// Join this gossipsub topic and log each message received on it (repeatable).
        #[arg(long, value_name = "TOPIC")]
        subscribe: Vec<String>,
    },
    /// A terminal chat on a gossipsub topic: prints each message received as "<sender peer ID>: <text>"
    /// on stdout, publishes each line typed on stdin. Listens as node does (addresses go to stderr).
    Pubsub {
        /// The topic to chat on (go's and rust's topic strings: the same name joins the same topic).
        topic: String,
        /// Dial this peer at start (repeatable; needs /p2p/<id>).
        #[arg(long, value_name = "MULTIADDR", value_parser = peer_addr)]
        connect: Vec<Multiaddr>,
        #[command(flatten)]
        listen: ListenArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Joins the DHT through the bootstrap peers (as a client), runs one operation and prints its
    /// results one per line (get: the value's raw bytes). KEY: /pk/PEER_ID, /ipns/PEER_ID or other text.
    /// publish: an IPNS record of our name (--key's peer id) pointing at PATH; resolve: a name's value.
    Dht {
        /// find-peer PEER_ID | closest KEY | put KEY VALUE_FILE | get KEY | provide CID | find-providers CID
        /// | publish PATH | resolve PEER_ID
        #[arg(value_name = "OPERATION", num_args = 2..=3, required = true)]
        op: Vec<String>,
        #[arg(long, short = 'b', value_name = "MULTIADDR", value_parser = peer_addr)]
        bootstrap: Vec<Multiaddr>,
        /// find-providers: stop after this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// get, resolve: answers to wait for.
        #[arg(long, default_value_t = 1)]
        quorum: usize,
        /// publish: the record's sequence number (default: one above the name's current record, 0 if
        /// it has none).
        #[arg(long, value_name = "N")]
        seq: Option<u64>,
        /// publish: how long the record stays valid (DHT servers keep records 48 h at most).
        #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
        lifetime: u64,
        #[arg(long, value_name = "MODE", value_parser = dht_mode)]
        dht_mode: Option<hyphae::core::kad::Mode>,
        /// DHT lookups on N disjoint paths (S/Kademlia; default 1: off).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=20))]
        dht_disjoint_paths: u8,
        #[command(flatten)]
        listen: ListenArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Dials MULTIADDR (ending in /p2p/<id>), prints the time from the dial to the first ping answer,
    /// the remote's identify info and N ping RTTs.
    Ping {
        #[arg(value_name = "MULTIADDR", value_parser = multiaddr)]
        target: Multiaddr,
        #[arg(long, short = 'c', default_value_t = 5)]
        count: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Prints the peer ID of the key (the default key if none given).
    Id {
        #[command(flatten)]
        common: Common,
    },
    /// The perf protocol: --server serves /perf/1.0.0; with MULTIADDR, runs it and prints JSON lines,
    /// the last one {"type":"final","timeSeconds":..,"uploadBytes":..,"downloadBytes":..} like
    /// rust-libp2p's perf.
    Perf {
        #[arg(long, conflicts_with = "target")]
        server: bool,
        #[arg(value_name = "MULTIADDR", value_parser = multiaddr, required_unless_present = "server")]
        target: Option<Multiaddr>,
        #[arg(long, alias = "upload-bytes", value_name = "BYTES", default_value_t = 0)]
        upload: u64,
        #[arg(long, alias = "download-bytes", value_name = "BYTES", default_value_t = 0)]
        download: u64,
        #[command(flatten)]
        listen: ListenArgs,
        #[command(flatten)]
        common: Common,
    },
    /// A p2pd-compatible daemon: go-libp2p-daemon's flags (`-listen /unix/PATH`, `-hostAddrs`, `-id`,
    /// ...; `hyphae daemon -h` lists them) and control protocol, so p2pd's clients drive hyphae.
    #[command(disable_help_flag = true)]
    Daemon {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// libp2p/test-plans' transport-interop contract: configured by the environment (transport, muxer,
    /// security, is_dialer, ip, redis_addr, test_timeout_seconds); the listener publishes its address
    /// on redis, the dialer dials it, pings and prints the timings as JSON.
    TransportInterop,
    /// Runs a simulation scenario (see scenarios/ and the README) on virtual time and prints a summary
    /// table. HYPHAE_SEED also sets the seed.
    Sim {
        file: String,
        #[arg(long)]
        seed: Option<u64>,
        /// Write metrics.csv, metrics.json, rtt_over_time.csv and rtt_over_time.svg here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Run twice and compare the trace hash of every event.
        #[arg(long)]
        check: bool,
        /// Worker threads (or HYPHAE_SIM_THREADS; default: the cores, at most 8); never changes the outcome.
        #[arg(long)]
        threads: Option<usize>,
        /// Also print the table of the run so far every DURATION of virtual time (e.g. 60s, 5m): a long
        /// run's figures before it ends. Changes nothing in the run.
        #[arg(long, value_name = "DURATION", value_parser = hyphae_sim::scenario::parse_duration)]
        report_every: Option<std::time::Duration>,
    },
}

#[derive(clap::Args, Debug, Default)]
struct ListenArgs {
    /// Listen on this address (repeatable).
    #[arg(long, short = 'l', value_name = "MULTIADDR", value_parser = multiaddr)]
    listen: Vec<Multiaddr>,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// The identity key file (libp2p's private-key protobuf), created if missing.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Key type of a new key.
    #[arg(long, value_name = "TYPE", default_value = "ed25519", value_parser = key_type)]
    key_type: KeyType,
    /// Security protocols in order of preference (default noise,tls).
    #[arg(long, value_name = "LIST", value_parser = security_list)]
    security: Option<ProtocolList>,
    /// Stream muxers in order of preference (default yamux,mplex).
    #[arg(long, value_name = "LIST", value_parser = muxer_list)]
    muxer: Option<ProtocolList>,
    /// How QUIC connections respond to loss: loss-tolerant (default: back off only for losses that come
    /// with a grown round trip or above 2% of the bytes) or cubic (every loss, as RFC 9002).
    #[arg(long, value_name = "CC", default_value = "loss-tolerant", value_parser = congestion)]
    quic_congestion: hyphae::core::quic::Congestion,
}

/// The limits an operator sets (README: "Limits and defaults").
#[derive(clap::Args, Debug, Default)]
struct LimitArgs {
    /// Connections at once; also the inbound and the outbound budget (the resource manager's system
    /// scope; default: go-libp2p's table scaled to this machine's memory and descriptor limit).
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Connection manager: trim down to this many connections (default 256).
    #[arg(long, value_name = "N")]
    conn_low: Option<usize>,
    /// Connection manager: trim when more than this many are established (default 512).
    #[arg(long, value_name = "N")]
    conn_high: Option<usize>,
    /// Connection manager: a new peer is safe from trimming for this many seconds (default 120).
    #[arg(long, value_name = "SECONDS")]
    conn_grace: Option<u64>,
    /// Memory all muxers' receive buffers may reserve together (bytes, or with KiB/MiB/GiB; default:
    /// go-libp2p's table, 128 MiB + an eighth of this machine's memory). Streams beyond it are refused.
    /// One peer, over all its connections, may hold a sixteenth of it.
    #[arg(long, value_name = "SIZE", value_parser = size)]
    max_memory: Option<u64>,
    /// Keep the node's state here: its key (identity.key, unless --key) and its peerstore
    /// (peerstore.redb), which a restart reloads to reconnect and re-join the DHT without --bootstrap.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (ADDR as 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Addresses exempt from the per-IP connection limits that may use the allowlisted budgets when
    /// the normal ones are full (IP or IP/LEN; repeatable).
    #[arg(long, value_name = "PREFIX", value_parser = ip_prefix)]
    allow: Vec<hyphae::core::rcmgr::IpPrefix>,
}

impl Default for Common {
    fn default() -> Self {
        Common { key: None, key_type: KeyType::Ed25519, security: None, muxer: None, quic_congestion: Default::default() }
    }
}

/// A size in bytes: `65536`, `64KiB`, `16MiB`, `2GiB`.
fn size(v: &str) -> Result<u64, String> {
    let (num, mul) = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .iter()
        .find_map(|(suf, m)| v.strip_suffix(suf).map(|n| (n, *m)))
        .unwrap_or((v, 1));
    let n: u64 = num.trim().parse().map_err(|_| "not a size (bytes, or a number with KiB, MiB or GiB)".to_string())?;
    n.checked_mul(mul).ok_or_else(|| "too large".to_string())
}

fn multiaddr(v: &str) -> Result<Multiaddr, String> {
    v.parse().map_err(|e: hyphae::core::multiaddr::MultiaddrError| e.to_string())
}
fn peer_addr(v: &str) -> Result<Multiaddr, String> {
    let m = multiaddr(v)?;
    if m.peer_id().is_none() {
        return Err("needs /p2p/<peer id>".into());
    }
    Ok(m)
}
fn dht_mode(v: &str) -> Result<hyphae::core::kad::Mode, String> {
    v.parse()
}
fn congestion(v: &str) -> Result<hyphae::core::quic::Congestion, String> {
    v.parse()
}
fn key_type(v: &str) -> Result<KeyType, String> {
    v.parse()
}
fn ip_prefix(v: &str) -> Result<hyphae::core::rcmgr::IpPrefix, String> {
    v.parse().map_err(|e: &str| e.to_string())
}
/// Protocol ids from one comma-separated flag value (a newtype: clap would read `Option<Vec<_>>` as a
/// flag given many times, and the parser's `Vec` would not match it).
#[derive(Debug, Clone)]
struct ProtocolList(Vec<String>);

fn security_list(v: &str) -> Result<ProtocolList, String> {
    protocol_list(v, &[("noise", hyphae::core::noise::PROTOCOL_ID), ("tls", hyphae::core::tls::PROTOCOL_ID)])
}
fn muxer_list(v: &str) -> Result<ProtocolList, String> {
    protocol_list(v, &[("yamux", hyphae::core::yamux::PROTOCOL_ID), ("mplex", hyphae::core::mplex::PROTOCOL_ID)])
}

/// A comma-separated list of short names (`noise,tls`) as protocol ids, in the order given.
fn protocol_list(v: &str, known: &[(&str, &str)]) -> Result<ProtocolList, String> {
    v.split(',')
        .map(|x| {
            known.iter().find(|(name, _)| *name == x).map(|(_, id)| id.to_string()).ok_or_else(|| {
                let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                format!("{x} is not {}", names.join(" or "))
            })
        })
        .collect::<Result<_, _>>()
        .map(ProtocolList)
}

/// What the commands below read: the parsed command line, flattened.
struct Args {
    security: Vec<String>,
    quic_congestion: hyphae::core::quic::Congestion,
    muxers: Vec<String>,
    server: bool,
    upload: u64,
    download: u64,
    seed: Option<u64>,
    out: Option<PathBuf>,
    check: bool,
    threads: Option<usize>,
    report_every: Option<std::time::Duration>,
    listen: Vec<Multiaddr>,
    key: Option<PathBuf>,
    key_type: KeyType,
    count: u32,
    bootstrap: Vec<Multiaddr>,
    dht_mode: Option<hyphae::core::kad::Mode>,
    dht_disjoint_paths: u8,
    provide: Vec<String>,
    connect: Vec<Multiaddr>,
    subscribe: Vec<String>,
    limit: usize,
    quorum: usize,
    seq: Option<u64>,
    lifetime: u64,
    positional: Vec<String>,
    limits: LimitArgs,
}

impl Args {
    fn with(common: Common, listen: ListenArgs) -> Args {
        Args {
            security: common.security.map(|l| l.0).unwrap_or_default(),
            quic_congestion: common.quic_congestion,
            muxers: common.muxer.map(|l| l.0).unwrap_or_default(),
            key: common.key,
            key_type: common.key_type,
            listen: listen.listen,
            count: 5,
            limit: 20,
            quorum: 1,
            seq: None,
            lifetime: 86_400,
            server: false,
            upload: 0,
            download: 0,
            seed: None,
            out: None,
            check: false,
            threads: None,
            report_every: None,
            bootstrap: Vec::new(),
            dht_mode: None,
            dht_disjoint_paths: 1,
            provide: Vec::new(),
            connect: Vec::new(),
            subscribe: Vec::new(),
            positional: Vec::new(),
            limits: LimitArgs::default(),
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LogWriter(std::io::stderr()))
        .init();
}

/// stderr for the logs, where a failed write (the reader of a pipe went away) drops the line: a node
/// whose log reader died keeps running (and stops cleanly on a signal) instead of panicking in the
/// logger.
struct LogWriter(std::io::Stderr);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

fn main() -> ExitCode {
    // clap prints a bad value with its flag and the reason (exit 2), --help and --version (exit 0).
    let cli = Cli::parse();
    init_logging();
    if let Cmd::Daemon { args } = &cli.cmd {
        let flags = match daemon_cli::parse(args) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match rt.block_on(async { daemon_cli::run(flags, shutdown_signal()).await }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (name, args) = match cli.cmd {
        Cmd::Node { listen, common, limits, bootstrap, dht_mode, dht_disjoint_paths, provide, connect, subscribe } => {
            ("node", Args { bootstrap, dht_mode, dht_disjoint_paths, provide, connect, subscribe, limits, ..Args::with(common, listen) })
        }
        Cmd::Pubsub { topic, connect, listen, common } => {
            ("pubsub", Args { positional: vec![topic], connect, ..Args::with(common, listen) })
        }
        Cmd::Dht { op, bootstrap, limit, quorum, seq, lifetime, dht_mode, dht_disjoint_paths, listen, common } => {
            let a = Args {
                positional: op,
                bootstrap,
                limit,
                quorum,
                seq,
                lifetime,
                dht_mode,
                dht_disjoint_paths,
                ..Args::with(common, listen)
            };
            ("dht", a)
        }
        Cmd::Ping { target, count, common } => {
            ("ping", Args { positional: vec![target.to_string()], count, ..Args::with(common, ListenArgs::default()) })
        }
        Cmd::Id { common } => ("id", Args::with(common, ListenArgs::default())),
        Cmd::Perf { server, target, upload, download, listen, common } => {
            let positional = target.map(|t| vec![t.to_string()]).unwrap_or_default();
            ("perf", Args { server, positional, upload, download, ..Args::with(common, listen) })
        }
        Cmd::Daemon { .. } => unreachable!("invariant: the daemon returned above"),
        Cmd::TransportInterop => ("transport-interop", Args::with(Common::default(), ListenArgs::default())),
        Cmd::Sim { file, seed, out, check, threads, report_every } => (
            "sim",
            Args {
                positional: vec![file],
                seed,
                out,
                check,
                threads,
                report_every,
                ..Args::with(Common::default(), ListenArgs::default())
            },
        ),
    };
    if name == "sim" {
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
        match name {
            "node" => node(args).await,
            "pubsub" => pubsub(args).await,
            "ping" => ping(args).await,
            "perf" => perf(args).await,
            "dht" => dht(args).await,
            "transport-interop" => transport_interop::run().await,
            _ => {
                let k = load_key(&args, true)?;
                println!("{}", k.peer_id());
                Ok(())
            }
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

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: a node stops as cleanly on either. The handlers are
/// installed when this is called (inside the runtime), not when the future is first polled: a signal
/// that comes right after the node printed its addresses is not lost to the default action.
fn shutdown_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            return Box::pin(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
        }
    }
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
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
    c.dht.disjoint_paths = usize::from(args.dht_disjoint_paths);
    c.quic_congestion = args.quic_congestion;
    let l = &args.limits;
    if let Some(n) = l.max_connections {
        c.resources.system.conns = n;
        c.resources.system.conns_inbound = n;
        c.resources.system.conns_outbound = n;
    }
    if let Some(cm) = &mut c.connmgr {
        cm.low_water = l.conn_low.unwrap_or(cm.low_water);
        cm.high_water = l.conn_high.unwrap_or(cm.high_water);
        if let Some(g) = l.conn_grace {
            cm.grace = std::time::Duration::from_secs(g);
        }
    }
    c.resources.ip.allowlist.extend(l.allow.iter().copied());
    if let Some(m) = l.max_memory {
        c.resources.memory = m;
    }
    c.data_dir = l.data_dir.clone();
    if !args.subscribe.is_empty() {
        c.ping_interval = Some(PUBSUB_PING);
    }
    c
}

/// Pings every connection this often when the node runs pubsub: the round trips its latency-aware
/// mesh prefers near peers by (`gossipsub::Config::d_near`). One 32-byte ping each way per connection.
const PUBSUB_PING: std::time::Duration = std::time::Duration::from_secs(15);

/// The key: `--key FILE` (created if missing), else `--data-dir`'s, else the default key file
/// (`persistent`), else ephemeral.
fn load_key(args: &Args, persistent: bool) -> Result<Keypair, String> {
    if let (None, Some(d)) = (&args.key, &args.limits.data_dir) {
        std::fs::create_dir_all(d).map_err(|e| format!("--data-dir {}: {e}", d.display()))?;
        return keyfile::load_or_generate(&d.join("identity.key"), args.key_type);
    }
    match (&args.key, persistent) {
        (Some(p), _) => keyfile::load_or_generate(p, args.key_type),
        (None, true) => keyfile::load_or_generate(&keyfile::default_path(), args.key_type),
        (None, false) => Ok(Keypair::generate(args.key_type, &mut rand_core::OsRng)),
    }
}

async fn node(args: Args) -> Result<(), String> {
    let provide = args.provide.iter().map(|c| keys::provider_key(c)).collect::<Result<Vec<_>, _>>()?;
    let cm = hyphae::core::node::connmgr::Config::default();
    let (lo, hi) = (args.limits.conn_low.unwrap_or(cm.low_water), args.limits.conn_high.unwrap_or(cm.high_water));
    if lo >= hi {
        return Err(format!("--conn-low {lo} must be below --conn-high {hi}"));
    }
    let key = load_key(&args, true)?;
    let mut config = host_config(&args, key);
    // A running node helps others learn their reachability (as kubo does); its own DHT mode follows
    // its AutoNAT verdict unless --dht-mode pins it.
    config.autonat.server = true;
    let host = Host::new(config).await.map_err(|e| e.to_string())?;
    if let Some(a) = args.limits.metrics {
        let bound = metrics_http::serve(host.clone(), a).await.map_err(|e| format!("--metrics {a}: {e}"))?;
        tracing::info!(addr = %format!("http://{bound}/metrics"), "serving metrics");
    }
    let mut boot = args.bootstrap.clone();
    if boot.is_empty() && args.limits.data_dir.is_some() {
        // Restarted without --bootstrap: the DHT servers the saved peerstore knows (at most 20, the
        // most recently learned first).
        for (peer, addrs) in host.known_peers_supporting(hyphae::core::kad::PROTOCOL_ID).into_iter().take(20) {
            if let Some(a) = addrs.into_iter().next() {
                boot.push(a.with_peer_id(&peer));
            }
        }
        if !boot.is_empty() {
            tracing::info!(peers = boot.len(), "re-bootstrapping from the saved peerstore");
        }
    }
    if !boot.is_empty() || !provide.is_empty() {
        // Joins once listening (the DHT announces our listen addresses); the node runs meanwhile.
        let h = host.clone();
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
        "publish" => {
            let seq = match args.seq {
                Some(n) => n,
                None => d.resolve_ipns(&host.peer_id(), args.quorum).await.map_or(0, |r| r.sequence + 1),
            };
            let lifetime = std::time::Duration::from_secs(args.lifetime);
            let n = d.publish_ipns(arg.as_bytes(), seq, lifetime).await.map_err(|e| format!("publish: {e}"))?;
            println!("/ipns/{} -> {arg} (sequence {seq}) stored on {n} peers", host.peer_id().to_cid_string());
            Ok(())
        }
        "resolve" => {
            let peer: hyphae::PeerId = arg.parse().map_err(|e| format!("{arg}: {e}"))?;
            let r = d.resolve_ipns(&peer, args.quorum).await.map_err(|e| format!("resolve {peer}: {e}"))?;
            eprintln!("sequence {}, valid until {}", r.sequence, r.validity);
            println!("{}", String::from_utf8_lossy(&r.value));
            Ok(())
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
    let mut stop = shutdown_signal();
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
            _ = &mut stop => break,
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
    let mut stop = shutdown_signal();
    let [topic] = &args.positional[..] else { return Err("pubsub needs exactly one TOPIC".into()) };
    let key = load_key(&args, false)?;
    let mut config = host_config(&args, key);
    config.ping_interval = Some(PUBSUB_PING);
    let host = Host::new(config).await.map_err(|e| e.to_string())?;
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
            _ = &mut stop => break,
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
    if let Some(every) = args.report_every.filter(|d| !d.is_zero()) {
        let mut t = every;
        while t < sc.duration {
            s.run_until(t);
            if interactive {
                eprintln!();
            }
            println!(
                "report so far, at {:.0}s virtual (wall {:.1}s); lookups in flight not counted yet:",
                t.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            print!("{}", hyphae_sim::report::table(&s.report_so_far()));
            t += every;
        }
    }
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
