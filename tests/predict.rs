//! Early warning on scripted traffic, with a manual clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{service_fn, Layer, Service, ServiceExt};
use tower_breaker::{
    CircuitBreakerLayer, Clock, EarlyWarning, ManualClock, MetricsLevel, Prediction, Reason, State,
};

/// A deterministic pseudo-random sequence in [0, 1) (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Run {
    /// Seconds at which each warning fired.
    warnings: Vec<(f64, Prediction)>,
    /// Seconds at which the breaker tripped, if it did.
    tripped: Option<f64>,
    max_projected: f64,
    /// Whether a fired warning was seen re-armed.
    rearmed: bool,
    /// The prediction right after the trip.
    after_trip: Option<Prediction>,
}

/// A service that fails while `fail` holds 1.
fn failing_when(
    fail: Arc<AtomicUsize>,
) -> impl Service<
    (),
    Response = (),
    Error = std::io::Error,
    Future = std::future::Ready<Result<(), std::io::Error>>,
> {
    service_fn(move |_: ()| {
        std::future::ready(if fail.load(Ordering::Relaxed) == 1 {
            Err(std::io::Error::other("boom"))
        } else {
            Ok(())
        })
    })
}

/// Sends 10 calls a second; call `i` fails with probability `p(seconds)`.
async fn drive(
    name: &str,
    warning: EarlyWarning,
    seconds: u64,
    seed: u64,
    p: impl Fn(f64) -> f64,
) -> Run {
    drive_at(MetricsLevel::Full, name, warning, seconds, seed, p).await
}

async fn drive_at(
    level: MetricsLevel,
    name: &str,
    warning: EarlyWarning,
    seconds: u64,
    seed: u64,
    p: impl Fn(f64) -> f64,
) -> Run {
    let (clock, manual): (Clock, ManualClock) = Clock::manual();
    let fired: Arc<Mutex<Vec<(f64, Prediction)>>> = Arc::default();
    let layer = CircuitBreakerLayer::builder()
        .name(name)
        .failure_rate(0.5)
        .minimum_calls(20)
        .count_window(100)
        .clock(clock)
        .metrics_level(level)
        .early_warning(warning)
        .on_early_warning({
            let fired = fired.clone();
            let manual = manual.clone();
            move |p| {
                fired
                    .lock()
                    .unwrap()
                    .push((manual.elapsed().as_secs_f64(), p.clone()))
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let fail = Arc::new(AtomicUsize::new(0));
    let mut svc = layer.layer(failing_when(fail.clone()));
    let mut rng = Rng(seed);
    let mut run = Run {
        warnings: Vec::new(),
        tripped: None,
        max_projected: 0.0,
        rearmed: false,
        after_trip: None,
    };
    for _ in 0..seconds * 10 {
        manual.advance(Duration::from_millis(100));
        let t = manual.elapsed().as_secs_f64();
        fail.store(usize::from(rng.next() < p(t)), Ordering::Relaxed);
        let _ = svc.ready().await.unwrap().call(()).await;
        let snap = handle.snapshot();
        if snap.state != State::Closed {
            run.tripped = Some(t);
            run.after_trip = handle.prediction();
            break;
        }
        if let Some(p) = handle.prediction() {
            run.max_projected = run.max_projected.max(p.risk);
            if !p.warning && !fired.lock().unwrap().is_empty() {
                run.rearmed = true;
            }
        }
    }
    run.warnings = fired.lock().unwrap().clone();
    run
}

const RAMP_SLOPE: f64 = 1.0 / 600.0;

#[tokio::test]
async fn slowly_degrading_upstream_warns_before_the_trip() {
    // Failure probability rising linearly from 0 to 1 over ten minutes;
    // the 50% policy trips after about four. Defaults: horizon 60 s, level 0.8.
    for seed in 1..=5 {
        let run = drive("predict-ramp", EarlyWarning::new(), 1200, seed, |t| {
            t * RAMP_SLOPE
        })
        .await;
        let tripped = run.tripped.expect("the ramp trips the breaker");
        assert_eq!(
            run.warnings.len(),
            1,
            "seed {seed}: one crossing, one warning"
        );
        let (at, p) = &run.warnings[0];
        assert!(
            at + 20.0 <= tripped,
            "seed {seed}: warned at {at} s, tripped at {tripped} s"
        );
        assert_eq!(p.policy, Reason::FailureRate);
        assert!(p.warning && p.risk >= 0.8 && p.threshold == 0.5);
        assert!(
            p.slope > 0.5 * RAMP_SLOPE && p.slope < 1.5 * RAMP_SLOPE,
            "seed {seed}: slope {} vs {RAMP_SLOPE}",
            p.slope
        );
        assert!(
            p.time_to_trip.is_some(),
            "a rising trend has a time to trip"
        );
        assert!(run.after_trip.is_none(), "a transition forgets the trend");
    }
}

#[tokio::test]
async fn untimed_breakers_follow_the_trend_too() {
    // Below MetricsLevel::Full a count-window breaker does not time calls;
    // the estimator reads the clock itself.
    for level in [MetricsLevel::Minimal, MetricsLevel::Standard] {
        let ramp = |t: f64| t * RAMP_SLOPE;
        let run = drive_at(level, "predict-untimed", EarlyWarning::new(), 1200, 1, ramp).await;
        let (at, p) = run.warnings.first().expect("warned");
        assert!(at + 20.0 <= run.tripped.expect("trips"), "{level:?}");
        assert!(p.slope > 0.5 * RAMP_SLOPE, "{level:?}: slope {}", p.slope);
    }
}

#[tokio::test]
async fn fast_degradation_warns_within_the_horizon() {
    // 0 to 100% in 150 s, trip after about 70 s. Level 1: warn when the trend
    // reaches the threshold within the horizon; a shorter time constant.
    let warning = || {
        EarlyWarning::new()
            .level(1.0)
            .smoothing(Duration::from_secs(30))
    };
    for seed in 1..=5 {
        let run = drive("predict-fast", warning(), 600, seed, |t| t / 150.0).await;
        let tripped = run.tripped.expect("trips");
        let (at, p) = run.warnings.first().expect("warned");
        assert!(
            at + 5.0 <= tripped,
            "seed {seed}: warned at {at} s, tripped at {tripped} s"
        );
        let ttt = p.time_to_trip.expect("rising");
        assert!(
            ttt <= Duration::from_secs(60),
            "risk 1 means within the horizon: {ttt:?}"
        );
    }
}

#[tokio::test]
async fn steady_noise_below_the_threshold_never_warns() {
    // 20% failures against a 50% threshold, for an hour.
    for seed in 1..=3 {
        let run = drive("predict-noise", EarlyWarning::new(), 3600, seed, |_| 0.2).await;
        assert_eq!(run.tripped, None);
        assert!(
            run.warnings.is_empty(),
            "seed {seed}: {:?}",
            run.warnings.first()
        );
        assert!(
            run.max_projected < 0.75,
            "seed {seed}: {}",
            run.max_projected
        );
        assert!(
            run.max_projected > 0.3,
            "the estimator ran: {}",
            run.max_projected
        );
        let quick = EarlyWarning::new()
            .level(1.0)
            .smoothing(Duration::from_secs(30));
        let run = drive("predict-noise-quick", quick, 3600, seed, |_| 0.2).await;
        assert!(
            run.warnings.is_empty(),
            "seed {seed}: {:?}",
            run.warnings.first()
        );
    }
}

#[tokio::test]
async fn the_hook_fires_once_per_crossing() {
    // 33% failures (risk 0.66 against level 0.6), then 2%, then 33% again.
    let phases = |t: f64| {
        if (300.0..600.0).contains(&t) {
            0.02
        } else {
            0.33
        }
    };
    for seed in 1..=3 {
        let run = drive(
            "predict-cross",
            EarlyWarning::new().level(0.6),
            900,
            seed,
            phases,
        )
        .await;
        assert_eq!(run.tripped, None);
        let at: Vec<f64> = run.warnings.iter().map(|w| w.0).collect();
        assert_eq!(at.len(), 2, "seed {seed}: {at:?}");
        assert!(at[0] < 300.0 && (600.0..900.0).contains(&at[1]), "{at:?}");
        assert!(run.rearmed, "the quiet phase re-armed the warning");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_trip_risk_gauge_includes_the_trend() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let run = drive_until_warned("predict-gauge", 1).await;
    let gauge = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| {
            k.key().name() == "circuit_breaker_trip_risk"
                && k.key().labels().any(|l| l.value() == "predict-gauge")
        })
        .map(|(.., v)| match v {
            DebugValue::Gauge(g) => g.into_inner(),
            other => panic!("{other:?}"),
        })
        .expect("trip risk gauge");
    assert!(gauge >= 0.8, "the projection shows: {gauge}");
    assert!(run.plain < 0.8, "the policy alone says {}", run.plain);
    assert!(gauge > run.plain);
}

struct Warned {
    /// The policy's own risk when the warning fired.
    plain: f64,
}

/// The slow ramp, stopped at the first warning.
async fn drive_until_warned(name: &str, seed: u64) -> Warned {
    let (clock, manual) = Clock::manual();
    let warned = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::builder()
        .name(name)
        .failure_rate(0.5)
        .minimum_calls(20)
        .count_window(100)
        .clock(clock)
        .on_early_warning({
            let warned = warned.clone();
            move |_| {
                warned.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let fail = Arc::new(AtomicUsize::new(0));
    let mut svc = layer.layer(failing_when(fail.clone()));
    let mut rng = Rng(seed);
    while warned.load(Ordering::Relaxed) == 0 {
        manual.advance(Duration::from_millis(100));
        let t = manual.elapsed().as_secs_f64();
        assert!(t < 600.0, "no warning");
        fail.store(usize::from(rng.next() < t * RAMP_SLOPE), Ordering::Relaxed);
        let _ = svc.ready().await.unwrap().call(()).await;
    }
    Warned {
        plain: handle.snapshot().trip_risk,
    }
}

#[test]
fn build_checks_the_early_warning_settings() {
    let field = |b: tower_breaker::Builder| b.build().unwrap_err().field();
    let b = CircuitBreakerLayer::builder;
    assert_eq!(
        field(b().early_warning(EarlyWarning::new().level(2.0))),
        "early_warning.level"
    );
    assert_eq!(
        field(b().early_warning(EarlyWarning::new().horizon(Duration::ZERO))),
        "early_warning.horizon"
    );
    assert_eq!(
        field(b().early_warning(EarlyWarning::new().rearm_below(0.9))),
        "early_warning.rearm_below"
    );
    assert_eq!(
        field(
            b().consecutive_failures(3)
                .without_failure_rate()
                .on_early_warning(|_| {})
        ),
        "early_warning"
    );
    // Hooks survive a later early_warning() call.
    let layer = b()
        .name("predict-hooks")
        .on_early_warning(|_| {})
        .early_warning(EarlyWarning::new())
        .build()
        .unwrap();
    assert!(format!("{layer:?}").contains("predict-hooks"));
    assert_eq!(layer.handle().prediction(), None, "nothing observed yet");
}

#[tokio::test]
async fn rising_latency_warns_through_the_slow_call_rate() {
    // Calls get slow (200 ms against a 100 ms limit) with a probability
    // rising over ten minutes; the failure rate stays at zero.
    let (clock, manual) = Clock::manual();
    let fired: Arc<Mutex<Vec<(f64, Prediction)>>> = Arc::default();
    let layer = CircuitBreakerLayer::builder()
        .name("predict-slow")
        .failure_rate(0.5)
        .slow_call_rate(0.5, Duration::from_millis(100))
        .minimum_calls(20)
        .count_window(100)
        .clock(clock)
        .on_early_warning({
            let fired = fired.clone();
            let manual = manual.clone();
            move |p| {
                let at = manual.elapsed().as_secs_f64();
                fired.lock().unwrap().push((at, p.clone()))
            }
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let slow = Arc::new(AtomicUsize::new(0));
    let mut svc = layer.layer(service_fn({
        let (slow, manual) = (slow.clone(), manual.clone());
        move |_: ()| {
            // The call takes its time on the manual clock.
            let took = if slow.load(Ordering::Relaxed) == 1 {
                200
            } else {
                1
            };
            manual.advance(Duration::from_millis(took));
            std::future::ready(Ok::<_, std::io::Error>(()))
        }
    }));
    let mut rng = Rng(7);
    let mut tripped = None;
    while tripped.is_none() {
        manual.advance(Duration::from_millis(100));
        let t = manual.elapsed().as_secs_f64();
        assert!(t < 1200.0, "never tripped");
        slow.store(usize::from(rng.next() < t * RAMP_SLOPE), Ordering::Relaxed);
        svc.ready().await.unwrap().call(()).await.unwrap();
        if handle.state() != State::Closed {
            tripped = Some(t);
        }
    }
    let fired = fired.lock().unwrap();
    let (at, p) = fired.first().expect("warned");
    assert_eq!(fired.len(), 1);
    assert!(
        at + 20.0 <= tripped.unwrap(),
        "warned at {at}, tripped at {tripped:?}"
    );
    assert_eq!(p.policy, Reason::SlowCallRate);
    assert!(p.slope > 0.0);
}

/// Counts `warn` events whose message mentions a predicted trip, for the
/// service `predict-log`. Installed as the global subscriber (once, for the
/// whole test binary): a thread-local one can miss events when another
/// thread caches a callsite's interest meanwhile.
#[cfg(feature = "tracing")]
struct Warnings(&'static AtomicUsize);

#[cfg(feature = "tracing")]
impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        #[derive(Default)]
        struct Fields {
            predicted: bool,
            ours: bool,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "service" && value == "predict-log" {
                    self.ours = true;
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                let text = format!("{value:?}");
                if field.name() == "message" && text.contains("predicted to trip") {
                    self.predicted = true;
                }
                if field.name() == "service" && text.trim_matches('"') == "predict-log" {
                    self.ours = true;
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.predicted && fields.ours && *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[cfg(feature = "tracing")]
#[tokio::test(flavor = "current_thread")]
async fn each_crossing_logs_one_warning() {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    tracing::subscriber::set_global_default(Warnings(&COUNT)).expect("the only global subscriber");
    let count = &COUNT;
    let phases = |t: f64| {
        if (300.0..600.0).contains(&t) {
            0.02
        } else {
            0.33
        }
    };
    let run = drive(
        "predict-log",
        EarlyWarning::new().level(0.6),
        900,
        1,
        phases,
    )
    .await;
    assert_eq!(run.warnings.len(), 2);
    assert_eq!(count.load(Ordering::Relaxed), 2);
}

/// A time window holding a single call (`minimum_calls(1)`, a quiet
/// service) is observed without a panic, and the estimator keeps working.
#[tokio::test]
async fn a_window_of_one_call_is_observed_quietly() {
    let (clock, manual) = tower_breaker::Clock::manual();
    let layer = tower_breaker::CircuitBreakerLayer::builder()
        .name("predict-one-call")
        .failure_rate(0.5)
        .minimum_calls(1)
        .time_window(std::time::Duration::from_secs(2), 2)
        .clock(clock)
        .early_warning(tower_breaker::EarlyWarning::new())
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    for _ in 0..3 {
        manual.advance(std::time::Duration::from_secs(5));
        svc.ready().await.unwrap().call(()).await.unwrap();
    }
    assert!(layer.handle().prediction().is_some());
}
