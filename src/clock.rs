//! Time sources for the breaker.
//!
//! The state machine works on nanoseconds since the clock's origin, so tests
//! can drive it with a [`ManualClock`] or with tokio's paused time
//! ([`Clock::tokio`]) and never sleep for real.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where a breaker reads the time.
///
/// ```
/// use std::time::Duration;
/// use tower_breaker::Clock;
///
/// let (clock, manual) = Clock::manual();
/// manual.advance(Duration::from_secs(3));
/// assert_eq!(manual.elapsed(), Duration::from_secs(3));
/// # let _ = clock;
/// ```
#[derive(Clone)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    System { clock: quanta::Clock, origin: u64 },
    Tokio { origin: tokio::time::Instant },
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The monotonic system clock (TSC-backed where available). The default.
    pub fn system() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Clock {
            kind: Kind::System { clock, origin },
        }
    }

    /// tokio's clock: follows `tokio::time::pause()` and `advance()` in tests
    /// (with tokio's `test-util` feature), and the monotonic clock otherwise.
    pub fn tokio() -> Self {
        Clock {
            kind: Kind::Tokio {
                origin: tokio::time::Instant::now(),
            },
        }
    }

    /// A clock that moves only when told to, and its remote control.
    pub fn manual() -> (Self, ManualClock) {
        let nanos = Arc::new(AtomicU64::new(0));
        (
            Clock {
                kind: Kind::Manual(nanos.clone()),
            },
            ManualClock { nanos },
        )
    }

    /// Nanoseconds since this clock's origin.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match &self.kind {
            Kind::System { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
            Kind::Tokio { origin } => {
                duration_nanos(tokio::time::Instant::now().saturating_duration_since(*origin))
            }
            Kind::Manual(nanos) => nanos.load(Ordering::Acquire),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::System { .. } => "system",
            Kind::Tokio { .. } => "tokio",
            Kind::Manual(_) => "manual",
        };
        f.debug_tuple("Clock").field(&kind).finish()
    }
}

/// The remote control of a [`Clock::manual`] clock.
#[derive(Clone, Debug)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(duration_nanos(by), Ordering::AcqRel);
    }

    /// Time since the clock's origin.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let (clock, manual) = Clock::manual();
        assert_eq!(clock.now(), 0);
        manual.advance(Duration::from_millis(5));
        assert_eq!(clock.now(), 5_000_000);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = Clock::system();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(10)).await;
        let after = clock.now();
        assert_eq!(after - before, 10_000_000_000);
    }
}
