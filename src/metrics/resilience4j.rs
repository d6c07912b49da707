//! Names compatible with resilience4j's Micrometer binder, so a mesh of JVM
//! and Rust services keeps one dashboard.
//!
//! Chosen with
//! [`Builder::metrics_naming(MetricsNaming::Resilience4j)`](crate::Builder::metrics_naming):
//!
//! ```
//! # #[cfg(feature = "prometheus")] {
//! use tower_breaker::{CircuitBreakerLayer, MetricsNaming};
//!
//! let (recorder, handle) = tower_breaker::exporter::recorder();
//! let _layer = metrics::with_local_recorder(&recorder, || {
//!     CircuitBreakerLayer::builder()
//!         .name("backendA")
//!         .metrics_naming(MetricsNaming::Resilience4j)
//!         .build()
//!         .expect("valid settings")
//! });
//! let text = handle.render();
//! assert!(text.contains(r#"resilience4j_circuitbreaker_state{name="backendA",state="closed"} 1"#));
//! // No call yet: below the minimum number of calls.
//! assert!(text.contains(r#"resilience4j_circuitbreaker_failure_rate{name="backendA"} -1"#));
//! # }
//! ```
//!
//! # What the binder shows
//!
//! Read from resilience4j's source (`resilience4j/resilience4j`, commit
//! `af9e7c979f17`, May 2026):
//!
//! - `resilience4j-micrometer/src/main/java/io/github/resilience4j/micrometer/tagged/CircuitBreakerMetricNames.java`:
//!   the names, `resilience4j.circuitbreaker.` followed by `calls`,
//!   `not.permitted.calls`, `state`, `buffered.calls`, `slow.calls`,
//!   `failure.rate`, `slow.call.rate`.
//! - `.../micrometer/tagged/AbstractCircuitBreakerMetrics.java` (used by
//!   `TaggedCircuitBreakerMetrics` and `TaggedCircuitBreakerMetricsPublisher`):
//!   the meters and their tags. Every meter has `name` (the breaker's name,
//!   `TagNames.NAME`) plus the breaker's custom tags.
//!   - `state`: one gauge per `CircuitBreaker.State`, tag `state` =
//!     the state's lower-case name (`closed`, `open`, `half_open`,
//!     `disabled`, `forced_open`, `metrics_only`), 1 for the current state,
//!     0 for the others.
//!   - `calls`: a `Timer`, tag `kind` = `successful`, `failed` or
//!     `ignored`, recording each call's elapsed time from the success,
//!     error and ignored-error events.
//!   - `not.permitted.calls`: a `Counter`, tag `kind="not_permitted"`,
//!     incremented on each call-not-permitted event.
//!   - `buffered.calls`: gauges, `kind` = `successful` / `failed`, the
//!     numbers of successful and failed calls in the sliding window.
//!   - `slow.calls`: gauges, `kind` = `successful` / `failed`, the slow
//!     successful and slow failed calls in the window.
//!   - `failure.rate`, `slow.call.rate`: gauges, `CircuitBreaker.Metrics`'
//!     `getFailureRate()` / `getSlowCallRate()`.
//! - `resilience4j-circuitbreaker/.../internal/CircuitBreakerMetrics.java`
//!   and `resilience4j-core/.../core/metrics/SnapshotImpl.java`: the rates
//!   are percentages, `failed * 100 / calls`, and `-1` while the window
//!   holds no call or fewer than `minimumNumberOfCalls` (for a count window,
//!   at most its size).
//! - `resilience4j-circuitbreaker/.../internal/CircuitBreakerStateMachine.java`:
//!   calls are refused (not permitted) in `OPEN`, `FORCED_OPEN` and a full
//!   `HALF_OPEN`; `DISABLED` and `FORCED_OPEN` publish no events
//!   (`State.allowPublish` is false), so there the binder's timer and
//!   not-permitted counter do not move.
//!
//! Micrometer's Prometheus registry turns the dots into underscores, adds
//! `_seconds` to a timer's base unit and `_total` to a counter: a timer is
//! `_seconds_count` and `_seconds_sum` (a summary, or with
//! `percentiles-histogram` a histogram with `_seconds_bucket`) plus a
//! `_seconds_max` gauge. Those are the series resilience4j's own Grafana
//! dashboard (`grafana_dashboard.json` in the same repository) queries:
//! `resilience4j_circuitbreaker_state`, `_calls_seconds_count`,
//! `_calls_seconds_sum`, `_buffered_calls`, `_failure_rate`.
//!
//! # The series of this naming
//!
//! Names start with `resilience4j_circuitbreaker` (or the prefix set with
//! [`metrics_prefix`](crate::Builder::metrics_prefix)), and the breaker's
//! name is the `name` label, sanitized and capped like `service` (see the
//! [cardinality](super#cardinality) rules).
//!
//! | binder (Prometheus) | here | labels | level |
//! |---|---|---|---|
//! | `_state` gauge | `_state`, one-hot, from construction | `name`, `state` | Minimal |
//! | `_calls_seconds` timer | `_calls_seconds` histogram: `_count`, `_sum` (and `_bucket`) | `name`, `kind`: `successful`, `failed`, `ignored` | Minimal |
//! | `_not_permitted_calls_total` counter | the same | `name`, `kind="not_permitted"` | Minimal |
//! | `_failure_rate` gauge | the same: percent, -1 below the minimum number of calls | `name` | Standard |
//! | `_slow_call_rate` gauge | the same: percent, -1 below the minimum | `name` | Standard |
//! | `_buffered_calls` gauges | the same | `name`, `kind`: `successful`, `failed` | Standard |
//! | `_calls_seconds_max` gauge | not reported | | |
//! | `_slow_calls` gauges | not reported | | |
//!
//! What the binder has no meter for keeps this crate's family, under the
//! same prefix and with `name` for `service`: `_transitions_total`
//! (`from`, `to`, `reason`, created at zero as in the native contract),
//! `_rejections_total` (`state`, including `capacity` and the shadow
//! refusals of `metrics_only`), `_failures_total` (`kind`: the failure kind,
//! `timeout`, `http_5xx`, ...), `_recovery_duration_seconds`,
//! `_trip_risk` (0..1), `_in_flight`, `_capacity_utilization`,
//! `_trips_suppressed_total`, `_open_share` and `_dependency` (`name` the
//! caller, `upstream`), at the levels of the native contract. There is no
//! `_requests_total`: the calls are `_calls_seconds_count` and
//! `_not_permitted_calls_total`.
//!
//! # Differences
//!
//! - **Every level times calls.** The binder's only count of calls is its
//!   timer, so calls are timed whenever a recorder is installed, also at
//!   [`Minimal`](super::MetricsLevel::Minimal) and
//!   [`Standard`](super::MetricsLevel::Standard); the work per call is
//!   that of the native `Full` level (two clock reads, one histogram
//!   sample), without the requests counter. With no recorder, no clock
//!   is read, as with native names.
//! - **No `_calls_seconds_max`, no `_slow_calls`.** A running maximum would
//!   add a write to every call; the window counts slow calls without
//!   telling slow successes from slow failures. Use
//!   `histogram_quantile(1, ...)` over the buckets for the first, and
//!   `_slow_call_rate` for the second.
//! - **Histogram, not summary.** With the crate's recorder
//!   ([`exporter::recorder`](crate::exporter::recorder) and friends)
//!   `_calls_seconds` is a classic histogram with
//!   [`DURATION_BUCKETS`](crate::exporter::DURATION_BUCKETS) (as the binder
//!   with `percentiles-histogram` enabled); `_count` and `_sum` are the
//!   same series either way. A plain Prometheus exporter without buckets
//!   for it renders a summary with quantiles.
//! - **Every state counts.** Calls in `disabled` and refusals in
//!   `forced_open` are counted, where the binder sees no event. Calls
//!   refused by a concurrency limit are not permitted calls too (and
//!   `_rejections_total{state="capacity"}`). A half-open probe that
//!   succeeds too slowly fails the probe and counts as `failed`.
//! - **The window is this crate's.** Rates and buffered calls are those of
//!   the breaker's window (count or time). Open shows the window that
//!   tripped, as the binder does; HalfOpen still shows it (the binder
//!   starts a window over the permitted calls there), and the window
//!   starts empty when the breaker closes again (so the rates read -1).
//!   Values are `f64`, where the binder computes `f32`
//!   (`33.333333333333336` where it shows `33.33333206176758`).
//!
//! # Scopes and the recorder
//!
//! The crate's recorder keeps these families in its store like the native
//! ones, and their series live and expire with the breaker's `name` as
//! they do with `service`. Scoped `/metrics` views treat `name` as they
//! treat `service`: a scope's patterns match it, the redacted view replaces
//! it with the stable id, and the aggregate view removes it (the failure
//! rate becomes the largest one, like the slow-call rate). Only the
//! `kind` of `_failures_total` is collapsed by the redacted view; the
//! binder's `kind` values are kept.

use crate::window::Counts;

/// The prefix of the binder's names as Prometheus shows them.
pub const DEFAULT_PREFIX: &str = "resilience4j_circuitbreaker";

/// The value of `_failure_rate` and `_slow_call_rate` while the window
/// holds fewer calls than the minimum (or none).
pub const NOT_ENOUGH_CALLS: f64 = -1.0;

/// The suffixes of the family names, after the prefix and `_`.
pub(crate) const SUFFIXES: [&str; 16] = [
    "state",
    "calls_seconds",
    "not_permitted_calls_total",
    "failure_rate",
    "slow_call_rate",
    "buffered_calls",
    "transitions_total",
    "rejections_total",
    "failures_total",
    "recovery_duration_seconds",
    "trip_risk",
    "dependency",
    "in_flight",
    "capacity_utilization",
    "trips_suppressed_total",
    "open_share",
];

/// The preset's own families (the rest are the contract's, under the
/// preset's prefix): their help differs from the contract's.
pub(crate) const FAMILIES: [super::Family; 5] = {
    use super::FamilyKind::*;
    use metrics::Unit;
    [
        (
            "calls_seconds",
            Histogram,
            Some(Unit::Seconds),
            "Calls and their time inside the inner service, by kind: successful, failed, ignored.",
        ),
        (
            "not_permitted_calls_total",
            Counter,
            Some(Unit::Count),
            "Calls not permitted: refused by the breaker.",
        ),
        (
            "buffered_calls",
            Gauge,
            None,
            "Calls in the current window, by kind: successful, failed.",
        ),
        (
            "failure_rate",
            Gauge,
            None,
            "Failure rate over the current window in percent (0..100); -1 below the minimum number of calls.",
        ),
        (
            "slow_call_rate",
            Gauge,
            None,
            "Slow-call rate over the current window in percent (0..100); -1 below the minimum number of calls.",
        ),
    ]
};

/// The failure and slow-call rates as the binder shows them: percentages,
/// or [`NOT_ENOUGH_CALLS`] while the window holds no call or fewer than
/// `minimum_calls`.
pub(crate) fn rates(counts: &Counts, minimum_calls: u64) -> (f64, f64) {
    if counts.calls == 0 || counts.calls < minimum_calls {
        return (NOT_ENOUGH_CALLS, NOT_ENOUGH_CALLS);
    }
    (
        counts.failure_rate() * 100.0,
        counts.slow_call_rate() * 100.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(calls: u64, failures: u64, slow: u64) -> Counts {
        Counts {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn rates_are_percentages_after_the_minimum() {
        assert_eq!(rates(&counts(0, 0, 0), 0), (-1.0, -1.0));
        assert_eq!(rates(&counts(3, 3, 0), 4), (-1.0, -1.0));
        assert_eq!(rates(&counts(4, 1, 2), 4), (25.0, 50.0));
        assert_eq!(rates(&counts(1, 0, 0), 0), (0.0, 0.0));
    }
}
