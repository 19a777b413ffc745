//! Shared helpers for the interop tests: locating the peers installed by `interop/setup.sh`, running
//! them as child processes, and a minimal client of the go-libp2p-daemon control protocol.
#![allow(dead_code)]

use hyphae::core::{pb, varint};
use hyphae::{Multiaddr, PeerId};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStdout, Command};

/// `node SCRIPT` in `dir` (relative to the repository) with `interop/js/polyfill.mjs` loaded first:
/// Node 20 lacks `Promise.withResolvers`, which libp2p 3 uses.
pub fn node_script(dir: &str, script: &str) -> Command {
    let mut c = Command::new("node");
    c.current_dir(repo_root().join(dir)).arg("--import").arg(repo_root().join("interop/js/polyfill.mjs")).arg(script);
    c
}

/// Resident set of process `pid` ("self": this one), from /proc; 0 where it cannot be read.
/// An ephemeral host with every resource budget lifted: for benches where one peer holds thousands of
/// connections.
pub fn unlimited_config() -> hyphae::HostConfig {
    let mut c = hyphae::HostConfig::ephemeral();
    c.resources = hyphae::core::rcmgr::Limits::unlimited();
    c
}

pub fn rss_bytes(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0)
        * 1024
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// A peer binary or script that `interop/setup.sh` installs. A missing peer fails the test with the fix,
/// unless HYPHAE_SKIP_INTEROP=1 (then the test returns early, saying so).
pub fn peer_path(rel: &str) -> Option<PathBuf> {
    let p = repo_root().join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("HYPHAE_SKIP_INTEROP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {} missing and HYPHAE_SKIP_INTEROP=1", p.display());
        return None;
    }
    panic!("{} is missing: run ./test.sh (or bash interop/setup.sh) to install the interop peers", p.display());
}

/// Retries `f` every 250 ms, for 10 s, until it returns Some: for what a peer does asynchronously (go
/// adds peers to its DHT table after its own FIND_NODE check; it makes its signed peer record once its
/// address manager reports).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    for _ in 0..40 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: never happened");
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
}

pub async fn read_line(lines: &mut tokio::io::Lines<BufReader<ChildStdout>>, what: &str) -> String {
    match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
        Ok(Ok(Some(l))) => l,
        other => panic!("{what}: no line from child ({other:?})"),
    }
}

pub fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    // Tiny extractor for flat string fields of the peers' one-line JSON (keeps serde out of the tests).
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

pub fn json_array_len(line: &str, key: &str) -> usize {
    let pat = format!("\"{key}\":[");
    let Some(start) = line.find(&pat).map(|s| s + pat.len()) else { return 0 };
    let end = line[start..].find(']').map(|e| e + start).unwrap_or(start);
    let body = line[start..end].trim();
    if body.is_empty() {
        0
    } else {
        body.split(',').count()
    }
}

pub fn json_numbers(line: &str, key: &str) -> Vec<f64> {
    let pat = format!("\"{key}\":[");
    let Some(start) = line.find(&pat).map(|s| s + pat.len()) else { return vec![] };
    let end = line[start..].find(']').map(|e| e + start).unwrap_or(start);
    line[start..end].split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

// ---------- go-libp2p daemon ----------

pub struct P2pd {
    pub child: Child,
    pub sock: PathBuf,
    pub peer_id: PeerId,
    pub addrs: Vec<Multiaddr>,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let mut b = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        let p = std::env::temp_dir().join(format!("hyphae-{tag}-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl P2pd {
    /// Starts p2pd on loopback TCP (never with -b: that would reach off this machine).
    pub async fn start(extra: &[&str]) -> Option<P2pd> {
        Self::start_on("/ip4/127.0.0.1/tcp/0", extra).await
    }

    /// Starts p2pd listening on `host_addrs` (comma-separated multiaddrs).
    pub async fn start_on(host_addrs: &str, extra: &[&str]) -> Option<P2pd> {
        Self::start_in(None, host_addrs, extra).await
    }

    /// Starts p2pd inside network namespace `netns` (its control socket is a file: reachable from here).
    pub async fn start_in(netns: Option<&str>, host_addrs: &str, extra: &[&str]) -> Option<P2pd> {
        let bin = peer_path("interop/.peers/p2pd")?;
        Some(Self::start_bin(&bin, netns, host_addrs, extra).await)
    }

    /// Starts a daemon binary that takes p2pd's flags: go's p2pd, or the `hyphae` binary (run as
    /// `hyphae daemon`).
    pub async fn start_bin(bin: &std::path::Path, netns: Option<&str>, host_addrs: &str, extra: &[&str]) -> P2pd {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if bin.file_name().is_some_and(|n| n == "hyphae") {
            cmd.arg("daemon");
        }
        Self::start_cmd(cmd, host_addrs, extra).await
    }

    /// Starts js-libp2p behind @libp2p/daemon-server with p2pd's flags (`interop/js/daemon.mjs`), if
    /// `interop/setup.sh` installed it.
    pub async fn start_js(extra: &[&str]) -> Option<P2pd> {
        peer_path("interop/js/node_modules/@libp2p/daemon-server")?;
        Some(Self::start_cmd(node_script("interop/js", "daemon.mjs"), "/ip4/127.0.0.1/tcp/0", extra).await)
    }

    async fn start_cmd(mut cmd: Command, host_addrs: &str, extra: &[&str]) -> P2pd {
        let dir = TempDir::new("p2pd");
        let sock = dir.0.join("p2pd.sock");
        let mut child = cmd
            .arg("-listen")
            .arg(format!("/unix{}", sock.display()))
            .arg("-hostAddrs")
            .arg(host_addrs)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the daemon");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut peer_id = None;
        let mut addrs = Vec::new();
        while addrs.is_empty() {
            let l = read_line(&mut lines, "p2pd").await;
            if let Some(id) = l.strip_prefix("Peer ID: ") {
                peer_id = Some(id.trim().parse().expect("p2pd peer id"));
            } else if l.starts_with("/ip4/") {
                addrs.push(l.trim().parse().expect("p2pd addr"));
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        P2pd { child, sock, peer_id: peer_id.expect("p2pd printed its peer id"), addrs, _dir: dir }
    }

    async fn request(&self, req: Vec<u8>) -> (UnixStream, Vec<u8>) {
        let mut s = UnixStream::connect(&self.sock).await.expect("connect p2pd control socket");
        let mut framed = Vec::new();
        varint::encode_frame(&req, &mut framed);
        s.write_all(&framed).await.unwrap();
        let resp = read_delimited(&mut s).await;
        (s, resp)
    }

    /// CONNECT: go dials `peer` at `addrs`. Err(message) on failure.
    pub async fn connect(&self, peer: &PeerId, addrs: &[Multiaddr]) -> Result<(), String> {
        let mut c = Vec::new();
        pb::put_bytes(&mut c, 1, peer.as_bytes());
        for a in addrs {
            pb::put_bytes(&mut c, 2, &a.to_bytes());
        }
        let mut r = Vec::new();
        pb::put_varint(&mut r, 1, 1);
        pb::put_bytes(&mut r, 2, &c);
        let (_s, resp) = self.request(r).await;
        check_ok(&resp)
    }

    /// STREAM_OPEN: go opens a stream to `peer`; the returned socket carries its bytes.
    pub async fn stream_open(&self, peer: &PeerId, protos: &[&str]) -> Result<(UnixStream, String), String> {
        let mut c = Vec::new();
        pb::put_bytes(&mut c, 1, peer.as_bytes());
        for p in protos {
            pb::put_bytes(&mut c, 2, p.as_bytes());
        }
        let mut r = Vec::new();
        pb::put_varint(&mut r, 1, 2);
        pb::put_bytes(&mut r, 3, &c);
        let (s, resp) = self.request(r).await;
        check_ok(&resp)?;
        let mut proto = String::new();
        for f in pb::Reader::new(&resp) {
            if let Ok((3, v)) = f {
                for g in pb::Reader::new(v.bytes().unwrap()) {
                    if let Ok((3, p)) = g {
                        proto = p.string().unwrap().to_string();
                    }
                }
            }
        }
        Ok((s, proto))
    }

    /// STREAM_HANDLER: go serves `protos`, handing inbound streams to the unix socket `callback` (it need
    /// not exist until a stream comes). `balanced` is sent because hivemind's p2pd.proto requires it.
    pub async fn stream_handler(&self, callback: &str, protos: &[&str]) -> Result<(), String> {
        let mut c = Vec::new();
        let addr: Multiaddr = format!("/unix{callback}").parse().map_err(|e| format!("{e}"))?;
        pb::put_bytes(&mut c, 1, &addr.to_bytes());
        for p in protos {
            pb::put_bytes(&mut c, 2, p.as_bytes());
        }
        pb::put_varint(&mut c, 3, 0);
        let mut r = Vec::new();
        pb::put_varint(&mut r, 1, 3);
        pb::put_bytes(&mut r, 4, &c);
        let (_s, resp) = self.request(r).await;
        check_ok(&resp)
    }

    /// PEERSTORE (js-libp2p-daemon's request: type 9, its body in field 9): the protocols the daemon's
    /// peerstore holds for `peer`, and with `info` (GET_PEER_INFO) its addresses.
    pub async fn peerstore(&self, peer: &PeerId, info: bool) -> Result<(Vec<String>, Option<Vec<Multiaddr>>), String> {
        let mut b = Vec::new();
        pb::put_varint(&mut b, 1, if info { 2 } else { 1 });
        pb::put_bytes(&mut b, 2, peer.as_bytes());
        let mut r = Vec::new();
        pb::put_varint(&mut r, 1, 9);
        pb::put_bytes(&mut r, 9, &b);
        let (_s, resp) = self.request(r).await;
        check_ok(&resp)?;
        let (mut protos, mut addrs) = (Vec::new(), None);
        for f in pb::Reader::new(&resp) {
            if let Ok((8, v)) = f {
                for g in pb::Reader::new(v.bytes().unwrap()) {
                    match g {
                        Ok((1, pi)) => {
                            let mut a = Vec::new();
                            for h in pb::Reader::new(pi.bytes().unwrap()) {
                                if let Ok((2, x)) = h {
                                    a.extend(Multiaddr::from_bytes(x.bytes().unwrap()).ok());
                                }
                            }
                            addrs = Some(a);
                        }
                        Ok((2, p)) => protos.push(p.string().unwrap().to_string()),
                        _ => {}
                    }
                }
            }
        }
        Ok((protos, addrs))
    }

    /// LIST_PEERS: the peers go is connected to.
    pub async fn list_peers(&self) -> Vec<PeerId> {
        let mut r = Vec::new();
        pb::put_varint(&mut r, 1, 5);
        let (_s, resp) = self.request(r).await;
        let mut out = Vec::new();
        for f in pb::Reader::new(&resp) {
            if let Ok((6, v)) = f {
                for g in pb::Reader::new(v.bytes().unwrap()) {
                    if let Ok((1, id)) = g {
                        out.push(PeerId::from_bytes(id.bytes().unwrap()).unwrap());
                    }
                }
            }
        }
        out
    }
}

/// A DHT request for p2pd (p2pd.proto `DHTRequest`).
#[derive(Default)]
pub struct DhtReq<'a> {
    pub peer: Option<&'a PeerId>,
    pub cid: Option<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub count: Option<u64>,
    /// Seconds.
    pub timeout: Option<u64>,
}

/// One `DHTResponse` value: a peer (id, addresses) and/or bytes.
#[derive(Debug, Default, Clone)]
pub struct DhtValue {
    pub peer: Option<(PeerId, Vec<Multiaddr>)>,
    pub value: Option<Vec<u8>>,
}

pub mod dht_op {
    pub const FIND_PEER: u64 = 0;
    pub const FIND_PROVIDERS: u64 = 2;
    pub const GET_CLOSEST_PEERS: u64 = 3;
    pub const GET_VALUE: u64 = 5;
    pub const PUT_VALUE: u64 = 7;
    pub const PROVIDE: u64 = 8;
}

/// (type, value) of a `DHTResponse` body.
fn dht_response(b: &[u8]) -> (u64, DhtValue) {
    let mut ty = 0;
    let mut v = DhtValue::default();
    for f in pb::Reader::new(b) {
        match f {
            Ok((1, x)) => ty = x.varint().unwrap_or(0),
            Ok((2, x)) => {
                let mut id = None;
                let mut addrs = Vec::new();
                for g in pb::Reader::new(x.bytes().unwrap()) {
                    match g {
                        Ok((1, i)) => id = PeerId::from_bytes(i.bytes().unwrap()).ok(),
                        Ok((2, a)) => addrs.extend(Multiaddr::from_bytes(a.bytes().unwrap()).ok()),
                        _ => {}
                    }
                }
                v.peer = id.map(|i| (i, addrs));
            }
            Ok((3, x)) => v.value = Some(x.bytes().unwrap().to_vec()),
            _ => {}
        }
    }
    (ty, v)
}

impl P2pd {
    /// DHT: one operation (`dht_op`); the single value, or the streamed ones (BEGIN … END).
    pub async fn dht(&self, op: u64, r: DhtReq<'_>) -> Result<Vec<DhtValue>, String> {
        let mut d = Vec::new();
        pb::put_varint(&mut d, 1, op);
        if let Some(p) = r.peer {
            pb::put_bytes(&mut d, 2, p.as_bytes());
        }
        if let Some(c) = r.cid {
            pb::put_bytes(&mut d, 3, c);
        }
        if let Some(k) = r.key {
            pb::put_bytes(&mut d, 4, k);
        }
        if let Some(v) = r.value {
            pb::put_bytes(&mut d, 5, v);
        }
        if let Some(c) = r.count {
            pb::put_varint(&mut d, 6, c);
        }
        if let Some(t) = r.timeout {
            pb::put_varint(&mut d, 7, t);
        }
        let mut req = Vec::new();
        pb::put_varint(&mut req, 1, 4);
        pb::put_bytes(&mut req, 5, &d);
        let (mut s, resp) = self.request(req).await;
        check_ok(&resp)?;
        let Some(body) = pb::Reader::new(&resp).filter_map(Result::ok).find(|(n, _)| *n == 5).map(|(_, v)| v.bytes().unwrap().to_vec())
        else {
            return Ok(Vec::new());
        };
        let (ty, v) = dht_response(&body);
        if ty != 0 {
            return Ok(vec![v]);
        }
        let mut out = Vec::new();
        loop {
            let b = read_delimited(&mut s).await;
            let (ty, v) = dht_response(&b);
            if ty == 2 {
                return Ok(out);
            }
            out.push(v);
        }
    }
}

async fn read_delimited(s: &mut UnixStream) -> Vec<u8> {
    let mut len_buf = Vec::new();
    loop {
        let b = s.read_u8().await.expect("p2pd response");
        len_buf.push(b);
        if b & 0x80 == 0 {
            break;
        }
    }
    let (len, _) = varint::decode_exact(&len_buf).unwrap();
    assert!(len < 1 << 20, "p2pd response too large");
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).await.unwrap();
    body
}

fn check_ok(resp: &[u8]) -> Result<(), String> {
    let mut ty = None;
    let mut msg = String::new();
    for f in pb::Reader::new(resp) {
        match f {
            Ok((1, v)) => ty = v.varint().ok(),
            Ok((2, v)) => {
                for g in pb::Reader::new(v.bytes().unwrap()) {
                    if let Ok((1, m)) = g {
                        msg = m.string().unwrap_or("").to_string();
                    }
                }
            }
            _ => {}
        }
    }
    if ty == Some(0) {
        Ok(())
    } else {
        Err(format!("p2pd error: {msg}"))
    }
}

// ---------- js-libp2p and rust-libp2p peers ----------

pub struct ScriptPeer {
    pub child: Child,
    pub lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

/// `node --import polyfill.mjs peer.mjs ARGS...` in interop/js.
pub fn js_peer(args: &[&str]) -> Option<ScriptPeer> {
    peer_path("interop/js/node_modules/libp2p")?;
    let mut child = node_script("interop/js", "peer.mjs")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    Some(ScriptPeer { child, lines })
}

pub fn rust_peer(args: &[&str]) -> Option<ScriptPeer> {
    let bin = peer_path("interop/rust-peer/target/debug/rust-peer")?;
    let mut child =
        Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true).spawn().expect("spawn rust-peer");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    Some(ScriptPeer { child, lines })
}

/// Reads lines until one contains `needle`.
pub async fn wait_line(p: &mut ScriptPeer, needle: &str, what: &str) -> String {
    loop {
        let l = read_line(&mut p.lines, what).await;
        if l.contains(needle) {
            return l;
        }
    }
}

/// The first line a peer prints when listening: `{"peerId":..,"addrs":["<multiaddr>",..]}`.
pub fn listen_line(line: &str) -> Option<(PeerId, Multiaddr)> {
    let id: PeerId = json_field(line, "peerId")?.parse().ok()?;
    let start = line.find("\"addrs\":[\"")? + 10;
    let addr = line[start..line[start..].find('"')? + start].parse().ok()?;
    Some((id, addr))
}

/// A DHT peer of another implementation driven by one command per stdin line, one JSON line back
/// (interop/js/dht.mjs, `rust-peer dht`).
pub struct DhtPeer {
    pub child: Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    pub id: PeerId,
    pub addr: Multiaddr,
}

impl DhtPeer {
    async fn start(mut cmd: Command) -> DhtPeer {
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true).spawn().expect("spawn dht peer");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (id, addr) = loop {
            let l = read_line(&mut lines, "dht peer").await;
            if let Some(x) = listen_line(&l) {
                break x;
            }
        };
        DhtPeer { child, stdin, lines, id, addr: addr.without_peer_id() }
    }

    /// `node --import polyfill.mjs dht.mjs` in interop/js.
    pub async fn js() -> Option<DhtPeer> {
        peer_path("interop/js/node_modules/@libp2p/kad-dht")?;
        Some(Self::start(node_script("interop/js", "dht.mjs")).await)
    }

    /// `rust-peer dht`.
    pub async fn rust() -> Option<DhtPeer> {
        let bin = peer_path("interop/rust-peer/target/debug/rust-peer")?;
        let mut c = Command::new(bin);
        c.arg("dht");
        Some(Self::start(c).await)
    }

    /// Runs one command; its JSON answer line.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write dht peer stdin");
        tokio::time::timeout(Duration::from_secs(40), read_line(&mut self.lines, "dht peer answer")).await.expect("dht peer answers")
    }

    /// Runs `line` until the answer has no "error" (peers join tables asynchronously), at most ~10 s.
    pub async fn cmd_ok(&mut self, line: &str) -> String {
        let mut last = String::new();
        for _ in 0..20 {
            last = self.cmd(line).await;
            if !last.contains("\"error\"") {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("{line}: kept failing: {last}");
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

// ---------- pubsub ----------

/// A message as another implementation reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMessage {
    pub topic: String,
    pub from: String,
    pub data: Vec<u8>,
}

/// p2pd's answer to SUBSCRIBE: the control socket, now a stream of length-prefixed `PSMessage`s.
pub struct P2pdSubscription(UnixStream);

impl P2pdSubscription {
    pub async fn next(&mut self) -> PeerMessage {
        let b = read_delimited(&mut self.0).await;
        let mut m = PeerMessage { topic: String::new(), from: String::new(), data: Vec::new() };
        for f in pb::Reader::new(&b) {
            match f {
                Ok((1, v)) => m.from = PeerId::from_bytes(v.bytes().unwrap()).map(|p| p.to_string()).unwrap_or_default(),
                Ok((2, v)) => m.data = v.bytes().unwrap().to_vec(),
                Ok((4, v)) => m.topic = v.string().unwrap().to_string(),
                _ => {}
            }
        }
        m
    }
}

impl P2pd {
    fn pubsub_request(op: u64, topic: &str, data: Option<&[u8]>) -> Vec<u8> {
        let mut p = Vec::new();
        pb::put_varint(&mut p, 1, op);
        pb::put_bytes(&mut p, 2, topic.as_bytes());
        if let Some(d) = data {
            pb::put_bytes(&mut p, 3, d);
        }
        let mut r = Vec::new();
        pb::put_varint(&mut r, 1, 8);
        pb::put_bytes(&mut r, 8, &p);
        r
    }

    /// PUBSUB SUBSCRIBE (p2pd started with `-pubsub`).
    pub async fn subscribe(&self, topic: &str) -> Result<P2pdSubscription, String> {
        let (s, resp) = self.request(Self::pubsub_request(3, topic, None)).await;
        check_ok(&resp)?;
        Ok(P2pdSubscription(s))
    }

    /// PUBSUB PUBLISH.
    pub async fn publish(&self, topic: &str, data: &[u8]) -> Result<(), String> {
        let (_s, resp) = self.request(Self::pubsub_request(2, topic, Some(data))).await;
        check_ok(&resp)
    }

    /// PUBSUB LIST_PEERS: peers go knows subscribed to `topic`.
    pub async fn pubsub_peers(&self, topic: &str) -> Vec<PeerId> {
        let (_s, resp) = self.request(Self::pubsub_request(1, topic, None)).await;
        let mut out = Vec::new();
        for f in pb::Reader::new(&resp) {
            if let Ok((7, v)) = f {
                for g in pb::Reader::new(v.bytes().unwrap()) {
                    if let Ok((2, id)) = g {
                        out.push(PeerId::from_bytes(id.bytes().unwrap()).unwrap());
                    }
                }
            }
        }
        out
    }
}

/// A gossipsub peer of another implementation driven over stdin (interop/js/pubsub.mjs, `rust-peer
/// pubsub`): one JSON answer per command; messages arrive as event lines in between, kept aside.
pub struct PubsubPeer {
    pub child: Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    pub id: PeerId,
    pub addr: Multiaddr,
    pub messages: Vec<PeerMessage>,
}

impl PubsubPeer {
    /// Spawned and read up to its listen line as a `DhtPeer` is (the same stdin/stdout shape).
    async fn start(cmd: Command) -> PubsubPeer {
        let DhtPeer { child, stdin, lines, id, addr } = DhtPeer::start(cmd).await;
        PubsubPeer { child, stdin, lines, id, addr, messages: Vec::new() }
    }

    pub async fn js() -> Option<PubsubPeer> {
        peer_path("interop/js/node_modules/@libp2p/gossipsub")?;
        Some(Self::start(node_script("interop/js", "pubsub.mjs")).await)
    }

    pub async fn rust() -> Option<PubsubPeer> {
        let bin = peer_path("interop/rust-peer/target/debug/rust-peer")?;
        let mut c = Command::new(bin);
        c.arg("pubsub");
        Some(Self::start(c).await)
    }

    /// Reads one line, keeping a message event aside; the line if it was not one.
    async fn line(&mut self, what: &str) -> Option<String> {
        let l = read_line(&mut self.lines, what).await;
        if json_field(&l, "event") == Some("message") {
            self.messages.push(PeerMessage {
                topic: json_field(&l, "topic").unwrap_or_default().to_string(),
                from: json_field(&l, "from").unwrap_or_default().to_string(),
                data: unhex(json_field(&l, "data").unwrap_or_default()),
            });
            return None;
        }
        Some(l)
    }

    /// Runs one command; its JSON answer line.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write pubsub peer stdin");
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(l) = self.line("pubsub peer answer").await {
                    return l;
                }
            }
        })
        .await
        .expect("pubsub peer answers")
    }

    /// Waits (up to 15 s) until a message with `data` has arrived; returns it.
    pub async fn wait_message(&mut self, data: &[u8]) -> PeerMessage {
        let found = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if let Some(m) = self.messages.iter().find(|m| m.data == data) {
                    return m.clone();
                }
                let _ = self.line("pubsub peer message").await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("message of {} bytes never arrived at {}", data.len(), self.id))
    }
}

/// Runs a shell command; panics, naming it, if it fails.
pub fn sh(cmd: &str) {
    let st = std::process::Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(st.success(), "failed: {cmd}");
}

/// Network namespaces a test creates (loopback up), one per role, removed on drop. Names are unique
/// per process and call: `hy` + `tag` + role + pid + counter.
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn new(tag: &str, roles: &[&str]) -> Namespaces {
        static K: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = K.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let names: Vec<String> = roles.iter().map(|r| format!("hy{tag}{r}{}{n}", std::process::id() % 100_000)).collect();
        for ns in &names {
            sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        }
        Namespaces(names)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
