//! delayline: a userspace WAN emulator for benchmarks and tests on one machine, where `tc netem` is not
//! available. It creates two TUN devices and forwards every IP packet read from one to the other, each
//! direction its own link:
//!
//! ```text
//!   read ─▶ random loss ─▶ bottleneck (rate limit, tail-drop queue) ─▶ fixed one-way delay ─▶ write
//! ```
//!
//! A packet read at `t` leaves the bottleneck at `max(t, link free) + size / rate` (dropped if the bytes
//! already waiting exceed the queue) and is written `delay` later. Without `--rate` the link serialises
//! nothing and only delays. `scripts/wan.sh` moves the two devices into two network namespaces and
//! addresses them; see there for use. Counters are printed on SIGINT/SIGTERM.

mod sys;

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: delayline --dev-a NAME --dev-b NAME [--delay-ms MS] [--rate BITS_PER_S] [--queue BYTES] [--loss PERCENT] [--seed N] [--max-inflight BYTES] [--offload]
  --delay-ms      one-way delay in each direction (default 30: a 60 ms round trip); fractions allowed
  --rate          bottleneck rate in bit/s per direction, with k/m/g suffixes (default: none)
  --queue         bottleneck queue in bytes, tail drop (default: one bandwidth-delay product, rate x RTT)
  --loss          random loss per packet, percent (default 0)
  --seed          loss RNG seed (default 1)
  --max-inflight  most bytes held in the delay per direction; more are dropped and counted (default 512 MiB)
  --offload       TSO (and USO where the kernel has it): the kernels hand over 64 KiB super-packets of
                  MTU-sized segments, so a 1500-byte MTU is not limited by the line's packet rate. Loss and
                  queue drops then take a whole super-packet: keep it off for loss.
Prints `ready` on stdout once both devices exist.";

/// Largest packet a TUN device can hand over (its MTU can be set up to 65535; with offloads a 64 KiB
/// super-packet behind a virtio-net header).
const MAX_PACKET: usize = 65_536 + 256;

#[derive(Clone, Debug)]
struct Config {
    dev_a: String,
    dev_b: String,
    delay: Duration,
    rate_bps: Option<u64>,
    queue_bytes: Option<u64>,
    loss: f64,
    seed: u64,
    max_inflight: u64,
    offload: bool,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&s[..s.len() - 1], 1e3),
        Some('m') => (&s[..s.len() - 1], 1e6),
        Some('g') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("--rate {s:?}: not a number (e.g. 100m, 1g)"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("--rate {s:?}: must be positive"));
    }
    Ok((v * mult) as u64)
}

fn parse(args: &[String]) -> Result<Config, String> {
    let mut c = Config {
        dev_a: String::new(),
        dev_b: String::new(),
        delay: Duration::from_millis(30),
        rate_bps: None,
        queue_bytes: None,
        loss: 0.0,
        seed: 1,
        max_inflight: 512 << 20,
        offload: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        if flag == "--offload" {
            c.offload = true;
            continue;
        }
        let val = it.next().ok_or_else(|| format!("{flag}: missing value"))?;
        let num =
            |what: &str| val.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| format!("{flag} {val:?}: {what}"));
        match flag.as_str() {
            "--dev-a" => c.dev_a = val.clone(),
            "--dev-b" => c.dev_b = val.clone(),
            "--delay-ms" => c.delay = Duration::from_secs_f64(num("a number of milliseconds")? / 1e3),
            "--rate" => c.rate_bps = Some(parse_rate(val)?),
            "--queue" => c.queue_bytes = Some(num("a number of bytes")? as u64),
            "--loss" => {
                c.loss = num("a percentage")? / 100.0;
                if c.loss > 1.0 {
                    return Err(format!("{flag} {val:?}: at most 100"));
                }
            }
            "--seed" => c.seed = val.parse().map_err(|_| format!("{flag} {val:?}: an integer"))?,
            "--max-inflight" => c.max_inflight = num("a number of bytes")? as u64,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if c.dev_a.is_empty() || c.dev_b.is_empty() || c.dev_a == c.dev_b {
        return Err(format!("--dev-a and --dev-b: two different device names\n{USAGE}"));
    }
    Ok(c)
}

/// What one direction counted.
#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_inflight: AtomicU64,
    write_errors: AtomicU64,
    /// Sum and maximum of how late packets were written after their due time, in nanoseconds.
    late_sum_ns: AtomicU64,
    late_max_ns: AtomicU64,
    max_inflight_bytes: AtomicU64,
}

/// xorshift64*: reproducible loss without a dependency.
struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The link model of one direction, separate from the I/O so it can be tested.
struct Link {
    delay: Duration,
    /// Nanoseconds per byte at the bottleneck; 0 = no bottleneck.
    ns_per_byte: f64,
    queue_bytes: u64,
    loss: f64,
    rng: Rng,
    /// When the bottleneck finishes sending what it holds.
    link_free: Option<Instant>,
}

enum Fate {
    Deliver(Instant),
    Lost,
    QueueFull,
}

impl Link {
    fn new(c: &Config, seed: u64) -> Link {
        let ns_per_byte = c.rate_bps.map_or(0.0, |r| 8e9 / r as f64);
        let bdp = c.rate_bps.map_or(0, |r| (r as f64 / 8.0 * 2.0 * c.delay.as_secs_f64()) as u64);
        Link {
            delay: c.delay,
            ns_per_byte,
            queue_bytes: c.queue_bytes.unwrap_or(bdp.max(64 * 1024)),
            loss: c.loss,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            link_free: None,
        }
    }

    fn admit(&mut self, now: Instant, len: usize) -> Fate {
        if self.loss > 0.0 && self.rng.unit() < self.loss {
            return Fate::Lost;
        }
        if self.ns_per_byte == 0.0 {
            return Fate::Deliver(now + self.delay);
        }
        let start = match self.link_free {
            Some(f) if f > now => {
                let waiting = ((f - now).as_nanos() as f64 / self.ns_per_byte) as u64;
                if waiting + len as u64 > self.queue_bytes {
                    return Fate::QueueFull;
                }
                f
            }
            _ => now,
        };
        let done = start + Duration::from_nanos((len as f64 * self.ns_per_byte) as u64);
        self.link_free = Some(done);
        Fate::Deliver(done + self.delay)
    }
}

struct Packet {
    due: Instant,
    len: usize,
    buf: Box<[u8]>,
}

/// Forwards `from` → `to` until `stop`. Due times are monotonic (FIFO link), so a deque is the schedule.
fn run(from: &OwnedFd, to: &OwnedFd, mut link: Link, max_inflight: u64, n: &Counters, stop: &AtomicBool) {
    sys::set_timer_slack_ns(1_000);
    let mut queue: VecDeque<Packet> = VecDeque::new();
    let mut pool: Vec<Box<[u8]>> = Vec::new();
    let mut inflight: u64 = 0;
    let mut late_max = 0u64;
    while !stop.load(Relaxed) {
        let now = Instant::now();
        while let Some(p) = queue.front() {
            if p.due > now {
                break;
            }
            let p = queue.pop_front().expect("front");
            if sys::write(to, &p.buf[..p.len]).is_err() {
                n.write_errors.fetch_add(1, Relaxed);
            } else {
                n.packets.fetch_add(1, Relaxed);
                n.bytes.fetch_add(p.len as u64, Relaxed);
            }
            let late = (now - p.due).as_nanos() as u64;
            n.late_sum_ns.fetch_add(late, Relaxed);
            if late > late_max {
                late_max = late;
                n.late_max_ns.store(late, Relaxed);
            }
            inflight -= p.len as u64;
            pool.push(p.buf);
        }
        // Sleep until the next packet is due, or for new packets (waking now and then to see `stop`).
        let timeout = queue.front().map_or(Duration::from_millis(200), |p| p.due.saturating_duration_since(Instant::now()));
        if !timeout.is_zero() && !sys::wait_readable(from, Some(timeout)).unwrap_or(false) {
            continue;
        }
        // Take what is waiting, a bounded batch so due packets are not held back by a flood.
        for _ in 0..256 {
            let mut buf = pool.pop().unwrap_or_else(|| vec![0u8; MAX_PACKET].into_boxed_slice());
            let len = match sys::read(from, &mut buf) {
                Ok(Some(len)) => len,
                Ok(None) | Err(_) => {
                    pool.push(buf);
                    break;
                }
            };
            match link.admit(Instant::now(), len) {
                Fate::Lost => {
                    n.dropped_loss.fetch_add(1, Relaxed);
                    pool.push(buf);
                }
                Fate::QueueFull => {
                    n.dropped_queue.fetch_add(1, Relaxed);
                    pool.push(buf);
                }
                Fate::Deliver(_) if inflight + len as u64 > max_inflight => {
                    n.dropped_inflight.fetch_add(1, Relaxed);
                    pool.push(buf);
                }
                Fate::Deliver(due) => {
                    inflight += len as u64;
                    if inflight > n.max_inflight_bytes.load(Relaxed) {
                        n.max_inflight_bytes.store(inflight, Relaxed);
                    }
                    queue.push_back(Packet { due, len, buf });
                }
            }
        }
        // Keep the pool from holding on to a burst's worth of buffers for ever.
        pool.truncate(1024);
    }
}

fn report(name: &str, n: &Counters) {
    let p = n.packets.load(Relaxed);
    let mean_late = n.late_sum_ns.load(Relaxed).checked_div(p).unwrap_or(0);
    eprintln!(
        "{name}: {p} packets, {} bytes; dropped: {} loss, {} queue, {} in-flight cap, {} write errors; late: mean {} us, max {} us; most in flight {} bytes",
        n.bytes.load(Relaxed),
        n.dropped_loss.load(Relaxed),
        n.dropped_queue.load(Relaxed),
        n.dropped_inflight.load(Relaxed),
        n.write_errors.load(Relaxed),
        mean_late / 1000,
        n.late_max_ns.load(Relaxed) / 1000,
        n.max_inflight_bytes.load(Relaxed),
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let c = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("delayline: {e}");
            return ExitCode::from(2);
        }
    };
    let open = |name: &str| sys::open_tun(name, c.offload).map_err(|e| eprintln!("delayline: TUN device {name}: {e}"));
    let (Ok((a, oa)), Ok((b, ob))) = (open(&c.dev_a), open(&c.dev_b)) else { return ExitCode::FAILURE };
    if c.offload {
        eprintln!("delayline: offloads {oa:?} / {ob:?} (virtio-net header of {} bytes passed through)", sys::VNET_HDR_LEN);
    }
    let signals = sys::block_stop_signals();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = Arc::new(AtomicBool::new(false));
    let ab = Arc::new(Counters::default());
    let ba = Arc::new(Counters::default());
    let threads: Vec<_> = [(a.clone(), b.clone(), ab.clone(), 1), (b, a, ba.clone(), 2)]
        .into_iter()
        .map(|(from, to, n, seed)| {
            let (link, stop, max) = (Link::new(&c, c.seed ^ seed), stop.clone(), c.max_inflight);
            std::thread::spawn(move || run(&from, &to, link, max, &n, &stop))
        })
        .collect();
    println!("ready");
    let sig = sys::wait_signal(&signals);
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    eprintln!("delayline: stopped by signal {sig}");
    report(&format!("{} -> {}", c.dev_a, c.dev_b), &ab);
    report(&format!("{} -> {}", c.dev_b, c.dev_a), &ba);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &[&str]) -> Config {
        let mut a: Vec<String> = ["--dev-a", "x", "--dev-b", "y"].iter().map(|s| s.to_string()).collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        parse(&a).unwrap()
    }

    #[test]
    fn delay_only_delivers_each_packet_after_the_delay() {
        let mut l = Link::new(&cfg(&["--delay-ms", "30"]), 1);
        let t = Instant::now();
        for _ in 0..1000 {
            match l.admit(t, 1500) {
                Fate::Deliver(due) => assert_eq!(due - t, Duration::from_millis(30)),
                _ => panic!("dropped"),
            }
        }
    }

    #[test]
    fn the_bottleneck_serialises_at_its_rate_and_drops_beyond_its_queue() {
        // 100 Mbit/s = 80 ns per byte; 1500 B take 120 us; queue 15,000 B = 10 packets.
        let mut l = Link::new(&cfg(&["--delay-ms", "10", "--rate", "100m", "--queue", "15000"]), 1);
        let t = Instant::now();
        let mut dues = Vec::new();
        let mut dropped = 0;
        for _ in 0..20 {
            match l.admit(t, 1500) {
                Fate::Deliver(due) => dues.push(due - t),
                Fate::QueueFull => dropped += 1,
                Fate::Lost => panic!("no loss configured"),
            }
        }
        assert_eq!(dues[0], Duration::from_micros(10_120));
        assert_eq!(dues[1] - dues[0], Duration::from_micros(120));
        assert_eq!(dues.len(), 10, "15,000 bytes, the one being sent included");
        assert_eq!(dropped, 10);
        // Once the queue drained, packets pass again.
        assert!(matches!(l.admit(t + Duration::from_millis(5), 1500), Fate::Deliver(_)));
    }

    #[test]
    fn loss_drops_about_the_configured_share() {
        let mut l = Link::new(&cfg(&["--loss", "1"]), 7);
        let t = Instant::now();
        let lost = (0..100_000).filter(|_| matches!(l.admit(t, 100), Fate::Lost)).count();
        assert!((800..1200).contains(&lost), "{lost} of 100000 at 1%");
    }

    #[test]
    fn bad_flags_are_named() {
        let e = |a: &[&str]| parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err();
        assert!(e(&["--dev-a", "x", "--dev-b", "y", "--rate", "fast"]).contains("--rate"));
        assert!(e(&["--dev-a", "x", "--dev-b", "y", "--loss", "120"]).contains("at most 100"));
        assert!(e(&["--dev-a", "x", "--dev-b", "x"]).contains("two different"));
        assert!(e(&["--dev-a"]).contains("missing value"));
    }
}
