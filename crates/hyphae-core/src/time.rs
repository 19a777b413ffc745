//! Time as the core sees it: a monotonic instant passed in by the driver. The core never reads a clock.

pub use core::time::Duration;

/// Nanoseconds since the driver's epoch. The tokio driver maps `std::time::Instant`, the simulator its
/// virtual clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub fn from_nanos(n: u64) -> Self {
        Instant(n)
    }
    pub fn as_nanos(self) -> u64 {
        self.0
    }
    /// Saturating: an earlier `other` than `self` gives zero.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}
