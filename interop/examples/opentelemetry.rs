//! The breaker's metrics in OpenTelemetry, through metrics-exporter-opentelemetry.
//!
//! ```sh
//! cargo run -p tower-breaker-interop --example opentelemetry
//! ```
//!
//! metrics-exporter-opentelemetry is the global `metrics` recorder and feeds
//! an OTel SDK meter provider; here the provider exports to the SDK's
//! in-memory exporter, which the example prints after a forced flush (in
//! production, give the provider an OTLP exporter instead). A breaker named
//! `payments` trips on three failures, refuses a call, and recovers after
//! its open duration (on a manual clock, so at once). Expect one metric per
//! family, each with its description, and data points with attributes such
//! as `circuit_breaker_state {service=payments, state=closed} 1`,
//! `circuit_breaker_transitions_total {from=closed, reason=consecutive_failures,
//! service=payments, to=open} 1` and `circuit_breaker_requests_total
//! {service=payments, status=rejected} 1`. The duration histograms use the
//! SDK's default buckets, meant for milliseconds: give them second-sized
//! boundaries with a view (`MeterProviderBuilder::with_view`) if you use them.

use std::time::Duration;

use metrics_exporter_opentelemetry::Recorder;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::InMemoryMetricExporter;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower::BoxError> {
    let exporter = InMemoryMetricExporter::default();
    let (provider, recorder) = Recorder::builder("tower-breaker-example")
        .with_meter_provider(|b| b.with_periodic_exporter(exporter.clone()))
        .build();
    metrics::set_global_recorder(recorder)?;

    let (clock, time) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("payments")
        .clock(clock)
        .consecutive_failures(3)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(5)))
        .build()?;
    let mut svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err(std::io::Error::other("payments unavailable"))
        } else {
            Ok("paid")
        }
    }));
    for fail in [false, false, true, true, true, false] {
        let result = svc.ready().await?.call(fail).await;
        println!("call(fail = {fail}) -> {result:?}");
    }
    time.advance(Duration::from_secs(5));
    println!("after 5 s: {:?}", svc.ready().await?.call(false).await);
    println!("state: {:?}\n", layer.handle().state());

    provider.force_flush()?;
    let exports = exporter.get_finished_metrics()?;
    let latest = exports.last().ok_or("nothing exported")?;
    for metric in latest.scope_metrics().flat_map(|s| s.metrics()) {
        let unit = match metric.unit() {
            "" => String::new(),
            unit => format!(" [{unit}]"),
        };
        println!("{}{unit}: {}", metric.name(), metric.description());
        let mut points: Vec<String> = match metric.data() {
            AggregatedMetrics::F64(MetricData::Gauge(g)) => g
                .data_points()
                .map(|p| format!("{} {}", attributes(p.attributes()), p.value()))
                .collect(),
            AggregatedMetrics::U64(MetricData::Sum(s)) => s
                .data_points()
                .map(|p| format!("{} {}", attributes(p.attributes()), p.value()))
                .collect(),
            AggregatedMetrics::F64(MetricData::Histogram(h)) => h
                .data_points()
                .map(|p| {
                    let (count, sum) = (p.count(), p.sum());
                    format!("{} count {count}, sum {sum}", attributes(p.attributes()))
                })
                .collect(),
            other => vec![format!("{other:?}")],
        };
        points.sort();
        for point in points {
            println!("    {point}");
        }
    }
    provider.shutdown()?;
    Ok(())
}

fn attributes<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> String {
    let mut kvs: Vec<String> = kvs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
    kvs.sort();
    format!("{{{}}}", kvs.join(", "))
}
