//! The metrics contract, read back through `metrics_util`'s `DebuggingRecorder`
//! after scripted traffic on a manual clock: exact values for every metric and
//! label, levels, prefix, sanitized names, and per-recorder handles.

#[path = "support/recorded.rs"]
mod recorded;
#[path = "support/traffic.rs"]
mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use metrics::Unit;
use metrics_util::debugging::DebuggingRecorder;
use metrics_util::MetricKind;
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{
    Backoff, CircuitBreakerLayer, Clock, FailureKind, MetricsLevel, Outcome, State,
};

use recorded::{assert_all_close, assert_close, one_hot, Recorded};
use traffic::{classify, ms, send, upstream, Call, Sent};

const P: &str = "circuit_breaker";

fn name(suffix: &str) -> String {
    format!("{P}_{suffix}")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Label sets as `Recorded::label_sets` prints them.
fn sets(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn series_exist_from_construction() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, _manual) = Clock::manual();
    let _layer = CircuitBreakerLayer::builder()
        .name("fresh")
        .consecutive_failures(5)
        .slow_call_rate(0.5, ms(100))
        .clock(clock)
        .build()
        .unwrap();
    let m = Recorded::new(recorder.snapshotter());

    assert_eq!(m.states(P, "fresh"), one_hot("closed"));
    // The transitions alerts count with increase(), at zero.
    assert_eq!(
        m.label_sets(&name("transitions_total")),
        sets(&[
            "from=closed,reason=consecutive_failures,service=fresh,to=open",
            "from=closed,reason=failure_rate,service=fresh,to=open",
            "from=closed,reason=slow_call_rate,service=fresh,to=open",
            "from=half_open,reason=probe_failed,service=fresh,to=open",
            "from=half_open,reason=probe_succeeded,service=fresh,to=closed",
            "from=open,reason=timeout_elapsed,service=fresh,to=half_open",
        ])
    );
    assert_eq!(
        m.counter(
            &name("transitions_total"),
            &[
                ("service", "fresh"),
                ("from", "closed"),
                ("to", "open"),
                ("reason", "slow_call_rate")
            ]
        ),
        0
    );
    for status in ["success", "failure", "ignored", "rejected"] {
        let labels = [("service", "fresh"), ("status", status)];
        assert_eq!(m.counter(&name("requests_total"), &labels), 0);
    }
    for status in ["success", "failure", "ignored"] {
        let labels = [("service", "fresh"), ("status", status)];
        assert!(m
            .histogram(&name("request_duration_seconds"), &labels)
            .is_empty());
    }
    for state in ["open", "half_open", "forced_open", "metrics_only"] {
        let labels = [("service", "fresh"), ("state", state)];
        assert_eq!(m.counter(&name("rejections_total"), &labels), 0);
    }
    let service = [("service", "fresh")];
    assert_eq!(m.gauge(&name("error_rate"), &service), 0.0);
    assert_eq!(m.gauge(&name("slow_call_rate"), &service), 0.0);
    assert_eq!(m.gauge(&name("trip_risk"), &service), 0.0);
    assert!(m
        .histogram(&name("recovery_duration_seconds"), &service)
        .is_empty());
    // Failure kinds are open-ended: none until the first failure.
    assert!(m.label_sets(&name("failures_total")).is_empty());

    // Every metric is described, with its unit.
    let expected: [(&str, Option<Unit>); 9] = [
        ("state", None),
        ("transitions_total", Some(Unit::Count)),
        ("requests_total", Some(Unit::Count)),
        ("rejections_total", Some(Unit::Count)),
        ("error_rate", None),
        ("slow_call_rate", None),
        ("trip_risk", None),
        ("request_duration_seconds", Some(Unit::Seconds)),
        ("recovery_duration_seconds", Some(Unit::Seconds)),
    ];
    for (suffix, unit) in expected {
        let (got_unit, help) = m
            .description(&name(suffix))
            .unwrap_or_else(|| panic!("{suffix} is not described"));
        assert_eq!(*got_unit, unit, "unit of {suffix}");
        assert!(!help.is_empty());
    }
}

#[tokio::test]
async fn default_policy_precreates_the_failure_rate_trip() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let _layer = CircuitBreakerLayer::builder()
        .name("default-policy")
        .build()
        .unwrap();
    let m = Recorded::new(recorder.snapshotter());
    let trips = m
        .label_sets(&name("transitions_total"))
        .into_iter()
        .filter(|s| s.contains("from=closed"))
        .collect::<Vec<_>>();
    assert_eq!(
        trips,
        ["from=closed,reason=failure_rate,service=default-policy,to=open"]
    );
}

#[tokio::test]
async fn trip_reject_half_open_recover() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("checkout")
        .consecutive_failures(3)
        .count_window(10)
        .minimum_calls(10)
        .open_duration(Backoff::fixed(secs(10)))
        .half_open_permits(1)
        .clock(clock)
        .classify_errors_with(classify)
        .build()
        .unwrap();
    let svc = layer.layer(upstream(manual.clone()));
    let mut m = Recorded::new(recorder.snapshotter());
    let svc_l = [("service", "checkout")];
    let requests = |m: &Recorded, status| {
        m.counter(
            &name("requests_total"),
            &[("service", "checkout"), ("status", status)],
        )
    };
    let transitions = |m: &Recorded, from, to, reason| {
        m.counter(
            &name("transitions_total"),
            &[
                ("service", "checkout"),
                ("from", from),
                ("to", to),
                ("reason", reason),
            ],
        )
    };
    let failures = |m: &Recorded, kind| {
        m.counter(
            &name("failures_total"),
            &[("service", "checkout"), ("kind", kind)],
        )
    };
    let rejections = |m: &Recorded, state| {
        m.counter(
            &name("rejections_total"),
            &[("service", "checkout"), ("state", state)],
        )
    };
    let durations = |m: &Recorded, status| {
        m.histogram(
            &name("request_duration_seconds"),
            &[("service", "checkout"), ("status", status)],
        )
        .to_vec()
    };

    // 1. Two successes, an ignored call, then three failures of three kinds
    //    in a row: the consecutive-failures policy trips at t = 65 ms.
    for call in [
        Call::Ok(ms(10)),
        Call::Ok(ms(20)),
        Call::Ignored(ms(5)),
        Call::Fail(ms(30)),
        Call::Timeout,
        Call::Connect,
    ] {
        send(&svc, call).await;
    }
    assert_eq!(manual.elapsed(), ms(65));
    m.observe();
    assert_eq!(m.states(P, "checkout"), one_hot("open"));
    assert_eq!(transitions(&m, "closed", "open", "consecutive_failures"), 1);
    assert_eq!(requests(&m, "success"), 2);
    assert_eq!(requests(&m, "failure"), 3);
    assert_eq!(requests(&m, "ignored"), 1);
    assert_eq!(requests(&m, "rejected"), 0);
    assert_eq!(failures(&m, "error"), 1);
    assert_eq!(failures(&m, "timeout"), 1);
    assert_eq!(failures(&m, "connect"), 1);
    assert_all_close(&durations(&m, "success"), &[0.010, 0.020]);
    assert_all_close(&durations(&m, "ignored"), &[0.005]);
    assert_all_close(&durations(&m, "failure"), &[0.030, 0.0, 0.0]);
    // Five judged calls in the window, three failed.
    assert_close(m.gauge(&name("error_rate"), &svc_l), 0.6);
    assert_close(m.gauge(&name("slow_call_rate"), &svc_l), 0.0);
    assert_close(m.gauge(&name("trip_risk"), &svc_l), 1.0);

    // 2. Open: calls are refused without reaching the upstream.
    manual.advance(secs(5));
    assert_eq!(send(&svc, Call::Ok(ms(1))).await, Sent::Rejected);
    assert_eq!(send(&svc, Call::Ok(ms(1))).await, Sent::Rejected);
    assert_eq!(manual.elapsed(), ms(5_065));
    m.observe();
    assert_eq!(requests(&m, "rejected"), 2);
    assert_eq!(rejections(&m, "open"), 2);
    assert_eq!(rejections(&m, "half_open"), 0);

    // 3. The open duration elapses; the probe fails and reopens.
    manual.advance(secs(5));
    assert_eq!(send(&svc, Call::Fail(ms(2))).await, Sent::Failed);
    m.observe();
    assert_eq!(m.states(P, "checkout"), one_hot("open"));
    assert_eq!(transitions(&m, "open", "half_open", "timeout_elapsed"), 1);
    assert_eq!(transitions(&m, "half_open", "open", "probe_failed"), 1);
    assert_eq!(failures(&m, "error"), 2);
    assert_eq!(requests(&m, "failure"), 4);
    assert_close(m.gauge(&name("trip_risk"), &svc_l), 1.0);

    // 4. Open again for 10 s; then one probe is called and holds the only
    //    permit (taken by `call`), so a second caller is refused by half-open.
    manual.advance(secs(10));
    let mut probe = svc.clone();
    probe.ready().await.unwrap();
    m.observe();
    assert_eq!(m.states(P, "checkout"), one_hot("half_open"));
    assert_close(m.gauge(&name("trip_risk"), &svc_l), 1.0);
    let probe = probe.call(Call::Ok(ms(5)));
    assert_eq!(send(&svc, Call::Ok(ms(1))).await, Sent::Rejected);
    probe.await.unwrap();
    m.observe();
    assert_eq!(m.states(P, "checkout"), one_hot("closed"));
    assert_eq!(transitions(&m, "open", "half_open", "timeout_elapsed"), 2);
    assert_eq!(transitions(&m, "half_open", "closed", "probe_succeeded"), 1);
    assert_eq!(rejections(&m, "half_open"), 1);
    assert_eq!(rejections(&m, "open"), 2);
    assert_eq!(requests(&m, "rejected"), 3);
    assert_eq!(requests(&m, "success"), 3);
    assert_all_close(&durations(&m, "success"), &[0.010, 0.020, 0.005]);
    // From the trip at 65 ms to the close at 20.072 s.
    assert_all_close(
        m.histogram(&name("recovery_duration_seconds"), &svc_l),
        &[20.007],
    );
    // Closing clears the window.
    assert_close(m.gauge(&name("error_rate"), &svc_l), 0.0);
    assert_close(m.gauge(&name("trip_risk"), &svc_l), 0.0);

    // Nothing else was counted.
    assert_eq!(
        m.label_values(&name("failures_total"), "kind"),
        sets(&["connect", "error", "timeout"])
    );
    // The consecutive and default failure-rate trips, the half-open round
    // trip.
    assert_eq!(m.label_sets(&name("transitions_total")).len(), 5);
    assert_eq!(rejections(&m, "forced_open"), 0);
    assert_eq!(rejections(&m, "metrics_only"), 0);
}

#[tokio::test]
async fn rate_policies_report_their_reason_and_rates() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let failing = CircuitBreakerLayer::builder()
        .name("rates-failure")
        .failure_rate(0.5)
        .count_window(4)
        .minimum_calls(4)
        .clock(clock.clone())
        .build()
        .unwrap()
        .layer(upstream(manual.clone()));
    let slow = CircuitBreakerLayer::builder()
        .name("rates-slow")
        .slow_call_rate(0.5, ms(100))
        .count_window(4)
        .minimum_calls(4)
        .open_duration(Backoff::fixed(secs(10)))
        .half_open_permits(1)
        .clock(clock)
        .build()
        .unwrap()
        .layer(upstream(manual.clone()));
    let mut m = Recorded::new(recorder.snapshotter());

    send(&failing, Call::Ok(ms(1))).await;
    send(&failing, Call::Fail(ms(1))).await;
    send(&slow, Call::Ok(ms(150))).await;
    send(&slow, Call::Ok(ms(10))).await;
    m.observe();
    // Half way through the minimum calls, at 50% of a 50% threshold.
    assert_close(
        m.gauge(&name("error_rate"), &[("service", "rates-failure")]),
        0.5,
    );
    assert_close(
        m.gauge(&name("trip_risk"), &[("service", "rates-failure")]),
        0.5,
    );
    assert_close(
        m.gauge(&name("slow_call_rate"), &[("service", "rates-slow")]),
        0.5,
    );
    assert_close(
        m.gauge(&name("trip_risk"), &[("service", "rates-slow")]),
        0.5,
    );

    send(&failing, Call::Ok(ms(1))).await;
    send(&failing, Call::Fail(ms(1))).await;
    send(&slow, Call::Ok(ms(10))).await;
    send(&slow, Call::Fail(ms(200))).await;
    m.observe();
    let trip = |service, reason| {
        m.counter(
            &name("transitions_total"),
            &[
                ("service", service),
                ("from", "closed"),
                ("to", "open"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(trip("rates-failure", "failure_rate"), 1);
    assert_eq!(trip("rates-slow", "slow_call_rate"), 1);
    assert_eq!(m.states(P, "rates-failure"), one_hot("open"));
    assert_eq!(m.states(P, "rates-slow"), one_hot("open"));
    assert_close(
        m.gauge(&name("error_rate"), &[("service", "rates-failure")]),
        0.5,
    );
    assert_close(
        m.gauge(&name("slow_call_rate"), &[("service", "rates-slow")]),
        0.5,
    );
    assert_close(
        m.gauge(&name("error_rate"), &[("service", "rates-slow")]),
        0.25,
    );

    // A slow probe is a failed probe, of kind `slow`.
    let slow_requests = |m: &Recorded, status| {
        m.counter(
            &name("requests_total"),
            &[("service", "rates-slow"), ("status", status)],
        )
    };
    assert_eq!(slow_requests(&m, "success"), 3);
    assert_eq!(slow_requests(&m, "failure"), 1);
    manual.advance(secs(10));
    assert_eq!(send(&slow, Call::Ok(ms(120))).await, Sent::Ok);
    m.observe();
    assert_eq!(m.states(P, "rates-slow"), one_hot("open"));
    assert_eq!(
        m.counter(
            &name("transitions_total"),
            &[
                ("service", "rates-slow"),
                ("from", "half_open"),
                ("to", "open"),
                ("reason", "probe_failed")
            ],
        ),
        1
    );
    assert_eq!(
        m.counter(
            &name("failures_total"),
            &[("service", "rates-slow"), ("kind", "slow")]
        ),
        1
    );
    assert_eq!(slow_requests(&m, "success"), 3);
    assert_eq!(slow_requests(&m, "failure"), 2);
}

#[tokio::test]
async fn time_window_rates_follow_successes() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let svc = CircuitBreakerLayer::builder()
        .name("time-window")
        .failure_rate(0.9)
        .time_window(secs(60), 6)
        .minimum_calls(100)
        .clock(clock)
        .build()
        .unwrap()
        .layer(upstream(manual.clone()));
    let mut m = Recorded::new(recorder.snapshotter());
    let labels = [("service", "time-window")];

    send(&svc, Call::Fail(ms(0))).await;
    m.observe();
    assert_close(m.gauge(&name("error_rate"), &labels), 1.0);
    // Successes change the rate of a time window: the gauge shows it after
    // every call, in the same bucket or the next. (It used to lag: a
    // success in the current bucket left it at 1.0 for up to a second.)
    send(&svc, Call::Ok(ms(0))).await;
    m.observe();
    assert_close(m.gauge(&name("error_rate"), &labels), 0.5);
    manual.advance(secs(1));
    send(&svc, Call::Ok(ms(0))).await;
    m.observe();
    assert_close(m.gauge(&name("error_rate"), &labels), 1.0 / 3.0);
}

#[tokio::test]
async fn overrides_and_every_reason() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("overrides")
        .consecutive_failures(2)
        .open_duration(Backoff::fixed(secs(10)))
        .half_open_permits(1)
        .max_half_open_wait(secs(1))
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(upstream(manual.clone()));
    let mut m = Recorded::new(recorder.snapshotter());
    let transitions = |m: &Recorded, from, to, reason| {
        m.counter(
            &name("transitions_total"),
            &[
                ("service", "overrides"),
                ("from", from),
                ("to", to),
                ("reason", reason),
            ],
        )
    };
    let rejections = |m: &Recorded, state| {
        m.counter(
            &name("rejections_total"),
            &[("service", "overrides"), ("state", state)],
        )
    };
    let risk = |m: &Recorded| m.gauge(&name("trip_risk"), &[("service", "overrides")]);

    // Trip at t = 0, then a caller made ready in half-open that never
    // calls: after the maximum half-open wait the next caller reopens the
    // breaker.
    send(&svc, Call::Fail(ms(0))).await;
    send(&svc, Call::Fail(ms(0))).await;
    manual.advance(secs(10));
    let mut stuck = svc.clone();
    stuck.ready().await.unwrap();
    manual.advance(secs(1));
    assert_eq!(send(&svc, Call::Ok(ms(0))).await, Sent::Rejected);
    drop(stuck);
    m.observe();
    assert_eq!(transitions(&m, "half_open", "open", "max_wait_elapsed"), 1);
    assert_eq!(m.states(P, "overrides"), one_hot("open"));
    assert_eq!(rejections(&m, "open"), 1);

    // Forced open refuses with its own state.
    handle.force_open();
    assert_eq!(send(&svc, Call::Ok(ms(0))).await, Sent::Rejected);
    m.observe();
    assert_eq!(transitions(&m, "open", "forced_open", "manual"), 1);
    assert_eq!(m.states(P, "overrides"), one_hot("forced_open"));
    assert_eq!(rejections(&m, "forced_open"), 1);
    assert_close(risk(&m), 1.0);

    // Forcing it closed ends the episode begun by the trip 11 s ago.
    manual.advance(secs(4));
    handle.force_closed();
    m.observe();
    assert_eq!(transitions(&m, "forced_open", "closed", "manual"), 1);
    assert_eq!(m.states(P, "overrides"), one_hot("closed"));
    assert_all_close(
        m.histogram(
            &name("recovery_duration_seconds"),
            &[("service", "overrides")],
        ),
        &[15.0],
    );

    // Disabled: calls are counted but not judged.
    handle.disable();
    for _ in 0..3 {
        assert_eq!(send(&svc, Call::Fail(ms(0))).await, Sent::Failed);
    }
    m.observe();
    assert_eq!(transitions(&m, "closed", "disabled", "manual"), 1);
    assert_eq!(m.states(P, "overrides"), one_hot("disabled"));
    assert_eq!(risk(&m), 0.0);
    assert_eq!(handle.state(), State::Disabled);

    // Shadow mode: one failure puts the shadow machine half way to its trip.
    handle.metrics_only();
    m.observe();
    assert_eq!(transitions(&m, "disabled", "metrics_only", "manual"), 1);
    assert_eq!(m.states(P, "overrides"), one_hot("metrics_only"));
    assert_eq!(risk(&m), 0.0);
    send(&svc, Call::Fail(ms(0))).await;
    m.observe();
    assert_close(risk(&m), 0.5);
    // The shadow trip is counted; the call it would refuse goes through.
    send(&svc, Call::Fail(ms(0))).await;
    assert_eq!(send(&svc, Call::Ok(ms(0))).await, Sent::Ok);
    m.observe();
    assert_eq!(transitions(&m, "closed", "open", "consecutive_failures"), 2);
    assert_eq!(m.states(P, "overrides"), one_hot("metrics_only"));
    assert_eq!(rejections(&m, "metrics_only"), 1);
    assert_close(risk(&m), 1.0);

    handle.reset();
    m.observe();
    assert_eq!(transitions(&m, "metrics_only", "closed", "manual"), 1);
    assert_eq!(m.states(P, "overrides"), one_hot("closed"));
    assert_eq!(risk(&m), 0.0);

    let requests = |status| {
        m.counter(
            &name("requests_total"),
            &[("service", "overrides"), ("status", status)],
        )
    };
    assert_eq!(requests("success"), 1);
    assert_eq!(requests("failure"), 7);
    // The probe dropped before it was called is no request.
    assert_eq!(requests("ignored"), 0);
    assert_eq!(requests("rejected"), 2);
    // Every reason and every state label seen, none other.
    assert_eq!(
        m.label_values(&name("transitions_total"), "reason"),
        sets(&[
            "consecutive_failures",
            // The default failure-rate policy's trip, at zero.
            "failure_rate",
            "manual",
            "max_wait_elapsed",
            "probe_failed",
            "probe_succeeded",
            "timeout_elapsed",
        ])
    );
    assert_eq!(
        m.label_values(&name("rejections_total"), "state"),
        sets(&["forced_open", "half_open", "metrics_only", "open"])
    );
    assert_eq!(
        m.label_values(&name("state"), "state"),
        sets(&[
            "closed",
            "disabled",
            "forced_open",
            "half_open",
            "metrics_only",
            "open"
        ])
    );
}

/// Trips, refuses, probes and recovers one breaker at `level`.
async fn full_cycle(level: MetricsLevel, service: &str, prefix: &str) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let svc = CircuitBreakerLayer::builder()
        .name(service)
        .consecutive_failures(2)
        .open_duration(Backoff::fixed(secs(10)))
        .half_open_permits(1)
        .metrics_level(level)
        .metrics_prefix(prefix)
        .clock(clock)
        .build()
        .unwrap()
        .layer(upstream(manual.clone()));
    let mut m = Recorded::new(recorder.snapshotter());
    send(&svc, Call::Ok(ms(3))).await;
    send(&svc, Call::Fail(ms(3))).await;
    send(&svc, Call::Timeout).await;
    assert_eq!(send(&svc, Call::Ok(ms(3))).await, Sent::Rejected);
    manual.advance(secs(10));
    assert_eq!(send(&svc, Call::Ok(ms(3))).await, Sent::Ok);
    m.observe();
    m
}

#[tokio::test]
async fn levels_emit_exactly_their_sets() {
    let minimal = [
        ("state", MetricKind::Gauge),
        ("transitions_total", MetricKind::Counter),
        ("requests_total", MetricKind::Counter),
    ];
    let standard = [
        ("rejections_total", MetricKind::Counter),
        ("failures_total", MetricKind::Counter),
        ("error_rate", MetricKind::Gauge),
        ("slow_call_rate", MetricKind::Gauge),
        ("recovery_duration_seconds", MetricKind::Histogram),
        ("trip_risk", MetricKind::Gauge),
    ];
    let full = [("request_duration_seconds", MetricKind::Histogram)];
    let expect = |parts: &[&[(&str, MetricKind)]]| -> BTreeMap<String, MetricKind> {
        parts
            .iter()
            .flat_map(|p| p.iter())
            .map(|(s, k)| (name(s), *k))
            .collect()
    };
    let cases = [
        (MetricsLevel::Minimal, expect(&[&minimal])),
        (MetricsLevel::Standard, expect(&[&minimal, &standard])),
        (MetricsLevel::Full, expect(&[&minimal, &standard, &full])),
    ];
    for (level, expected) in cases {
        let service = format!("level-{level:?}").to_lowercase();
        let m = full_cycle(level, &service, P).await;
        assert_eq!(m.names(), expected, "{level:?}");
        // The counts that every level keeps agree.
        let labels = [("service", service.as_str()), ("status", "rejected")];
        assert_eq!(m.counter(&name("requests_total"), &labels), 1, "{level:?}");
        assert_eq!(m.states(P, &service), one_hot("closed"), "{level:?}");
    }
    // Minimal: one-hot state (6) + zeroed and used transitions (5: the
    // consecutive and failure-rate trips, the half-open round trip) +
    // requests (4).
    let m = full_cycle(MetricsLevel::Minimal, "level-count", P).await;
    assert_eq!(
        m.label_sets(&name("state")).len()
            + m.label_sets(&name("transitions_total")).len()
            + m.label_sets(&name("requests_total")).len(),
        15
    );
}

#[tokio::test]
async fn custom_prefix_names_every_metric() {
    let m = full_cycle(MetricsLevel::Full, "prefixed", "edge_cb").await;
    let names: BTreeSet<String> = m.names().into_keys().collect();
    assert_eq!(names.len(), 10);
    for name in &names {
        assert!(name.starts_with("edge_cb_"), "{name}");
    }
    assert!(names.contains("edge_cb_request_duration_seconds"));
    assert_eq!(m.states("edge_cb", "prefixed"), one_hot("closed"));
    let described = m.description("edge_cb_requests_total").unwrap();
    assert_eq!(described.0, Some(Unit::Count));

    let err = CircuitBreakerLayer::builder()
        .metrics_prefix("edge-cb")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("metrics_prefix"), "{err}");
}

#[tokio::test]
async fn hostile_names_are_sanitized() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    const WEIRD: FailureKind = FailureKind::custom("bad\"kind}\n");
    let svc = CircuitBreakerLayer::builder()
        .name("pay\"ments}\n{x=\"1\"} 9")
        .clock(clock)
        .classify_errors_with(|_: &(dyn std::error::Error + 'static)| Outcome::Failure(WEIRD))
        .build()
        .unwrap()
        .layer(upstream(manual.clone()));
    send(&svc, Call::Fail(ms(1))).await;
    let m = Recorded::new(recorder.snapshotter());
    let clean = "pay_ments___x__1___9";
    assert_eq!(
        m.label_values(&name("requests_total"), "service"),
        sets(&[clean])
    );
    assert_eq!(m.states(P, clean), one_hot("closed"));
    assert_eq!(
        m.counter(
            &name("failures_total"),
            &[("service", clean), ("kind", "bad_kind__")]
        ),
        1
    );
}

#[test]
fn local_recorders_each_get_handles_descriptions_and_state() {
    // Built with no recorder at all: nothing to report to yet.
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("local")
        .consecutive_failures(1)
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(upstream(manual.clone()));

    let first = DebuggingRecorder::new();
    let second = DebuggingRecorder::new();
    metrics::with_local_recorder(&first, || {
        futures::executor::block_on(send(&svc, Call::Ok(ms(1))));
    });
    metrics::with_local_recorder(&second, || {
        futures::executor::block_on(send(&svc, Call::Fail(ms(1))));
    });
    metrics::with_local_recorder(&first, || {
        futures::executor::block_on(send(&svc, Call::Ok(ms(1))));
    });
    assert_eq!(handle.state(), State::Open);

    let a = Recorded::new(first.snapshotter());
    let b = Recorded::new(second.snapshotter());
    let requests = |m: &Recorded, status| {
        m.counter(
            &name("requests_total"),
            &[("service", "local"), ("status", status)],
        )
    };
    // Each recorder saw its own calls, and the state as of its last call.
    assert_eq!(requests(&a, "success"), 1);
    assert_eq!(requests(&a, "rejected"), 1);
    assert_eq!(requests(&a, "failure"), 0);
    assert_eq!(a.states(P, "local"), one_hot("open"));
    assert_eq!(requests(&b, "failure"), 1);
    assert_eq!(requests(&b, "success"), 0);
    assert_eq!(b.states(P, "local"), one_hot("open"));
    let trip = [
        ("service", "local"),
        ("from", "closed"),
        ("to", "open"),
        ("reason", "consecutive_failures"),
    ];
    assert_eq!(b.counter(&name("transitions_total"), &trip), 1);
    // Created at zero in the recorder that did not see the trip.
    assert_eq!(a.counter(&name("transitions_total"), &trip), 0);
    for m in [&a, &b] {
        for suffix in ["state", "requests_total", "transitions_total", "error_rate"] {
            assert!(m.description(&name(suffix)).is_some(), "{suffix}");
        }
    }
}

/// The scripted scenario through the Prometheus recorder of
/// `tower_breaker::exporter`, rendered to `target/metrics-sample.prom` for
/// `promtool check metrics` (see `.ci/run`).
#[cfg(feature = "prometheus")]
#[tokio::test]
async fn prometheus_sample() {
    use std::collections::HashMap;

    let (recorder, prometheus) = tower_breaker::exporter::recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let svc = CircuitBreakerLayer::builder()
        .name("checkout")
        .consecutive_failures(3)
        .failure_rate(0.5)
        .minimum_calls(10)
        .open_duration(Backoff::fixed(secs(30)))
        .half_open_permits(1)
        .clock(clock)
        .build()
        .unwrap()
        .layer(upstream(manual.clone()));
    for call in [Call::Ok(ms(4)), Call::Ok(ms(40)), Call::Fail(ms(300))] {
        send(&svc, call).await;
    }
    send(&svc, Call::Timeout).await;
    send(&svc, Call::Connect).await;
    for _ in 0..4 {
        assert_eq!(send(&svc, Call::Ok(ms(1))).await, Sent::Rejected);
    }
    manual.advance(secs(30));
    assert_eq!(send(&svc, Call::Ok(ms(2))).await, Sent::Ok);

    let text = prometheus.render();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("metrics-sample.prom");
    std::fs::write(&path, &text).unwrap();

    // name{labels} -> value, with labels as written.
    let mut samples: HashMap<String, f64> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.insert(rest.split_once(' ').unwrap().0.to_owned());
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            samples.insert(series.to_owned(), value.parse().unwrap());
        }
    }
    let contract = [
        ("state", "gauge"),
        ("transitions_total", "counter"),
        ("error_rate", "gauge"),
        ("slow_call_rate", "gauge"),
        ("requests_total", "counter"),
        ("request_duration_seconds", "histogram"),
        ("rejections_total", "counter"),
        ("failures_total", "counter"),
        ("recovery_duration_seconds", "histogram"),
        ("trip_risk", "gauge"),
    ];
    for (suffix, kind) in contract {
        let n = name(suffix);
        assert_eq!(
            types.get(&n).map(String::as_str),
            Some(kind),
            "TYPE of {n}\n{text}"
        );
        assert!(helps.contains(&n), "HELP of {n}\n{text}");
    }
    assert!(
        !text.contains("quantile="),
        "histograms, not summaries:\n{text}"
    );
    let value = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no sample {series}\n{text}"))
    };
    let s = |rest: &str| format!("{P}_{rest}");
    for (state, v) in one_hot("closed") {
        assert_eq!(
            value(&s(&format!(
                "state{{service=\"checkout\",state=\"{state}\"}}"
            ))),
            v
        );
    }
    let transition = |from, to, reason| {
        value(&s(&format!(
            "transitions_total{{service=\"checkout\",from=\"{from}\",to=\"{to}\",reason=\"{reason}\"}}"
        )))
    };
    assert_eq!(transition("closed", "open", "consecutive_failures"), 1.0);
    assert_eq!(transition("closed", "open", "failure_rate"), 0.0);
    assert_eq!(transition("open", "half_open", "timeout_elapsed"), 1.0);
    assert_eq!(transition("half_open", "closed", "probe_succeeded"), 1.0);
    assert_eq!(transition("half_open", "open", "probe_failed"), 0.0);
    let requests = |status| {
        value(&s(&format!(
            "requests_total{{service=\"checkout\",status=\"{status}\"}}"
        )))
    };
    assert_eq!(requests("success"), 3.0);
    assert_eq!(requests("failure"), 3.0);
    assert_eq!(requests("ignored"), 0.0);
    assert_eq!(requests("rejected"), 4.0);
    assert_eq!(
        value(&s("rejections_total{service=\"checkout\",state=\"open\"}")),
        4.0
    );
    for kind in ["error", "timeout", "connect"] {
        assert_eq!(
            value(&s(&format!(
                "failures_total{{service=\"checkout\",kind=\"{kind}\"}}"
            ))),
            1.0
        );
    }
    assert_eq!(value(&s("error_rate{service=\"checkout\"}")), 0.0);
    assert_eq!(value(&s("slow_call_rate{service=\"checkout\"}")), 0.0);
    assert_eq!(value(&s("trip_risk{service=\"checkout\"}")), 0.0);
    // Buckets: the 4 ms and 40 ms successes and the 2 ms probe.
    let bucket = |status, le| {
        value(&s(&format!(
            "request_duration_seconds_bucket{{service=\"checkout\",status=\"{status}\",le=\"{le}\"}}"
        )))
    };
    assert_eq!(bucket("success", "0.0025"), 1.0);
    assert_eq!(bucket("success", "0.005"), 2.0);
    assert_eq!(bucket("success", "0.05"), 3.0);
    assert_eq!(bucket("success", "+Inf"), 3.0);
    assert_eq!(bucket("failure", "0.25"), 2.0);
    assert_eq!(bucket("failure", "0.5"), 3.0);
    assert_eq!(
        value(&s(
            "request_duration_seconds_count{service=\"checkout\",status=\"success\"}"
        )),
        3.0
    );
    // Tripped at 344 ms, closed at 30.346 s.
    assert_eq!(
        value(&s(
            "recovery_duration_seconds_bucket{service=\"checkout\",le=\"30\"}"
        )),
        0.0
    );
    assert_eq!(
        value(&s(
            "recovery_duration_seconds_bucket{service=\"checkout\",le=\"60\"}"
        )),
        1.0
    );
    assert_close(
        value(&s("recovery_duration_seconds_sum{service=\"checkout\"}")),
        30.002,
    );
}
