//! QUIC congestion control: quinn's Cubic, or Cubic behind a filter that lets random loss pass.
//!
//! Why: quinn-proto's controllers (Cubic, NewReno) take every lost packet for congestion, as RFC 9002
//! says. On a 60 ms path at 100 Mbit/s with 0.1% random loss Cubic's response function leaves ~20–40
//! packets per round trip, about 8% of what the kernel's TCP (BBR on this machine, and on most servers
//! of the big providers) moves on the same path: both quinn-based libp2p stacks measured 8% of iperf3
//! there (BENCHMARKS.md, the long path). quinn's experimental BBR overshoots in its start-up until the
//! receiver holds more than quinn's cap of 1,024 out-of-order chunks and closes the connection.
//!
//! [`Congestion::LossTolerant`] is Cubic (RFC 9438: slow start, the cubic curve, 0.7× backoff; our own
//! [`Cubic`], see there why) with two changes. Which losses reach it: a loss is congestion when the
//! path shows it — even the smallest round trip of the last two rounds exceeds the minimum by a queue
//! (a quarter of the minimum, [`QUEUE_FRACTION`], at least [`MIN_QUEUE_DELAY`]) or more than
//! [`LOSS_THRESHOLD`] of their bytes were lost (BBRv2's 2%, at least [`LOSS_MIN_BYTES`]) — and otherwise
//! counted as random and retransmitted without a backoff. A full bottleneck queue shows both (the delay
//! of a queue, then a burst of drops), so a flow still backs off for real congestion; what it ignores is
//! loss on a path that is not queueing. Persistent congestion always reaches Cubic. And how slow start
//! ends: on a grown round trip (HyStart++, RFC 9406, with its conservative slow start after), since
//! with random loss tolerated only an overflowing queue would end it.
//!
//! The decisions are [`LossFilter`] and [`Cubic`] (plain data, tested below); [`LossTolerant`] wires
//! them into quinn's `Controller` trait. Time comes in through quinn's calls: no clock here.

use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// How QUIC connections respond to loss (`quic::Config::congestion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// quinn's Cubic as it is: every loss is congestion (RFC 9002).
    Cubic,
    /// Cubic that backs off only for losses the path shows as congestion (see the module docs). Default.
    #[default]
    LossTolerant,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cubic" => Ok(Congestion::Cubic),
            "loss-tolerant" => Ok(Congestion::LossTolerant),
            _ => Err(format!("{s:?}: congestion control is cubic or loss-tolerant")),
        }
    }
}

/// A loss is congestion when the round trip exceeds the minimum by this fraction of it...
pub const QUEUE_FRACTION: u32 = 4;
/// ... and by at least this much (jitter on short paths is not a queue).
pub const MIN_QUEUE_DELAY: Duration = Duration::from_millis(2);
/// ... or when more than this share of the last two rounds' bytes were lost (BBRv2's `loss_thresh`).
pub const LOSS_THRESHOLD: f64 = 0.02;
/// ... counted once at least this many bytes (three full-size packets) were lost in them: early in a
/// connection two random losses among 30 KB are 5% (two backoffs in slow start left a run on the
/// delay line at a tenth of the path).
pub const LOSS_MIN_BYTES: u64 = 3 * 1200;

/// Slow start ends when at least this many consecutive round-trip samples, over at least a quarter of
/// a round trip, all exceed the minimum by HyStart++'s delay threshold (an eighth of the minimum,
/// clamped to 4..16 ms; RFC 9406).
const HYSTART_SAMPLES: u32 = 8;
const HYSTART_MIN_THRESH: Duration = Duration::from_millis(4);
const HYSTART_MAX_THRESH: Duration = Duration::from_millis(16);

/// Decides whether a loss is congestion, from the round trips and the bytes acknowledged and lost.
#[derive(Debug, Clone, Default)]
pub struct LossFilter {
    round_start: Option<Instant>,
    /// The smallest raw round-trip sample (send to ack) of this round and of the one before: the
    /// queue a loss is judged by. The smallest leaves out acknowledgments the peer held back (up to
    /// 25 ms) and drops as soon as a backoff has drained the queue, where the smoothed round trip lags.
    min_raw: Duration,
    prev_min_raw: Duration,
    /// The latest round-trip sample, and since when (and for how many samples) they exceed the minimum
    /// by HyStart++'s threshold.
    last_rtt: Duration,
    elevated_since: Option<Instant>,
    elevated: u32,
    acked: u64,
    lost: u64,
    prev_acked: u64,
    prev_lost: u64,
    /// Losses passed on as congestion, and losses let pass as random.
    pub congestion_events: u64,
    pub tolerated_events: u64,
    /// Slow starts ended by a grown round trip.
    pub slow_start_exits: u64,
}

impl LossFilter {
    /// Starts a new round once a smoothed round trip has passed since the last one began.
    fn roll(&mut self, now: Instant, srtt: Duration) {
        match self.round_start {
            Some(s) if now.saturating_duration_since(s) < srtt => {}
            _ => {
                self.round_start = Some(now);
                self.prev_min_raw = self.min_raw;
                self.prev_acked = self.acked;
                self.prev_lost = self.lost;
                self.min_raw = Duration::MAX;
                self.acked = 0;
                self.lost = 0;
            }
        }
    }

    /// `bytes` were acknowledged at `now`, `raw` after they were sent; `rtt` is the round trip slow
    /// start is judged by: quinn's smoothed one, which leaves out the time the peer held its
    /// acknowledgment back. (Raw samples count up to 25 ms of that delay: taken one by one as a queue,
    /// they ended slow start at a tenth of the path — measured on the delay line; losses are judged by
    /// the smallest raw sample of a round, which that delay does not reach.)
    pub fn on_ack(&mut self, now: Instant, raw: Duration, rtt: Duration, bytes: u64, srtt: Duration) {
        self.roll(now, srtt);
        self.min_raw = self.min_raw.min(raw);
        self.last_rtt = rtt;
        self.acked += bytes;
    }

    /// In slow start: whether the round trip has grown enough to leave it: 8 samples in a row over a
    /// quarter of a round trip exceed the path's minimum by HyStart++'s threshold (RFC 9406: an eighth
    /// of it, clamped to 4..16 ms). Slow start doubles the window every round trip until something stops it; with random loss
    /// tolerated only a full bottleneck queue would, and the burst of drops it ends with costs Cubic
    /// several backoffs and seconds of recovery. HyStart++ compares the smallest sample of a round with
    /// the last round's; that sees a queue only in the round after it began to build, and with a
    /// bottleneck buffer of one bandwidth-delay product, slow start's next doubling overflows it first
    /// (measured on the delay line). Consecutive samples see it within the round; asking that they last
    /// a quarter of a round trip keeps a stall of this machine's scheduler from ending slow start at a
    /// tenth of the path (also measured).
    pub fn slow_start_over(&mut self, now: Instant, min_rtt: Duration, srtt: Duration) -> bool {
        let thresh = (min_rtt / 8).clamp(HYSTART_MIN_THRESH, HYSTART_MAX_THRESH);
        if self.last_rtt < min_rtt + thresh {
            self.elevated_since = None;
            self.elevated = 0;
            return false;
        }
        let since = *self.elevated_since.get_or_insert(now);
        self.elevated += 1;
        let over = self.elevated >= HYSTART_SAMPLES && now.saturating_duration_since(since) >= srtt / 4;
        if over {
            self.slow_start_exits += 1;
            self.elevated_since = None;
            self.elevated = 0;
        }
        over
    }

    /// `lost` bytes were declared lost at `now`: whether that is congestion.
    pub fn on_loss(&mut self, now: Instant, lost: u64, min_rtt: Duration, srtt: Duration) -> bool {
        self.roll(now, srtt);
        self.lost += lost;
        // Both rounds: a loss early in a round judged by the last one's samples too.
        let rtt = match (self.min_raw, self.prev_min_raw) {
            (Duration::MAX, p) => p,
            (c, Duration::MAX) => c,
            (c, p) => c.min(p),
        };
        let queue = (min_rtt / QUEUE_FRACTION).max(MIN_QUEUE_DELAY);
        let delayed = rtt > min_rtt + queue;
        let lost = self.lost + self.prev_lost;
        let total = lost + self.acked + self.prev_acked;
        let lossy = lost >= LOSS_MIN_BYTES && lost as f64 > LOSS_THRESHOLD * total as f64;
        let congested = delayed || lossy;
        tracing::debug!(?rtt, ?min_rtt, lost, total, delayed, lossy, "quic: loss");
        if congested {
            self.congestion_events += 1;
        } else {
            self.tolerated_events += 1;
        }
        congested
    }
}

/// Loss decisions and slow-start exits over all connections of an endpoint (`Endpoint::loss_stats`).
#[derive(Debug, Default)]
pub struct Counters {
    pub tolerated: AtomicU64,
    pub congestion: AtomicU64,
    pub slow_start_exits: AtomicU64,
}

/// Builds [`LossTolerant`] controllers.
#[derive(Debug, Default)]
pub struct LossTolerantFactory {
    pub counters: Arc<Counters>,
}

impl ControllerFactory for LossTolerantFactory {
    fn build(self: Arc<Self>, _now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            cubic: Cubic::new(current_mtu),
            filter: LossFilter::default(),
            min_rtt: Duration::MAX,
            srtt: Duration::ZERO,
            counters: self.counters.clone(),
        })
    }
}

/// Cubic's multiplicative decrease and its constant C (segments per second cubed), RFC 9438.
const BETA: f64 = 0.7;
/// HyStart++'s conservative slow start: its growth divisor and length in rounds (RFC 9406).
const CSS_DIVISOR: f64 = 4.0;
const CSS_ROUNDS: u32 = 5;
const C: f64 = 0.4;

/// Cubic (RFC 9438) in bytes: slow start, the cubic curve around the window of the last congestion
/// event with the Reno-friendly estimate below it, 0.7× on congestion, one backoff per recovery
/// period, no growth while application-limited. Ours rather than quinn's because leaving slow start on
/// delay (HyStart++) must keep the window, and quinn's Cubic can only be left through a backoff.
#[derive(Debug, Clone)]
pub struct Cubic {
    mss: f64,
    window: f64,
    ssthresh: f64,
    /// The window before the last reduction, the time to regain it (s), when the epoch began, and the
    /// Reno-friendly estimate.
    w_max: f64,
    k: f64,
    epoch: Option<Instant>,
    w_est: f64,
    /// Packets sent before this are of the last recovery period: no growth, no second backoff.
    recovery_start: Option<Instant>,
    /// HyStart++'s conservative slow start after a delay exit: growth at a quarter of slow start's
    /// until then (RFC 9406: 5 rounds), then congestion avoidance.
    css_until: Option<Instant>,
}

impl Cubic {
    pub fn new(mtu: u16) -> Cubic {
        let mss = f64::from(mtu);
        // RFC 9002 §7.2: min(10 · mss, max(14,720, 2 · mss)).
        let window = (10.0 * mss).min(14_720f64.max(2.0 * mss));
        Cubic {
            mss,
            window,
            ssthresh: f64::INFINITY,
            w_max: window,
            k: 0.0,
            epoch: None,
            w_est: window,
            recovery_start: None,
            css_until: None,
        }
    }

    fn min_window(&self) -> f64 {
        2.0 * self.mss
    }

    pub fn in_slow_start(&self) -> bool {
        self.window < self.ssthresh
    }

    fn in_recovery(&self, sent: Instant) -> bool {
        self.recovery_start.is_some_and(|r| sent <= r)
    }

    /// The cubic curve at `t` seconds into the epoch, in bytes.
    fn w_cubic(&self, t: f64) -> f64 {
        (C * (t - self.k).powi(3) + self.w_max / self.mss) * self.mss
    }

    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, srtt: Duration) {
        if app_limited || self.in_recovery(sent) {
            return;
        }
        let acked = bytes as f64;
        if let Some(until) = self.css_until {
            self.window += acked / CSS_DIVISOR;
            if now >= until {
                self.css_until = None;
                self.ssthresh = self.window;
            }
            return;
        }
        if self.in_slow_start() {
            self.window += acked;
            return;
        }
        let epoch = *self.epoch.get_or_insert_with(|| {
            // Congestion avoidance reached without a loss: the curve starts flat at this window.
            self.w_max = self.window;
            self.k = 0.0;
            self.w_est = self.window;
            now
        });
        let t = now.saturating_duration_since(epoch).as_secs_f64();
        let alpha = if self.w_est >= self.w_max { 1.0 } else { 3.0 * (1.0 - BETA) / (1.0 + BETA) };
        self.w_est += alpha * acked / self.window * self.mss;
        let target = self.w_cubic(t + srtt.as_secs_f64()).clamp(self.window, 1.5 * self.window);
        if self.w_cubic(t) < self.w_est {
            self.window = self.window.max(self.w_est);
        } else {
            self.window += (target - self.window) / self.window * acked;
        }
    }

    /// A congestion event for a packet sent at `sent`.
    pub fn on_congestion(&mut self, now: Instant, sent: Instant, persistent: bool) {
        if self.in_recovery(sent) && !persistent {
            return;
        }
        self.recovery_start = Some(now);
        self.css_until = None;
        // Fast convergence: a window below the last maximum gives up more of it.
        self.w_max = if self.window < self.w_max { self.window * (1.0 + BETA) / 2.0 } else { self.window };
        self.window = (self.window * BETA).max(self.min_window());
        self.ssthresh = self.window;
        self.k = ((self.w_max - self.window) / self.mss / C).cbrt();
        self.w_est = self.window;
        self.epoch = Some(now);
        if persistent {
            self.window = self.min_window();
            self.epoch = None;
        }
    }

    /// Slow start saw a queue building (HyStart++): the window stays and grows at a quarter of the rate
    /// for five round trips (a queue seen that early may be slow start's own burst: on a path with a
    /// buffer of a bandwidth-delay product the delay shows at ~0.6 of it), then congestion avoidance.
    pub fn end_slow_start(&mut self, now: Instant, srtt: Duration) {
        if self.in_slow_start() && self.css_until.is_none() {
            self.css_until = Some(now + srtt * CSS_ROUNDS);
        }
    }

    /// In slow start proper (not the conservative tail after a delay exit).
    pub fn probing(&self) -> bool {
        self.in_slow_start() && self.css_until.is_none()
    }

    pub fn window(&self) -> u64 {
        self.window as u64
    }
}

/// Cubic behind a [`LossFilter`], leaving slow start on delay.
pub struct LossTolerant {
    cubic: Cubic,
    filter: LossFilter,
    min_rtt: Duration,
    srtt: Duration,
    counters: Arc<Counters>,
}

impl Controller for LossTolerant {
    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.min_rtt = rtt.min();
        self.srtt = rtt.get();
        self.filter.on_ack(now, now.saturating_duration_since(sent), self.srtt, bytes, self.srtt);
        self.cubic.on_ack(now, sent, bytes, app_limited, self.srtt);
        if self.cubic.probing() && self.filter.slow_start_over(now, self.min_rtt, self.srtt) {
            self.counters.slow_start_exits.fetch_add(1, Ordering::Relaxed);
            self.cubic.end_slow_start(now, self.srtt);
        }
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        // Before the first acknowledgment there is no round trip to judge by: Cubic decides.
        let judged = self.min_rtt != Duration::MAX;
        if is_persistent_congestion || !judged || self.filter.on_loss(now, lost_bytes, self.min_rtt, self.srtt) {
            self.counters.congestion.fetch_add(1, Ordering::Relaxed);
            self.cubic.on_congestion(now, sent, is_persistent_congestion);
        } else {
            self.counters.tolerated.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.cubic.mss = f64::from(new_mtu);
        self.cubic.window = self.cubic.window.max(self.cubic.min_window());
    }

    fn window(&self) -> u64 {
        self.cubic.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.cubic.window();
        m.ssthresh = self.cubic.ssthresh.is_finite().then_some(self.cubic.ssthresh as u64);
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            cubic: self.cubic.clone(),
            filter: self.filter.clone(),
            min_rtt: self.min_rtt,
            srtt: self.srtt,
            counters: self.counters.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        Cubic::new(self.cubic.mss as u16).window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A flow at 60 ms: `rounds` rounds of `per_round` acked packets of 1,200 bytes, each acked after
    /// `rtt`; returns the filter and the time after them.
    fn flow(rounds: u32, per_round: u32, rtt: Duration) -> (LossFilter, Instant) {
        let mut f = LossFilter::default();
        let mut now = Instant::now();
        for _ in 0..rounds {
            for i in 0..per_round {
                let t = now + rtt * i / per_round;
                f.on_ack(t, rtt, rtt, 1200, 60 * MS);
            }
            now += 60 * MS;
        }
        (f, now)
    }

    #[test]
    fn a_random_loss_on_a_path_without_a_queue_is_tolerated() {
        let (mut f, now) = flow(5, 500, 61 * MS);
        assert!(!f.on_loss(now, 1200, 60 * MS, 60 * MS), "one packet in 1,000, no queue");
        assert_eq!((f.tolerated_events, f.congestion_events), (1, 0));
    }

    #[test]
    fn two_losses_early_in_a_connection_are_tolerated() {
        let (mut f, now) = flow(2, 12, 61 * MS);
        assert!(!f.on_loss(now, 1200, 60 * MS, 60 * MS));
        assert!(!f.on_loss(now, 1200, 60 * MS, 60 * MS), "2 of 26 packets, but only two");
        assert!(f.on_loss(now, 1200, 60 * MS, 60 * MS), "the third is a burst");
    }

    #[test]
    fn a_loss_behind_a_queue_is_congestion() {
        // The bottleneck queue holds another 40 ms: the round trip says the path is full.
        let (mut f, now) = flow(5, 500, 100 * MS);
        assert!(f.on_loss(now, 1200, 60 * MS, 60 * MS));
    }

    #[test]
    fn a_burst_of_losses_is_congestion_even_without_delay() {
        // A shallow buffer: no delay to see, but 3% of a round's bytes lost.
        let (mut f, now) = flow(5, 500, 61 * MS);
        let mut congested = false;
        for _ in 0..30 {
            congested |= f.on_loss(now, 1200, 60 * MS, 60 * MS);
        }
        assert!(congested);
        assert!(f.congestion_events > 0 && f.tolerated_events > 0);
    }

    #[test]
    fn short_paths_need_a_queue_of_two_milliseconds() {
        // Loopback: 50 µs minimum, 1 ms samples are jitter, not a queue.
        let (mut f, now) = flow(5, 500, MS);
        assert!(!f.on_loss(now, 1200, Duration::from_micros(50), MS));
        let (mut f, now) = flow(5, 500, 5 * MS);
        assert!(f.on_loss(now, 1200, Duration::from_micros(50), MS));
    }

    #[test]
    fn slow_start_ends_when_the_round_trip_grows_for_a_quarter_of_a_round_trip() {
        let (mut f, now) = flow(3, 20, 60 * MS);
        assert!(!f.slow_start_over(now, 60 * MS, 60 * MS), "a steady round trip");
        // A queue is building: a sample every millisecond, each 1 ms longer; the threshold at 60 ms is
        // 7.5 ms, so from the 8th (68 ms) on; 15 ms later it has lasted a quarter of the round trip.
        let mut exits = Vec::new();
        for i in 0..30u32 {
            let t = now + MS * i;
            f.on_ack(t, (61 + i) * MS, (61 + i) * MS, 1200, 60 * MS);
            exits.push(f.slow_start_over(t, 60 * MS, 60 * MS));
        }
        assert_eq!(exits.iter().position(|x| *x), Some(22));
        assert_eq!(f.slow_start_exits, 1);
        // A burst of elevated samples within a few milliseconds (a scheduler stall) is not a queue.
        let (mut f, now) = flow(3, 20, 60 * MS);
        for i in 0..20u32 {
            let t = now + Duration::from_micros(100) * i;
            f.on_ack(t, 75 * MS, 75 * MS, 1200, 60 * MS);
            assert!(!f.slow_start_over(t, 60 * MS, 60 * MS));
        }
        // One sample back at the minimum starts the count again.
        f.on_ack(now + 20 * MS, 60 * MS, 60 * MS, 1200, 60 * MS);
        assert!(!f.slow_start_over(now + 20 * MS, 60 * MS, 60 * MS));
        assert_eq!(f.elevated, 0);
    }

    /// Acks a whole window once per 60 ms round for `rounds` rounds; returns the time after them.
    fn rounds(c: &mut Cubic, mut now: Instant, rounds: u32) -> Instant {
        for _ in 0..rounds {
            let w = c.window();
            let mut acked = 0;
            while acked < w {
                c.on_ack(now, now - 60 * MS, 1200, false, 60 * MS);
                acked += 1200;
            }
            now += 60 * MS;
        }
        now
    }

    #[test]
    fn cubic_slow_start_doubles_and_a_congestion_event_takes_thirty_percent_once_per_recovery() {
        let mut c = Cubic::new(1200);
        assert_eq!(c.window(), 12_000);
        let now = rounds(&mut c, Instant::now(), 4);
        assert!(c.in_slow_start());
        assert!((192_000..=194_400).contains(&c.window()), "12,000 doubled four times: {}", c.window());
        let w = c.window() as f64;
        c.on_congestion(now, now - 30 * MS, false);
        assert_eq!(c.window(), (w * BETA) as u64);
        c.on_congestion(now + MS, now - 10 * MS, false);
        assert_eq!(c.window(), (w * BETA) as u64, "a packet of the same flight: no second backoff");
        assert!(!c.in_slow_start());
    }

    #[test]
    fn cubic_regains_the_window_it_lost_about_k_seconds_later() {
        let mut c = Cubic::new(1200);
        let mut now = rounds(&mut c, Instant::now(), 6); // 768,000 bytes, 640 segments
        let w_max = c.window() as f64;
        c.on_congestion(now, now, false);
        now += MS;
        // K = cbrt(640 · 0.3 / 0.4) ≈ 7.8 s: about halfway, the window is already close (concave), and
        // after K it has passed w_max.
        let now2 = rounds(&mut c, now, 65);
        assert!(c.window() as f64 > 0.9 * w_max && (c.window() as f64) < w_max, "{} of {w_max}", c.window());
        rounds(&mut c, now2, 70);
        assert!(c.window() as f64 > w_max);
    }

    #[test]
    fn leaving_slow_start_on_delay_keeps_the_window_and_grows_it_by_a_quarter_for_five_rounds() {
        let mut c = Cubic::new(1200);
        let now = rounds(&mut c, Instant::now(), 5);
        let w = c.window();
        c.end_slow_start(now, 60 * MS);
        assert!(!c.probing());
        assert_eq!(c.window(), w);
        let now = rounds(&mut c, now, 1);
        assert_eq!(c.window(), w + w / 4, "a quarter of slow start's growth");
        let now = rounds(&mut c, now, 4);
        assert!(c.in_slow_start(), "four rounds in");
        let now = rounds(&mut c, now, 1);
        assert!(!c.in_slow_start(), "five round trips after the exit: congestion avoidance");
        let w = c.window();
        rounds(&mut c, now, 10);
        assert!(c.window() >= w && c.window() < w + w / 10, "slow growth past it: {} from {w}", c.window());
    }

    #[test]
    fn loss_tolerant_parses_and_is_the_default() {
        assert_eq!(Congestion::default(), Congestion::LossTolerant);
        assert_eq!("cubic".parse::<Congestion>(), Ok(Congestion::Cubic));
        assert!("bbr".parse::<Congestion>().is_err());
    }
}
