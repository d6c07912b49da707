//! Trip policies: when a Closed breaker opens.
//!
//! Policies compose as "any of": the breaker trips as soon as one of the
//! enabled policies says so, and reports that policy as the reason.
//!
//! - **Consecutive failures**: `n` failures in a row, whatever the window.
//! - **Failure rate**: `failures / calls >= threshold` over the window, once
//!   the window holds at least `minimum_calls` calls.
//! - **Slow-call rate**: `slow / calls >= threshold`, where a call is slow
//!   when it took at least the slow-call duration (success or failure).

use crate::state::Reason;
use crate::window::Counts;

/// The enabled policies of one breaker.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Policy {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_call_rate: Option<f64>,
    /// Nanoseconds from which a call is slow.
    pub(crate) slow_call_duration: Option<u64>,
    pub(crate) minimum_calls: u64,
}

impl Policy {
    /// The policy that trips now, if any, in a fixed order.
    pub(crate) fn evaluate(&self, counts: &Counts, consecutive: u32) -> Option<Reason> {
        if let Some(limit) = self.consecutive_failures {
            if consecutive >= limit {
                return Some(Reason::ConsecutiveFailures);
            }
        }
        if counts.calls < self.minimum_calls.max(1) {
            return None;
        }
        if let Some(threshold) = self.failure_rate {
            if counts.failure_rate() >= threshold {
                return Some(Reason::FailureRate);
            }
        }
        if let Some(threshold) = self.slow_call_rate {
            if counts.slow_call_rate() >= threshold {
                return Some(Reason::SlowCallRate);
            }
        }
        None
    }

    /// Whether a call of `elapsed` nanoseconds is slow.
    #[inline]
    pub(crate) fn is_slow(&self, elapsed: u64) -> bool {
        self.slow_call_duration
            .is_some_and(|limit| elapsed >= limit)
    }

    /// How close the policies are to tripping, in `0..=1`: the largest of
    /// each enabled policy's progress towards its limit. Rate policies are
    /// scaled by how full the minimum-calls gate is, so a window of two calls
    /// with one failure is not "half way" to a 50% threshold.
    pub(crate) fn trip_risk(&self, counts: &Counts, consecutive: u32) -> f64 {
        let mut risk: f64 = 0.0;
        if let Some(limit) = self.consecutive_failures {
            risk = risk.max(f64::from(consecutive) / f64::from(limit.max(1)));
        }
        let gate = (counts.calls as f64 / self.minimum_calls.max(1) as f64).min(1.0);
        if let Some(threshold) = self.failure_rate {
            risk = risk.max(gate * counts.failure_rate() / threshold);
        }
        if let Some(threshold) = self.slow_call_rate {
            risk = risk.max(gate * counts.slow_call_rate() / threshold);
        }
        risk.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            consecutive_failures: Some(3),
            failure_rate: Some(0.5),
            slow_call_rate: Some(0.8),
            slow_call_duration: Some(100),
            minimum_calls: 4,
        }
    }

    fn counts(calls: u64, failures: u64, slow: u64) -> Counts {
        Counts {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn consecutive_failures_trip_regardless_of_window() {
        assert_eq!(
            policy().evaluate(&counts(0, 0, 0), 3),
            Some(Reason::ConsecutiveFailures)
        );
        assert_eq!(policy().evaluate(&counts(0, 0, 0), 2), None);
    }

    #[test]
    fn rates_wait_for_minimum_calls() {
        assert_eq!(policy().evaluate(&counts(3, 3, 0), 0), None);
        assert_eq!(
            policy().evaluate(&counts(4, 2, 0), 0),
            Some(Reason::FailureRate)
        );
        assert_eq!(policy().evaluate(&counts(4, 1, 0), 0), None);
    }

    #[test]
    fn slow_call_rate_trips() {
        assert_eq!(
            policy().evaluate(&counts(5, 0, 4), 0),
            Some(Reason::SlowCallRate)
        );
        assert!(policy().is_slow(100));
        assert!(!policy().is_slow(99));
    }

    #[test]
    fn trip_risk_tracks_the_closest_policy() {
        let p = policy();
        assert_eq!(p.trip_risk(&counts(0, 0, 0), 0), 0.0);
        assert!((p.trip_risk(&counts(0, 0, 0), 2) - 2.0 / 3.0).abs() < 1e-9);
        // 1 failure in 2 calls is 50%, but the gate is half full.
        assert!((p.trip_risk(&counts(2, 1, 0), 0) - 0.5).abs() < 1e-9);
        assert_eq!(p.trip_risk(&counts(4, 4, 0), 0), 1.0);
    }
}
