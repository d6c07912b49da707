//! The shared core of one breaker: its machine, metrics, clock and hooks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::classify::Outcome;
use crate::clock::Clock;
use crate::error::CircuitOpen;
use crate::metrics::{BreakerMetrics, Handles, HandlesGuard};
use crate::state::{Admission, Machine, Observer, State, StateChange, Ticket};

/// A hook run after every transition.
pub(crate) type StateHook = Arc<dyn Fn(&StateChange) + Send + Sync>;

/// One breaker, shared by its layer, services, futures and handles.
pub(crate) struct Breaker {
    pub(crate) machine: Machine,
    pub(crate) metrics: BreakerMetrics,
    pub(crate) clock: Clock,
    /// Whether calls must be timed: for the duration histogram, the
    /// slow-call policy or a time window.
    timed: bool,
    hooks: Vec<StateHook>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("service", self.metrics.service())
            .field("state", &self.machine.state())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// What a service holds between `poll_ready` and `call`.
#[derive(Debug)]
pub(crate) enum Pending {
    Call(InFlight),
    Refuse(CircuitOpen),
}

impl Breaker {
    pub(crate) fn new(
        machine: Machine,
        metrics: BreakerMetrics,
        clock: Clock,
        timed: bool,
        hooks: Vec<StateHook>,
    ) -> Self {
        Breaker {
            machine,
            metrics,
            clock,
            timed,
            hooks,
        }
    }

    pub(crate) fn service(&self) -> &Arc<str> {
        self.metrics.service()
    }

    /// The handles of the current recorder.
    #[inline]
    pub(crate) fn handles(&self) -> HandlesGuard {
        self.metrics.handles(|h| self.sync_gauges(h))
    }

    /// Brings a fresh set of handles up to date with the breaker.
    fn sync_gauges(&self, h: &Handles) {
        h.set_state(self.machine.state());
        let now = self.clock.now();
        let snapshot = self.machine.snapshot(now);
        h.error_rate.set(snapshot.failure_rate);
        h.slow_call_rate.set(snapshot.slow_call_rate);
        h.trip_risk.set(snapshot.trip_risk);
    }

    /// Asks the machine whether a call may go through.
    pub(crate) fn admit(self: &Arc<Self>) -> Pending {
        match self.machine.admit(|| self.clock.now(), &**self) {
            Admission::Permitted(ticket) => Pending::Call(InFlight::new(self.clone(), ticket)),
            Admission::Shadow(ticket) => {
                self.handles().shadow_rejected();
                Pending::Call(InFlight::new(self.clone(), ticket))
            }
            Admission::Rejected { state, retry_after } => {
                self.handles().rejected(state);
                Pending::Refuse(CircuitOpen::new(self.service().clone(), state, retry_after))
            }
        }
    }

    #[inline]
    fn timed_now(&self) -> u64 {
        if self.timed {
            self.clock.now()
        } else {
            0
        }
    }

    fn finish(&self, ticket: Ticket, outcome: Outcome, start: u64) {
        let end = self.timed_now();
        let elapsed = end.saturating_sub(start);
        let handles = self.handles();
        handles.finished(outcome, elapsed as f64 * 1e-9);
        if self.machine.record(ticket, outcome, elapsed, end, self) {
            self.update_rates(&handles, end);
        }
    }

    fn update_rates(&self, h: &Handles, now: u64) {
        if self.metrics.level() < crate::MetricsLevel::Standard {
            return;
        }
        let counts = self.machine.window().counts(now);
        h.error_rate.set(counts.failure_rate());
        h.slow_call_rate.set(counts.slow_call_rate());
        let consecutive = self.machine.consecutive_failures();
        h.trip_risk
            .set(self.machine.policy().trip_risk(&counts, consecutive));
    }
}

impl Observer for Breaker {
    fn on_transition_locked(&self, change: &StateChange) {
        self.metrics.transition(change);
        let handles = self.handles();
        handles.set_state(self.machine.state());
        if let Some(recovery) = change.recovery {
            handles.recovered(recovery.as_secs_f64());
        }
        let now = self.clock.now();
        self.update_rates(&handles, now);
        if !matches!(change.to, State::Closed) && !change.shadow {
            handles.trip_risk.set(if change.to == State::Disabled {
                0.0
            } else {
                1.0
            });
        }
    }

    fn on_transition(&self, change: StateChange) {
        #[cfg(feature = "tracing")]
        log_transition(self.service(), &change);
        for hook in &self.hooks {
            hook(&change);
        }
    }
}

#[cfg(feature = "tracing")]
fn log_transition(service: &str, change: &StateChange) {
    let open_for = change.open_for.map(|d| d.as_secs_f64());
    let recovery = change.recovery.map(|d| d.as_secs_f64());
    if matches!(change.to, State::Open | State::ForcedOpen) {
        tracing::warn!(
            service,
            from = change.from.as_str(),
            to = change.to.as_str(),
            reason = change.reason.as_str(),
            error_rate = change.snapshot.failure_rate,
            slow_call_rate = change.snapshot.slow_call_rate,
            shadow = change.shadow,
            open_for,
            "circuit breaker opened"
        );
    } else {
        tracing::info!(
            service,
            from = change.from.as_str(),
            to = change.to.as_str(),
            reason = change.reason.as_str(),
            error_rate = change.snapshot.failure_rate,
            slow_call_rate = change.snapshot.slow_call_rate,
            shadow = change.shadow,
            recovery,
            "circuit breaker state changed"
        );
    }
}

/// An admitted call, waiting for its outcome.
///
/// Hand it an outcome with [`finish`](InFlight::finish). Dropped unfinished,
/// the call counts as [`Outcome::Ignored`] and gives back its half-open
/// permit, so a cancelled probe never wedges the breaker.
pub struct InFlight {
    breaker: Arc<Breaker>,
    ticket: Ticket,
    start: u64,
    started: bool,
    finished: bool,
}

impl InFlight {
    fn new(breaker: Arc<Breaker>, ticket: Ticket) -> Self {
        InFlight {
            breaker,
            ticket,
            start: 0,
            started: false,
            finished: false,
        }
    }

    /// Marks the moment the inner service is called.
    #[inline]
    pub(crate) fn start(&mut self) {
        self.start = self.breaker.timed_now();
        self.started = true;
    }

    /// Records the call's outcome.
    #[inline]
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.breaker.finish(self.ticket, outcome, self.start);
    }

    /// Passes on the upstream's hint of when to try again (`Retry-After`,
    /// `grpc-retry-pushback-ms`): if this call trips or reopens the breaker,
    /// it stays open at least this long, up to the configured cap.
    pub fn retry_after(&self, after: Duration) {
        self.breaker.machine.hint(after);
    }

    /// The name of the breaker this call went through.
    pub fn service(&self) -> &str {
        self.breaker.service()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.started {
            self.breaker
                .finish(self.ticket, Outcome::Ignored, self.start);
        } else {
            self.breaker.machine.release(self.ticket);
        }
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("service", &self.service())
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}
