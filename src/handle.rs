//! Watching and steering a breaker from outside the request path.

use std::fmt;
use std::sync::Arc;

use crate::breaker::Breaker;
use crate::state::{Reason, Snapshot, State, Target};

/// A handle to one breaker: read its state, take a snapshot, or override it.
///
/// Cheap to clone; every clone steers the same breaker.
///
/// ```
/// use tower_breaker::{CircuitBreakerLayer, State};
///
/// let layer = CircuitBreakerLayer::builder().name("doc-handle").build().unwrap();
/// let handle = layer.handle();
/// handle.force_open();
/// assert_eq!(handle.state(), State::ForcedOpen);
/// handle.reset();
/// assert_eq!(handle.snapshot().state, State::Closed);
/// ```
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    breaker: Arc<Breaker>,
}

impl CircuitBreakerHandle {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        CircuitBreakerHandle { breaker }
    }

    /// The breaker's name (its `service` label).
    pub fn name(&self) -> &str {
        self.breaker.service()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.breaker.machine.state()
    }

    /// Counts, rates and state, now.
    pub fn snapshot(&self) -> Snapshot {
        self.breaker.machine.snapshot(self.breaker.clock.now())
    }

    /// The latest early-warning prediction; `None` without
    /// [`Builder::early_warning`](crate::Builder::early_warning) or before
    /// the window holds the minimum number of calls.
    pub fn prediction(&self) -> Option<crate::Prediction> {
        self.breaker.prediction()
    }

    /// Refuses every call until told otherwise.
    pub fn force_open(&self) {
        self.go(Target::ForcedOpen);
    }

    /// Closes the breaker (clearing its window), lifting any override.
    pub fn force_closed(&self) {
        self.go(Target::Closed);
    }

    /// Lets every call through without judging it, until told otherwise.
    pub fn disable(&self) {
        self.go(Target::Disabled);
    }

    /// Shadow mode: lets every call through while the machine runs and
    /// counts the calls it would have refused.
    pub fn metrics_only(&self) {
        self.go(Target::MetricsOnly);
    }

    /// Back to a fresh Closed breaker: window, backoff and rejection counts
    /// cleared, overrides lifted.
    pub fn reset(&self) {
        self.go(Target::Reset);
    }

    fn go(&self, target: Target) {
        let now = self.breaker.clock.now();
        self.breaker
            .machine
            .transition(None, target, Reason::Manual, now, &*self.breaker);
    }
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}
