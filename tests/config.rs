//! Every invalid setting is an error naming its field, never a panic.

use std::time::Duration;

use tower_breaker::{Backoff, Builder, CircuitBreakerLayer, MAX_WINDOW_SIZE};

fn field_of(builder: Builder) -> &'static str {
    let err = builder.build().expect_err("invalid config must not build");
    assert!(
        err.to_string().contains(err.field()),
        "message {err} names the field"
    );
    err.field()
}

#[test]
fn invalid_settings_name_their_field() {
    let b = CircuitBreakerLayer::builder;
    let secs = Duration::from_secs;
    let cases: Vec<(Builder, &str)> = vec![
        (b().name(""), "name"),
        (b().name("   "), "name"),
        (b().failure_rate(0.0), "failure_rate"),
        (b().failure_rate(1.5), "failure_rate"),
        (b().failure_rate(f64::NAN), "failure_rate"),
        (b().failure_rate(-0.1), "failure_rate"),
        (b().slow_call_rate(0.0, secs(1)), "slow_call_rate"),
        (b().slow_call_rate(2.0, secs(1)), "slow_call_rate"),
        (
            b().slow_call_rate(0.5, Duration::ZERO),
            "slow_call_duration",
        ),
        (b().consecutive_failures(0), "consecutive_failures"),
        // No policy left: the breaker could never open.
        (b().without_failure_rate(), "failure_rate"),
        (b().minimum_calls(0), "minimum_calls"),
        (b().count_window(0), "count_window"),
        (b().count_window(MAX_WINDOW_SIZE + 1), "count_window"),
        (b().count_window(10).minimum_calls(11), "minimum_calls"),
        (b().time_window(secs(10), 0), "time_window"),
        (
            b().time_window(Duration::from_micros(10), 10),
            "time_window",
        ),
        (b().half_open_permits(0), "half_open_permits"),
        (b().half_open_permits(70_000), "half_open_permits"),
        (
            b().half_open_permits(2).half_open_successes(3),
            "half_open_successes",
        ),
        (b().half_open_successes(0), "half_open_successes"),
        (b().max_half_open_wait(Duration::ZERO), "max_half_open_wait"),
        (
            b().open_duration(Backoff::fixed(Duration::ZERO)),
            "open_duration",
        ),
        (
            b().open_duration(Backoff::exponential(Duration::ZERO, secs(1))),
            "backoff.initial",
        ),
        (
            b().open_duration(Backoff::exponential(secs(2), secs(1))),
            "backoff.max",
        ),
        (
            b().open_duration(Backoff::exponential(secs(1), secs(2)).multiplier(0.5)),
            "backoff.multiplier",
        ),
        (
            b().open_duration(Backoff::exponential(secs(1), secs(2)).jitter(1.5)),
            "backoff.jitter",
        ),
        (b().retry_after_cap(Duration::ZERO), "retry_after_cap"),
        (b().metrics_prefix(""), "metrics_prefix"),
        (b().metrics_prefix("9lives"), "metrics_prefix"),
        (b().metrics_prefix("has space"), "metrics_prefix"),
    ];
    for (builder, field) in cases {
        let debug = format!("{builder:?}");
        assert_eq!(field_of(builder), field, "{debug}");
    }
}

#[test]
fn valid_edges_build() {
    let secs = Duration::from_secs;
    CircuitBreakerLayer::builder()
        .failure_rate(1.0)
        .count_window(1)
        .minimum_calls(1)
        .half_open_permits(1)
        .build()
        .unwrap();
    CircuitBreakerLayer::builder()
        .time_window(secs(1), 1000)
        .minimum_calls(1_000_000)
        .open_duration(
            Backoff::exponential(secs(1), secs(1))
                .multiplier(1.0)
                .jitter(1.0),
        )
        .build()
        .unwrap();
}
