//! The flaky upstreams' failure rate and latency: a built-in schedule
//! (healthy -> failing -> recovering, repeating), or set by hand through the
//! admin endpoint.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// One phase of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Healthy,
    Failing,
    Recovering,
    /// Set by hand through the admin endpoint; the schedule is paused.
    Manual,
}

impl Phase {
    fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Healthy,
            1 => Phase::Failing,
            2 => Phase::Recovering,
            _ => Phase::Manual,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Healthy => "healthy",
            Phase::Failing => "failing",
            Phase::Recovering => "recovering",
            Phase::Manual => "manual",
        })
    }
}

/// What the schedule wants at `elapsed` into the demo: phase, failure rate
/// and latency.
///
/// - healthy: 1% errors, 5 ms;
/// - failing: errors climb from 10% to 90% over the first half of the phase
///   (the early warning sees the trend before the breakers trip), then stay
///   at 90%; 40 ms;
/// - recovering: errors fall from 20% to 1%; 10 ms.
pub(crate) fn scheduled(elapsed: Duration, phase: Duration) -> (Phase, f64, Duration) {
    let len = phase.as_secs_f64();
    let t = elapsed.as_secs_f64();
    let into = (t % len) / len; // 0..1 through the current phase
    match (t / len) as u64 % 3 {
        0 => (Phase::Healthy, 0.01, Duration::from_millis(5)),
        1 => (
            Phase::Failing,
            0.1 + 0.8 * (into * 2.0).min(1.0),
            Duration::from_millis(40),
        ),
        _ => (
            Phase::Recovering,
            0.2 - 0.19 * into,
            Duration::from_millis(10),
        ),
    }
}

/// The faults the flaky upstreams (orders and payments) inject.
#[derive(Debug)]
pub(crate) struct Faults {
    /// Failure probability, in parts per million.
    failure_ppm: AtomicU32,
    latency_ms: AtomicU32,
    phase: AtomicU8,
    manual: AtomicBool,
    dice: AtomicU64,
}

impl Faults {
    pub(crate) fn new() -> Faults {
        Faults {
            failure_ppm: AtomicU32::new(10_000),
            latency_ms: AtomicU32::new(5),
            phase: AtomicU8::new(0),
            manual: AtomicBool::new(false),
            dice: AtomicU64::new(0),
        }
    }

    /// Whether this request fails.
    pub(crate) fn roll(&self) -> bool {
        let n = self.dice.fetch_add(1, Ordering::Relaxed);
        let ppm = self.failure_ppm.load(Ordering::Relaxed);
        dice(n) * 1e6 < f64::from(ppm)
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_millis(u64::from(self.latency_ms.load(Ordering::Relaxed)))
    }

    pub(crate) fn failure_rate(&self) -> f64 {
        f64::from(self.failure_ppm.load(Ordering::Relaxed)) / 1e6
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    fn set(&self, phase: Phase, failure_rate: f64, latency: Duration) {
        let ppm = (failure_rate.clamp(0.0, 1.0) * 1e6).round() as u32;
        self.failure_ppm.store(ppm, Ordering::Relaxed);
        let ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
        self.latency_ms.store(ms, Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Sets the faults by hand and pauses the schedule. Missing values keep
    /// their current setting.
    pub(crate) fn set_manual(&self, failure_rate: Option<f64>, latency: Option<Duration>) {
        self.manual.store(true, Ordering::Relaxed);
        self.set(
            Phase::Manual,
            failure_rate.unwrap_or_else(|| self.failure_rate()),
            latency.unwrap_or_else(|| self.latency()),
        );
    }

    /// Hands the faults back to the schedule.
    pub(crate) fn resume_schedule(&self) {
        self.manual.store(false, Ordering::Relaxed);
    }

    /// The state as one line of JSON, for the admin endpoint.
    pub(crate) fn to_json(&self) -> String {
        format!(
            "{{\"phase\":\"{}\",\"failure_rate\":{:.3},\"latency_ms\":{},\"schedule\":{}}}\n",
            self.phase(),
            self.failure_rate(),
            self.latency().as_millis(),
            !self.manual.load(Ordering::Relaxed),
        )
    }
}

/// Follows the schedule (every 250 ms) until the task is dropped, logging
/// each phase change.
pub(crate) async fn run_schedule(faults: &Faults, started: Instant, phase_len: Duration) {
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = None;
    loop {
        ticks.tick().await;
        if faults.manual.load(Ordering::Relaxed) {
            last = Some(Phase::Manual);
            continue;
        }
        let (phase, rate, latency) = scheduled(started.elapsed(), phase_len);
        faults.set(phase, rate, latency);
        if last != Some(phase) {
            last = Some(phase);
            let what = match phase {
                Phase::Healthy => "orders and payments answer 99% of calls",
                Phase::Failing => "orders and payments errors climb from 10% to 90%",
                Phase::Recovering => "orders and payments errors fall from 20% to 1%",
                Phase::Manual => "",
            };
            tracing::info!(%phase, "phase: {what}");
        }
    }
}

/// A number in `[0, 1)` from a counter (splitmix64): pseudo-random, no crate.
pub(crate) fn dice(n: u64) -> f64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHASE: Duration = Duration::from_secs(10);

    fn at(secs: f64) -> (Phase, f64, Duration) {
        scheduled(Duration::from_secs_f64(secs), PHASE)
    }

    #[test]
    fn schedule_cycles_healthy_failing_recovering() {
        assert_eq!(at(0.0), (Phase::Healthy, 0.01, Duration::from_millis(5)));
        assert_eq!(at(9.9).0, Phase::Healthy);
        let (phase, rate, latency) = at(10.0);
        assert_eq!(
            (phase, latency),
            (Phase::Failing, Duration::from_millis(40))
        );
        assert!((rate - 0.1).abs() < 1e-9);
        assert!(
            (at(12.5).1 - 0.5).abs() < 1e-9,
            "climbs over half the phase"
        );
        assert!((at(15.0).1 - 0.9).abs() < 1e-9);
        assert!((at(19.9).1 - 0.9).abs() < 1e-9, "then stays");
        let (phase, rate, _) = at(20.0);
        assert_eq!(phase, Phase::Recovering);
        assert!((rate - 0.2).abs() < 1e-9);
        assert!(at(29.9).1 < 0.02);
        assert_eq!(at(30.0).0, Phase::Healthy, "and again");
        assert_eq!(at(45.0).0, Phase::Failing);
    }

    #[test]
    fn rolls_fail_at_the_set_rate() {
        let faults = Faults::new();
        faults.set_manual(Some(0.3), Some(Duration::from_millis(7)));
        assert_eq!(faults.phase(), Phase::Manual);
        assert_eq!(faults.latency(), Duration::from_millis(7));
        let failures = (0..100_000).filter(|_| faults.roll()).count();
        assert!((29_000..31_000).contains(&failures), "{failures}");
        faults.set_manual(Some(0.0), None);
        assert_eq!(faults.latency(), Duration::from_millis(7), "kept");
        assert!(!(0..10_000).any(|_| faults.roll()));
        faults.set_manual(Some(1.0), None);
        assert!((0..10_000).all(|_| faults.roll()));
        assert!(faults.to_json().contains("\"schedule\":false"));
        faults.resume_schedule();
        assert!(faults.to_json().contains("\"schedule\":true"));
    }
}
