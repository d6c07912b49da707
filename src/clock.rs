//! Time sources for the breaker.
//!
//! The state machine works on nanoseconds since the clock's origin, so tests
//! can drive it with a [`ManualClock`] or with tokio's paused time
//! ([`Clock::tokio`]) and never sleep for real.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
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
    System {
        clock: quanta::Clock,
        origin: u64,
    },
    /// Holds its registration: the ticker runs while one is alive.
    Coarse {
        _user: Arc<CoarseUser>,
    },
    Tokio {
        origin: tokio::time::Instant,
    },
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
    /// thread (one per process, named `tower-breaker-clock`) refreshes it
    /// every `resolution`. Durations, the slow-call policy and open durations
    /// are then precise to about `resolution`.
    ///
    /// The system clock reads the TSC on every call, twice for a timed one;
    /// where that is slow (about 15-20 ns a read under some hypervisors),
    /// this clock takes the clock reads off the hot path. The resolution is
    /// clamped to 50 µs..=1 s.
    ///
    /// The cost: one thread waking every `resolution` while any coarse
    /// clock (or a breaker holding one) is alive. When coarse clocks ask for
    /// different resolutions, the finest of those alive wins; when the last
    /// one is dropped, the thread stops within one tick, and the next coarse
    /// clock starts it again. Should the thread fail to start, this is the
    /// system clock.
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
        match Ticker::join(resolution) {
            Some(user) => Clock {
                kind: Kind::Coarse {
                    _user: Arc::new(user),
                },
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

    /// Nanoseconds since this clock's origin. The system and coarse clocks
    /// are tested for first and inline, rather than through a jump table
    /// (an indirect branch on the hot path, twice for a timed call).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        if let Kind::System { clock, origin } = &self.kind {
            return clock.delta_as_nanos(*origin, clock.raw());
        }
        if let Kind::Coarse { .. } = &self.kind {
            return TICKER.nanos.load(Ordering::Relaxed);
        }
        self.now_other()
    }

    /// [`now`](Self::now) of the tokio and manual clocks: out of line.
    #[inline(never)]
    fn now_other(&self) -> u64 {
        match &self.kind {
            Kind::Tokio { origin } => {
                duration_nanos(tokio::time::Instant::now().saturating_duration_since(*origin))
            }
            Kind::Manual(nanos) => nanos.load(Ordering::Acquire),
            Kind::System { .. } | Kind::Coarse { .. } => self.now(),
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
            Kind::Coarse { .. } => "coarse",
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
    /// Time between ticks, in nanoseconds: the finest resolution asked for
    /// by a coarse clock alive.
    every: AtomicU64,
}

static TICKER: Ticker = Ticker {
    nanos: AtomicU64::new(0),
    every: AtomicU64::new(u64::MAX),
};

/// Who uses the ticker: the resolutions of the coarse clocks alive (a
/// count each), and its thread while it runs.
#[derive(Debug, Default)]
struct Users {
    resolutions: BTreeMap<u64, usize>,
    thread: Option<std::thread::Thread>,
}

/// A coarse clock's registration with the ticker, shared by its clones.
#[derive(Debug)]
struct CoarseUser {
    every: u64,
}

impl Drop for CoarseUser {
    fn drop(&mut self) {
        let mut users = Ticker::users();
        if let Some(n) = users.resolutions.get_mut(&self.every) {
            *n -= 1;
            if *n == 0 {
                users.resolutions.remove(&self.every);
            }
        }
        Ticker::set_every(&users);
        // Let the thread see it now: it stops, or ticks at the new pace.
        if let Some(thread) = &users.thread {
            thread.unpark();
        }
    }
}

impl Ticker {
    const FINEST: Duration = Duration::from_micros(50);
    const COARSEST: Duration = Duration::from_secs(1);

    fn users() -> MutexGuard<'static, Users> {
        static USERS: OnceLock<Mutex<Users>> = OnceLock::new();
        USERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The origin all ticks count from, so a restarted thread continues
    /// the same timeline.
    fn now() -> u64 {
        static ORIGIN: OnceLock<(quanta::Clock, u64)> = OnceLock::new();
        let (clock, origin) = ORIGIN.get_or_init(|| {
            let clock = quanta::Clock::new();
            let origin = clock.raw();
            (clock, origin)
        });
        clock.delta_as_nanos(*origin, clock.raw())
    }

    fn set_every(users: &Users) {
        let every = users.resolutions.keys().next().copied().unwrap_or(u64::MAX);
        TICKER.every.store(every, Ordering::Relaxed);
    }

    /// Registers a coarse clock of `resolution`, starting the thread if it
    /// is not running; `None` if it could not be started.
    fn join(resolution: Duration) -> Option<CoarseUser> {
        let every = duration_nanos(resolution.clamp(Self::FINEST, Self::COARSEST));
        let mut users = Ticker::users();
        *users.resolutions.entry(every).or_default() += 1;
        Ticker::set_every(&users);
        let user = CoarseUser { every };
        match &users.thread {
            // A finer resolution takes effect now, not after the current tick.
            Some(thread) => thread.unpark(),
            None => {
                // Readers see the time at once, not what a stopped thread left.
                TICKER.nanos.fetch_max(Ticker::now(), Ordering::Relaxed);
                let spawned = std::thread::Builder::new()
                    .name("tower-breaker-clock".into())
                    .spawn(Ticker::run);
                match spawned {
                    Ok(handle) => users.thread = Some(handle.thread().clone()),
                    Err(_) => {
                        drop(users);
                        drop(user);
                        return None;
                    }
                }
            }
        }
        Some(user)
    }

    /// The thread: ticks until no coarse clock is left. Whether to go on,
    /// and how long to wait, are read under the users' lock, so a last
    /// clock dropped at any moment stops it, and it never waits on a stale
    /// resolution (a drop or a finer clock unparks it).
    fn run() {
        loop {
            TICKER.nanos.fetch_max(Ticker::now(), Ordering::Relaxed);
            let every = {
                let mut users = Ticker::users();
                if users.resolutions.is_empty() {
                    users.thread = None;
                    return;
                }
                TICKER.every.load(Ordering::Relaxed)
            };
            std::thread::park_timeout(Duration::from_nanos(every));
        }
    }

    /// Whether the thread runs, and its tick in nanoseconds.
    #[cfg(test)]
    fn status() -> (bool, u64) {
        let users = Ticker::users();
        (users.thread.is_some(), TICKER.every.load(Ordering::Relaxed))
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

    /// The ticker is process-wide: its tests take turns.
    fn ticker_lock() -> MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (yielding, with a deadline, never sleeping) until `done`.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn coarse_clock_moves_on_its_own() {
        let _turn = ticker_lock();
        let clock = Clock::coarse(Duration::from_micros(100));
        assert_eq!(format!("{clock:?}"), "Clock(\"coarse\")");
        let first = clock.now();
        // No sleep: wait for the ticker thread's next tick, with a deadline.
        wait_until("the coarse clock never moved", || clock.now() != first);
        assert!(clock.now() > first);
    }

    #[test]
    fn ticker_stops_with_its_last_clock_and_restarts() {
        let _turn = ticker_lock();
        let clock = Clock::coarse(Duration::from_millis(1));
        let copy = clock.clone();
        assert!(Ticker::status().0);
        drop(clock);
        // A clone keeps the registration.
        std::thread::yield_now();
        assert!(Ticker::status().0, "the clone still uses it");
        let before = copy.now();
        drop(copy);
        wait_until("the ticker thread never stopped", || !Ticker::status().0);
        // A new coarse clock starts it again, on the same timeline.
        let again = Clock::coarse(Duration::from_millis(1));
        assert!(Ticker::status().0);
        assert!(again.now() >= before);
        let first = again.now();
        wait_until("the restarted ticker never moved", || again.now() != first);
    }

    /// The last coarse clock dropped and a new one made at once, many
    /// times: the new one always moves. (The thread used to read its tick
    /// outside the lock, so it could sleep for `u64::MAX` nanoseconds while
    /// marked running, and every coarse clock after it stood still.)
    #[test]
    fn a_clock_made_right_after_the_last_one_dropped_moves() {
        let _turn = ticker_lock();
        for _ in 0..20 {
            drop(Clock::coarse(Duration::from_micros(50)));
            let clock = Clock::coarse(Duration::from_micros(50));
            let first = clock.now();
            wait_until("a new coarse clock stood still", || clock.now() != first);
        }
    }

    #[test]
    fn finest_resolution_alive_wins() {
        let _turn = ticker_lock();
        let coarse = Clock::coarse(Duration::from_secs(1));
        assert_eq!(Ticker::status().1, 1_000_000_000);
        let fine = Clock::coarse(Duration::from_micros(50));
        assert_eq!(Ticker::status().1, 50_000);
        drop(fine);
        assert_eq!(
            Ticker::status().1,
            1_000_000_000,
            "the fine clock is gone: back to the coarse one's resolution"
        );
        drop(coarse);
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
