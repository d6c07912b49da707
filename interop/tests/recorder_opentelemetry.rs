//! The breaker's series through OpenTelemetry: metrics-exporter-opentelemetry
//! as the global `metrics` recorder (one per process, hence a test binary of
//! its own), the OTel SDK's meter provider behind it, and the SDK's in-memory
//! exporter at the end, read after a forced flush.

#[path = "../../tests/support/recorded.rs"]
mod recorded;
#[path = "support/trip.rs"]
mod trip;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use metrics_exporter_opentelemetry::Recorder;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};

use recorded::one_hot;
use trip::Tripped;

/// The meter provider and its in-memory exporter, installed once.
fn otel() -> &'static (SdkMeterProvider, InMemoryMetricExporter) {
    static OTEL: OnceLock<(SdkMeterProvider, InMemoryMetricExporter)> = OnceLock::new();
    OTEL.get_or_init(|| {
        // Cumulative temporality (the default): the last export has it all.
        let exporter = InMemoryMetricExporter::default();
        let (provider, recorder) = Recorder::builder("tower-breaker-tests")
            .with_meter_provider(|b| b.with_periodic_exporter(exporter.clone()))
            .build();
        metrics::set_global_recorder(recorder).expect("the only recorder of this binary");
        (provider, exporter)
    })
}

/// One data point as exported: its metric's name, description, unit and
/// type, its attributes, and its value (a histogram's count).
#[derive(Clone, Debug)]
struct Point {
    metric: String,
    description: String,
    unit: String,
    kind: &'static str,
    attributes: BTreeMap<String, String>,
    value: f64,
}

/// Flushes the meter provider and flattens the latest export.
fn collect() -> Vec<Point> {
    let (provider, exporter) = otel();
    provider.force_flush().expect("flush");
    let exports = exporter.get_finished_metrics().expect("exported");
    let latest: &ResourceMetrics = exports.last().expect("at least one export");
    let mut points = Vec::new();
    for scope in latest.scope_metrics() {
        for metric in scope.metrics() {
            let mut push = |kind, attributes: BTreeMap<String, String>, value: f64| {
                points.push(Point {
                    metric: metric.name().to_owned(),
                    description: metric.description().to_owned(),
                    unit: metric.unit().to_owned(),
                    kind,
                    attributes,
                    value,
                })
            };
            let attrs = |kvs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                kvs.map(|kv| (kv.key.to_string(), kv.value.to_string()))
                    .collect::<BTreeMap<_, _>>()
            };
            match metric.data() {
                AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                    for p in g.data_points() {
                        push("gauge", attrs(&mut p.attributes()), p.value());
                    }
                }
                AggregatedMetrics::U64(MetricData::Sum(s)) => {
                    assert!(s.is_monotonic(), "{} is a counter", metric.name());
                    for p in s.data_points() {
                        push("counter", attrs(&mut p.attributes()), p.value() as f64);
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        push("histogram", attrs(&mut p.attributes()), p.count() as f64);
                    }
                }
                other => panic!("{}: unexpected data {other:?}", metric.name()),
            }
        }
    }
    points
}

/// The points of one breaker (its `service` attribute).
fn of(points: &[Point], service: &str) -> Vec<Point> {
    points
        .iter()
        .filter(|p| p.attributes.get("service").map(String::as_str) == Some(service))
        .cloned()
        .collect()
}

/// The value of the one point of `metric` with exactly these attributes
/// besides `service`; panics with what there is if there is no such point,
/// or more than one.
fn value(points: &[Point], metric: &str, attributes: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Point> = points
        .iter()
        .filter(|p| p.metric == metric)
        .filter(|p| {
            p.attributes.len() == attributes.len() + 1
                && attributes
                    .iter()
                    .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match matching.as_slice() {
        [one] => one.value,
        _ => {
            let all: Vec<_> = points
                .iter()
                .filter(|p| p.metric == metric)
                .map(|p| (&p.attributes, p.value))
                .collect();
            panic!(
                "{metric} {attributes:?}: {} points match; all: {all:#?}",
                matching.len()
            )
        }
    }
}

fn states(points: &[Point]) -> BTreeMap<String, f64> {
    points
        .iter()
        .filter(|p| p.metric == "circuit_breaker_state")
        .map(|p| (p.attributes["state"].clone(), p.value))
        .collect()
}

fn transition(points: &[Point], from: &str, to: &str, reason: &str) -> f64 {
    value(
        points,
        "circuit_breaker_transitions_total",
        &[("from", from), ("to", to), ("reason", reason)],
    )
}

#[tokio::test]
async fn state_transitions_and_requests_arrive_with_their_attributes() {
    otel();
    let mut breaker = Tripped::new("otel-inventory");

    // From construction: the one-hot state and the transitions at zero.
    let points = of(&collect(), "otel-inventory");
    assert_eq!(states(&points), one_hot("closed"));
    assert_eq!(
        transition(&points, "closed", "open", "consecutive_failures"),
        0.0
    );

    breaker.trip().await;
    let points = of(&collect(), "otel-inventory");
    assert_eq!(states(&points), one_hot("open"));
    assert_eq!(
        transition(&points, "closed", "open", "consecutive_failures"),
        1.0
    );
    for (from, to, reason) in [
        ("open", "half_open", "timeout_elapsed"),
        ("half_open", "open", "probe_failed"),
        ("half_open", "closed", "probe_succeeded"),
    ] {
        assert_eq!(transition(&points, from, to, reason), 0.0, "{from} -> {to}");
    }
    let requests = |points: &[Point], status| {
        value(
            points,
            "circuit_breaker_requests_total",
            &[("status", status)],
        )
    };
    assert_eq!(requests(&points, "success"), 2.0);
    assert_eq!(requests(&points, "failure"), 3.0);
    assert_eq!(requests(&points, "rejected"), 1.0);
    assert_eq!(requests(&points, "ignored"), 0.0);
    assert_eq!(
        value(
            &points,
            "circuit_breaker_rejections_total",
            &[("state", "open")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &points,
            "circuit_breaker_failures_total",
            &[("kind", "error")]
        ),
        3.0
    );
    let timed = |points: &[Point], status| {
        value(
            points,
            "circuit_breaker_request_duration_seconds",
            &[("status", status)],
        )
    };
    assert_eq!(timed(&points, "success"), 2.0, "calls timed");
    assert_eq!(timed(&points, "failure"), 3.0, "calls timed");

    breaker.recover().await;
    let points = of(&collect(), "otel-inventory");
    assert_eq!(states(&points), one_hot("closed"));
    for (from, to, reason) in [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "timeout_elapsed"),
        ("half_open", "closed", "probe_succeeded"),
    ] {
        assert_eq!(transition(&points, from, to, reason), 1.0, "{from} -> {to}");
    }
    assert_eq!(
        transition(&points, "half_open", "open", "probe_failed"),
        0.0
    );
    assert_eq!(requests(&points, "success"), 3.0);
    assert_eq!(
        value(&points, "circuit_breaker_recovery_duration_seconds", &[]),
        1.0,
        "one recovery timed"
    );
    for p in &points {
        assert!(p.metric.starts_with("circuit_breaker_"), "{p:?}");
    }
}

/// OTel tells instruments apart by name, description and unit: every
/// series of a family must reach the SDK with the same description and
/// unit, or the family splits into metrics of the same name that a backend
/// sees as conflicting.
#[tokio::test]
async fn each_family_is_one_described_metric_with_its_unit() {
    otel();
    let mut breaker = Tripped::new("otel-ledger");
    breaker.trip().await;
    breaker.recover().await;
    let points = collect();
    let ours = of(&points, "otel-ledger");
    let mut families: BTreeMap<&str, (&str, &str, &str)> = BTreeMap::new();
    for p in &ours {
        let family = (p.description.as_str(), p.unit.as_str(), p.kind);
        let first = families.entry(p.metric.as_str()).or_insert(family);
        assert_eq!(
            *first, family,
            "{}: one description, unit and type",
            p.metric
        );
    }
    let expected = [
        ("circuit_breaker_state", "", "gauge"),
        ("circuit_breaker_transitions_total", "", "counter"),
        ("circuit_breaker_requests_total", "", "counter"),
        ("circuit_breaker_rejections_total", "", "counter"),
        ("circuit_breaker_failures_total", "", "counter"),
        ("circuit_breaker_error_rate", "", "gauge"),
        ("circuit_breaker_slow_call_rate", "", "gauge"),
        ("circuit_breaker_trip_risk", "", "gauge"),
        ("circuit_breaker_request_duration_seconds", "s", "histogram"),
        (
            "circuit_breaker_recovery_duration_seconds",
            "s",
            "histogram",
        ),
    ];
    for (name, unit, kind) in expected {
        let Some((description, got_unit, got_kind)) = families.get(name) else {
            panic!("{name} missing; got {:?}", families.keys());
        };
        assert!(!description.is_empty(), "{name} has a description");
        assert_eq!((*got_unit, *got_kind), (unit, kind), "{name}");
    }
    assert_eq!(families.len(), expected.len(), "{:?}", families.keys());
}
