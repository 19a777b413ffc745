//! The delay line between two network namespaces (scripts/wan.sh with this build's binary): round trips
//! are twice the one-way delay (the line only ever adds time, and not more than a millisecond), and a
//! rate limit holds a TCP transfer to the rate. Needs root, `ip` and python3; skipped without them.

use std::process::{Command, Stdio};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).stderr(Stdio::inherit()).output().expect("sh");
    assert!(out.status.success(), "failed: {cmd}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn usable() -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg("[ \"$(id -u)\" = 0 ] && command -v ip && command -v python3 && [ -e /dev/net/tun ]")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: needs root, ip, python3 and /dev/net/tun");
    }
    ok
}

/// A path brought up by scripts/wan.sh, taken down on drop.
struct Wan {
    name: String,
    root: String,
}

impl Wan {
    fn up(tag: &str, args: &str) -> Wan {
        let root = format!("{}/../..", env!("CARGO_MANIFEST_DIR"));
        let name = format!("dl{tag}{}", std::process::id() % 100_000);
        sh(&format!("cd {root} && DELAYLINE_BIN={} scripts/wan.sh up --name {name} {args}", env!("CARGO_BIN_EXE_delayline")));
        Wan { name, root }
    }
    fn exec(&self, side: char, cmd: &str) -> String {
        sh(&format!("ip netns exec {}-{side} {cmd}", self.name))
    }

    /// Where scripts/wan.sh keeps the line's log (its counters are appended when it goes down).
    fn log_path(&self) -> String {
        format!("{}/target/wan/{}.log", self.root, self.name)
    }

    /// `bytes` over one TCP connection from A to a sink on B at `port`: what the sink counted, and the
    /// seconds from the connect to the sink's answer.
    fn tcp_transfer(&self, port: u16, bytes: u64) -> (u64, f64) {
        self.exec(
            'b',
            &format!(
                r#"python3 -c '
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("10.99.0.2", {port})); l.listen(1); l.settimeout(20)
c, _ = l.accept(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    n += len(d)
c.sendall(str(n).encode()); c.close()
' >/dev/null 2>&1 &"#
            ),
        );
        let out = self.exec(
            'a',
            &format!(
                r#"python3 -c '
import socket, time
time.sleep(0.3)
s = socket.create_connection(("10.99.0.2", {port}), timeout=20); t = time.perf_counter()
s.sendall(b"y" * {bytes}); s.shutdown(socket.SHUT_WR)
got = int(s.recv(64)); print(got, time.perf_counter() - t)
'"#
            ),
        );
        let v: Vec<&str> = out.split_whitespace().collect();
        (v[0].parse().unwrap(), v[1].parse().unwrap())
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        let _ = Command::new("sh").arg("-c").arg(format!("cd {} && scripts/wan.sh down --name {}", self.root, self.name)).status();
    }
}

const UDP_ECHO: &str = r#"python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.99.0.2", 7007)); s.settimeout(20)
try:
    while True:
        d, a = s.recvfrom(2048); s.sendto(d, a)
except socket.timeout:
    pass
' >/dev/null 2>&1 &"#;

#[test]
fn delay_line_round_trip_is_twice_the_delay_within_a_millisecond() {
    if !usable() {
        return;
    }
    let w = Wan::up("rtt", "--delay-ms 20");
    w.exec('b', UDP_ECHO);
    let out = w.exec(
        'a',
        r#"python3 -c '
import socket, time, statistics
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
time.sleep(0.3)
rtts = []
for i in range(30):
    t = time.perf_counter(); s.sendto(b"x" * 64, ("10.99.0.2", 7007)); s.recvfrom(2048)
    rtts.append((time.perf_counter() - t) * 1e3); time.sleep(0.02)
print(min(rtts), statistics.median(rtts))
'"#,
    );
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (min, median) = (v[0], v[1]);
    assert!(min >= 40.0, "a round trip shorter than twice the delay: {min} ms");
    assert!(median <= 41.0, "median round trip {median} ms, wanted 40 ms + at most 1");
}

#[test]
fn delay_line_rate_limit_holds_a_tcp_transfer_to_the_rate() {
    if !usable() {
        return;
    }
    // 20 Mbit/s, 5 ms each way: 2.5 MB take 1 s at the rate.
    let w = Wan::up("rate", "--delay-ms 5 --rate 20m");
    let (got, secs) = w.tcp_transfer(7008, 2_500_000);
    assert_eq!(got, 2_500_000);
    let mbit = 2_500_000.0 * 8.0 / secs / 1e6;
    assert!((14.0..=20.5).contains(&mbit), "{mbit:.1} Mbit/s through a 20 Mbit/s line ({secs} s)");
}

#[test]
fn delay_line_with_offloads_carries_super_packets_of_mtu_sized_segments() {
    if !usable() {
        return;
    }
    // 5 ms each way, MTU 1500, TSO/USO: 20 MB of TCP cross in far fewer packets than segments.
    let w = Wan::up("off", "--delay-ms 5 --offload");
    let (got, _) = w.tcp_transfer(7009, 20_000_000);
    assert_eq!(got, 20_000_000);
    let log_path = w.log_path();
    drop(w);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("offloads Tso"), "{log}");
    // "NAME-ta -> NAME-tb: P packets, B bytes": far fewer packets than 1500-byte segments.
    let line = log.lines().find(|l| l.contains("-ta -> ")).expect("counters");
    let packets: u64 = line.split(": ").nth(1).and_then(|x| x.split(' ').next()).and_then(|x| x.parse().ok()).expect("packet count");
    assert!(packets < 20_000_000 / 1448 / 4, "{packets} packets for 20 MB: offloads not in use ({line})");
}
