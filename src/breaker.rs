//! The shared core of one breaker: its machine, metrics, clock and hooks.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tower::BoxError;

use crate::capacity::{refuses, Capacity, FleetMember};
use crate::classify::{FailureKind, Outcome};
use crate::clock::Clock;
use crate::dependency::EdgeGuard;
use crate::error::CircuitOpen;
use crate::metrics::{BreakerMetrics, Handles, HandlesRef, MetricsLevel, Transition};
use crate::policy::Policy;
use crate::predict::{Prediction, Predictor};
use crate::state::{Admission, Machine, Observer, Reason, Refusal, State, StateChange, Ticket};
use crate::window::Counts;

/// A hook run after every transition.
pub(crate) type StateHook = Arc<dyn Fn(&StateChange) + Send + Sync>;

/// One breaker, shared by its layer, services, futures and handles.
pub(crate) struct Breaker {
    /// The breaker's name in errors, logs, hooks and handles: its `service`
    /// label, or the key of a keyed breaker whose layer ran out of labels
    /// (which reports under `__overflow__`).
    name: Arc<str>,
    pub(crate) machine: Machine,
    pub(crate) metrics: BreakerMetrics,
    pub(crate) clock: Clock,
    /// Whether the policy times calls: the slow-call policy or a time
    /// window. The duration histogram times them too, when a recorder is
    /// installed (see [`Breaker::stamp`]).
    timed: bool,
    /// Whether the window is a time window, whose rates drift as buckets
    /// expire and successes come in without `record` reporting a change:
    /// its gauges are set after every call.
    time_window: bool,
    hooks: Vec<StateHook>,
    /// The trend estimator, when early warning is on.
    predictor: Option<Predictor>,
    /// This breaker's `caller -> name` edge, when it has a caller.
    pub(crate) dependency: OnceLock<EdgeGuard>,
    /// The last transition, for the status page.
    last_transition: std::sync::Mutex<Option<LastTransition>>,
    /// The concurrency limit, if one is set.
    capacity: Option<Capacity>,
    /// Its place in a keyed layer's open-share guard, if one is set.
    fleet: Option<FleetMember>,
}

impl Drop for Breaker {
    fn drop(&mut self) {
        crate::live::unregister(self);
    }
}

/// A transition as the status page shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LastTransition {
    pub(crate) from: State,
    pub(crate) to: State,
    pub(crate) reason: Reason,
    /// Clock nanoseconds.
    pub(crate) at: u64,
}

/// What the dependency graph shows of a breaker.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub(crate) state: State,
    pub(crate) error_rate: f64,
    pub(crate) trip_risk: f64,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("service", &self.name)
            .field("state", &self.machine.state())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub(crate) fn new(
        name: Arc<str>,
        machine: Machine,
        mut metrics: BreakerMetrics,
        clock: Clock,
        timed: bool,
        hooks: Vec<StateHook>,
    ) -> Self {
        metrics.expect_transitions(expected_transitions(machine.policy()));
        Breaker {
            name,
            time_window: machine.window().needs_time(),
            machine,
            metrics,
            clock,
            timed,
            hooks,
            predictor: None,
            dependency: OnceLock::new(),
            last_transition: std::sync::Mutex::new(None),
            capacity: None,
            fleet: None,
        }
    }

    /// Caps the calls in flight.
    pub(crate) fn with_capacity(mut self, limit: Option<u32>) -> Self {
        self.capacity = limit.map(Capacity::new);
        self
    }

    /// Puts the breaker in a keyed layer's open-share guard.
    pub(crate) fn with_fleet(mut self, member: Option<FleetMember>) -> Self {
        self.fleet = member;
        self
    }

    /// Turns on early warning with this estimator.
    pub(crate) fn with_predictor(mut self, predictor: Option<Predictor>) -> Self {
        self.predictor = predictor;
        self
    }

    /// The latest prediction, when early warning is on.
    pub(crate) fn prediction(&self) -> Option<Prediction> {
        self.predictor.as_ref().and_then(Predictor::latest)
    }

    /// The breaker's name (see [`Breaker::name`](Self)).
    pub(crate) fn service(&self) -> &Arc<str> {
        &self.name
    }

    /// The `service` label its metrics carry.
    pub(crate) fn label(&self) -> &Arc<str> {
        self.metrics.service()
    }

    /// The handles of the current recorder.
    #[inline]
    pub(crate) fn handles(&self) -> HandlesRef<'_> {
        self.metrics.handles(|h| self.sync_gauges(h))
    }

    /// The handles in `slot` (as [`BreakerMetrics::current`] returned it),
    /// or those of the current recorder if the slot holds none.
    fn handles_at(&self, slot: u8) -> HandlesRef<'_> {
        match self.metrics.cached(slot) {
            Some(handles) => HandlesRef::Cached(handles),
            None => self.handles(),
        }
    }

    /// Marks the breaker's series idle (its key was evicted): every state
    /// gauge 0, rates 0.
    pub(crate) fn retire(&self) {
        self.handles().set_idle();
        if let Some(fleet) = &self.fleet {
            fleet.leave();
        }
        self.fleet_changed();
    }

    /// Republishes the keyed layer's open-share gauge, if the breaker is a
    /// key of a layer with `max_open_share`: after it joined, left or moved.
    pub(crate) fn fleet_changed(&self) {
        if let Some(fleet) = &self.fleet {
            crate::metrics::open_share(self.metrics.names(), &fleet.guard);
        }
    }

    /// Brings a fresh set of handles up to date with the breaker.
    fn sync_gauges(&self, h: &Handles) {
        // Outside the transition lock: a transition racing this one sets the
        // gauge after changing the state, so set until the state read before
        // setting is still the state after.
        loop {
            let state = self.machine.state();
            h.set_state(state);
            if self.machine.state() == state {
                break;
            }
        }
        self.update_rates(h, self.clock.now());
        if let Some(edge) = self.dependency.get() {
            edge.publish();
        }
    }

    /// State, error rate and trip risk (as the gauge shows it), now.
    pub(crate) fn view(&self) -> View {
        let now = self.clock.now();
        let counts = self.machine.window().counts(now);
        View {
            state: self.machine.state(),
            error_rate: counts.failure_rate(),
            trip_risk: self.trip_risk(&counts, now),
        }
    }

    /// What the status page shows of the breaker now: its snapshot, the
    /// time since it entered its state, and its last transition with the
    /// time since (seconds).
    pub(crate) fn status(&self) -> (crate::Snapshot, f64, Option<(LastTransition, f64)>) {
        let now = self.clock.now();
        let mut snapshot = self.machine.snapshot(now);
        snapshot.trip_risk = self.trip_risk(
            &crate::window::Counts {
                calls: snapshot.calls,
                failures: snapshot.failures,
                slow: snapshot.slow_calls,
            },
            now,
        );
        let secs = |at: u64| now.saturating_sub(at) as f64 * 1e-9;
        let since = secs(self.machine.phase_since());
        let last = *self
            .last_transition
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (snapshot, since, last.map(|t| (t, secs(t.at))))
    }

    /// The policies' risk, raised to the projected risk under early warning.
    fn with_trend(&self, risk: f64) -> f64 {
        match &self.predictor {
            Some(p) => risk.max(p.projected()),
            None => risk,
        }
    }

    /// The decision of `poll_ready`: a ticket, or a refusal; takes no
    /// permit and counts nothing (see [`Machine::check`]).
    #[inline]
    pub(crate) fn check(&self) -> Result<Ticket, Refusal> {
        self.machine.check(|| self.clock.now(), self)
    }

    /// Whether a ticket kept since an earlier `poll_ready` may stand for the
    /// next one: while no transition happened since.
    #[inline]
    pub(crate) fn still_ready(&self, ticket: Ticket) -> bool {
        self.machine.is_current(ticket)
    }

    /// Starts a call with the ticket `poll_ready` took. A ticket that no
    /// longer stands (the breaker moved since, or it is deferred: a probe,
    /// a shadow call) is decided again now.
    #[inline(always)]
    pub(crate) fn start(self: &Arc<Self>, ticket: Ticket) -> Result<InFlight, BoxError> {
        if self.machine.stands(ticket) && self.capacity.is_none() {
            return Ok(self.in_flight(ticket));
        }
        self.start_slow(ticket)
    }

    /// [`start`](Self::start) under a concurrency limit, or with a ticket
    /// that no longer stands: out of line, so the service's `call` stays
    /// small enough to inline.
    #[cold]
    #[inline(never)]
    fn start_slow(self: &Arc<Self>, ticket: Ticket) -> Result<InFlight, BoxError> {
        let started = if self.machine.stands(ticket) {
            self.permitted(ticket)
        } else {
            self.admit()
        };
        started.map_err(boxed)
    }

    /// A `call` without a ticket: the refusal `poll_ready` decided, or (no
    /// `poll_ready` before it) an admission now. Out of line.
    #[cold]
    #[inline(never)]
    pub(crate) fn start_unready(
        self: &Arc<Self>,
        refusal: Option<Refusal>,
    ) -> Result<InFlight, BoxError> {
        match refusal {
            Some(refusal) => Err(boxed(self.refused(refusal))),
            None => self.admit().map_err(boxed),
        }
    }

    /// A call the breaker admitted, under the concurrency limit (there is
    /// one): it takes a slot, or is refused for capacity. In Disabled and
    /// MetricsOnly every call passes: one that finds no slot free passes
    /// without one (counted as a shadow refusal in MetricsOnly).
    #[cold]
    #[inline(never)]
    fn permitted(self: &Arc<Self>, ticket: Ticket) -> Result<InFlight, CircuitOpen> {
        if self.capacity.is_some() {
            if let Some(call) = self.in_flight_with_slot(ticket) {
                return Ok(call);
            }
            match self.machine.state() {
                State::Disabled => {}
                State::MetricsOnly => self.handles().shadow_rejected(),
                _ => return Err(self.at_capacity(ticket)),
            }
        }
        Ok(self.in_flight(ticket))
    }

    /// The record of a call starting now that holds a slot of the
    /// concurrency limit, if there is a limit and a slot is free.
    fn in_flight_with_slot(self: &Arc<Self>, ticket: Ticket) -> Option<InFlight> {
        let capacity = self.capacity.as_ref()?;
        if !capacity.try_acquire() {
            return None;
        }
        self.capacity_changed(capacity);
        let mut call = self.in_flight(ticket);
        call.stamp = Stamp(call.stamp.0 | Stamp::HOLDS_SLOT);
        Some(call)
    }

    /// Gives a call's slot back, if it holds one: a test of a bit of the
    /// call's stamp.
    #[inline(always)]
    fn give_slot(&self, stamp: Stamp) {
        if stamp.holds_slot() {
            self.give_slot_slow();
        }
    }

    #[cold]
    #[inline(never)]
    fn give_slot_slow(&self) {
        if let Some(capacity) = &self.capacity {
            capacity.release();
            self.capacity_changed(capacity);
        }
    }

    /// Sets the in-flight gauges until they show the count as it is.
    #[cold]
    fn capacity_changed(&self, capacity: &Capacity) {
        let handles = self.handles();
        loop {
            let n = capacity.in_flight();
            handles.set_in_flight(n, capacity.limit());
            if capacity.in_flight() == n {
                break;
            }
        }
    }

    /// Refuses a call the breaker admitted because every slot is taken;
    /// gives back the probe permit it may have taken.
    #[cold]
    fn at_capacity(&self, ticket: Ticket) -> CircuitOpen {
        self.machine.release(ticket);
        self.machine.count_refusal();
        self.handles().rejected_capacity();
        let limit = self.capacity.as_ref().map_or(0, Capacity::limit);
        CircuitOpen::at_capacity(self.service().clone(), self.machine.state(), limit)
    }

    /// Admits a call now: takes a half-open permit if it is a probe, counts
    /// a refusal.
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>) -> Result<InFlight, CircuitOpen> {
        match self.machine.admit(|| self.clock.now(), &**self) {
            Admission::Permitted(ticket) if !ticket.is_probe() && self.capacity.is_none() => {
                Ok(self.in_flight(ticket))
            }
            admission => self.admit_slow(admission),
        }
    }

    /// [`admit`](Self::admit), with the time the call's start was stamped
    /// at, if it was timed: the keyed layer marks the key used with it
    /// instead of reading the clock again.
    #[inline]
    pub(crate) fn admit_timed(self: &Arc<Self>) -> (Result<InFlight, CircuitOpen>, Option<u64>) {
        match self.machine.admit(|| self.clock.now(), &**self) {
            Admission::Permitted(ticket) if !ticket.is_probe() && self.capacity.is_none() => {
                let (stamp, start) = self.stamp_timed();
                let call = InFlight {
                    breaker: Some(self.clone()),
                    ticket,
                    stamp,
                };
                (Ok(call), start)
            }
            admission => (self.admit_slow(admission), None),
        }
    }

    #[cold]
    fn admit_slow(self: &Arc<Self>, admission: Admission) -> Result<InFlight, CircuitOpen> {
        match admission {
            Admission::Permitted(ticket) => self.permitted(ticket),
            Admission::Shadow(ticket) => {
                // Passes whatever the limit says, already counted as a shadow
                // refusal; it holds a slot if one is free.
                self.handles().shadow_rejected();
                Ok(self
                    .in_flight_with_slot(ticket)
                    .unwrap_or_else(|| self.in_flight(ticket)))
            }
            Admission::Rejected { state, left } => {
                self.handles().rejected(state);
                Err(CircuitOpen::refused(self.service().clone(), state, left))
            }
        }
    }

    /// Delivers a refusal decided in `poll_ready`; its `retry_after` is
    /// the time left as of `poll_ready`. Inline into
    /// [`start_unready`](Self::start_unready), its one caller, which is
    /// out of line.
    #[inline(always)]
    fn refused(&self, refusal: Refusal) -> CircuitOpen {
        self.machine.count_refusal();
        self.handles().rejected(refusal.state());
        CircuitOpen::refused(self.service().clone(), refusal.state(), refusal.left())
    }

    /// The record of a call starting now.
    #[inline(always)]
    fn in_flight(self: &Arc<Self>, ticket: Ticket) -> InFlight {
        InFlight {
            breaker: Some(self.clone()),
            ticket,
            stamp: self.stamp(),
        }
    }

    /// The stamp of a call starting now. The call is timed when the policy
    /// needs durations, or when the current recorder is a real one and the
    /// level keeps the duration histogram: with no recorder installed, the
    /// success path reads no clock.
    #[inline(always)]
    fn stamp(&self) -> Stamp {
        self.stamp_timed().0
    }

    /// [`stamp`](Self::stamp), with the time it read, if it read one.
    #[inline(always)]
    fn stamp_timed(&self) -> (Stamp, Option<u64>) {
        let (slot, times_calls, noop) = self.metrics.current_slot(|h| self.sync_gauges(h));
        let timed = self.timed || times_calls;
        let start = if timed { self.clock.now() } else { 0 };
        (
            Stamp::started(start, slot, timed, noop),
            timed.then_some(start),
        )
    }

    /// Records a call's outcome. The hot path (a plain success in Closed
    /// that is not slow, over a count window) stays inline; the rest is out
    /// of line.
    #[inline(always)]
    fn finish(&self, ticket: Ticket, stamp: Stamp, outcome: Outcome) {
        // The call's slot of the concurrency limit, if it holds one.
        self.give_slot(stamp);
        let mut end = None;
        if matches!(outcome, Outcome::Success) {
            if !stamp.timed() {
                if let Some(changed) = self.machine.record_plain_success(ticket) {
                    return self.recorded(ticket, stamp, None, changed, None);
                }
            } else if !self.time_window {
                let now = self.clock.now();
                end = Some(now);
                let elapsed = stamp.elapsed(now);
                if !self.machine.policy().is_slow(elapsed) {
                    if let Some(changed) = self.machine.record_plain_success(ticket) {
                        let seconds = Some(elapsed as f64 * 1e-9);
                        return self.recorded(ticket, stamp, seconds, changed, end);
                    }
                }
            }
        }
        self.finish_slow(ticket, stamp, outcome, end);
    }

    /// Counts a success the machine has recorded on the hot path: nothing
    /// to do for the no-op recorder's handles when the window's totals
    /// did not change.
    #[inline(always)]
    fn recorded(
        &self,
        ticket: Ticket,
        stamp: Stamp,
        seconds: Option<f64>,
        changed: bool,
        end: Option<u64>,
    ) {
        if stamp.0 & Stamp::NOOP != 0 && !changed {
            return;
        }
        let slot = stamp.slot();
        match self.metrics.cached(slot) {
            Some(handles) if !changed => handles.finished(Outcome::Success, seconds),
            _ => self.recorded_success(ticket, slot, seconds, changed, end),
        }
    }

    /// The rest of a success the machine has recorded on the hot path: its
    /// handles were not cached, or the window's totals changed (a window
    /// filling up, or a failure pushed out), which the policies judge.
    #[cold]
    #[inline(never)]
    fn recorded_success(
        &self,
        ticket: Ticket,
        slot: u8,
        seconds: Option<f64>,
        changed: bool,
        end: Option<u64>,
    ) {
        let handles = self.handles_at(slot);
        handles.finished(Outcome::Success, seconds);
        if changed {
            let now = end.unwrap_or_else(|| self.clock.now());
            self.machine.evaluate(ticket, now, self);
            self.window_changed(&handles, now);
        }
    }

    /// Every other outcome. `end` is the time the hot path already read.
    #[inline(never)]
    fn finish_slow(&self, ticket: Ticket, stamp: Stamp, outcome: Outcome, end: Option<u64>) {
        let timed = stamp.timed();
        let end = match end {
            Some(end) => end,
            None if timed => self.clock.now(),
            None => 0,
        };
        let elapsed = if timed { stamp.elapsed(end) } else { 0 };
        let handles = self.handles_at(stamp.slot());
        // A slow probe fails the half-open test (the machine reopens with
        // probe_failed): report it as the failure it is.
        let reported = match outcome {
            Outcome::Success if ticket.is_probe() && self.machine.policy().is_slow(elapsed) => {
                Outcome::Failure(FailureKind::SLOW)
            }
            other => other,
        };
        // Should the recorder panic here, the call's outcome is lost to the
        // breaker too: a probe then gives its permit back, as a cancelled
        // one does, so the breaker is not left half-open with none free.
        let lost = ProbeLost {
            machine: &self.machine,
            ticket,
        };
        handles.finished(reported, timed.then_some(elapsed as f64 * 1e-9));
        std::mem::forget(lost);
        // A transition needs the time even when calls are not timed: any
        // judged outcome may trip (a window filling up reaches its minimum
        // with a success), a probe may close or reopen. Calls are always
        // timed with a time window.
        let now = if timed || !ticket.is_judged() || matches!(outcome, Outcome::Ignored) {
            end
        } else {
            self.clock.now()
        };
        let changed = self.machine.record(ticket, outcome, elapsed, now, self);
        if changed {
            // Not the hot path: the window's totals or the streak changed.
            self.window_changed(&handles, now);
        } else if self.time_window {
            // A time window's rates move with every call and with time:
            // the gauges show them as of this call.
            self.update_rates(&handles, now);
        }
    }

    /// After a call changed the window's totals or the streak: the trend
    /// and the rate gauges.
    fn window_changed(&self, handles: &Handles, now: u64) {
        let warning = match &self.predictor {
            Some(p) if matches!(self.machine.state(), State::Closed | State::MetricsOnly) => {
                let counts = self.machine.window().counts(now);
                p.observe(self.service(), &counts, now)
            }
            _ => None,
        };
        self.update_rates(handles, now);
        if let (Some(p), Some(warning)) = (&self.predictor, warning) {
            p.fire(&warning);
        }
    }

    /// Sets the rate and trip-risk gauges from the window.
    fn update_rates(&self, h: &Handles, now: u64) {
        if self.metrics.level() < MetricsLevel::Standard || h.is_noop() {
            return;
        }
        let counts = self.machine.window().counts(now);
        let minimum_calls = self.machine.policy().minimum_calls;
        h.set_rates(&counts, minimum_calls, self.trip_risk(&counts, now));
    }

    /// The trip-risk gauge: the policies' progress while they judge calls
    /// (raised to the projection under early warning), 1 while the breaker
    /// is (or would be, in shadow mode) open, half-open or forced open, 0
    /// when disabled.
    fn trip_risk(&self, counts: &Counts, now: u64) -> f64 {
        match self.machine.state() {
            State::Closed => self.with_trend(
                self.machine
                    .policy()
                    .trip_risk(counts, self.machine.consecutive_failures()),
            ),
            State::Disabled => 0.0,
            State::MetricsOnly => {
                let shadow = self.machine.snapshot(now);
                match shadow.machine_state {
                    State::Closed => self.with_trend(shadow.trip_risk),
                    _ => 1.0,
                }
            }
            State::Open | State::HalfOpen | State::ForcedOpen => 1.0,
        }
    }
}

impl Observer for Breaker {
    fn may_trip(&self, reason: Reason) -> bool {
        let Some(fleet) = &self.fleet else {
            return true;
        };
        if fleet.may_open() {
            return true;
        }
        self.handles().trip_suppressed(reason);
        false
    }

    fn on_transition_locked(&self, change: &StateChange) {
        if let Some(fleet) = &self.fleet {
            fleet.moved(refuses(self.machine.state()));
            crate::metrics::open_share(self.metrics.names(), &fleet.guard);
        }
        self.metrics.transition(change);
        *self
            .last_transition
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(LastTransition {
            from: change.from,
            to: change.to,
            reason: change.reason,
            at: self.clock.now(),
        });
        let handles = self.handles();
        if let Some(recovery) = change.recovery {
            handles.recovered(recovery.as_secs_f64());
        }
        if let Some(p) = &self.predictor {
            // A new phase: the old trend says nothing about it.
            p.reset();
        }
        // Every recorder that knows this breaker sees its new state, not only
        // the one current on this thread.
        let (state, now) = (self.machine.state(), self.clock.now());
        self.metrics.for_each_cached(|h| {
            h.set_state(state);
            self.update_rates(h, now);
        });
        if matches!(handles, HandlesRef::Uncached(_)) {
            handles.set_state(state);
            self.update_rates(&handles, now);
        }
    }

    fn name(&self) -> Arc<str> {
        self.service().clone()
    }

    fn on_transition(&self, change: StateChange) {
        #[cfg(feature = "tracing")]
        log_transition(self.service(), &change);
        for hook in &self.hooks {
            hook(&change);
        }
    }
}

/// A refusal as the `BoxError` it travels as: its one allocation.
#[inline]
fn boxed(error: CircuitOpen) -> BoxError {
    Box::new(error)
}

/// The transitions whose counters exist from the start, at zero, so that
/// `increase()` sees the first of each: a trip for every enabled policy, and
/// the half-open round trip.
fn expected_transitions(policy: &Policy) -> Vec<Transition> {
    let trips = [
        (
            policy.consecutive_failures.is_some(),
            Reason::ConsecutiveFailures,
        ),
        (policy.failure_rate.is_some(), Reason::FailureRate),
        (policy.slow_call_rate.is_some(), Reason::SlowCallRate),
    ];
    let mut expected: Vec<Transition> = trips
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, reason)| (State::Closed, State::Open, reason))
        .collect();
    expected.extend([
        (State::Open, State::HalfOpen, Reason::TimeoutElapsed),
        (State::HalfOpen, State::Open, Reason::ProbeFailed),
        (State::HalfOpen, State::Closed, Reason::ProbeSucceeded),
    ]);
    expected
}

#[cfg(feature = "tracing")]
fn log_transition(service: &str, change: &StateChange) {
    let open_for = change.open_for.map(|d| d.as_secs_f64());
    let recovery = change.recovery.map(|d| d.as_secs_f64());
    // One set of fields; only the level and message depend on the direction.
    macro_rules! event {
        ($level:expr, $message:literal) => {
            tracing::event!(
                $level,
                service,
                from = change.from.as_str(),
                to = change.to.as_str(),
                reason = change.reason.as_str(),
                error_rate = change.snapshot.failure_rate,
                slow_call_rate = change.snapshot.slow_call_rate,
                shadow = change.shadow,
                open_for,
                recovery,
                $message
            )
        };
    }
    if matches!(change.to, State::Open | State::ForcedOpen) {
        event!(tracing::Level::WARN, "circuit breaker opened");
    } else {
        event!(tracing::Level::INFO, "circuit breaker state changed");
    }
}

/// An admitted call, waiting for its outcome.
///
/// Hand it an outcome with [`finish`](InFlight::finish). Dropped unfinished,
/// the call counts as [`Outcome::Ignored`] and gives back its half-open
/// permit, so a cancelled probe never wedges the breaker.
pub struct InFlight {
    /// Taken only by [`finish`](InFlight::finish), which consumes the
    /// record: `Some` wherever else it is seen.
    breaker: Option<Arc<Breaker>>,
    ticket: Ticket,
    stamp: Stamp,
}

/// When a call started and how it is recorded, in one word: futures carry
/// the record, and a small one moves cheaply.
///
/// Bits 0..56 hold the start (clock nanoseconds modulo 2^56, about 833
/// days; durations are taken modulo the same, so they are exact for any
/// call shorter than that), bits 56..59 the metric handles' slot, then the
/// timed, finished, holds-slot, settled and no-op flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(u64);

// UNCACHED keeps no slot in a stamp: it reads back as the mask.
const _: () = assert!(crate::metrics::UNCACHED as u64 & Stamp::SLOT_MASK == Stamp::SLOT_MASK);

impl Stamp {
    const START_MASK: u64 = (1 << 56) - 1;
    const SLOT_SHIFT: u32 = 56;
    const SLOT_MASK: u64 = 0b111;
    const TIMED: u64 = 1 << 59;
    const FINISHED: u64 = 1 << 60;
    const HOLDS_SLOT: u64 = 1 << 61;
    /// The call's duration is settled: the low bits hold it, not the start.
    const SETTLED: u64 = 1 << 62;
    /// The call's handles are the no-op recorder's: a success that changes
    /// nothing in the window has nothing to count.
    const NOOP: u64 = 1 << 63;

    #[inline(always)]
    fn started(start: u64, slot: u8, timed: bool, noop: bool) -> Self {
        // UNCACHED (all ones) reads back as the mask: no slot.
        let slot = u64::from(slot) & Self::SLOT_MASK;
        let timed = if timed { Self::TIMED } else { 0 };
        let noop = if noop { Self::NOOP } else { 0 };
        Stamp(start & Self::START_MASK | slot << Self::SLOT_SHIFT | timed | noop)
    }

    #[inline]
    fn elapsed(self, end: u64) -> u64 {
        if self.0 & Self::SETTLED != 0 {
            return self.0 & Self::START_MASK;
        }
        end.wrapping_sub(self.0) & Self::START_MASK
    }

    /// The stamp with its duration settled at `end`.
    #[cfg(feature = "grpc")]
    fn settled(self, end: u64) -> Self {
        if self.0 & Self::SETTLED != 0 {
            return self;
        }
        Stamp(self.0 & !Self::START_MASK | self.elapsed(end) | Self::SETTLED)
    }

    #[inline]
    fn slot(self) -> u8 {
        ((self.0 >> Self::SLOT_SHIFT) & Self::SLOT_MASK) as u8
    }

    #[inline]
    fn timed(self) -> bool {
        self.0 & Self::TIMED != 0
    }

    #[inline]
    fn is_finished(self) -> bool {
        self.0 & Self::FINISHED != 0
    }

    #[inline(always)]
    fn holds_slot(self) -> bool {
        self.0 & Self::HOLDS_SLOT != 0
    }
}

impl InFlight {
    /// Records the call's outcome.
    #[inline(always)]
    pub fn finish(mut self, outcome: Outcome) {
        // Finished (and its slot given back, by `Breaker::finish`) before
        // the outcome is recorded, and only the breaker's `Arc` is held
        // while it is: a state-change hook or a recorder that panics
        // unwinds through that alone, not through a call still to finish.
        // (The record itself then never needs an address, so its fields
        // stay in registers.)
        let (ticket, stamp) = (self.ticket, self.stamp);
        self.stamp = Stamp((stamp.0 | Stamp::FINISHED) & !Stamp::HOLDS_SLOT);
        if let Some(breaker) = self.breaker.take() {
            drop(self);
            breaker.finish(ticket, stamp, outcome);
        }
    }

    /// The call's response streams (see `GrpcBody`): its duration stops
    /// here, so the slow-call policy and the duration histogram see the
    /// time to its first message, not how long the client listened; a
    /// half-open probe is judged now, a success (the upstream answered),
    /// and gives its permit back. A judged probe keeps its slot of the
    /// concurrency limit until the stream ends: the returned call is then
    /// finished, and holds only that slot until it is dropped.
    #[cfg(feature = "grpc")]
    pub(crate) fn streaming(mut self) -> InFlight {
        let Some(breaker) = &self.breaker else {
            return self;
        };
        if self.ticket.is_probe() {
            let stamp = self.stamp;
            self.stamp = Stamp(stamp.0 | Stamp::FINISHED);
            let judged = Stamp(stamp.0 & !Stamp::HOLDS_SLOT);
            breaker.finish(self.ticket, judged, Outcome::Success);
            return self;
        }
        if self.stamp.timed() {
            self.stamp = self.stamp.settled(breaker.clock.now());
        }
        self
    }

    /// Whether the call's outcome is recorded (it may still hold a slot).
    #[cfg(feature = "grpc")]
    pub(crate) fn is_judged(&self) -> bool {
        self.stamp.is_finished()
    }

    /// Passes on the upstream's hint of when to try again (`Retry-After`,
    /// `grpc-retry-pushback-ms`): if the breaker trips or reopens before a
    /// later call succeeds, it stays open at least this long, up to the
    /// configured cap. Call it before [`finish`](InFlight::finish).
    pub fn retry_after(&self, after: Duration) {
        if let Some(breaker) = &self.breaker {
            breaker.machine.hint(self.ticket, after);
        }
    }

    /// The name of the breaker this call went through.
    pub fn service(&self) -> &str {
        self.breaker.as_deref().map_or("", |b| b.service())
    }
}

/// Gives a probe's permit back if dropped: armed while a recorder counts a
/// call whose outcome the machine has not recorded yet.
struct ProbeLost<'a> {
    machine: &'a Machine,
    ticket: Ticket,
}

impl Drop for ProbeLost<'_> {
    fn drop(&mut self) {
        self.machine.release(self.ticket);
    }
}

impl Drop for InFlight {
    #[inline(always)]
    fn drop(&mut self) {
        if self.stamp.0 & (Stamp::FINISHED | Stamp::HOLDS_SLOT) != Stamp::FINISHED {
            if let Some(breaker) = &self.breaker {
                InFlight::dropped(breaker, self.ticket, self.stamp);
            }
        }
    }
}

impl InFlight {
    /// A call dropped before its outcome was recorded (cancelled), or a
    /// judged one that still holds its slot (a streaming probe): out of
    /// line, so the drop of a finished call stays one test.
    #[cold]
    #[inline(never)]
    fn dropped(breaker: &Breaker, ticket: Ticket, stamp: Stamp) {
        if stamp.is_finished() {
            breaker.give_slot(stamp);
        } else {
            breaker.finish(ticket, stamp, Outcome::Ignored);
        }
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("service", &self.service())
            .field("finished", &self.stamp.is_finished())
            .finish_non_exhaustive()
    }
}
