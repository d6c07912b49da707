//! Errors: the rejection of an open breaker, and invalid configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::state::NO_RETRY_AFTER;
use crate::State;

/// The error returned when the breaker refuses a call.
///
/// The inner service is not called. It reaches callers as a
/// [`tower::BoxError`]; find it with `error.is::<CircuitOpen>()` or
/// `downcast_ref`.
///
/// ```
/// # use tower_breaker::CircuitOpen;
/// fn is_rejection(error: &tower::BoxError) -> bool {
///     error.is::<CircuitOpen>()
/// }
/// # let _ = is_rejection;
/// ```
#[derive(Clone)]
pub struct CircuitOpen {
    // Inline, not shared: a refusal is boxed once, as the `BoxError` it
    // travels as, and that is its only allocation.
    service: Arc<str>,
    state: State,
    /// The time left as of the refusal, in nanoseconds, or
    /// [`NO_RETRY_AFTER`]: made a `Duration` only when asked.
    left: u64,
    /// Refused for capacity: the concurrency limit.
    capacity: Option<u32>,
}

impl CircuitOpen {
    #[cfg(test)]
    pub(crate) fn new(service: Arc<str>, state: State, retry_after: Option<Duration>) -> Self {
        let left = retry_after.map_or(NO_RETRY_AFTER, |d| {
            d.as_nanos().min(u128::from(NO_RETRY_AFTER - 1)) as u64
        });
        Self::refused(service, state, left)
    }

    /// A refusal with the time left in nanoseconds (see [`Refusal::left`]).
    ///
    /// [`Refusal::left`]: crate::state::Refusal
    #[inline]
    pub(crate) fn refused(service: Arc<str>, state: State, left: u64) -> Self {
        CircuitOpen {
            service,
            state,
            left,
            capacity: None,
        }
    }

    /// A refusal for capacity: `limit` calls were in flight.
    pub(crate) fn at_capacity(service: Arc<str>, state: State, limit: u32) -> Self {
        CircuitOpen {
            service,
            state,
            left: NO_RETRY_AFTER,
            capacity: Some(limit),
        }
    }

    /// Whether the call was refused because the breaker's concurrency
    /// limit ([`Builder::max_concurrent_calls`](crate::Builder::max_concurrent_calls))
    /// was reached, not because the breaker refuses calls: it is then
    /// usually Closed, and a retry elsewhere, or soon, may pass.
    pub fn is_capacity(&self) -> bool {
        self.capacity.is_some()
    }

    /// The concurrency limit that refused the call, for a refusal for
    /// capacity.
    pub fn capacity_limit(&self) -> Option<u32> {
        self.capacity
    }

    /// The name of the breaker that refused the call.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The state the breaker was in: Open, HalfOpen (no probe permit left)
    /// or ForcedOpen; for a refusal for capacity, whatever state it was in.
    pub fn state(&self) -> State {
        self.state
    }

    /// How long until the breaker lets probes through, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        (self.left != NO_RETRY_AFTER).then(|| Duration::from_nanos(self.left))
    }
}

impl fmt::Debug for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitOpen")
            .field("service", &self.service())
            .field("state", &self.state())
            .field("retry_after", &self.retry_after())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.capacity {
            Some(limit) => write!(
                f,
                "circuit breaker `{}` is at capacity ({limit} calls in flight)",
                self.service()
            ),
            None => write!(
                f,
                "circuit breaker `{}` is {}",
                self.service(),
                self.state().as_str().replace('_', "-")
            ),
        }
    }
}

impl std::error::Error for CircuitOpen {}

/// The error of [`Builder::build`](crate::Builder::build): a setting is
/// invalid. The message names the field.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }

    /// The builder setting that is invalid.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigError")
            .field("field", &self.field)
            .field("reason", &self.reason)
            .finish()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_lowercase_and_names_things() {
        let e = CircuitOpen::new("payments".into(), State::HalfOpen, None);
        assert_eq!(e.to_string(), "circuit breaker `payments` is half-open");
        let boxed: tower::BoxError = Box::new(e);
        assert!(boxed.is::<CircuitOpen>());
        let full = CircuitOpen::at_capacity("payments".into(), State::Closed, 8);
        assert_eq!(
            full.to_string(),
            "circuit breaker `payments` is at capacity (8 calls in flight)"
        );
        assert!(full.is_capacity() && full.retry_after().is_none());
        let c = ConfigError::new("failure_rate", "must be in (0, 1]");
        assert_eq!(c.to_string(), "invalid `failure_rate`: must be in (0, 1]");
    }
}
