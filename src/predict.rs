//! Early warning: predicting a trip before it happens.
//!
//! The `circuit_breaker_trip_risk` gauge says how close the trip policies
//! are to opening the breaker *now*. An upstream that degrades slowly climbs
//! that gauge slowly too, and the breaker opens when it reaches 1. With
//! [`Builder::early_warning`](crate::Builder::early_warning) the breaker also
//! follows the *trend* of its rates and warns while there is still time to
//! act: a `tracing` warn event, the hooks of
//! [`Builder::on_early_warning`](crate::Builder::on_early_warning), and a
//! trip-risk gauge that includes the projection.
//!
//! ```
//! use std::time::Duration;
//! use tower_breaker::{CircuitBreakerLayer, EarlyWarning};
//!
//! let layer = CircuitBreakerLayer::builder()
//!     .name("doc-predict")
//!     .failure_rate(0.5)
//!     .early_warning(EarlyWarning::new().horizon(Duration::from_secs(120)).level(0.8))
//!     .on_early_warning(|p| eprintln!("{} may trip in {:?}", p.service, p.time_to_trip))
//!     .build()
//!     .unwrap();
//! # drop(layer);
//! ```
//!
//! # The maths
//!
//! Each rate policy (failure rate, and slow-call rate, the latency signal,
//! when that policy is set) is one *channel*. A channel observes the rate
//! `x` its policy judges (the window's `failures / calls`) at irregular times
//! `t`, and keeps a smoothed level `L`, a slope `S` (rate per second) and an
//! acceleration `A` by Holt's linear exponential smoothing, made time-aware
//! so that uneven spacing is weighted correctly. With `Δt` the time since
//! the previous observation and `τ` the smoothing time constant:
//!
//! ```text
//! a     = 1 - exp(-Δt / τ)             EWMA weight of the new observation
//! L̂     = L + S·Δt                     the level the trend predicted for now
//! L'    = L̂ + a·(x - L̂)                EWMA of the rate around the prediction
//! S'    = S + a·((L' - L)/Δt - S)      EWMA of the level's rate of change
//! A'    = A + b·((S' - S)/Δt - A)      b = 1 - exp(-Δt / 0.7τ)
//! ```
//!
//! As `Δt → 0`, `a/Δt → 1/τ`, so bursts of observations close together move
//! the estimate no more than one observation spread over the same time. The
//! first observation sets `L = x, S = A = 0`.
//!
//! **Adaptive smoothing.** Unless [`smoothing`](EarlyWarning::smoothing)
//! sets `τ`, it follows the window's sampling noise: a rate over `n` calls
//! wobbles by `σ = √(x(1-x)/n)`, a slope read over `τ` by about `√2·σ/τ`, and
//! the projection multiplies that by the horizon `H`. `τ` is the shortest
//! that keeps one `σ` of it under 22% of the threshold `θ`:
//! `τ = √2·σ·H / (0.22·θ)`, between 3 s and `H`. A 30 s time window at 100
//! calls/s (3,000 calls) gets `τ ≈ 3` to 9 s; a 100-call window near 20%
//! gets the horizon.
//!
//! **Extrapolation.** The channel's projected risk is
//!
//! ```text
//! risk = clamp((L + max(S, 0)·H) / θ, 0, 1)
//! ```
//!
//! and the time to trip is when the projected rate reaches `θ` (0 once
//! `L ≥ θ`). A ramp of the failure probability shows in a time window's rate
//! as a curve that bends upwards for one span `W` (the slope grows while the
//! ramp fills the window), then as a straight line. With a time window, the
//! projection follows `L + S·u + A·u²/2` for what is left of the bend,
//! `W - S/A` (the slope has been growing for `S/A` seconds), then the slope
//! reached; with a count window (span unknown) it is the straight line
//! `(θ - L) / S`. A straight line alone says "later" than the trip: 3x on a
//! 2 points/s ramp. The risk, which decides the warning, uses the slope only,
//! so a short burst's bend raises no warning.
//!
//! A falling trend never lowers the projection below the smoothed level. The
//! breaker's prediction is the channel with the largest projected risk. A
//! risk of 1 means "at this trend, the policy trips within the horizon"; a
//! [level](EarlyWarning::level) below 1 warns earlier, when the projection
//! gets that close to the threshold.
//!
//! # Measured
//!
//! `tests/prediction.rs` drives a breaker (50% over a 30 s time window, 20
//! calls minimum, `EarlyWarning::new()`) through ramps, steps and an hour
//! of healthy traffic with bursts; PREDICTION.md has the tables and the
//! command. With this estimator ramps of 0.2 to 2 points/s warn 26 to 135 s
//! before the trip with a time to trip within -41% .. +36%; a step to 60%
//! 21 s ahead (error -5% .. -2%); a 10 points/s ramp 13 s ahead (+61% ..
//! +65%); an hour at 1% with a 5 s burst to 20% every 10 minutes gives 0.5
//! false warnings an hour. The previous estimator (`τ` = horizon, straight
//! line) missed 1 and 2 points/s ramps entirely and said 4 to 8 times too
//! late on 0.5 points/s. Shorter fixed `τ` (5, 10 s) warned early but with
//! times to trip 3 to 4 times too long; a larger noise share (0.3) gave 4.5
//! false warnings an hour, a smaller one (0.15) estimates up to 92% too long.
//!
//! **Hysteresis.** The warning fires once when the risk reaches the level,
//! and is re-armed only when the risk falls below
//! [`rearm_below`](EarlyWarning::rearm_below) (default: the level minus
//! 0.2), or when the breaker changes state (after a trip and recovery the
//! estimate starts afresh). A risk hovering around the level therefore warns
//! once, not at every wiggle.
//!
//! # Cost
//!
//! Nothing runs on the closed + success hot path. The estimator is fed where
//! the breaker already recomputes its rates: when a call changes the window's
//! totals (a failure, a slow call, a success pushing a failure out). Those
//! updates are further sampled: at most one every 30 ms (`τ / 100` for a
//! fixed `τ` under 3 s), checked with one
//! atomic load, and taken with a `try_lock` that skips the sample when
//! another thread holds it. An update costs about 150 ns (BENCHMARKS.md). Observations start once the window holds the
//! policy's minimum number of calls, so the noisy first few calls after a
//! reset do not count.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::duration_nanos;
use crate::error::ConfigError;
use crate::policy::Policy;
use crate::state::Reason;
use crate::window::Counts;

/// A hook run when the early warning fires.
pub(crate) type WarningHook = Arc<dyn Fn(&Prediction) + Send + Sync>;

/// How far ahead to look, and when to warn.
///
/// Defaults: horizon 60 s, level 0.8, re-armed below 0.6, smoothing adapted
/// to the window's noise (between 3 s and the horizon). See the [module docs](crate::predict) for
/// the maths.
///
/// ```
/// use std::time::Duration;
/// use tower_breaker::EarlyWarning;
///
/// let warning = EarlyWarning::new()
///     .horizon(Duration::from_secs(300)) // warn if the trend trips within 5 minutes...
///     .level(1.0)                        // ...at the policy's own threshold
///     .rearm_below(0.7);
/// # drop(warning);
/// ```
#[derive(Clone)]
pub struct EarlyWarning {
    horizon: Duration,
    level: f64,
    rearm_below: Option<f64>,
    smoothing: Option<Duration>,
    hooks: Vec<WarningHook>,
}

impl EarlyWarning {
    /// The defaults: horizon 60 s, level 0.8.
    pub fn new() -> Self {
        EarlyWarning {
            horizon: Duration::from_secs(60),
            level: 0.8,
            rearm_below: None,
            smoothing: None,
            hooks: Vec::new(),
        }
    }

    /// How far ahead the trend is extrapolated (default 60 s).
    pub fn horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// The projected trip risk, in `(0, 1]`, at which to warn (default 0.8).
    /// At 1, warn when the trend reaches the policy's threshold within the
    /// horizon.
    pub fn level(mut self, level: f64) -> Self {
        self.level = level;
        self
    }

    /// The risk, in `[0, level)`, below which a fired warning is re-armed
    /// (default `level - 0.2`, at least 0).
    pub fn rearm_below(mut self, risk: f64) -> Self {
        self.rearm_below = Some(risk);
        self
    }

    /// A fixed time constant `τ` of the smoothing (default: adaptive, from
    /// the window's sampling noise, between 3 s and the horizon; see the
    /// [module docs](crate::predict)). Longer ignores more noise and reacts
    /// later.
    pub fn smoothing(mut self, tau: Duration) -> Self {
        self.smoothing = Some(tau);
        self
    }

    pub(crate) fn push_hook(&mut self, hook: WarningHook) {
        self.hooks.push(hook);
    }

    pub(crate) fn take_hooks(&mut self) -> Vec<WarningHook> {
        std::mem::take(&mut self.hooks)
    }

    fn rearm(&self) -> f64 {
        self.rearm_below.unwrap_or((self.level - 0.2).max(0.0))
    }

    fn tau(&self) -> Duration {
        self.smoothing.unwrap_or(self.horizon)
    }

    /// Checks the settings against the policy; the error names the field.
    pub(crate) fn validate(&self, policy: &Policy) -> Result<(), ConfigError> {
        if self.horizon.is_zero() {
            return Err(ConfigError::new(
                "early_warning.horizon",
                "must be greater than zero",
            ));
        }
        if !(self.level > 0.0 && self.level <= 1.0) {
            return Err(ConfigError::new(
                "early_warning.level",
                format!("must be in (0, 1], got {}", self.level),
            ));
        }
        let rearm = self.rearm();
        if !(rearm >= 0.0 && rearm < self.level) {
            return Err(ConfigError::new(
                "early_warning.rearm_below",
                format!("must be in [0, level ({})), got {rearm}", self.level),
            ));
        }
        if self.smoothing.is_some_and(|d| d < Duration::from_millis(1)) {
            return Err(ConfigError::new(
                "early_warning.smoothing",
                "must be at least 1 ms",
            ));
        }
        if policy.failure_rate.is_none() && policy.slow_call_rate.is_none() {
            return Err(ConfigError::new(
                "early_warning",
                "needs a failure_rate or slow_call_rate policy to extrapolate",
            ));
        }
        Ok(())
    }

    /// The estimator of one breaker. Call [`validate`](Self::validate) first.
    pub(crate) fn predictor(&self, policy: &Policy, span: Option<Duration>) -> Predictor {
        Predictor {
            horizon: self.horizon,
            level: self.level,
            rearm: self.rearm(),
            tau: self.smoothing.map(|d| d.as_secs_f64()),
            span: span.map(|d| d.as_secs_f64()),
            sample_every: duration_nanos(self.tau().min(MIN_TAU) / 100),
            thresholds: [policy.failure_rate, policy.slow_call_rate],
            minimum_calls: policy.minimum_calls.max(1),
            hooks: self.hooks.clone(),
            due: AtomicU64::new(0),
            projected: AtomicU64::new(0f64.to_bits()),
            state: Mutex::new(Estimate::default()),
        }
    }
}

impl Default for EarlyWarning {
    fn default() -> Self {
        EarlyWarning::new()
    }
}

impl fmt::Debug for EarlyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EarlyWarning")
            .field("horizon", &self.horizon)
            .field("level", &self.level)
            .field("rearm_below", &self.rearm())
            .field("smoothing", &self.tau())
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

/// What the estimator expects of one breaker.
///
/// Hooks of [`Builder::on_early_warning`](crate::Builder::on_early_warning)
/// receive it when the warning fires;
/// [`CircuitBreakerHandle::prediction`](crate::CircuitBreakerHandle::prediction)
/// returns the latest.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Prediction {
    /// The breaker's name.
    pub service: Arc<str>,
    /// The projected trip risk at the horizon, `0..=1`.
    pub risk: f64,
    /// The policy the projection is about: [`Reason::FailureRate`] or
    /// [`Reason::SlowCallRate`].
    pub policy: Reason,
    /// The smoothed rate of that policy, `0..=1`.
    pub rate: f64,
    /// Its trend, in rate per second (0.01 = one percentage point a second).
    pub slope: f64,
    /// The policy's threshold.
    pub threshold: f64,
    /// When the trend reaches the threshold, if it is rising (zero once the
    /// smoothed rate is there).
    pub time_to_trip: Option<Duration>,
    /// The configured horizon.
    pub horizon: Duration,
    /// Whether the warning has fired and is not re-armed yet.
    pub warning: bool,
}

/// Level, slope and acceleration of one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Trend {
    level: f64,
    slope: f64,
    accel: f64,
}

impl Trend {
    /// Folds in `x`, observed `dt` seconds after the previous observation.
    fn observe(&mut self, x: f64, dt: f64, tau: f64) {
        if dt <= 0.0 {
            return;
        }
        let a = 1.0 - (-dt / tau).exp();
        let predicted = self.level + self.slope * dt;
        let level = predicted + a * (x - predicted);
        let slope = self.slope + a * ((level - self.level) / dt - self.slope);
        // The slope's own trend (its time constant a little shorter): how fast the
        // window's rate bends upwards while a ramp fills the window.
        let b = 1.0 - (-dt / (ACCEL_SHARE * tau)).exp();
        self.accel += b * ((slope - self.slope) / dt - self.accel);
        self.slope = slope;
        self.level = level;
    }

    /// `(risk, time_to_trip in seconds)` against `threshold`, `horizon`
    /// seconds out, for a window spanning `span` seconds (if known).
    fn project(&self, threshold: f64, horizon: f64, span: Option<f64>) -> (f64, Option<f64>) {
        let ahead = self.level + self.slope.max(0.0) * horizon;
        let risk = (ahead / threshold).clamp(0.0, 1.0);
        let time = if self.level >= threshold {
            Some(0.0)
        } else {
            self.time_to(threshold, span)
        };
        (risk, time)
    }

    /// When the rate reaches `threshold`. A ramp of the failure probability
    /// shows in a time window's rate as a curve bending upwards for one
    /// span (the slope grows while the ramp fills the window), then as a
    /// straight line: follow the acceleration for what is left of the span,
    /// then the slope reached.
    fn time_to(&self, threshold: f64, span: Option<f64>) -> Option<f64> {
        let gap = threshold - self.level;
        let bend = match span {
            Some(span) if self.accel > 0.0 && self.slope > 0.0 => {
                (span - self.slope / self.accel).clamp(0.0, span)
            }
            _ => 0.0,
        };
        if bend > 0.0 {
            // level + slope·u + accel·u²/2 = threshold, for u in [0, bend].
            let (s, a) = (self.slope, self.accel);
            let u = 2.0 * gap / (s + (s * s + 2.0 * a * gap).sqrt());
            if u <= bend {
                return Some(u);
            }
            let reached = s * bend + 0.5 * a * bend * bend;
            return Some(bend + (gap - reached) / (s + a * bend));
        }
        (self.slope > 0.0).then(|| gap / self.slope)
    }
}

#[derive(Debug, Default)]
struct Estimate {
    /// When the last observation was taken; `None` before the first.
    last: Option<u64>,
    channels: [Trend; 2],
    warning: bool,
    latest: Option<Prediction>,
}

/// The shortest adaptive time constant.
const MIN_TAU: Duration = Duration::from_secs(3);

/// The share of the threshold the window's noise may move the projection
/// by (one standard deviation), under adaptive smoothing.
const NOISE_SHARE: f64 = 0.22;

/// The acceleration's time constant, as a share of the level's and slope's.
const ACCEL_SHARE: f64 = 0.7;

const CHANNELS: [Reason; 2] = [Reason::FailureRate, Reason::SlowCallRate];

/// The trend estimator of one breaker.
pub(crate) struct Predictor {
    horizon: Duration,
    level: f64,
    rearm: f64,
    /// The smoothing time constant set, in seconds; `None`: adaptive.
    tau: Option<f64>,
    /// A time window's span, in seconds.
    span: Option<f64>,
    sample_every: u64,
    thresholds: [Option<f64>; 2],
    minimum_calls: u64,
    hooks: Vec<WarningHook>,
    /// No sample is taken before this time (nanoseconds).
    due: AtomicU64,
    /// The latest projected risk, as `f64` bits.
    projected: AtomicU64,
    state: Mutex<Estimate>,
}

impl fmt::Debug for Predictor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Predictor")
            .field("horizon", &self.horizon)
            .field("level", &self.level)
            .field("rearm", &self.rearm)
            .field("projected", &self.projected())
            .finish_non_exhaustive()
    }
}

impl Predictor {
    /// The smoothing time constant for a rate `x` over `calls` calls: the
    /// one set, or the shortest that keeps the window's sampling noise out
    /// of the projection. A rate over `n` calls wobbles by
    /// `σ = √(x(1-x)/n)`; a slope read over `τ` seconds by about `√2·σ/τ`,
    /// which the projection multiplies by the horizon. Keeping that below
    /// a fraction of the threshold sets `τ`, between `MIN_TAU` and the horizon.
    fn tau(&self, x: f64, calls: u64, threshold: f64) -> f64 {
        if let Some(tau) = self.tau {
            return tau;
        }
        // At least two calls: `1/n` must stay below the upper bound, or the
        // clamp panics (a time window holding one call, `minimum_calls(1)`).
        let n = calls.max(2) as f64;
        let x = x.clamp(1.0 / n, 0.5);
        let sigma = (x * (1.0 - x) / n).sqrt();
        let horizon = self.horizon.as_secs_f64();
        let tau = horizon * std::f64::consts::SQRT_2 * sigma / (NOISE_SHARE * threshold);
        tau.clamp(MIN_TAU.as_secs_f64().min(horizon), horizon)
    }

    /// The latest projected risk, `0..=1`.
    pub(crate) fn projected(&self) -> f64 {
        f64::from_bits(self.projected.load(Ordering::Relaxed))
    }

    /// The latest prediction.
    pub(crate) fn latest(&self) -> Option<Prediction> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .latest
            .clone()
    }

    /// Forgets the trend and re-arms the warning (after a transition).
    pub(crate) fn reset(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = Estimate::default();
        self.projected.store(0f64.to_bits(), Ordering::Relaxed);
        self.due.store(0, Ordering::Relaxed);
    }

    /// Feeds the window's counts at `now`. Returns the prediction when this
    /// observation makes the warning fire: the caller reports it with
    /// [`fire`](Self::fire), outside any lock.
    pub(crate) fn observe(
        &self,
        service: &Arc<str>,
        counts: &Counts,
        now: u64,
    ) -> Option<Prediction> {
        if now < self.due.load(Ordering::Relaxed) || counts.calls < self.minimum_calls {
            return None;
        }
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            // A hook that panicked while holding it leaves the state as it
            // was: keep using it.
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return None;
            }
        };
        if state
            .last
            .is_some_and(|last| now < last.saturating_add(self.sample_every))
        {
            return None;
        }
        self.due
            .store(now.saturating_add(self.sample_every), Ordering::Relaxed);
        let rates = [counts.failure_rate(), counts.slow_call_rate()];
        let dt = state.last.map(|last| (now - last) as f64 * 1e-9);
        let horizon = self.horizon.as_secs_f64();
        let mut best: Option<(usize, f64, Option<f64>)> = None;
        for (i, threshold) in self.thresholds.iter().enumerate() {
            let Some(threshold) = *threshold else {
                continue;
            };
            let trend = &mut state.channels[i];
            match dt {
                None => {
                    *trend = Trend {
                        level: rates[i],
                        ..Trend::default()
                    }
                }
                Some(dt) => {
                    trend.observe(rates[i], dt, self.tau(rates[i], counts.calls, threshold))
                }
            }
            let (risk, time) = trend.project(threshold, horizon, self.span);
            if best.is_none_or(|(_, r, _)| risk > r) {
                best = Some((i, risk, time));
            }
        }
        state.last = Some(now);
        let (i, risk, time) = best?;
        self.projected.store(risk.to_bits(), Ordering::Relaxed);
        let fires = !state.warning && risk >= self.level;
        if fires {
            state.warning = true;
        } else if state.warning && risk < self.rearm {
            state.warning = false;
        }
        let trend = state.channels[i];
        let prediction = Prediction {
            service: service.clone(),
            risk,
            policy: CHANNELS[i],
            rate: trend.level.clamp(0.0, 1.0),
            slope: trend.slope,
            threshold: self.thresholds[i].unwrap_or(1.0),
            time_to_trip: time.map(|s| Duration::from_secs_f64(s.min(1e9))),
            horizon: self.horizon,
            warning: state.warning,
        };
        state.latest = Some(prediction.clone());
        fires.then_some(prediction)
    }

    /// Reports a warning: a `tracing` warn event, then the hooks.
    pub(crate) fn fire(&self, prediction: &Prediction) {
        #[cfg(feature = "tracing")]
        tracing::warn!(
            service = &*prediction.service,
            risk = prediction.risk,
            policy = prediction.policy.as_str(),
            rate = prediction.rate,
            slope_per_second = prediction.slope,
            threshold = prediction.threshold,
            time_to_trip = prediction.time_to_trip.map(|d| d.as_secs_f64()),
            horizon = prediction.horizon.as_secs_f64(),
            "circuit breaker predicted to trip"
        );
        for hook in &self.hooks {
            hook(prediction);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holt_follows_a_ramp_without_lag() {
        let mut t = Trend::default();
        // x = 0.001 * seconds, observed every 0.5 s for 10 minutes.
        let mut x = 0.0;
        t.level = 0.0;
        for _ in 0..1200 {
            x += 0.0005;
            t.observe(x, 0.5, 30.0);
        }
        assert!((t.slope - 0.001).abs() < 1e-5, "slope {}", t.slope);
        assert!((t.level - x).abs() < 1e-3, "level {} vs {x}", t.level);
    }

    #[test]
    fn bursts_weigh_like_their_time_span() {
        // 1000 observations 1 ms apart move the level about as much as one
        // observation 1 s later: both cover one second of a 10 s constant.
        let mut burst = Trend::default();
        for _ in 0..1000 {
            burst.observe(1.0, 0.001, 10.0);
        }
        let mut single = Trend::default();
        single.observe(1.0, 1.0, 10.0);
        assert!(burst.level > 0.05 && burst.level < 0.2, "{}", burst.level);
        assert!(
            single.level > 0.05 && single.level < 0.2,
            "{}",
            single.level
        );
        // A zero interval changes nothing.
        let before = single;
        single.observe(0.0, 0.0, 10.0);
        assert_eq!(single, before);
    }

    #[test]
    fn projection_and_time_to_trip() {
        let t = Trend {
            level: 0.3,
            slope: 0.002,
            accel: 0.0,
        };
        let (risk, time) = t.project(0.5, 60.0, None);
        assert!((risk - 0.84).abs() < 1e-9);
        assert!((time.unwrap() - 100.0).abs() < 1e-9);
        let falling = Trend {
            level: 0.3,
            slope: -0.01,
            accel: 0.0,
        };
        assert_eq!(falling.project(0.5, 60.0, None), (0.6, None));
        let over = Trend {
            level: 0.6,
            slope: 0.0,
            accel: 0.0,
        };
        assert_eq!(over.project(0.5, 60.0, None), (1.0, Some(0.0)));
    }

    fn policy() -> Policy {
        Policy {
            consecutive_failures: None,
            failure_rate: Some(0.5),
            slow_call_rate: None,
            slow_call_duration: None,
            minimum_calls: 10,
        }
    }

    #[test]
    fn validation_names_the_field() {
        let p = policy();
        let field = |w: EarlyWarning| w.validate(&p).unwrap_err().field();
        assert_eq!(
            field(EarlyWarning::new().horizon(Duration::ZERO)),
            "early_warning.horizon"
        );
        assert_eq!(field(EarlyWarning::new().level(0.0)), "early_warning.level");
        assert_eq!(
            field(EarlyWarning::new().level(f64::NAN)),
            "early_warning.level"
        );
        assert_eq!(field(EarlyWarning::new().level(1.5)), "early_warning.level");
        assert_eq!(
            field(EarlyWarning::new().level(0.5).rearm_below(0.5)),
            "early_warning.rearm_below"
        );
        assert_eq!(
            field(EarlyWarning::new().smoothing(Duration::from_micros(1))),
            "early_warning.smoothing"
        );
        let streak_only = Policy {
            failure_rate: None,
            consecutive_failures: Some(3),
            ..policy()
        };
        assert_eq!(
            EarlyWarning::new()
                .validate(&streak_only)
                .unwrap_err()
                .field(),
            "early_warning"
        );
        assert!(EarlyWarning::new().level(0.1).validate(&p).is_ok());
    }

    fn counts(calls: u64, failures: u64) -> Counts {
        Counts {
            calls,
            failures,
            slow: 0,
        }
    }

    #[test]
    fn warns_once_per_crossing() {
        let p = EarlyWarning::new()
            .horizon(Duration::from_secs(10))
            .smoothing(Duration::from_millis(1))
            .predictor(&policy(), None);
        let svc: Arc<str> = "x".into();
        let sec = 1_000_000_000;
        let mut fired = 0;
        // With a 1 ms time constant the level is the last rate.
        for (i, failures) in [10, 45, 48, 35, 45, 20, 45].into_iter().enumerate() {
            if p.observe(&svc, &counts(100, failures), (i as u64 + 1) * sec)
                .is_some()
            {
                fired += 1;
            }
            let warned = p.latest().unwrap().warning;
            match i {
                0 => assert!(!warned),
                1 => assert!(warned && fired == 1),
                2 | 3 => assert!(warned && fired == 1, "35% is above the re-arm level"),
                4 => assert!(warned && fired == 1),
                5 => assert!(!warned, "20% re-arms"),
                _ => assert!(warned && fired == 2),
            }
        }
        // Below the minimum calls nothing is observed.
        assert!(p.observe(&svc, &counts(5, 5), 100 * sec).is_none());
        p.reset();
        assert_eq!(p.latest(), None);
        assert_eq!(p.projected(), 0.0);
    }
}
