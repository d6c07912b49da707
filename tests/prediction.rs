//! How good is the early warning? A deterministic scenario harness: a real
//! breaker on a manual clock, seeded traffic whose failure probability
//! follows a scenario, and the warnings it raises, measured against the
//! trip that follows (or does not).
//!
//! `cargo test --all-features --test prediction -- --nocapture` prints the
//! table of PREDICTION.md; the tests assert the targets of issue 19.
//!
//! "Points/s" are percentage points of failure probability per second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{service_fn, Layer, Service, ServiceExt};
use tower_breaker::{CircuitBreakerLayer, Clock, EarlyWarning, MetricsLevel, State};

/// A deterministic pseudo-random sequence in [0, 1) (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Spread small seeds over the state; never zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The breaker under test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Window {
    /// The last 30 s in 10 buckets (the harness's reference configuration).
    Time30s,
    /// The last 100 calls (the builder's default window).
    Count100,
}

impl Window {
    fn describe(self) -> &'static str {
        match self {
            Window::Time30s => "time window 30 s x 10 buckets",
            Window::Count100 => "count window 100 calls",
        }
    }
}

/// Healthy failure probability.
const BASE: f64 = 0.01;
/// Healthy traffic before a degradation starts: the window is full and the
/// estimator settled when it does.
const PRELUDE: f64 = 120.0;

#[derive(Clone, Copy, Debug)]
enum Shape {
    /// From `BASE` up by `points_per_s` percentage points a second, to 100%.
    Ramp { points_per_s: f64 },
    /// From `BASE` straight to `to`.
    Step { to: f64 },
    /// `BASE` for `seconds`, with a `burst_s` burst at `burst_p` every
    /// `every_s` (the first at `every_s / 2`).
    Healthy {
        seconds: f64,
        burst_p: f64,
        burst_s: f64,
        every_s: f64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    shape: Shape,
    calls_per_s: u32,
    /// Whether the targets of a slow ramp apply.
    slow_ramp: bool,
}

impl Scenario {
    /// The failure probability `t` seconds into the run.
    fn p(&self, t: f64) -> f64 {
        match self.shape {
            Shape::Ramp { points_per_s } => {
                if t < PRELUDE {
                    BASE
                } else {
                    (BASE + (t - PRELUDE) * points_per_s / 100.0).min(1.0)
                }
            }
            Shape::Step { to } => {
                if t < PRELUDE {
                    BASE
                } else {
                    to
                }
            }
            Shape::Healthy {
                burst_p,
                burst_s,
                every_s,
                ..
            } => {
                let into = (t + every_s / 2.0) % every_s;
                if into < burst_s {
                    burst_p
                } else {
                    BASE
                }
            }
        }
    }

    /// How long to run at most.
    fn seconds(&self) -> f64 {
        match self.shape {
            Shape::Healthy { seconds, .. } => seconds,
            _ => PRELUDE + 600.0,
        }
    }

    /// When the degradation starts, if there is one.
    fn onset(&self) -> Option<f64> {
        match self.shape {
            Shape::Healthy { .. } => None,
            _ => Some(PRELUDE),
        }
    }
}

const SCENARIOS: [Scenario; 8] = [
    ramp("ramp 0.2 points/s", 0.2, 100, true),
    ramp("ramp 0.5 points/s", 0.5, 100, true),
    ramp("ramp 1 points/s", 1.0, 100, true),
    ramp("ramp 2 points/s", 2.0, 100, true),
    ramp("fast ramp 10 points/s", 10.0, 100, false),
    Scenario {
        name: "step 1% -> 60%",
        shape: Shape::Step { to: 0.6 },
        calls_per_s: 100,
        slow_ramp: false,
    },
    Scenario {
        name: "healthy 1 h, 5 s at 20% every 10 min",
        shape: Shape::Healthy {
            seconds: 3600.0,
            burst_p: 0.2,
            burst_s: 5.0,
            every_s: 600.0,
        },
        calls_per_s: 100,
        slow_ramp: false,
    },
    ramp("ramp 0.5 points/s at 10 calls/s", 0.5, 10, true),
];

const fn ramp(name: &'static str, points_per_s: f64, calls_per_s: u32, slow: bool) -> Scenario {
    Scenario {
        name,
        shape: Shape::Ramp { points_per_s },
        calls_per_s,
        slow_ramp: slow,
    }
}

/// One warning: when it fired and the time to trip it announced.
#[derive(Clone, Copy, Debug)]
struct Warning {
    at: f64,
    time_to_trip: Option<f64>,
}

/// What one run of a scenario measured.
#[derive(Debug)]
struct Run {
    tripped: Option<f64>,
    warnings: Vec<Warning>,
    /// Seconds simulated.
    ran: f64,
}

impl Run {
    /// Warnings before the degradation started, or in a run that never
    /// tripped: false alarms.
    fn false_warnings(&self, s: &Scenario) -> usize {
        match (s.onset(), self.tripped) {
            (Some(onset), Some(_)) => self.warnings.iter().filter(|w| w.at < onset).count(),
            _ => self.warnings.len(),
        }
    }

    /// The first warning after the degradation started, and before the trip.
    fn first_warning(&self, s: &Scenario) -> Option<Warning> {
        let onset = s.onset()?;
        let trip = self.tripped?;
        self.warnings
            .iter()
            .find(|w| w.at >= onset && w.at <= trip)
            .copied()
    }

    /// Seconds between the first warning and the trip.
    fn lead(&self, s: &Scenario) -> Option<f64> {
        Some(self.tripped? - self.first_warning(s)?.at)
    }

    /// The relative error of the first warning's time to trip:
    /// `(estimate - actual) / actual`.
    fn ttt_error(&self, s: &Scenario) -> Option<f64> {
        let w = self.first_warning(s)?;
        let actual = self.tripped? - w.at;
        let estimate = w.time_to_trip?;
        Some((estimate - actual) / actual.max(1e-3))
    }
}

fn run(s: &Scenario, window: Window, seed: u64) -> Run {
    let (clock, manual) = Clock::manual();
    let warnings: Arc<Mutex<Vec<Warning>>> = Arc::default();
    let builder = CircuitBreakerLayer::builder()
        .name(format!("prediction-{seed}"))
        .failure_rate(0.5)
        .minimum_calls(20)
        .clock(clock)
        .metrics_level(MetricsLevel::Minimal)
        .early_warning(EarlyWarning::new())
        .on_early_warning({
            let warnings = warnings.clone();
            let manual = manual.clone();
            move |p| {
                warnings.lock().unwrap().push(Warning {
                    at: manual.elapsed().as_secs_f64(),
                    time_to_trip: p.time_to_trip.map(|d| d.as_secs_f64()),
                })
            }
        });
    let layer = match window {
        Window::Time30s => builder.time_window(Duration::from_secs(30), 10),
        Window::Count100 => builder.count_window(100),
    }
    .build()
    .unwrap();
    let handle = layer.handle();
    let fail = Arc::new(AtomicBool::new(false));
    let mut svc = layer.layer(service_fn({
        let fail = fail.clone();
        move |_: ()| {
            std::future::ready(if fail.load(Ordering::Relaxed) {
                Err(std::io::Error::other("boom"))
            } else {
                Ok(())
            })
        }
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = Rng::new(seed);
    let step = Duration::from_secs(1) / s.calls_per_s;
    let calls = (s.seconds() * f64::from(s.calls_per_s)) as u64;
    let mut tripped = None;
    rt.block_on(async {
        for _ in 0..calls {
            manual.advance(step);
            let t = manual.elapsed().as_secs_f64();
            fail.store(rng.next() < s.p(t), Ordering::Relaxed);
            let _ = svc.ready().await.unwrap().call(()).await;
            if handle.state() != State::Closed {
                tripped = Some(t);
                break;
            }
        }
    });
    let ran = manual.elapsed().as_secs_f64();
    let warnings = warnings.lock().unwrap().clone();
    Run {
        tripped,
        warnings,
        ran,
    }
}

/// Seeds per scenario: the healthy hour is long enough with two.
fn seeds(s: &Scenario) -> std::ops::RangeInclusive<u64> {
    match s.shape {
        Shape::Healthy { .. } => 1..=2,
        _ => 1..=5,
    }
}

struct Row {
    scenario: Scenario,
    runs: Vec<Run>,
}

fn measure(window: Window) -> Vec<Row> {
    SCENARIOS
        .iter()
        .map(|s| Row {
            scenario: *s,
            runs: seeds(s).map(|seed| run(s, window, seed)).collect(),
        })
        .collect()
}

fn range(values: impl Iterator<Item = Option<f64>>, fmt: impl Fn(f64) -> String) -> String {
    let values: Vec<Option<f64>> = values.collect();
    let missing = values.iter().filter(|v| v.is_none()).count();
    let present: Vec<f64> = values.into_iter().flatten().collect();
    if present.is_empty() {
        return "none".to_owned();
    }
    let min = present.iter().copied().fold(f64::INFINITY, f64::min);
    let max = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut text = if (max - min).abs() < 1e-9 {
        fmt(min)
    } else {
        format!("{} .. {}", fmt(min), fmt(max))
    };
    if missing > 0 {
        text.push_str(&format!(" ({missing} none)"));
    }
    text
}

fn table(window: Window, rows: &[Row]) -> String {
    let mut out = format!(
        "{}, failure rate 0.5, minimum 20 calls, `EarlyWarning::new()`\n\n\
         | scenario | runs | trip after onset (s) | lead of first warning (s) | time-to-trip error | false warnings / h |\n\
         |---|---|---|---|---|---|\n",
        window.describe()
    );
    for row in rows {
        let s = &row.scenario;
        let onset = s.onset().unwrap_or(0.0);
        let hours: f64 = row.runs.iter().map(|r| r.ran / 3600.0).sum();
        let false_warnings: usize = row.runs.iter().map(|r| r.false_warnings(s)).sum();
        let trip = if s.onset().is_some() {
            range(row.runs.iter().map(|r| r.tripped.map(|t| t - onset)), |v| {
                format!("{v:.1}")
            })
        } else {
            range(row.runs.iter().map(|r| r.tripped), |v| format!("{v:.1}"))
        };
        let lead = if s.onset().is_some() {
            range(row.runs.iter().map(|r| r.lead(s)), |v| format!("{v:.1}"))
        } else {
            "-".to_owned()
        };
        let err = if s.onset().is_some() {
            range(row.runs.iter().map(|r| r.ttt_error(s)), |v| {
                format!("{:+.0}%", v * 100.0)
            })
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "| {} | {} | {trip} | {lead} | {err} | {:.1} |\n",
            s.name,
            row.runs.len(),
            false_warnings as f64 / hours,
        ));
    }
    out
}

#[test]
fn early_warning_meets_its_targets() {
    let rows = measure(Window::Time30s);
    println!("{}", table(Window::Time30s, &rows));
    for row in &rows {
        let s = &row.scenario;
        for (seed, r) in row.runs.iter().enumerate() {
            let at = format!("{} (seed {})", s.name, seed + 1);
            if s.slow_ramp {
                assert!(r.tripped.is_some(), "{at}: the ramp trips");
                assert_eq!(r.false_warnings(s), 0, "{at}: {r:?}");
                let lead = r
                    .lead(s)
                    .unwrap_or_else(|| panic!("{at}: no warning: {r:?}"));
                assert!(lead >= 10.0, "{at}: warned {lead:.1} s before the trip");
                let err = r.ttt_error(s).expect("a rising trend has a time to trip");
                assert!(err.abs() <= 0.5, "{at}: time to trip off by {err:+.2}");
            }
            if let Shape::Healthy { .. } = s.shape {
                assert_eq!(r.tripped, None, "{at}");
                let per_hour = r.false_warnings(s) as f64 / (r.ran / 3600.0);
                assert!(per_hour <= 1.0, "{at}: {per_hour} false warnings an hour");
            }
        }
        if !s.slow_ramp && s.onset().is_some() {
            // Fast ramps and steps: what the window allows (PREDICTION.md).
            for r in &row.runs {
                assert!(r.tripped.is_some(), "{}", s.name);
                assert_eq!(r.false_warnings(s), 0, "{}", s.name);
                assert!(r.lead(s).is_some_and(|l| l >= 5.0), "{}: {r:?}", s.name);
            }
        }
    }
}

#[test]
#[ignore = "the builder's default window, reported in PREDICTION.md"]
fn count_window_report() {
    let rows = measure(Window::Count100);
    println!("{}", table(Window::Count100, &rows));
}
