//! The scenario language: one statement per line, `#` starts a comment. Documented in the README; the
//! examples live in `scenarios/`.
//!
//! ```text
//! seed 42                                   # default seed (HYPHAE_SEED and --seed override it)
//! addresses private|public                  # private (default): node i is 10.a.b.c; public: node i is
//!                                           # 2a00:i::/32-ish (IPv6, each node its own /32, so the
//!                                           # DHT's diversity filters apply; `subnet=shared` groups share one)
//! nodes GROUP COUNT [ping=10s] [transport=tcp|quic] [per_peer=8] [dht=server|client|auto] [undialable]
//!                   [idle=10s] [autonat] [disjoint=N]  # idle: connections without streams close after this long;
//!                   [diversity=off|table|lookup] [density=on|off] [subnet=own|shared] [eclipse]
//!                   [provide=optimistic|classic]  # provide: `kad::Config::optimistic_provide` (default optimistic)
//!                   [proximity=on|off]      # proximity: `kad::Config::proximity` (tables keep near peers; default off)
//!                                           # disjoint: DHT lookups on N disjoint paths (S/Kademlia)
//!                                           # diversity: the DHT's IP-group filters: off, the routing
//!                                           # table's only (go's), or the table's and each lookup's
//!                                           # (default); density: the lookups' density check
//!                                           # (`kad::Config::density_check`, default on); eclipse: sybils of the eclipse attack on the
//!                                           # target key (IDs ground closer to it than any other node's)
//!                                           # autonat: AutoNAT v1 client and server (the DHT's auto mode)
//!                                           # a group of nodes; ping: interval of pings to every
//!                                           # peer; transport: how this group dials (default tcp);
//!                                           # dht: runs the Kademlia service in that mode; undialable:
//!                                           # inbound connections are refused (the simplest NAT)
//! link latency=20ms [jitter=2ms] [bandwidth=100mbit] [loss=1%] [reorder=5%]  # the default link class
//!                                           # (one-way latency); loss and reorder apply to datagrams
//! region NAME SELECTOR                      # nodes in a region (SELECTOR: N, A..B, a group or region, all;
//!                                           # the same NAME again adds nodes to it)
//! between REGION REGION latency=80ms [jitter=..] [bandwidth=..]  # link class between two regions
//! phase NAME                                # metrics from time 0 go to this phase
//! at TIME ACTION                            # a timeline action (below)
//! run TIME                                  # virtual duration
//! assert PHASE.METRIC OP NUMBER             # OP: < <= > >= == ; checked after the run
//! ```
//! Actions: `connect random K [SELECTOR]`, `connect SELECTOR -> SELECTOR`, `dial SELECTOR -> SELECTOR`
//! (a new connection even when connected), `ping SELECTOR`,
//! `partition SELECTOR | SELECTOR` (two-way), `partition SELECTOR -> SELECTOR` (one-way), `heal`,
//! `crash SELECTOR`, `restart SELECTOR`, `churn N every TIME until TIME`, `link latency=.. ...`
//! (degrade or change the default class from then on), `phase NAME`,
//! `dht bootstrap SELECTOR via SELECTOR [over TIME]` (each joins through 3 random nodes of the second
//! set, all at once or spread evenly over TIME; restarted nodes join again the same way), `dht provide|find-providers|find-peer N by SELECTOR [every TIME until
//! TIME] [target]` (N operations by random live DHT nodes of SELECTOR: provide a fresh key, look up the providers
//! of a key provided before, find a random DHT server; repeated when `every` is given; `target`:
//! provide or look up the one key that `eclipse` groups attack, counted apart as `dht_target_*`).
//! `pubsub subscribe SELECTOR TOPIC` (gossipsub nodes join TOPIC; restarted nodes join again),
//! `pubsub publish N by SELECTOR TOPIC [size=BYTES] [every TIME until TIME]` (N messages of BYTES, default
//! 1024, each by a random live gossipsub node of SELECTOR). Node setting `pubsub` runs gossipsub;
//! `idontwant=BYTES|off` sets its IDONTWANT threshold (default 1024); `validation=DURATION` holds each
//! message that long for the application's verdict (accept) before delivering and forwarding it;
//! `uplink=BANDWIDTH` gives each node one uplink that all its TCP connections share (serialization
//! there instead of per link; what the node writes waits in it while `uplink_queue=BYTES`, default
//! 64 KiB, are queued on the uplink);
//! `stagger=N` sends large gossipsub messages to N peers at a time (`gossipsub::Config::stagger`, 0: off);
//! `stagger_order=nearest|rr` says who takes a free turn (`gossipsub::Config::stagger_nearest`: the
//! nearest by round trip, the default, or round-robin in peer-id order);
//! `near=N` makes up to N of a mesh's places the nearest peers by ping's round trip
//! (`gossipsub::Config::d_near`, default 4; 0: off, the spec's random mesh; needs `ping=`);
//! `first_hop=BYTES|off` floods messages of at most BYTES on from their publisher's first hop
//! (`gossipsub::Config::flood_first_hop`, default 16 KiB);
//! `scoring=off|on|strict` sets peer scoring (strict: mesh delivery expectations too); `adversary` marks
//! a group of attackers (left out of delivery metrics and publishing). `pubsub attack SELECTOR
//! drop|spam=N|flood|honest` makes nodes attack from then on (drop: forward nothing; spam: N invalid
//! messages per heartbeat to every peer; flood: IHAVE/IWANT/GRAFT floods every heartbeat; after behaving
//! first, that is a covert flash).
//! TIME: `500ms`, `10s`, `5m`, `1h`. Bandwidth: `kbit`, `mbit`, `gbit` per second.

use hyphae_core::kad::Mode;
use hyphae_core::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct LinkClass {
    /// One-way latency.
    pub latency: Duration,
    /// Uniform extra delay in [0, jitter) per message (ordered streams never reorder).
    pub jitter: Duration,
    /// Bits per second; 0 = unlimited.
    pub bandwidth_bps: u64,
    /// Fraction of datagrams dropped (UDP/QUIC only: TCP-like links are reliable).
    pub loss: f64,
    /// Fraction of datagrams held back by one extra latency, so that later ones overtake them.
    pub reorder: f64,
}

impl Default for LinkClass {
    fn default() -> Self {
        LinkClass { latency: Duration::from_millis(10), jitter: Duration::ZERO, bandwidth_bps: 0, loss: 0.0, reorder: 0.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    One(usize),
    Range(usize, usize),
    Group(String),
}

pub use crate::dht::DhtOp;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    DhtBootstrap {
        who: Selector,
        via: Selector,
        /// Spread the joins evenly over this long (a network that comes up over time).
        over: Option<Duration>,
    },
    Dht {
        op: DhtOp,
        n: usize,
        by: Selector,
        /// On the eclipse attack's target key instead of the scenario's own keys.
        target: bool,
        /// Repeat every `.0` until `.1`.
        every: Option<(Duration, Duration)>,
    },
    ConnectRandom {
        k: usize,
        who: Selector,
    },
    /// `connect` reuses a connection to the peer if there is one; `dial` (`new: true`) always opens
    /// another, as `Host::connect` and `Host::dial` do.
    Connect {
        from: Selector,
        to: Selector,
        new: bool,
    },
    Ping(Selector),
    Partition {
        a: Selector,
        b: Selector,
        one_way: bool,
    },
    Heal,
    Crash(Selector),
    Restart(Selector),
    Churn {
        n: usize,
        every: Duration,
        until: Duration,
    },
    Link(LinkClass),
    Phase(String),
    PubsubSubscribe {
        who: Selector,
        topic: String,
    },
    /// The selected gossipsub nodes start (or stop) attacking.
    PubsubAttack {
        who: Selector,
        mode: hyphae_core::gossipsub::Adversary,
    },
    PubsubPublish {
        n: usize,
        by: Selector,
        topic: String,
        size: usize,
        /// Repeat every `.0` until `.1`.
        every: Option<(Duration, Duration)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub count: usize,
    pub ping: Option<Duration>,
    /// The group dials over QUIC (every node of a scenario that has such a group also listens on QUIC).
    pub quic: bool,
    /// The node machine's cap on established connections per peer (`node::Limits`); default 8.
    pub per_peer: Option<usize>,
    /// Runs the Kademlia service in this mode.
    pub dht: Option<Mode>,
    /// Its DHT lookups run on this many disjoint paths (`kad::Config::disjoint_paths`; 1: off).
    pub disjoint: usize,
    /// Inbound connections are refused.
    pub undialable: bool,
    /// `node::Limits::idle_timeout`.
    pub idle: Option<Duration>,
    /// Runs AutoNAT v1 (client and server).
    pub autonat: bool,
    /// Runs gossipsub, with this IDONTWANT threshold in bytes (`usize::MAX`: off).
    pub pubsub: Option<usize>,
    /// Gossipsub messages wait this long for the application's verdict (always accept) before they are
    /// delivered and forwarded (the validation time of a real application: a block's checks).
    pub validation: Option<Duration>,
    /// Attackers: left out of delivery metrics and of publishing.
    pub adversary: bool,
    pub scoring: Scoring,
    /// The DHT's IP-group filters.
    pub diversity: Diversity,
    /// The DHT lookups' density check (`kad::Config::density_check`).
    pub density: bool,
    /// Optimistic provide (`kad::Config::optimistic_provide`).
    pub optimistic_provide: bool,
    /// Proximity neighbour selection (`kad::Config::proximity`).
    pub proximity: bool,
    /// With public addresses: the whole group in one /32 (one operator's address block).
    pub shared_subnet: bool,
    /// Sybils of the eclipse attack on the target key (`kad::Eclipse`); implies `adversary`.
    pub eclipse: bool,
    /// Each node's uplink in bits per second (0: none): all its TCP connections share it, and what its
    /// services write waits in the node while `uplink_queue` bytes are queued on it
    /// (`ByteNode::set_send_limit`; default 64 KiB).
    pub uplink_bps: u64,
    pub uplink_queue: usize,
    /// Gossipsub's `Config::stagger` (default: the config's).
    pub stagger: Option<usize>,
    /// Gossipsub's `Config::stagger_nearest` (default: the config's).
    pub stagger_nearest: Option<bool>,
    /// Gossipsub's `Config::d_near` (default: the config's).
    pub near: Option<usize>,
    /// Gossipsub's `Config::flood_first_hop` (default: the config's; 0: off).
    pub first_hop: Option<usize>,
    /// Gossipsub's `Config::large_messages`: PREAMBLE and IMRECEIVING (default: the config's).
    pub preamble: Option<bool>,
}

/// Which of the DHT's IP-group filters a group's nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Diversity {
    Off,
    /// The routing table's (go-libp2p-kad-dht's filter).
    Table,
    /// The table's and each lookup's (`kad::Config::lookup_max_per_group`), hyphae's default.
    #[default]
    Lookup,
}

/// Gossipsub peer scoring of a group.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Scoring {
    Off,
    /// The default parameters (`score::Params::default`).
    #[default]
    On,
    /// The default parameters plus mesh delivery expectations (P3/P3b, `TopicParams::with_mesh_deliveries(3)`).
    Strict,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assertion {
    pub phase: String,
    pub metric: String,
    pub op: String,
    pub value: f64,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub seed: u64,
    pub groups: Vec<Group>,
    pub link: LinkClass,
    pub regions: Vec<(String, Selector)>,
    pub between: Vec<(String, String, LinkClass)>,
    pub first_phase: String,
    pub timeline: Vec<(Duration, Action)>,
    pub duration: Duration,
    pub asserts: Vec<Assertion>,
    /// Nodes have public-looking IPv6 addresses (`addresses public`) instead of 10.x.
    pub public_addresses: bool,
}

impl Scenario {
    pub fn total_nodes(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) =
        s.find(|c: char| c.is_ascii_alphabetic()).map(|i| s.split_at(i)).ok_or(format!("{s:?}: duration needs a unit (ms, s, m, h)"))?;
    let v: f64 = num.parse().map_err(|_| format!("{s:?}: bad number"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s:?}: bad duration"));
    }
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let lower = s.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = lower.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = lower.strip_suffix("kbit") {
        (n, 1e3)
    } else if let Some(n) = lower.strip_suffix("bit") {
        (n, 1.0)
    } else {
        return Err(format!("{s:?}: bandwidth needs a unit (kbit, mbit, gbit)"));
    };
    let v: f64 = num.parse().map_err(|_| format!("{s:?}: bad number"))?;
    Ok((v * mult) as u64)
}

fn parse_selector(s: &str) -> Result<Selector, String> {
    if s == "all" {
        return Ok(Selector::All);
    }
    if let Some((a, b)) = s.split_once("..") {
        let a: usize = a.parse().map_err(|_| format!("{s:?}: bad range"))?;
        let b: usize = b.parse().map_err(|_| format!("{s:?}: bad range"))?;
        if b < a {
            return Err(format!("{s:?}: empty range"));
        }
        return Ok(Selector::Range(a, b));
    }
    if let Ok(n) = s.parse() {
        return Ok(Selector::One(n));
    }
    if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Ok(Selector::Group(s.to_string()));
    }
    Err(format!("{s:?}: not a node selector (N, A..B, a group name, all)"))
}

/// `5%` or `0.05`, within 0..=1.
fn parse_fraction(v: &str) -> Result<f64, String> {
    let f = match v.strip_suffix('%') {
        Some(p) => p.parse::<f64>().map(|x| x / 100.0),
        None => v.parse::<f64>(),
    }
    .map_err(|_| format!("{v:?}: not a fraction (5% or 0.05)"))?;
    if !(0.0..=1.0).contains(&f) {
        return Err(format!("{v:?}: must be between 0% and 100%"));
    }
    Ok(f)
}

fn parse_link(words: &[&str], base: &LinkClass) -> Result<LinkClass, String> {
    let mut l = base.clone();
    for w in words {
        let (k, v) = w.split_once('=').ok_or(format!("{w:?}: expected key=value"))?;
        match k {
            "latency" => l.latency = parse_duration(v)?,
            "jitter" => l.jitter = parse_duration(v)?,
            "bandwidth" => l.bandwidth_bps = parse_bandwidth(v)?,
            "loss" => l.loss = parse_fraction(v)?,
            "reorder" => l.reorder = parse_fraction(v)?,
            _ => return Err(format!("unknown link setting {k:?} (latency, jitter, bandwidth, loss, reorder)")),
        }
    }
    Ok(l)
}

fn parse_action(w: &[&str], link: &LinkClass) -> Result<Action, String> {
    let arrow = |w: &[&str], sep: &str| -> Result<(Selector, Selector), String> {
        let i = w.iter().position(|x| *x == sep).ok_or(format!("expected `A {sep} B`"))?;
        if i != 1 || w.len() != 3 {
            return Err(format!("expected `A {sep} B`"));
        }
        Ok((parse_selector(w[0])?, parse_selector(w[2])?))
    };
    Ok(match w {
        ["connect", "random", k, rest @ ..] => Action::ConnectRandom {
            k: k.parse().map_err(|_| format!("{k:?}: not a number"))?,
            who: match rest {
                [] => Selector::All,
                [s] => parse_selector(s)?,
                _ => return Err("connect random K [SELECTOR]".into()),
            },
        },
        ["connect", rest @ ..] => {
            let (from, to) = arrow(rest, "->")?;
            Action::Connect { from, to, new: false }
        }
        ["dial", rest @ ..] => {
            let (from, to) = arrow(rest, "->")?;
            Action::Connect { from, to, new: true }
        }
        ["ping", s] => Action::Ping(parse_selector(s)?),
        ["partition", rest @ ..] => {
            if rest.contains(&"->") {
                let (a, b) = arrow(rest, "->")?;
                Action::Partition { a, b, one_way: true }
            } else {
                let (a, b) = arrow(rest, "|")?;
                Action::Partition { a, b, one_way: false }
            }
        }
        ["heal"] => Action::Heal,
        ["crash", s] => Action::Crash(parse_selector(s)?),
        ["restart", s] => Action::Restart(parse_selector(s)?),
        ["churn", n, "every", e, "until", u] => Action::Churn {
            n: n.parse().map_err(|_| format!("{n:?}: not a number"))?,
            every: parse_duration(e)?,
            until: parse_duration(u)?,
        },
        ["link", rest @ ..] => Action::Link(parse_link(rest, link)?),
        ["phase", name] => Action::Phase(name.to_string()),
        ["dht", "bootstrap", who, "via", via] => Action::DhtBootstrap { who: parse_selector(who)?, via: parse_selector(via)?, over: None },
        ["dht", "bootstrap", who, "via", via, "over", t] => {
            Action::DhtBootstrap { who: parse_selector(who)?, via: parse_selector(via)?, over: Some(parse_duration(t)?) }
        }
        ["dht", op, n, "by", by, rest @ ..] => {
            let op = match *op {
                "provide" => DhtOp::Provide,
                "find-providers" => DhtOp::FindProviders,
                "find-peer" => DhtOp::FindPeer,
                _ => return Err(format!("{op:?}: dht provide|find-providers|find-peer|bootstrap")),
            };
            let (rest, target) = match rest {
                [r @ .., "target"] => (r, true),
                r => (r, false),
            };
            if target && op == DhtOp::FindPeer {
                return Err("target: for provide and find-providers".into());
            }
            let every = match rest {
                [] => None,
                ["every", e, "until", u] => Some((parse_duration(e)?, parse_duration(u)?)),
                _ => return Err("dht OP N by SELECTOR [every TIME until TIME] [target]".into()),
            };
            if every.is_some_and(|(e, _)| e.is_zero()) {
                return Err("every must be more than 0".into());
            }
            Action::Dht { op, n: n.parse().map_err(|_| format!("{n:?}: not a number"))?, by: parse_selector(by)?, every, target }
        }
        ["pubsub", "attack", who, mode] => {
            use hyphae_core::gossipsub::Adversary;
            let mode = match *mode {
                "drop" => Adversary::Drop,
                "flood" => Adversary::FloodControl,
                "honest" => Adversary::Honest,
                m if m.starts_with("spam=") => {
                    Adversary::Spam(m[5..].parse().map_err(|_| format!("{m:?}: spam=N (messages per heartbeat)"))?)
                }
                _ => return Err(format!("{mode:?}: pubsub attack SELECTOR drop|spam=N|flood|honest")),
            };
            Action::PubsubAttack { who: parse_selector(who)?, mode }
        }
        ["pubsub", "subscribe", who, topic] => Action::PubsubSubscribe { who: parse_selector(who)?, topic: topic.to_string() },
        ["pubsub", "publish", n, "by", by, topic, rest @ ..] => {
            let mut size = 1024;
            let mut every = None;
            let mut r = rest;
            while !r.is_empty() {
                match r {
                    ["every", e, "until", u, more @ ..] => {
                        every = Some((parse_duration(e)?, parse_duration(u)?));
                        r = more;
                    }
                    [kv, more @ ..] if kv.starts_with("size=") => {
                        size = kv[5..].parse().map_err(|_| format!("{kv:?}: size=BYTES"))?;
                        r = more;
                    }
                    _ => return Err("pubsub publish N by SELECTOR TOPIC [size=BYTES] [every TIME until TIME]".into()),
                }
            }
            if every.is_some_and(|(e, _)| e.is_zero()) {
                return Err("every must be more than 0".into());
            }
            Action::PubsubPublish {
                n: n.parse().map_err(|_| format!("{n:?}: not a number"))?,
                by: parse_selector(by)?,
                topic: topic.to_string(),
                size,
                every,
            }
        }
        _ => return Err(format!("unknown action {:?}", w.join(" "))),
    })
}

pub fn parse(text: &str) -> Result<Scenario, String> {
    let mut sc = Scenario {
        seed: 1,
        groups: vec![],
        link: LinkClass::default(),
        regions: vec![],
        between: vec![],
        first_phase: "main".into(),
        timeline: vec![],
        duration: Duration::from_secs(60),
        asserts: vec![],
        public_addresses: false,
    };
    let mut ran = false;
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let err = |e: String| format!("line {lineno}: {e}\n  {raw}");
        match w.as_slice() {
            ["seed", s] => sc.seed = s.parse().map_err(|_| err(format!("{s:?}: not a number")))?,
            ["addresses", "private"] => sc.public_addresses = false,
            ["addresses", "public"] => sc.public_addresses = true,
            ["nodes", name, count, rest @ ..] => {
                let count: usize = count.parse().map_err(|_| err(format!("{count:?}: not a number")))?;
                let mut ping = None;
                let mut quic = false;
                let mut per_peer = None;
                let mut dht = None;
                let mut disjoint = 1;
                let mut undialable = false;
                let mut idle = None;
                let mut autonat = false;
                let mut pubsub = None;
                let mut validation = None;
                let mut adversary = false;
                let mut scoring = Scoring::On;
                let mut diversity = Diversity::default();
                let mut shared_subnet = false;
                let mut density = true;
                let mut optimistic_provide = true;
                let mut proximity = false;
                let mut eclipse = false;
                let mut uplink_bps = 0;
                let mut uplink_queue = 64 * 1024;
                let mut stagger = None;
                let mut near = None;
                let mut first_hop = None;
                let mut preamble = None;
                let mut stagger_nearest = None;
                for r in rest {
                    if *r == "eclipse" {
                        eclipse = true;
                        adversary = true;
                        continue;
                    }
                    if *r == "adversary" {
                        adversary = true;
                        pubsub = pubsub.or(Some(hyphae_core::gossipsub::Config::default().idontwant_threshold));
                        continue;
                    }
                    if *r == "pubsub" {
                        pubsub = pubsub.or(Some(hyphae_core::gossipsub::Config::default().idontwant_threshold));
                        continue;
                    }
                    if *r == "undialable" {
                        undialable = true;
                        continue;
                    }
                    if *r == "autonat" {
                        autonat = true;
                        continue;
                    }
                    match r.split_once('=') {
                        Some(("dht", v)) => dht = Some(v.parse::<Mode>().map_err(err)?),
                        Some(("disjoint", v)) => {
                            disjoint = v.parse().ok().filter(|n| (1..=20).contains(n)).ok_or_else(|| err(format!("{v:?}: disjoint=1..20")))?
                        }
                        Some(("idle", v)) => idle = Some(parse_duration(v).map_err(err)?),
                        Some(("diversity", v)) => {
                            diversity = match v {
                                "off" => Diversity::Off,
                                "table" => Diversity::Table,
                                "lookup" => Diversity::Lookup,
                                _ => return Err(err(format!("{v:?}: diversity=off|table|lookup"))),
                            }
                        }
                        Some(("density", "on")) => density = true,
                        Some(("density", "off")) => density = false,
                        Some(("provide", "optimistic")) => optimistic_provide = true,
                        Some(("provide", "classic")) => optimistic_provide = false,
                        Some(("proximity", "on")) => proximity = true,
                        Some(("proximity", "off")) => proximity = false,
                        Some(("subnet", "own")) => shared_subnet = false,
                        Some(("subnet", "shared")) => shared_subnet = true,
                        Some(("validation", v)) => validation = Some(parse_duration(v).map_err(err)?),
                        Some(("uplink", v)) => uplink_bps = parse_bandwidth(v).map_err(err)?,
                        Some(("uplink_queue", v)) => {
                            uplink_queue = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| err(format!("{v:?}: uplink_queue=BYTES (> 0)")))?
                        }
                        Some(("stagger", v)) => stagger = Some(v.parse().map_err(|_| err(format!("{v:?}: stagger=N (0: off)")))?),
                        Some(("near", v)) => near = Some(v.parse().map_err(|_| err(format!("{v:?}: near=N (0: off)")))?),
                        Some(("first_hop", "off")) => first_hop = Some(0),
                        Some(("first_hop", v)) => first_hop = Some(v.parse().map_err(|_| err(format!("{v:?}: first_hop=BYTES|off")))?),
                        Some(("stagger_order", "nearest")) => stagger_nearest = Some(true),
                        Some(("stagger_order", "rr")) => stagger_nearest = Some(false),
                        Some(("preamble", "on")) => preamble = Some(true),
                        Some(("preamble", "off")) => preamble = Some(false),
                        Some(("scoring", v)) => {
                            scoring = match v {
                                "off" => Scoring::Off,
                                "on" => Scoring::On,
                                "strict" => Scoring::Strict,
                                _ => return Err(err(format!("{v:?}: scoring=off|on|strict"))),
                            };
                            // Scoring is gossipsub's: it implies it.
                            pubsub = pubsub.or(Some(hyphae_core::gossipsub::Config::default().idontwant_threshold));
                        }
                        Some(("idontwant", "off")) => pubsub = Some(usize::MAX),
                        Some(("idontwant", v)) => pubsub = Some(v.parse().map_err(|_| err(format!("{v:?}: idontwant=BYTES|off")))?),
                        Some(("ping", v)) => ping = Some(parse_duration(v).map_err(err)?),
                        Some(("transport", "tcp")) => quic = false,
                        Some(("transport", "quic")) => quic = true,
                        Some(("per_peer", v)) => per_peer = Some(v.parse().map_err(|_| err(format!("{v:?}: not a number")))?),
                        _ => {
                            return Err(err(format!(
                                "unknown node setting {r:?} (ping=DURATION, transport=tcp|quic, per_peer=N, dht=MODE, disjoint=N, undialable, idle=DURATION, autonat, pubsub, idontwant=BYTES|off, validation=DURATION, uplink=BANDWIDTH, uplink_queue=BYTES, stagger=N, stagger_order=nearest|rr, near=N, first_hop=BYTES|off, preamble=on|off, scoring=off|on|strict, adversary, diversity=off|table|lookup, density=on|off, provide=optimistic|classic, proximity=on|off, subnet=own|shared, eclipse)"
                            )))
                        }
                    }
                }
                if sc.groups.iter().any(|g| g.name == *name) {
                    return Err(err(format!("group {name:?} defined twice")));
                }
                sc.groups.push(Group {
                    name: name.to_string(),
                    count,
                    ping,
                    quic,
                    per_peer,
                    dht,
                    disjoint,
                    undialable,
                    idle,
                    autonat,
                    pubsub,
                    validation,
                    adversary,
                    scoring,
                    diversity,
                    density,
                    optimistic_provide,
                    proximity,
                    shared_subnet,
                    eclipse,
                    uplink_bps,
                    uplink_queue,
                    stagger,
                    near,
                    first_hop,
                    preamble,
                    stagger_nearest,
                });
            }
            ["link", rest @ ..] => sc.link = parse_link(rest, &LinkClass::default()).map_err(err)?,
            ["region", name, sel] => sc.regions.push((name.to_string(), parse_selector(sel).map_err(err)?)),
            ["between", a, b, rest @ ..] => {
                for r in [a, b] {
                    if !sc.regions.iter().any(|(n, _)| n == r) {
                        return Err(err(format!("unknown region {r:?}")));
                    }
                }
                sc.between.push((a.to_string(), b.to_string(), parse_link(rest, &sc.link).map_err(err)?));
            }
            ["phase", name] => sc.first_phase = name.to_string(),
            ["at", t, rest @ ..] => {
                let t = parse_duration(t).map_err(err)?;
                let a = parse_action(rest, &sc.link).map_err(err)?;
                sc.timeline.push((t, a));
            }
            ["run", t] => {
                sc.duration = parse_duration(t).map_err(err)?;
                ran = true;
            }
            ["assert", what, op, v] => {
                let (phase, metric) = what.split_once('.').ok_or_else(|| err("assert PHASE.METRIC OP NUMBER".into()))?;
                if !["<", "<=", ">", ">=", "=="].contains(op) {
                    return Err(err(format!("{op:?}: OP is one of < <= > >= ==")));
                }
                if !crate::metrics::Phase::METRICS.contains(&metric)
                    && !crate::dht::Metrics::NAMES.contains(&metric)
                    && !crate::dht::RUN_WIDE.contains(&metric)
                    && !crate::pubsub::Metrics::NAMES.contains(&metric)
                    && !crate::pubsub::Traffic::NAMES.contains(&metric)
                {
                    let all: Vec<&str> = crate::metrics::Phase::METRICS
                        .iter()
                        .chain(crate::dht::Metrics::NAMES.iter())
                        .chain(crate::dht::RUN_WIDE.iter())
                        .chain(crate::pubsub::Metrics::NAMES.iter())
                        .chain(crate::pubsub::Traffic::NAMES.iter())
                        .copied()
                        .collect();
                    return Err(err(format!("unknown metric {metric:?}; one of {}", all.join(", "))));
                }
                let value = v.parse().map_err(|_| err(format!("{v:?}: not a number")))?;
                sc.asserts.push(Assertion { phase: phase.into(), metric: metric.into(), op: op.to_string(), value, line: lineno });
            }
            _ => return Err(err(format!("unknown statement {:?}", w[0]))),
        }
    }
    if sc.groups.is_empty() {
        return Err("no `nodes` statement".into());
    }
    if !ran {
        return Err("no `run DURATION` statement".into());
    }
    // A name selects a group or a region.
    let known: Vec<&str> = sc.groups.iter().map(|g| g.name.as_str()).chain(sc.regions.iter().map(|(n, _)| n.as_str())).collect();
    let n = sc.total_nodes();
    let check = |s: &Selector| -> Result<(), String> {
        match s {
            Selector::Group(g) if !known.contains(&g.as_str()) => Err(format!("unknown group or region {g:?}")),
            Selector::One(i) if *i >= n => Err(format!("node {i} out of range (0..{})", n - 1)),
            Selector::Range(_, b) if *b >= n => Err(format!("range end {b} out of range (0..{})", n - 1)),
            _ => Ok(()),
        }
    };
    for (_, s) in &sc.regions {
        check(s)?;
    }
    for (_, a) in &sc.timeline {
        match a {
            Action::ConnectRandom { who, .. } | Action::Ping(who) | Action::Crash(who) | Action::Restart(who) => check(who)?,
            Action::Connect { from, to, .. } => {
                check(from)?;
                check(to)?
            }
            Action::Partition { a, b, .. } | Action::DhtBootstrap { who: a, via: b, .. } => {
                check(a)?;
                check(b)?
            }
            Action::Dht { by, .. } => check(by)?,
            _ => {}
        }
    }
    sc.timeline.sort_by_key(|(t, _)| *t);
    Ok(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_parses_every_statement() {
        let s = parse(
            "seed 7\nnodes a 10 ping=10s\nnodes b 5\nlink latency=20ms jitter=1ms bandwidth=10mbit\nregion eu 0..4\nregion us b\n\
             between eu us latency=80ms\nphase warm\nat 0s connect random 3\nat 1s connect 0 -> b\nat 2s partition 0..4 | b\n\
             at 3s partition a -> 14\nat 4s heal\nat 5s crash 3\nat 6s restart 3\nat 7s churn 2 every 1s until 9s\n\
             at 8s link latency=100ms\nat 9s phase late\nat 9s ping all\nrun 1m\nassert late.ping_success_rate >= 0.9\n",
        )
        .unwrap();
        let d = parse(
            "nodes s 3 dht=server\nnodes c 2 dht=client undialable\nat 0s dht bootstrap all via s\n\
                       at 1s dht provide 2 by c\nat 2s dht find-providers 3 by all every 1s until 9s\nrun 10s\n",
        )
        .unwrap();
        assert_eq!(d.groups[1].dht, Some(Mode::Client));
        assert!(d.groups[1].undialable && !d.groups[0].undialable);
        assert_eq!(
            d.timeline[2].1,
            Action::Dht {
                op: DhtOp::FindProviders,
                n: 3,
                by: Selector::All,
                every: Some((Duration::from_secs(1), Duration::from_secs(9))),
                target: false,
            }
        );
        assert!(parse("nodes a 3 dht=maybe\nrun 1s").unwrap_err().contains("unknown DHT mode"));
        let u = parse("nodes a 3 pubsub uplink=100mbit uplink_queue=16384 stagger=0\nnodes b 2\nrun 1s\n").unwrap();
        assert_eq!((u.groups[0].uplink_bps, u.groups[0].uplink_queue, u.groups[0].stagger), (100_000_000, 16384, Some(0)));
        assert_eq!((u.groups[1].uplink_bps, u.groups[1].stagger), (0, None));
        let n = parse("nodes a 3 pubsub near=0 stagger_order=rr first_hop=off\nnodes b 2 pubsub first_hop=2048\nrun 1s\n").unwrap();
        assert_eq!((n.groups[0].near, n.groups[1].near), (Some(0), None));
        assert_eq!((n.groups[0].first_hop, n.groups[1].first_hop), (Some(0), Some(2048)));
        assert_eq!((n.groups[0].stagger_nearest, n.groups[1].stagger_nearest), (Some(false), None));
        assert!(parse("nodes a 3 uplink_queue=0\nrun 1s").unwrap_err().contains("uplink_queue"));
        assert_eq!(s.seed, 7);
        assert_eq!(s.total_nodes(), 15);
        assert_eq!(s.link.bandwidth_bps, 10_000_000);
        assert_eq!(s.timeline.len(), 11);
        assert_eq!(s.duration, Duration::from_secs(60));
        assert_eq!(s.between[0].2.latency, Duration::from_millis(80));
        assert_eq!(s.between[0].2.jitter, Duration::from_millis(1), "between inherits the default link");
    }

    #[test]
    fn scenario_errors_name_the_line() {
        let e = parse("nodes a 3\nat 1s explode\nrun 1s").unwrap_err();
        assert!(e.starts_with("line 2: unknown action"), "{e}");
        let e = parse("nodes a 3\nat 1s crash 9\nrun 1s").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = parse("nodes a 3\nrun 1s\nassert x.bogus > 1").unwrap_err();
        assert!(e.contains("unknown metric"), "{e}");
        assert!(parse("nodes a 3").unwrap_err().contains("run"));
    }
}
