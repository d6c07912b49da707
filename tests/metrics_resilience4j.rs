//! The resilience4j naming (`MetricsNaming::Resilience4j`) against the
//! series resilience4j's Micrometer binder documents
//! (`AbstractCircuitBreakerMetrics`, `CircuitBreakerMetricNames`; see
//! `tower_breaker::metrics::resilience4j`): a breaker driven through
//! successes, failures, a trip, refusals and a half-open recovery on a
//! manual clock, read through `metrics_util`'s `DebuggingRecorder` and
//! rendered by the crate's own recorder (checked by `promtool check
//! metrics` when it is installed).

#[path = "support/recorded.rs"]
mod recorded;
#[path = "support/traffic.rs"]
mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use metrics::Unit;
use metrics_util::debugging::DebuggingRecorder;
use metrics_util::MetricKind;
use tower::{Layer, Service};
use tower_breaker::{
    Backoff, CircuitBreakerLayer, Clock, ManualClock, MetricsLevel, MetricsNaming, State,
};

use recorded::{assert_all_close, assert_close, Recorded};
use traffic::{classify, ms, send, upstream, Call, Sent};

const P: &str = "resilience4j_circuitbreaker";
const NAME: &str = "backendA";

fn r4j(suffix: &str) -> String {
    format!("{P}_{suffix}")
}

/// The binder's state values: `CircuitBreaker.State` names in lower case.
const STATES: [&str; 6] = [
    "closed",
    "open",
    "half_open",
    "disabled",
    "forced_open",
    "metrics_only",
];

/// The binder's one-hot state gauge of `NAME`, as `state -> value`.
fn states(m: &Recorded) -> BTreeMap<String, f64> {
    STATES
        .iter()
        .map(|s| {
            let v = m.gauge(&r4j("state"), &[("name", NAME), ("state", s)]);
            ((*s).to_owned(), v)
        })
        .collect()
}

fn one_hot(current: &str) -> BTreeMap<String, f64> {
    STATES
        .iter()
        .map(|s| ((*s).to_owned(), if *s == current { 1.0 } else { 0.0 }))
        .collect()
}

/// The breaker of every scenario: a failure rate of 50% over a window of
/// 10 calls from 4 calls on, slow calls from 200 ms, 30 s open, one probe.
macro_rules! layer {
    ($clock:expr) => {
        CircuitBreakerLayer::builder()
            .name(NAME)
            .metrics_naming(MetricsNaming::Resilience4j)
            .failure_rate(0.5)
            .slow_call_rate(1.0, ms(200))
            .count_window(10)
            .minimum_calls(4)
            .open_duration(Backoff::fixed(Duration::from_secs(30)))
            .half_open_permits(1)
            .clock($clock)
            .classify_errors_with(classify)
            .build()
            .unwrap()
    };
}

/// What each step of [`scenario`] leaves in the gauges, checked by `check`
/// right after the step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// Two successes and an ignored call: below the minimum.
    BelowMinimum,
    /// A slow failure and a success: 4 calls, 1 failed, 1 slow.
    AtMinimum,
    /// Two more failures: 3 of 6 failed, tripped.
    Tripped,
    /// Three calls refused while open.
    Refused,
    /// 30 s later a probe succeeds: closed again.
    Recovered,
    /// Three successes and a failure in the fresh window.
    Closed,
}

/// Drives the breaker; `check` runs after each step.
async fn scenario<S>(svc: &S, manual: &ManualClock, mut check: impl FnMut(Step))
where
    S: Service<Call, Error = tower::BoxError> + Clone,
{
    assert_eq!(send(svc, Call::Ok(ms(4))).await, Sent::Ok);
    assert_eq!(send(svc, Call::Ok(ms(40))).await, Sent::Ok);
    assert_eq!(send(svc, Call::Ignored(ms(10))).await, Sent::Failed);
    check(Step::BelowMinimum);
    assert_eq!(send(svc, Call::Fail(ms(300))).await, Sent::Failed);
    assert_eq!(send(svc, Call::Ok(ms(1))).await, Sent::Ok);
    check(Step::AtMinimum);
    assert_eq!(send(svc, Call::Fail(ms(1))).await, Sent::Failed);
    assert_eq!(send(svc, Call::Fail(ms(1))).await, Sent::Failed);
    check(Step::Tripped);
    for _ in 0..3 {
        assert_eq!(send(svc, Call::Ok(ms(1))).await, Sent::Rejected);
    }
    check(Step::Refused);
    manual.advance(Duration::from_secs(30));
    assert_eq!(send(svc, Call::Ok(ms(2))).await, Sent::Ok);
    check(Step::Recovered);
    for call in [
        Call::Ok(ms(1)),
        Call::Ok(ms(1)),
        Call::Ok(ms(1)),
        Call::Fail(ms(1)),
    ] {
        send(svc, call).await;
    }
    check(Step::Closed);
}

/// The calls' durations by the binder's `kind`, after the whole scenario.
fn durations(kind: &str) -> Vec<f64> {
    match kind {
        "successful" => vec![0.004, 0.040, 0.001, 0.002, 0.001, 0.001, 0.001],
        "failed" => vec![0.300, 0.001, 0.001, 0.001],
        "ignored" => vec![0.010],
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn every_binder_series_through_the_debugging_recorder() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let svc = layer!(clock).layer(upstream(manual.clone()));
    let mut m = Recorded::new(recorder.snapshotter());
    let name = [("name", NAME)];

    // From construction: the state, the refusals and the calls at zero,
    // the rates at -1 (no calls yet).
    assert_eq!(states(&m), one_hot("closed"));
    assert_eq!(m.gauge(&r4j("failure_rate"), &name), -1.0);
    assert_eq!(m.gauge(&r4j("slow_call_rate"), &name), -1.0);
    for kind in ["successful", "failed", "ignored"] {
        assert!(m
            .histogram(&r4j("calls_seconds"), &[("name", NAME), ("kind", kind)])
            .is_empty());
    }
    let not_permitted = [("name", NAME), ("kind", "not_permitted")];
    assert_eq!(
        m.counter(&r4j("not_permitted_calls_total"), &not_permitted),
        0
    );

    scenario(&svc, &manual, |step| {
        m.observe();
        let gauge = |suffix: &str, labels: &[(&str, &str)]| m.gauge(&r4j(suffix), labels);
        let buffered = |kind| gauge("buffered_calls", &[("name", NAME), ("kind", kind)]);
        match step {
            Step::BelowMinimum => {
                assert_eq!(gauge("failure_rate", &name), -1.0);
                assert_eq!(gauge("slow_call_rate", &name), -1.0);
                assert_eq!((buffered("successful"), buffered("failed")), (2.0, 0.0));
            }
            Step::AtMinimum => {
                // 1 failed and 1 slow of 4 calls, in percent.
                assert_close(gauge("failure_rate", &name), 25.0);
                assert_close(gauge("slow_call_rate", &name), 25.0);
                assert_eq!((buffered("successful"), buffered("failed")), (3.0, 1.0));
            }
            Step::Tripped => {
                assert_eq!(states(&m), one_hot("open"));
                // Open shows the window that tripped, as the binder does.
                assert_close(gauge("failure_rate", &name), 50.0);
                assert_close(gauge("slow_call_rate", &name), 100.0 / 6.0);
                assert_eq!((buffered("successful"), buffered("failed")), (3.0, 3.0));
            }
            Step::Refused => {
                assert_eq!(
                    m.counter(&r4j("not_permitted_calls_total"), &not_permitted),
                    3
                );
            }
            Step::Recovered => assert_eq!(states(&m), one_hot("closed")),
            Step::Closed => {
                assert_close(gauge("failure_rate", &name), 25.0);
                assert_close(gauge("slow_call_rate", &name), 0.0);
                assert_eq!((buffered("successful"), buffered("failed")), (3.0, 1.0));
            }
        }
    })
    .await;

    // The binder's timer: one sample per call, by kind, in seconds.
    for kind in ["successful", "failed", "ignored"] {
        let samples = m.histogram(&r4j("calls_seconds"), &[("name", NAME), ("kind", kind)]);
        assert_all_close(samples, &durations(kind));
    }
    assert_eq!(
        m.counter(&r4j("not_permitted_calls_total"), &not_permitted),
        3
    );

    // Exactly the binder's label sets on the binder's families.
    let sets =
        |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| (*s).to_owned()).collect() };
    assert_eq!(
        m.label_sets(&r4j("state")),
        STATES
            .iter()
            .map(|s| format!("name={NAME},state={s}"))
            .collect()
    );
    assert_eq!(
        m.label_sets(&r4j("calls_seconds")),
        sets(&[
            "kind=failed,name=backendA",
            "kind=ignored,name=backendA",
            "kind=successful,name=backendA",
        ])
    );
    assert_eq!(
        m.label_sets(&r4j("not_permitted_calls_total")),
        sets(&["kind=not_permitted,name=backendA"])
    );
    assert_eq!(
        m.label_sets(&r4j("buffered_calls")),
        sets(&["kind=failed,name=backendA", "kind=successful,name=backendA"])
    );
    for suffix in ["failure_rate", "slow_call_rate"] {
        assert_eq!(m.label_sets(&r4j(suffix)), sets(&["name=backendA"]));
    }

    // The families the binder lacks keep the native ones, with `name`.
    let trip = [
        ("name", NAME),
        ("from", "closed"),
        ("to", "open"),
        ("reason", "failure_rate"),
    ];
    assert_eq!(m.counter(&r4j("transitions_total"), &trip), 1);
    let closed = [
        ("name", NAME),
        ("from", "half_open"),
        ("to", "closed"),
        ("reason", "probe_succeeded"),
    ];
    assert_eq!(m.counter(&r4j("transitions_total"), &closed), 1);
    let open = [("name", NAME), ("state", "open")];
    assert_eq!(m.counter(&r4j("rejections_total"), &open), 3);
    let error = [("name", NAME), ("kind", "error")];
    assert_eq!(m.counter(&r4j("failures_total"), &error), 4);
    assert_all_close(
        m.histogram(&r4j("recovery_duration_seconds"), &name),
        &[30.002],
    );

    // Every family is the binder's or under its prefix, labelled `name`:
    // no native family, no `service` label, no requests counter.
    let names = m.names();
    for family in names.keys() {
        assert!(family.starts_with(P), "{family}");
        assert!(
            m.label_values(family, "service").is_empty(),
            "{family} has a service label"
        );
    }
    assert!(!names.contains_key(&r4j("requests_total")));
    assert_eq!(names[&r4j("calls_seconds")], MetricKind::Histogram);
    assert_eq!(
        names[&r4j("not_permitted_calls_total")],
        MetricKind::Counter
    );
    for gauge in ["state", "failure_rate", "slow_call_rate", "buffered_calls"] {
        assert_eq!(names[&r4j(gauge)], MetricKind::Gauge, "{gauge}");
    }
    // Described, with the binder's units.
    for (suffix, unit) in [
        ("state", None),
        ("calls_seconds", Some(Unit::Seconds)),
        ("not_permitted_calls_total", Some(Unit::Count)),
        ("failure_rate", None),
        ("slow_call_rate", None),
        ("buffered_calls", None),
    ] {
        let (got, help) = m
            .description(&r4j(suffix))
            .unwrap_or_else(|| panic!("{suffix} is not described"));
        assert_eq!(*got, unit, "{suffix}");
        assert!(!help.is_empty());
    }
}

/// `name{k="v",...}` with the labels sorted, to compare rendered lines
/// whatever the order of their labels.
fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        labels.sort();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap(),
        };
        samples.insert(format!("{name}{{{}}}", labels.join(",")), value);
    }
    (samples, types)
}

/// `name{labels}` as [`parse`] keys it.
fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// Runs `promtool check metrics` on `text`, if promtool is installed.
fn promtool(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool is not installed: skipped");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && lint.trim().is_empty(),
        "{lint}\n{text}"
    );
}

#[cfg(feature = "prometheus")]
#[tokio::test]
async fn the_crate_recorder_renders_the_binder_series() {
    let (recorder, handle) = tower_breaker::exporter::recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let svc = layer!(clock).layer(upstream(manual.clone()));
    // Rendered between the steps too: the rates as a scrape sees them.
    scenario(&svc, &manual, |step| {
        let (samples, _) = parse(&handle.render());
        let rate = samples[&key(&r4j("failure_rate"), &[("name", NAME)])];
        let state = |s: &str| samples[&key(&r4j("state"), &[("name", NAME), ("state", s)])];
        match step {
            Step::BelowMinimum | Step::Recovered => assert_eq!(rate, -1.0, "{step:?}"),
            Step::Tripped | Step::Refused => assert_close(rate, 50.0),
            Step::AtMinimum | Step::Closed => assert_close(rate, 25.0),
        }
        if matches!(step, Step::Tripped | Step::Refused) {
            assert_eq!(state("open"), 1.0);
            assert_eq!(state("closed"), 0.0);
        }
    })
    .await;

    let text = handle.render();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("metrics-sample-resilience4j.prom");
    std::fs::write(&path, &text).unwrap();
    promtool(&text);
    let (samples, types) = parse(&text);
    let get = |name: &str, labels: &[(&str, &str)]| {
        let k = key(name, labels);
        *samples
            .get(&k)
            .unwrap_or_else(|| panic!("no {k} in\n{text}"))
    };
    let name = [("name", NAME)];

    // The series the binder's dashboards query.
    for state in STATES {
        let want = if state == "closed" { 1.0 } else { 0.0 };
        assert_eq!(
            get(&r4j("state"), &[("name", NAME), ("state", state)]),
            want
        );
    }
    for kind in ["successful", "failed", "ignored"] {
        let labels = [("name", NAME), ("kind", kind)];
        let expected = durations(kind);
        let count = get(&r4j("calls_seconds_count"), &labels);
        assert_eq!(count, expected.len() as f64, "{kind}");
        assert_close(
            get(&r4j("calls_seconds_sum"), &labels),
            expected.iter().sum(),
        );
        let inf = [("name", NAME), ("kind", kind), ("le", "+Inf")];
        assert_eq!(get(&r4j("calls_seconds_bucket"), &inf), count);
    }
    // The 300 ms failure is above the 250 ms bucket, the rest below 10 ms.
    let le = |kind, le| {
        get(
            &r4j("calls_seconds_bucket"),
            &[("name", NAME), ("kind", kind), ("le", le)],
        )
    };
    assert_eq!(le("failed", "0.25"), 3.0);
    assert_eq!(le("successful", "0.025"), 6.0);
    assert_eq!(
        get(
            &r4j("not_permitted_calls_total"),
            &[("name", NAME), ("kind", "not_permitted")]
        ),
        3.0
    );
    assert_close(get(&r4j("failure_rate"), &name), 25.0);
    assert_close(get(&r4j("slow_call_rate"), &name), 0.0);
    let buffered = |kind| get(&r4j("buffered_calls"), &[("name", NAME), ("kind", kind)]);
    assert_eq!((buffered("successful"), buffered("failed")), (3.0, 1.0));
    for (family, kind) in [
        ("state", "gauge"),
        ("calls_seconds", "histogram"),
        ("not_permitted_calls_total", "counter"),
        ("failure_rate", "gauge"),
        ("slow_call_rate", "gauge"),
        ("buffered_calls", "gauge"),
    ] {
        assert_eq!(types[&r4j(family)], kind, "{family}");
    }

    // Every line is under the prefix and names the breaker `name`; none
    // says `service`.
    let lines: Vec<&String> = samples.keys().collect();
    assert!(lines.iter().all(|l| l.starts_with(P)), "{text}");
    assert!(
        lines.iter().all(|l| l.contains("name=\"backendA\"")),
        "{text}"
    );
    assert!(!text.contains("service="), "{text}");
    // Its cost in series (see the README): 89 and one per failure kind
    // seen (here `error`), as the native Full level's 90.
    assert_eq!(lines.len(), 90, "{text}");
}

/// At Minimal the binder's timer is still there: it is the binder's only
/// count of calls.
#[tokio::test]
async fn minimal_level_keeps_the_timer() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let svc = CircuitBreakerLayer::builder()
        .name(NAME)
        .metrics_naming(MetricsNaming::Resilience4j)
        .metrics_level(MetricsLevel::Minimal)
        .clock(clock)
        .build()
        .unwrap()
        .layer(upstream(manual.clone()));
    send(&svc, Call::Ok(ms(7))).await;
    let handle = svc.handle();
    handle.force_open();
    assert_eq!(handle.state(), State::ForcedOpen);
    assert_eq!(send(&svc, Call::Ok(ms(1))).await, Sent::Rejected);
    let m = Recorded::new(recorder.snapshotter());
    assert_all_close(
        m.histogram(
            &r4j("calls_seconds"),
            &[("name", NAME), ("kind", "successful")],
        ),
        &[0.007],
    );
    // Refused in forced_open: counted (the binder sees no event there).
    let not_permitted = [("name", NAME), ("kind", "not_permitted")];
    assert_eq!(
        m.counter(&r4j("not_permitted_calls_total"), &not_permitted),
        1
    );
    let names: BTreeSet<String> = m.names().into_keys().collect();
    let expected: BTreeSet<String> = [
        "state",
        "transitions_total",
        "calls_seconds",
        "not_permitted_calls_total",
    ]
    .iter()
    .map(|s| r4j(s))
    .collect();
    assert_eq!(names, expected);
}

/// A keyed layer builds its breakers from the builder's template: each key
/// reports as `name`.
#[tokio::test]
async fn keyed_breakers_report_their_key_as_name() {
    let recorder = DebuggingRecorder::new();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let svc = CircuitBreakerLayer::builder()
        .metrics_naming(MetricsNaming::Resilience4j)
        .clock(clock)
        .keyed(tower_breaker::keyed::key_fn(|call: &Call| {
            Some(match call {
                Call::Fail(_) => "payments",
                _ => "inventory",
            })
        }))
        .build()
        .unwrap()
        .layer(upstream(manual.clone()));
    send(&svc, Call::Ok(ms(3))).await;
    send(&svc, Call::Fail(ms(5))).await;
    let m = Recorded::new(recorder.snapshotter());
    assert_all_close(
        m.histogram(
            &r4j("calls_seconds"),
            &[("name", "inventory"), ("kind", "successful")],
        ),
        &[0.003],
    );
    assert_all_close(
        m.histogram(
            &r4j("calls_seconds"),
            &[("name", "payments"), ("kind", "failed")],
        ),
        &[0.005],
    );
    let names = m.label_values(&r4j("state"), "name");
    assert!(
        names.contains("inventory") && names.contains("payments"),
        "{names:?}"
    );
    assert!(m.names().keys().all(|n| n.starts_with(P)));
}

/// Scoped `/metrics` views treat `name` as they treat `service`.
#[cfg(feature = "prometheus")]
#[tokio::test]
async fn scopes_see_the_name_label() {
    use tower_breaker::exporter::{Scope, View};

    let (recorder, handle) = tower_breaker::exporter::recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (clock, manual) = Clock::manual();
    let svc = layer!(clock.clone()).layer(upstream(manual.clone()));
    let other = CircuitBreakerLayer::builder()
        .name("ledger")
        .metrics_naming(MetricsNaming::Resilience4j)
        .clock(clock)
        .build()
        .unwrap()
        .layer(upstream(manual.clone()));
    scenario(&svc, &manual, |_| {}).await;
    send(&other, Call::Ok(ms(1))).await;
    send(&other, Call::Timeout).await;
    let secret = b"a-redaction-key-of-16+bytes";

    let scoped = |scope: &str| {
        let scope: Scope = scope.parse().unwrap();
        handle.render_scoped(&scope, secret)
    };
    // Full: only backendA's series, all of them.
    let text = scoped("services=backendA;view=full");
    let (samples, _) = parse(&text);
    assert!(!text.contains("ledger"), "{text}");
    assert_eq!(samples.len(), 90, "{text}");
    assert!(scoped("services=nobody;view=full").trim().is_empty());

    // Redacted: `name` becomes an id; the binder's kinds stay, the failure
    // kinds collapse.
    let text = scoped("services=*;view=redacted");
    assert!(
        !text.contains("backendA") && !text.contains("ledger"),
        "{text}"
    );
    assert!(text.contains("name=\"svc-"), "{text}");
    let (samples, _) = parse(&text);
    let successful = samples
        .keys()
        .filter(|k| k.starts_with(&r4j("calls_seconds_count")) && k.contains("kind=\"successful\""))
        .count();
    assert_eq!(successful, 2, "{text}");
    assert!(text.contains("failures_total{name=\"svc-"), "{text}");
    assert!(!text.contains("kind=\"timeout\""), "{text}");
    promtool(&text);

    // Aggregate: no `name`; counts summed, the failure rate the worst one.
    let scope = Scope::services(["*"]).with_view(View::Aggregate);
    let text = handle.render_scoped(&scope, secret);
    assert!(!text.contains("name="), "{text}");
    let (samples, _) = parse(&text);
    assert_eq!(
        samples[&key(&r4j("calls_seconds_count"), &[("kind", "successful")])],
        8.0,
        "{text}"
    );
    assert_eq!(
        samples[&key(&r4j("state"), &[("state", "closed")])],
        2.0,
        "{text}"
    );
    // backendA at 25%, ledger below its minimum (-1).
    assert_close(samples[&key(&r4j("failure_rate"), &[])], 25.0);
    promtool(&text);
}

/// The series one breaker costs under this naming, as built (failure kinds
/// add one each on first use), with classic histograms: the README's
/// numbers. The timer is there at every level.
#[cfg(feature = "prometheus")]
#[test]
fn series_budget_by_level() {
    for (level, expected) in [
        (MetricsLevel::Minimal, 66),
        (MetricsLevel::Standard, 89),
        (MetricsLevel::Full, 89),
    ] {
        let (recorder, handle) = tower_breaker::exporter::recorder();
        let name = format!("budget-{level:?}").to_lowercase();
        let _layer = metrics::with_local_recorder(&recorder, || {
            CircuitBreakerLayer::builder()
                .name(&name)
                .metrics_naming(MetricsNaming::Resilience4j)
                .metrics_level(level)
                .consecutive_failures(2)
                .clock(Clock::manual().0)
                .build()
                .unwrap()
        });
        let text = handle.render();
        let lines = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("name=\"{name}\"")))
            .count();
        assert_eq!(lines, expected, "{level:?}\n{text}");
    }
}
