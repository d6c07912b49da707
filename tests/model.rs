//! Model-based test of the breaker's state machine.
//!
//! A plain, sequential reference model of Closed / Open / HalfOpen and the
//! overrides, with the same policies, is run side by side with a real breaker
//! driven only through its public API: a `tower` service whose outcome is
//! scripted per call, a [`Clock::manual`] clock, `ServiceExt::ready` +
//! `call`, and the [`CircuitBreakerHandle`]. After every step the breaker's
//! state, its snapshot counts, the rejections callers saw and the metrics it
//! emitted during the step (counter deltas, histogram samples, the one-hot
//! state gauge, read through a `DebuggingRecorder` installed with
//! `metrics::with_local_recorder`) must agree with the model.
//!
//! The number of cases is `PROPTEST_CASES`: 1,000 by default (about 10 s
//! unoptimized); `.ci/reliability` runs 10,000 optimized, with debug
//! assertions and overflow checks (see RELIABILITY.md).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::channel::oneshot;
use futures::FutureExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_breaker::classify::Classify;
use tower_breaker::{
    Backoff, CircuitBreakerLayer, CircuitOpen, Clock, FailureKind, InFlight, ManualClock,
    MetricsLevel, Outcome, State,
};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
/// Calls at least this long are slow (when the slow-call policy is on).
const SLOW: u64 = 100 * MS;
const RETRY_AFTER_CAP: u64 = 5 * SEC;
const NAME: &str = "model";

// ---------------------------------------------------------------------------
// Configuration and operations
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Win {
    Count(usize),
    /// `buckets` buckets of one second each.
    Time(usize),
}

#[derive(Clone, Copy, Debug)]
enum Open {
    Fixed(u64),
    /// Initial, max (whole seconds, doubling: exact in floating point).
    Exp(u64, u64),
}

#[derive(Clone, Debug)]
struct Cfg {
    consecutive: Option<u32>,
    /// `None`: the default (50%).
    failure_rate: Option<f64>,
    /// `without_failure_rate()`: only with another policy set.
    failure_rate_off: bool,
    slow_rate: Option<f64>,
    window: Win,
    minimum_calls: u64,
    permits: u32,
    successes: u32,
    max_wait: Option<u64>,
    open: Open,
    level: MetricsLevel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Ok,
    Fail(FailureKind),
    Ignore,
}

const TEAPOT: FailureKind = FailureKind::custom("teapot");

#[derive(Clone, Copy, Debug)]
struct Reply {
    out: Out,
    /// A Retry-After hint handed to the breaker before finishing.
    hint: Option<u64>,
}

#[derive(Clone, Debug)]
enum Op {
    /// A call that completes at once, taking `latency`.
    Call(Reply, u64),
    /// A call admitted and left in flight.
    Start,
    /// Completes the in-flight call `i % len`.
    Finish(usize, Reply),
    /// Drops the in-flight call `i % len` unfinished.
    Drop(usize),
    /// `poll_ready` admits, then the service is dropped without `call`.
    ReadyDrop,
    /// `poll_ready` on a service that is kept for later.
    ReadyHold,
    /// `poll_ready` again on the kept service `i % len`.
    RepollHeld(usize),
    /// `call` on the kept service `i % len` (taking it), which completes at
    /// once, taking `latency`.
    CallHeld(usize, Reply, u64),
    Advance(u64),
    ForceOpen,
    ForceClosed,
    Disable,
    MetricsOnly,
    Reset,
}

fn cfg_strategy() -> impl Strategy<Value = Cfg> {
    let window = prop_oneof![
        3 => (1usize..=6).prop_map(Win::Count),
        1 => (1usize..=4).prop_map(Win::Time),
    ];
    let open = prop_oneof![
        prop_oneof![Just(SEC), Just(3 * SEC)].prop_map(Open::Fixed),
        Just(Open::Exp(SEC, 4 * SEC)),
    ];
    (
        proptest::option::of(1u32..=4),
        (
            proptest::option::of(prop_oneof![Just(0.25), Just(0.5), Just(1.0)]),
            prop_oneof![4 => Just(false), 1 => Just(true)],
        ),
        proptest::option::of(prop_oneof![Just(0.5), Just(1.0)]),
        window,
        1u64..=6,
        (1u32..=3, 1u32..=3),
        (proptest::option::of(Just(2 * SEC)), open),
        prop_oneof![
            1 => Just(MetricsLevel::Minimal),
            1 => Just(MetricsLevel::Standard),
            2 => Just(MetricsLevel::Full)
        ],
    )
        .prop_map(
            |(
                consecutive,
                (failure_rate, off),
                slow_rate,
                window,
                min,
                (permits, succ),
                (max_wait, open),
                level,
            )| {
                let minimum_calls = match window {
                    Win::Count(n) => min.min(n as u64),
                    Win::Time(_) => min,
                };
                // Off only where another policy is set (else build() fails).
                let failure_rate_off = off && (consecutive.is_some() || slow_rate.is_some());
                Cfg {
                    consecutive,
                    failure_rate: if failure_rate_off { None } else { failure_rate },
                    failure_rate_off,
                    slow_rate,
                    window,
                    minimum_calls,
                    permits,
                    successes: succ.min(permits),
                    max_wait,
                    open,
                    level,
                }
            },
        )
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    let out = prop_oneof![
        4 => Just(Out::Ok),
        2 => Just(Out::Fail(FailureKind::ERROR)),
        1 => Just(Out::Fail(FailureKind::TIMEOUT)),
        1 => Just(Out::Fail(TEAPOT)),
        1 => Just(Out::Ignore),
    ];
    let hint = prop_oneof![
        8 => Just(None),
        1 => Just(Some(2 * SEC)),
        1 => Just(Some(10 * SEC)),
    ];
    (out, hint).prop_map(|(out, hint)| Reply { out, hint })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (reply_strategy(), prop_oneof![3 => Just(MS), 1 => Just(150 * MS)])
            .prop_map(|(r, l)| Op::Call(r, l)),
        5 => Just(Op::Start),
        5 => (any::<usize>(), reply_strategy()).prop_map(|(i, r)| Op::Finish(i, r)),
        2 => any::<usize>().prop_map(Op::Drop),
        2 => Just(Op::ReadyDrop),
        2 => Just(Op::ReadyHold),
        1 => any::<usize>().prop_map(Op::RepollHeld),
        3 => (any::<usize>(), reply_strategy(), prop_oneof![3 => Just(MS), 1 => Just(150 * MS)])
            .prop_map(|(i, r, l)| Op::CallHeld(i, r, l)),
        8 => prop_oneof![
            Just(50 * MS),
            Just(100 * MS),
            Just(500 * MS),
            Just(SEC),
            Just(2 * SEC),
            Just(4 * SEC)
        ]
        .prop_map(Op::Advance),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::ForceClosed),
        1 => Just(Op::Disable),
        1 => Just(Op::MetricsOnly),
        1 => Just(Op::Reset),
    ]
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    Disabled,
    ForcedOpen,
    MetricsOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Closed,
    Open,
    HalfOpen,
    Disabled,
    ForcedOpen,
    MetricsOnly,
    Reset,
}

/// What the model remembers of an admitted call.
#[derive(Clone, Copy, Debug)]
struct Ticket {
    /// The period (transitions so far) it was admitted in.
    period: u64,
    probe: bool,
    judged: bool,
    /// Taken by `poll_ready` where `call` must ask again (a half-open
    /// probe, shadow mode).
    deferred: bool,
    start: u64,
}

/// The model's answer to an admission.
enum Admit {
    Go(Ticket),
    Refused(State, Option<Duration>),
}

/// The decision `poll_ready` keeps for `call`: no permit taken, nothing
/// counted.
#[derive(Clone, Copy, Debug)]
enum Decision {
    Go(Ticket),
    /// The state, and when Open the time left as of `poll_ready`.
    Refused(State, Option<Duration>),
}

/// Metrics the model expects one step to emit.
#[derive(Debug, Default, PartialEq)]
struct Emitted {
    counters: BTreeMap<String, u64>,
    histograms: BTreeMap<String, Vec<f64>>,
}

impl Emitted {
    fn count(&mut self, key: String) {
        *self.counters.entry(key).or_default() += 1;
    }

    /// Keeps what a breaker at `level` reports: Minimal has state,
    /// transitions and requests; Standard adds the rest but the duration
    /// histogram, which only Full has.
    fn at_level(mut self, level: MetricsLevel) -> Self {
        let keep = |name: &str| {
            let min = if ["_state{", "_transitions_total{", "_requests_total{"]
                .iter()
                .any(|m| name.contains(m))
            {
                MetricsLevel::Minimal
            } else if name.contains("_request_duration_seconds{") {
                MetricsLevel::Full
            } else {
                MetricsLevel::Standard
            };
            level >= min
        };
        self.counters.retain(|k, _| keep(k));
        self.histograms.retain(|k, _| keep(k));
        self
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.push(format!("service={NAME}"));
    labels.sort();
    format!("circuit_breaker_{name}{{{}}}", labels.join(","))
}

#[derive(Debug)]
struct Model {
    // settings, normalized as the builder does
    consecutive: Option<u32>,
    failure_rate: Option<f64>,
    slow_rate: Option<f64>,
    slow_duration: Option<u64>,
    window: Win,
    minimum_calls: u64,
    permits: u32,
    successes_needed: u32,
    max_wait: Option<u64>,
    open: Open,
    level: MetricsLevel,
    /// Whether calls are timed: needed by the duration histogram, the
    /// slow-call policy and time windows.
    timed: bool,

    now: u64,
    phase: Phase,
    mode: Mode,
    period: u64,
    admitted: u32,
    successes: u32,
    open_until: u64,
    phase_since: u64,
    consecutive_failures: u32,
    /// Count window: the last samples (failure, slow).
    samples: VecDeque<(bool, bool)>,
    /// Time window: bucket index -> (calls, failures, slow).
    buckets: BTreeMap<u64, (u64, u64, u64)>,
    rejected: u64,
    shadow_rejected: u64,
    hint: u64,
    attempt: u32,
    left_closed_at: Option<u64>,

    emitted: Emitted,
}

impl Model {
    fn new(cfg: &Cfg) -> Self {
        Model {
            consecutive: cfg.consecutive,
            // The failure-rate policy is on (50% by default) unless turned off.
            failure_rate: if cfg.failure_rate_off {
                None
            } else {
                Some(cfg.failure_rate.unwrap_or(0.5))
            },
            slow_rate: cfg.slow_rate,
            slow_duration: cfg.slow_rate.map(|_| SLOW),
            window: cfg.window,
            minimum_calls: cfg.minimum_calls,
            permits: cfg.permits,
            successes_needed: cfg.successes,
            max_wait: cfg.max_wait,
            open: cfg.open,
            level: cfg.level,
            timed: cfg.level == MetricsLevel::Full
                || cfg.slow_rate.is_some()
                || matches!(cfg.window, Win::Time(_)),
            now: 0,
            phase: Phase::Closed,
            mode: Mode::Normal,
            period: 0,
            admitted: 0,
            successes: 0,
            open_until: 0,
            phase_since: 0,
            consecutive_failures: 0,
            samples: VecDeque::new(),
            buckets: BTreeMap::new(),
            rejected: 0,
            shadow_rejected: 0,
            hint: 0,
            attempt: 0,
            left_closed_at: None,
            emitted: Emitted::default(),
        }
    }

    fn phase_state(&self) -> State {
        match self.phase {
            Phase::Closed => State::Closed,
            Phase::Open => State::Open,
            Phase::HalfOpen => State::HalfOpen,
        }
    }

    fn state(&self) -> State {
        match self.mode {
            Mode::Normal => self.phase_state(),
            Mode::Disabled => State::Disabled,
            Mode::ForcedOpen => State::ForcedOpen,
            Mode::MetricsOnly => State::MetricsOnly,
        }
    }

    /// (calls, failures, slow) in the window now.
    fn counts(&self) -> (u64, u64, u64) {
        match self.window {
            Win::Count(_) => self
                .samples
                .iter()
                .fold((0, 0, 0), |(c, f, s), (fail, slow)| {
                    (c + 1, f + u64::from(*fail), s + u64::from(*slow))
                }),
            Win::Time(n) => {
                let k = self.now / SEC;
                let from = (k + 1).saturating_sub(n as u64);
                self.buckets
                    .range(from..=k)
                    .fold((0, 0, 0), |(c, f, s), (_, (bc, bf, bs))| {
                        (c + bc, f + bf, s + bs)
                    })
            }
        }
    }

    fn push_sample(&mut self, failure: bool, slow: bool) {
        match self.window {
            Win::Count(n) => {
                if self.samples.len() == n {
                    self.samples.pop_front();
                }
                self.samples.push_back((failure, slow));
            }
            Win::Time(_) => {
                let b = self.buckets.entry(self.now / SEC).or_default();
                b.0 += 1;
                b.1 += u64::from(failure);
                b.2 += u64::from(slow);
            }
        }
    }

    fn clear_window(&mut self) {
        self.samples.clear();
        self.buckets.clear();
    }

    fn backoff(&self) -> u64 {
        match self.open {
            Open::Fixed(d) => d,
            Open::Exp(initial, max) => {
                let grown = initial.saturating_mul(1u64 << self.attempt.min(20));
                grown.min(max)
            }
        }
    }

    /// Which policy trips now, if any: consecutive failures first, then,
    /// once the window holds the minimum of calls, failure and slow rates.
    fn evaluate(&self) -> Option<&'static str> {
        if self
            .consecutive
            .is_some_and(|n| self.consecutive_failures >= n)
        {
            return Some("consecutive_failures");
        }
        let (calls, failures, slow) = self.counts();
        if calls < self.minimum_calls {
            return None;
        }
        let rate = |part: u64| part as f64 / calls as f64;
        if self.failure_rate.is_some_and(|t| rate(failures) >= t) {
            return Some("failure_rate");
        }
        if self.slow_rate.is_some_and(|t| rate(slow) >= t) {
            return Some("slow_call_rate");
        }
        None
    }

    fn transition(&mut self, target: Target, reason: &str) {
        let before_phase = self.phase_state();
        let before = self.state();
        let old_mode = self.mode;
        let (phase, mode) = match target {
            // Probes that succeed close the machine and keep the override
            // (in MetricsOnly it is the shadow machine that recovers); the
            // handle's force_closed lifts it.
            Target::Closed if reason != "manual" => (Phase::Closed, self.mode),
            Target::Closed | Target::Reset => (Phase::Closed, Mode::Normal),
            Target::Open => (Phase::Open, self.mode),
            Target::HalfOpen => (Phase::HalfOpen, self.mode),
            Target::Disabled => (self.phase, Mode::Disabled),
            Target::ForcedOpen => (self.phase, Mode::ForcedOpen),
            Target::MetricsOnly => (Phase::Closed, Mode::MetricsOnly),
        };
        if target == Target::Open {
            let d = self.backoff().max(self.hint);
            self.attempt += 1;
            self.open_until = self.now + d;
        }
        // A hint belongs to the period it was given in.
        self.hint = 0;
        if phase == Phase::Closed
            && (self.phase != Phase::Closed
                || matches!(target, Target::Closed | Target::Reset | Target::MetricsOnly))
        {
            self.clear_window();
            self.consecutive_failures = 0;
            self.attempt = 0;
        }
        if target == Target::Reset {
            self.left_closed_at = None;
            self.rejected = 0;
            self.shadow_rejected = 0;
        }
        self.phase_since = self.now;
        self.phase = phase;
        self.mode = mode;
        self.period += 1;
        self.admitted = 0;
        self.successes = 0;

        // In shadow mode the shadow machine's own states are reported.
        let shadow = old_mode == Mode::MetricsOnly && mode == Mode::MetricsOnly;
        let (from, to) = if shadow {
            (before_phase, self.phase_state())
        } else {
            (before, self.state())
        };
        self.emitted.count(key(
            "transitions_total",
            &[
                ("from", from.as_str()),
                ("to", to.as_str()),
                ("reason", reason),
            ],
        ));
        if !shadow {
            if matches!(to, State::Open | State::ForcedOpen) && self.left_closed_at.is_none() {
                self.left_closed_at = Some(self.now);
            }
            if to == State::Closed {
                if let Some(at) = self.left_closed_at.take() {
                    self.emitted
                        .histograms
                        .entry(key("recovery_duration_seconds", &[]))
                        .or_default()
                        .push(Duration::from_nanos(self.now - at).as_secs_f64());
                }
            }
        }
    }

    fn refuse(&mut self, state: State, retry_after: Option<Duration>) -> Admit {
        if self.mode == Mode::MetricsOnly {
            self.shadow_rejected += 1;
            self.emitted
                .count(key("rejections_total", &[("state", "metrics_only")]));
            Admit::Go(Ticket {
                period: self.period,
                probe: false,
                judged: false,
                deferred: false,
                start: self.now,
            })
        } else {
            self.rejected += 1;
            self.emitted
                .count(key("requests_total", &[("status", "rejected")]));
            self.emitted
                .count(key("rejections_total", &[("state", state.as_str())]));
            Admit::Refused(state, retry_after)
        }
    }

    /// `poll_ready`: may move the machine (an elapsed open duration or
    /// half-open wait), takes no permit, counts nothing.
    fn check(&mut self) -> Decision {
        loop {
            let ticket = Ticket {
                period: self.period,
                probe: false,
                judged: true,
                deferred: false,
                start: self.now,
            };
            match self.mode {
                Mode::Disabled => {
                    return Decision::Go(Ticket {
                        judged: false,
                        ..ticket
                    })
                }
                Mode::ForcedOpen => return Decision::Refused(State::ForcedOpen, None),
                Mode::MetricsOnly => {
                    return Decision::Go(Ticket {
                        deferred: true,
                        ..ticket
                    })
                }
                Mode::Normal => {}
            }
            match self.phase {
                Phase::Closed => return Decision::Go(ticket),
                Phase::Open => {
                    if self.now >= self.open_until {
                        self.transition(Target::HalfOpen, "timeout_elapsed");
                        continue;
                    }
                    let left = Duration::from_nanos(self.open_until - self.now);
                    return Decision::Refused(State::Open, Some(left));
                }
                Phase::HalfOpen => {
                    if self
                        .max_wait
                        .is_some_and(|w| self.now - self.phase_since >= w)
                    {
                        self.transition(Target::Open, "max_wait_elapsed");
                        continue;
                    }
                    if self.admitted >= self.permits {
                        return Decision::Refused(State::HalfOpen, None);
                    }
                    return Decision::Go(Ticket {
                        deferred: true,
                        ..ticket
                    });
                }
            }
        }
    }

    /// A `poll_ready` on a kept service: a ticket of the current period
    /// stands; anything else is decided afresh.
    fn recheck(&mut self, decision: Decision) -> Decision {
        match decision {
            Decision::Go(t) if t.period == self.period => decision,
            _ => self.check(),
        }
    }

    /// `call` with what `poll_ready` decided: a plain ticket of the current
    /// period goes; a refusal is delivered and counted; anything else is
    /// admitted now.
    fn call_with(&mut self, decision: Decision) -> Admit {
        match decision {
            Decision::Go(t) if !t.deferred && t.period == self.period => Admit::Go(Ticket {
                start: self.now,
                ..t
            }),
            Decision::Refused(state, retry_after) => {
                self.rejected += 1;
                self.emitted
                    .count(key("requests_total", &[("status", "rejected")]));
                self.emitted
                    .count(key("rejections_total", &[("state", state.as_str())]));
                Admit::Refused(state, retry_after)
            }
            Decision::Go(_) => self.admit(),
        }
    }

    fn admit(&mut self) -> Admit {
        loop {
            let ticket = Ticket {
                period: self.period,
                probe: false,
                judged: true,
                deferred: false,
                start: self.now,
            };
            match self.mode {
                Mode::Disabled => {
                    return Admit::Go(Ticket {
                        judged: false,
                        ..ticket
                    })
                }
                Mode::ForcedOpen => {
                    self.rejected += 1;
                    self.emitted
                        .count(key("requests_total", &[("status", "rejected")]));
                    self.emitted
                        .count(key("rejections_total", &[("state", "forced_open")]));
                    return Admit::Refused(State::ForcedOpen, None);
                }
                Mode::Normal | Mode::MetricsOnly => {}
            }
            match self.phase {
                Phase::Closed => return Admit::Go(ticket),
                Phase::Open => {
                    if self.now >= self.open_until {
                        self.transition(Target::HalfOpen, "timeout_elapsed");
                        continue;
                    }
                    let left = Duration::from_nanos(self.open_until - self.now);
                    return self.refuse(State::Open, Some(left));
                }
                Phase::HalfOpen => {
                    if self
                        .max_wait
                        .is_some_and(|w| self.now - self.phase_since >= w)
                    {
                        self.transition(Target::Open, "max_wait_elapsed");
                        continue;
                    }
                    if self.admitted >= self.permits {
                        return self.refuse(State::HalfOpen, None);
                    }
                    self.admitted += 1;
                    return Admit::Go(Ticket {
                        probe: true,
                        ..ticket
                    });
                }
            }
        }
    }

    /// A probe's permit handed back (its call ignored or dropped).
    fn release(&mut self, t: Ticket) {
        if t.probe && t.period == self.period && self.admitted > 0 {
            self.admitted -= 1;
        }
    }

    /// A call's outcome, `hint` given through `InFlight::retry_after` first.
    /// A call dropped unfinished finishes as `Out::Ignore`.
    fn finish(&mut self, t: Ticket, out: Out, hint: Option<u64>) {
        // A hint counts only from a judged call of the current period.
        if let Some(h) = hint.filter(|_| t.judged && t.period == self.period) {
            self.hint = h.clamp(1, RETRY_AFTER_CAP);
        }
        let elapsed = if self.timed { self.now - t.start } else { 0 };
        let slow = self.slow_duration.is_some_and(|d| elapsed >= d);
        // A probe that succeeds too slowly fails the half-open test, and is
        // reported as a failure of kind `slow`.
        let reported = match out {
            Out::Ok if t.probe && slow => Out::Fail(FailureKind::SLOW),
            other => other,
        };
        let status = match reported {
            Out::Ok => "success",
            Out::Fail(_) => "failure",
            Out::Ignore => "ignored",
        };
        self.emitted
            .count(key("requests_total", &[("status", status)]));
        if let Out::Fail(kind) = reported {
            self.emitted
                .count(key("failures_total", &[("kind", kind.as_str())]));
        }
        self.emitted
            .histograms
            .entry(key("request_duration_seconds", &[("status", status)]))
            .or_default()
            .push(elapsed as f64 * 1e-9);

        if !t.judged || t.period != self.period {
            return;
        }
        if t.probe {
            match out {
                Out::Ignore => self.release(t),
                Out::Fail(_) => self.transition(Target::Open, "probe_failed"),
                Out::Ok if slow => self.transition(Target::Open, "probe_failed"),
                Out::Ok => {
                    self.successes += 1;
                    if self.successes >= self.successes_needed {
                        self.transition(Target::Closed, "probe_succeeded");
                    }
                }
            }
            return;
        }
        assert_eq!(
            self.phase,
            Phase::Closed,
            "a judged non-probe call of this period"
        );
        let failure = match out {
            Out::Ignore => return,
            Out::Ok => {
                self.consecutive_failures = 0;
                // The upstream answers again: an earlier hint goes stale.
                self.hint = 0;
                false
            }
            Out::Fail(_) => {
                self.consecutive_failures += 1;
                true
            }
        };
        self.push_sample(failure, slow);
        // Every judged outcome is evaluated: a success can fill the window
        // to its minimum, or arrive after old successes aged out.
        if let Some(reason) = self.evaluate() {
            self.transition(Target::Open, reason);
        }
    }
}

// ---------------------------------------------------------------------------
// The real breaker, driven through the public API
// ---------------------------------------------------------------------------

/// Finishes each call as the reply scripted for it says.
#[derive(Clone, Copy, Debug)]
struct Script;

impl Classify<Reply> for Script {
    type Response = ();

    fn classify_response(&self, reply: Reply, call: InFlight) {
        if let Some(hint) = reply.hint {
            call.retry_after(Duration::from_nanos(hint));
        }
        call.finish(match reply.out {
            Out::Ok => Outcome::Success,
            Out::Fail(kind) => Outcome::Failure(kind),
            Out::Ignore => Outcome::Ignored,
        });
    }
}

type Fut = Pin<Box<dyn Future<Output = Result<(), BoxError>>>>;

/// The breaker's service around the scripted upstream.
type Svc = tower_breaker::CircuitBreaker<
    tower::util::ServiceFn<fn(oneshot::Receiver<Reply>) -> ReplyFut>,
    Script,
>;
type ReplyFut = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

fn reply_when_told(rx: oneshot::Receiver<Reply>) -> ReplyFut {
    Box::pin(async move { Ok(rx.await.expect("reply sender kept until finish")) })
}

struct InFlightCall {
    fut: Fut,
    reply: oneshot::Sender<Reply>,
    ticket: Ticket,
}

fn build(cfg: &Cfg, clock: Clock) -> CircuitBreakerLayer<Script> {
    let mut b = CircuitBreakerLayer::builder()
        .name(NAME)
        .clock(clock)
        .minimum_calls(cfg.minimum_calls)
        .half_open_permits(cfg.permits)
        .half_open_successes(cfg.successes)
        .retry_after_cap(Duration::from_nanos(RETRY_AFTER_CAP))
        .metrics_level(cfg.level)
        .open_duration(match cfg.open {
            Open::Fixed(d) => Backoff::fixed(Duration::from_nanos(d)),
            Open::Exp(i, m) => {
                Backoff::exponential(Duration::from_nanos(i), Duration::from_nanos(m))
            }
        });
    b = match cfg.window {
        Win::Count(n) => b.count_window(n),
        Win::Time(n) => b.time_window(Duration::from_secs(n as u64), n),
    };
    if let Some(n) = cfg.consecutive {
        b = b.consecutive_failures(n);
    }
    if let Some(r) = cfg.failure_rate {
        b = b.failure_rate(r);
    }
    if cfg.failure_rate_off {
        b = b.without_failure_rate();
    }
    if let Some(r) = cfg.slow_rate {
        b = b.slow_call_rate(r, Duration::from_nanos(SLOW));
    }
    if let Some(w) = cfg.max_wait {
        b = b.max_half_open_wait(Duration::from_nanos(w));
    }
    b.classifier(Script).build().expect("valid configuration")
}

/// Counter deltas and histogram samples of one step, and the state gauge if
/// it was written.
fn observe(snapshotter: &Snapshotter) -> (Emitted, Option<String>, [Option<f64>; 2]) {
    let mut emitted = Emitted::default();
    let mut state = None;
    let mut rates = [None; 2];
    for (ck, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = ck.key();
        let mut labels: Vec<_> = k
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", k.name(), labels.join(","));
        match value {
            DebugValue::Counter(0) => {}
            DebugValue::Counter(n) => {
                emitted.counters.insert(name, n);
            }
            DebugValue::Histogram(v) if v.is_empty() => {}
            DebugValue::Histogram(v) => {
                emitted
                    .histograms
                    .insert(name, v.into_iter().map(|x| x.into_inner()).collect());
            }
            DebugValue::Gauge(g) => {
                let g = g.into_inner();
                if k.name() == "circuit_breaker_state" && g == 1.0 {
                    let s = k.labels().find(|l| l.key() == "state").unwrap();
                    state = Some(s.value().to_owned());
                }
                // Reading a debugging gauge zeroes it: only values written
                // in this step and not zero are seen.
                let rate = match k.name() {
                    "circuit_breaker_error_rate" => &mut rates[0],
                    "circuit_breaker_slow_call_rate" => &mut rates[1],
                    _ => continue,
                };
                if g != 0.0 {
                    *rate = Some(g);
                }
            }
        }
    }
    (emitted, state, rates)
}

fn now_or_never<F: Future>(f: F, what: &str) -> Result<F::Output, TestCaseError> {
    f.now_or_never()
        .ok_or_else(|| TestCaseError::fail(format!("{what} did not complete at once")))
}

/// Runs one case; every step is compared with the model.
fn run(cfg: &Cfg, ops: &[Op]) -> Result<(), TestCaseError> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (clock, manual): (Clock, ManualClock) = Clock::manual();
        let layer = build(cfg, clock);
        let handle = layer.handle();
        let upstream: fn(oneshot::Receiver<Reply>) -> ReplyFut = reply_when_told;
        let svc: Svc = layer.layer(service_fn(upstream));
        let mut model = Model::new(cfg);
        let mut gauge_state = observe(&snapshotter).1;
        prop_assert_eq!(gauge_state.as_deref(), Some("closed"));
        let mut in_flight: Vec<InFlightCall> = Vec::new();

        let mut held: Vec<(Svc, Decision)> = Vec::new();

        // Admits a call through `call` on a service made ready (with the
        // model's decision for it); `Ok(None)` if refused.
        let call_on = |model: &mut Model,
                       mut s: Svc,
                       decision: Decision|
         -> Result<Option<InFlightCall>, TestCaseError> {
            let expected = model.call_with(decision);
            let (tx, rx) = oneshot::channel();
            let mut fut: Fut = Box::pin(s.call(rx));
            match expected {
                Admit::Go(ticket) => {
                    prop_assert!(
                        fut.as_mut().now_or_never().is_none(),
                        "admitted call finished early"
                    );
                    Ok(Some(InFlightCall {
                        fut,
                        reply: tx,
                        ticket,
                    }))
                }
                Admit::Refused(state, retry_after) => {
                    let err = now_or_never(fut, "rejected call")?
                        .expect_err("the model refuses this call");
                    let open = err
                        .downcast_ref::<CircuitOpen>()
                        .ok_or_else(|| TestCaseError::fail(format!("not CircuitOpen: {err}")))?;
                    prop_assert_eq!(open.state(), state);
                    prop_assert_eq!(open.retry_after(), retry_after);
                    prop_assert_eq!(open.service(), NAME);
                    Ok(None)
                }
            }
        };
        // Admits a call through `ready` + `call`.
        let start = |model: &mut Model| -> Result<Option<InFlightCall>, TestCaseError> {
            let decision = model.check();
            let mut s = svc.clone();
            now_or_never(s.ready(), "ready")?.map_err(|e| TestCaseError::fail(e.to_string()))?;
            call_on(model, s, decision)
        };
        let finish = |model: &mut Model, call: InFlightCall, reply: Reply| {
            model.finish(call.ticket, reply.out, reply.hint);
            call.reply.send(reply).expect("the inner future waits");
            now_or_never(call.fut, "finished call")?
                .map_err(|e| TestCaseError::fail(format!("inner call failed: {e}")))
        };

        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Call(reply, latency) => {
                    if let Some(call) = start(&mut model)? {
                        manual.advance(Duration::from_nanos(*latency));
                        model.now += latency;
                        finish(&mut model, call, *reply)?;
                    }
                }
                Op::Start => {
                    if let Some(call) = start(&mut model)? {
                        in_flight.push(call);
                    }
                }
                Op::Finish(i, reply) => {
                    if !in_flight.is_empty() {
                        let call = in_flight.swap_remove(i % in_flight.len());
                        finish(&mut model, call, *reply)?;
                    }
                }
                Op::Drop(i) => {
                    if !in_flight.is_empty() {
                        let call = in_flight.swap_remove(i % in_flight.len());
                        model.finish(call.ticket, Out::Ignore, None);
                        drop(call);
                    }
                }
                Op::ReadyDrop => {
                    model.check();
                    let mut s = svc.clone();
                    now_or_never(s.ready(), "ready")?
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    drop(s);
                }
                Op::ReadyHold => {
                    let decision = model.check();
                    let mut s = svc.clone();
                    now_or_never(s.ready(), "ready")?
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    held.push((s, decision));
                }
                Op::RepollHeld(i) => {
                    if !held.is_empty() {
                        let i = i % held.len();
                        held[i].1 = model.recheck(held[i].1);
                        now_or_never(held[i].0.ready(), "ready again")?
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    }
                }
                Op::CallHeld(i, reply, latency) => {
                    if !held.is_empty() {
                        let (s, decision) = held.swap_remove(i % held.len());
                        if let Some(call) = call_on(&mut model, s, decision)? {
                            manual.advance(Duration::from_nanos(*latency));
                            model.now += latency;
                            finish(&mut model, call, *reply)?;
                        }
                    }
                }
                Op::Advance(d) => {
                    manual.advance(Duration::from_nanos(*d));
                    model.now += d;
                }
                Op::ForceOpen => {
                    model.transition(Target::ForcedOpen, "manual");
                    handle.force_open();
                }
                Op::ForceClosed => {
                    model.transition(Target::Closed, "manual");
                    handle.force_closed();
                }
                Op::Disable => {
                    model.transition(Target::Disabled, "manual");
                    handle.disable();
                }
                Op::MetricsOnly => {
                    model.transition(Target::MetricsOnly, "manual");
                    handle.metrics_only();
                }
                Op::Reset => {
                    model.transition(Target::Reset, "manual");
                    handle.reset();
                }
            }

            let expected = std::mem::take(&mut model.emitted).at_level(model.level);
            let ctx = || format!("step {step} ({op:?}), model {model:?}");
            prop_assert_eq!(handle.state(), model.state(), "state after {}", ctx());
            let snap = handle.snapshot();
            let (calls, failures, slow) = model.counts();
            prop_assert_eq!(snap.state, model.state(), "{}", ctx());
            prop_assert_eq!(snap.machine_state, model.phase_state(), "{}", ctx());
            prop_assert_eq!(
                (snap.calls, snap.failures, snap.slow_calls),
                (calls, failures, slow),
                "window counts after {}",
                ctx()
            );
            prop_assert_eq!(
                snap.consecutive_failures,
                model.consecutive_failures,
                "{}",
                ctx()
            );
            prop_assert_eq!(
                (snap.half_open_probes, snap.half_open_successes),
                (model.admitted, model.successes),
                "half-open counts after {}",
                ctx()
            );
            prop_assert_eq!(
                (snap.rejected, snap.shadow_rejected),
                (model.rejected, model.shadow_rejected),
                "rejection counts after {}",
                ctx()
            );
            let open_remaining = (model.phase == Phase::Open)
                .then(|| Duration::from_nanos(model.open_until.saturating_sub(model.now)));
            prop_assert_eq!(snap.open_remaining, open_remaining, "{}", ctx());
            prop_assert!((0.0..=1.0).contains(&snap.trip_risk), "{}", ctx());
            if model.phase != Phase::Closed {
                prop_assert_eq!(snap.trip_risk, 1.0, "{}", ctx());
            }

            let (emitted, gauge, rates) = observe(&snapshotter);
            {
                // A rate gauge written during the step shows the window as
                // it is now, for both kinds of window. (A time window's
                // rates also move with the clock alone; a step that only
                // advances the clock writes no gauge.)
                let rate = |part: u64| {
                    if calls == 0 {
                        0.0
                    } else {
                        part as f64 / calls as f64
                    }
                };
                for (seen, want, what) in [
                    (rates[0], rate(failures), "error_rate"),
                    (rates[1], rate(slow), "slow_call_rate"),
                ] {
                    if let Some(seen) = seen {
                        prop_assert!(
                            (seen - want).abs() < 1e-12,
                            "{} gauge {} but the window says {} after {}",
                            what,
                            seen,
                            want,
                            ctx()
                        );
                    }
                }
            }
            prop_assert_eq!(&emitted, &expected, "metrics emitted by {}", ctx());
            if gauge.is_some() {
                gauge_state = gauge;
            }
            prop_assert_eq!(
                gauge_state.as_deref(),
                Some(model.state().as_str()),
                "state gauge after {}",
                ctx()
            );
        }
        Ok(())
    })
}

/// Shadow mode must survive the shadow machine's recovery: when its probes
/// succeed, the breaker still lets everything through and reports
/// MetricsOnly (found by the model: it used to drop back to enforcing).
#[test]
fn shadow_recovery_stays_in_metrics_only() {
    let cfg = Cfg {
        consecutive: Some(1),
        failure_rate: None,
        failure_rate_off: true,
        slow_rate: None,
        window: Win::Count(1),
        minimum_calls: 1,
        permits: 1,
        successes: 1,
        max_wait: None,
        open: Open::Fixed(SEC),
        level: MetricsLevel::Full,
    };
    let ok = Reply {
        out: Out::Ok,
        hint: None,
    };
    let fail = Reply {
        out: Out::Fail(FailureKind::ERROR),
        hint: None,
    };
    let ops = [
        Op::MetricsOnly,
        Op::Call(fail, MS),
        Op::Advance(SEC),
        Op::Call(ok, MS),
        // Shadow Closed again: a failure trips the shadow machine only.
        Op::Call(fail, MS),
        Op::Call(ok, MS),
    ];
    run(&cfg, &ops).unwrap();

    let (clock, manual) = Clock::manual();
    let layer = build(&cfg, clock);
    let handle = layer.handle();
    handle.metrics_only();
    let svc = layer.layer(service_fn(|r: Reply| async move { Ok::<_, Infallible>(r) }));
    let call = |r: Reply| svc.clone().oneshot(r).now_or_never().unwrap();
    call(fail).unwrap();
    assert_eq!(handle.snapshot().machine_state, State::Open);
    manual.advance(Duration::from_secs(1));
    call(ok).unwrap();
    assert_eq!(handle.snapshot().machine_state, State::Closed);
    assert_eq!(handle.state(), State::MetricsOnly);
    call(fail).unwrap();
    call(ok).expect("shadow mode lets calls through");
}

/// A breaker that does not time calls (metrics level below Full, count
/// window, no slow-call policy) must still trip, reopen and close at the
/// current time (found by the model: it used time 0, so after the first
/// open duration of uptime it never stayed open).
#[test]
fn untimed_breaker_opens_for_the_full_duration() {
    for level in [MetricsLevel::Minimal, MetricsLevel::Standard] {
        let (clock, manual) = Clock::manual();
        let layer = CircuitBreakerLayer::builder()
            .name("untimed")
            .clock(clock)
            .metrics_level(level)
            .consecutive_failures(1)
            .half_open_permits(1)
            .max_half_open_wait(Duration::from_secs(5))
            .open_duration(Backoff::fixed(Duration::from_secs(30)))
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layer.layer(service_fn(|fail: bool| async move {
            if fail {
                Err(std::io::Error::other("down"))
            } else {
                Ok(())
            }
        }));
        let call = |fail: bool| svc.clone().oneshot(fail).now_or_never().unwrap();
        manual.advance(Duration::from_secs(3_600));
        call(true).unwrap_err();
        assert_eq!(handle.state(), State::Open, "{level:?}");
        assert_eq!(
            handle.snapshot().open_remaining,
            Some(Duration::from_secs(30)),
            "{level:?}"
        );
        manual.advance(Duration::from_secs(29));
        assert!(call(false).unwrap_err().is::<CircuitOpen>(), "{level:?}");
        manual.advance(Duration::from_secs(1));
        // The probe fails: open again for the full duration from now.
        call(true).unwrap_err();
        assert_eq!(
            handle.snapshot().open_remaining,
            Some(Duration::from_secs(30)),
            "{level:?}"
        );
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4_096,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn breaker_agrees_with_the_model(
        cfg in cfg_strategy(),
        ops in proptest::collection::vec(op_strategy(), 1..60),
    ) {
        run(&cfg, &ops)?;
    }
}
