//! A deadline timer with the kernel's resolution, for the QUIC endpoint's task.
//!
//! tokio's timer wheel ticks in whole milliseconds and rounds a deadline up to the next tick. That is
//! fine for idle timeouts, but quinn paces a connection with deadlines ~1.6 ms apart (a burst of 2 ms
//! of the congestion window, refilled at 1.25 × window / RTT): a deadline that fires at 2–3 ms instead
//! sends one burst per wake-up all the same, so the pacing rate falls to ~1.0 × window / RTT or below,
//! and slow start grows the window by ~1.65× per round trip instead of ~1.9×. On the 60 ms path that
//! was ~1 round trip later to full rate per connection (BENCHMARKS.md, the long path). A `timerfd`
//! (Linux hrtimers) fires within microseconds of its deadline; registered with tokio's reactor it costs
//! one `timerfd_settime` per wait. Elsewhere, and if the kernel refuses one, tokio's timer stands in.

use hyphae_core::time::Instant;

pub(crate) struct DeadlineTimer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl DeadlineTimer {
    /// Must run inside the tokio runtime (the timer registers with its reactor).
    pub(crate) fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
            // `AsyncFd::new` is deprecated as unsound for inner types that may close their descriptor
            // while it is registered (tokio#8587); an `OwnedFd` the `AsyncFd` owns cannot, and the safe
            // constructor is the only one the workspace's `forbid(unsafe_code)` allows.
            #[allow(deprecated)]
            let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)
                .map_err(std::io::Error::from)
                .and_then(tokio::io::unix::AsyncFd::new);
            if let Err(e) = &fd {
                tracing::debug!(error = %e, "no timerfd: deadlines on tokio's millisecond timer");
            }
            Self { fd: fd.ok() }
        }
        #[cfg(not(target_os = "linux"))]
        Self {}
    }

    /// Sleeps until `deadline` (a machine's time since `epoch`); forever if `None`.
    pub(crate) async fn sleep_until(&self, epoch: std::time::Instant, deadline: Option<Instant>) {
        #[cfg(target_os = "linux")]
        if let (Some(fd), Some(d)) = (&self.fd, deadline) {
            let left = d.saturating_duration_since(crate::handle::since(epoch));
            if left.is_zero() {
                return;
            }
            if arm(fd.get_ref(), left).is_ok() {
                loop {
                    let Ok(mut ready) = fd.readable().await else { break };
                    // Reading the expiration count clears the timer's readiness; a read that would
                    // block was readiness left from an earlier deadline (re-arming resets the count).
                    let mut n = [0u8; 8];
                    match ready.try_io(|f| rustix::io::read(f.get_ref(), &mut n).map_err(std::io::Error::from)) {
                        Ok(Ok(_)) => return,
                        Ok(Err(_)) => break,
                        Err(_would_block) => {}
                    }
                }
            }
        }
        crate::handle::sleep_until_deadline(epoch, deadline).await;
    }
}

/// Arms `fd` to fire once, `after` from now.
#[cfg(target_os = "linux")]
fn arm(fd: &std::os::fd::OwnedFd, after: std::time::Duration) -> rustix::io::Result<()> {
    use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    let value = Timespec { tv_sec: after.as_secs().try_into().unwrap_or(i64::MAX), tv_nsec: after.subsec_nanos().into() };
    timerfd_settime(fd, TimerfdTimerFlags::empty(), &Itimerspec { it_interval: zero, it_value: value }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::DeadlineTimer;
    use hyphae_core::time::Instant;
    use std::future::Future;
    use std::time::Duration;

    fn at(epoch: std::time::Instant, after: Duration) -> Option<Instant> {
        let since = (std::time::Instant::now() + after).duration_since(epoch);
        Some(Instant(since.as_nanos() as u64))
    }

    /// Deadlines well under tokio's millisecond tick are kept to a fraction of it, and a re-armed timer
    /// is not woken early by the readiness of an earlier one (a deadline that passed unread).
    #[tokio::test]
    async fn deadline_timer_keeps_sub_millisecond_deadlines() {
        let t = DeadlineTimer::new();
        let epoch = std::time::Instant::now();
        // An earlier deadline armed, then abandoned (another branch of the driver's select won), fires
        // while nobody waits: its readiness stays behind for the next wait.
        {
            let armed = t.sleep_until(epoch, at(epoch, Duration::from_micros(100)));
            tokio::pin!(armed);
            let once = std::future::poll_fn(|cx| std::task::Poll::Ready(armed.as_mut().poll(cx))).await;
            assert!(once.is_pending());
        }
        std::thread::sleep(Duration::from_millis(2));
        tokio::task::yield_now().await;
        let mut late = Vec::new();
        for _ in 0..20 {
            let want = Duration::from_micros(200);
            let start = std::time::Instant::now();
            t.sleep_until(epoch, at(epoch, want)).await;
            let took = start.elapsed();
            assert!(took >= want, "woke early: {took:?}");
            late.push(took - want);
        }
        late.sort();
        // The median: a loaded machine may preempt the odd wait. tokio's wheel is ≥ 800 µs late here.
        #[cfg(target_os = "linux")]
        assert!(late[10] < Duration::from_micros(600), "{late:?}");
        let _ = late;
    }

    #[tokio::test]
    async fn deadline_timer_without_deadline_waits_for_the_other_branch() {
        let t = DeadlineTimer::new();
        let r = tokio::time::timeout(Duration::from_millis(20), t.sleep_until(std::time::Instant::now(), None)).await;
        assert!(r.is_err());
        // A deadline in the past returns at once.
        let epoch = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
        t.sleep_until(epoch, Some(Instant(0))).await;
    }
}
