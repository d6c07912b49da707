//! Time sources for the breaker.
//!
//! The state machine works on nanoseconds since the clock's origin, so tests
//! can drive it with a [`ManualClock`] or with tokio's paused time
//! ([`Clock::tokio`]) and never sleep for real.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
    Coarse(&'static Ticker),
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

    /// A coarse clock: reading it is one atomic load, because a background
    /// thread (one per process, named `tower-breaker-clock`, started by the
    /// first call) refreshes it every `resolution`. Durations, the slow-call
    /// policy and open durations are then precise to about `resolution`.
    ///
    /// The system clock reads the TSC on every call, twice for a timed one;
    /// where that is slow (about 15-20 ns a read under some hypervisors),
    /// this clock takes the clock reads off the hot path. The resolution is
    /// clamped to 50 µs..=1 s; when breakers ask for different ones, the
    /// finest wins. Should the thread fail to start, this is the system
    /// clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_breaker::{Clock, CircuitBreakerLayer};
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .name("orders")
    ///     .clock(Clock::coarse(Duration::from_micros(500)))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn coarse(resolution: Duration) -> Self {
        match Ticker::global(resolution) {
            Some(ticker) => Clock {
                kind: Kind::Coarse(ticker),
            },
            None => Clock::system(),
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
            Kind::Coarse(ticker) => ticker.nanos.load(Ordering::Relaxed),
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
            Kind::Coarse(_) => "coarse",
            Kind::Tokio { .. } => "tokio",
            Kind::Manual(_) => "manual",
        };
        f.debug_tuple("Clock").field(&kind).finish()
    }
}

/// The word behind [`Clock::coarse`] and the thread that refreshes it.
struct Ticker {
    /// Nanoseconds since the ticker's origin, as of the last tick.
    nanos: AtomicU64,
    /// Time between ticks, in nanoseconds.
    every: AtomicU64,
}

static TICKER: Ticker = Ticker {
    nanos: AtomicU64::new(0),
    every: AtomicU64::new(u64::MAX),
};

/// Whether the ticker's thread is running, once the first coarse clock
/// has tried to start it.
static TICKING: OnceLock<bool> = OnceLock::new();

impl Ticker {
    const FINEST: Duration = Duration::from_micros(50);
    const COARSEST: Duration = Duration::from_secs(1);

    /// The process's ticker, its thread started at the first call; `None`
    /// if the thread could not be started.
    fn global(resolution: Duration) -> Option<&'static Ticker> {
        let every = duration_nanos(resolution.clamp(Self::FINEST, Self::COARSEST));
        TICKER.every.fetch_min(every, Ordering::Relaxed);
        let ticking = TICKING.get_or_init(|| {
            let clock = quanta::Clock::new();
            let origin = clock.raw();
            std::thread::Builder::new()
                .name("tower-breaker-clock".into())
                .spawn(move || loop {
                    let now = clock.delta_as_nanos(origin, clock.raw());
                    TICKER.nanos.store(now, Ordering::Relaxed);
                    let every = TICKER.every.load(Ordering::Relaxed);
                    std::thread::sleep(Duration::from_nanos(every));
                })
                .is_ok()
        });
        ticking.then_some(&TICKER)
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

    #[test]
    fn coarse_clock_moves_on_its_own() {
        let clock = Clock::coarse(Duration::from_micros(100));
        assert_eq!(format!("{clock:?}"), "Clock(\"coarse\")");
        let first = clock.now();
        // No sleep: wait for the ticker thread's next tick, with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while clock.now() == first {
            assert!(
                std::time::Instant::now() < deadline,
                "the coarse clock never moved"
            );
            std::thread::yield_now();
        }
        assert!(clock.now() > first);
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
