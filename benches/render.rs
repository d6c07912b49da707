//! Rendering the Prometheus text for 10, 1,000 and 10,000 services, each
//! with the full set of series a breaker reports after some traffic
//! (success, failure, rejection, a trip and a recovery).
//!
//! The `scoped` group renders 1,000 services and then filters the text as a
//! scoped credential of the metrics endpoint sees it (half the services,
//! each view), next to the plain render: a scoped render must cost at most
//! 1.5x an unscoped one.
//!
//! Run: `cargo bench --bench render -- --warm-up-time 1 --measurement-time 3`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures::FutureExt;
use tower::{Layer, Service, ServiceExt};
use tower_breaker::exporter::{Scope, View};
use tower_breaker::{exporter, Backoff, CircuitBreakerLayer, Clock};

/// A recorder holding the series of `n` breakers that saw some traffic.
fn populated(n: usize) -> metrics_exporter_prometheus::PrometheusHandle {
    let (recorder, handle) = exporter::recorder();
    let (clock, time) = Clock::manual();
    metrics::with_local_recorder(&recorder, || {
        for i in 0..n {
            let layer = CircuitBreakerLayer::builder()
                .name(format!("service-{i}"))
                .clock(clock.clone())
                .consecutive_failures(2)
                .half_open_permits(1)
                .open_duration(Backoff::fixed(Duration::from_secs(1)))
                .build()
                .unwrap();
            let mut svc = layer.layer(tower::service_fn(|fail: bool| async move {
                if fail {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(())
                }
            }));
            let mut send = |fail| {
                let _ = svc
                    .ready()
                    .now_or_never()
                    .unwrap()
                    .unwrap()
                    .call(fail)
                    .now_or_never()
                    .unwrap();
            };
            for fail in [false, true, true, false] {
                send(fail);
            }
            time.advance(Duration::from_secs(1));
            send(false);
            // The layer (and its label) can go: its series stay recorded.
        }
    });
    handle
}

fn render(c: &mut Criterion) {
    tower_breaker::metrics::set_service_limit(20_000);
    let mut group = c.benchmark_group("render");
    group.sample_size(20);
    for n in [10usize, 1_000, 10_000] {
        let handle = populated(n);
        let text = handle.render();
        assert!(text.contains(&format!("service=\"service-{}\"", n - 1)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| std::hint::black_box(handle.render().len()))
        });
    }
    group.finish();

    // Services service-0..999: the patterns keep service-0*..service-4*,
    // about half.
    let handle = populated(1_000);
    let half = Scope::services((0..5).map(|d| format!("service-{d}*")));
    let mut group = c.benchmark_group("scoped");
    group.sample_size(20);
    group.bench_function("unscoped", |b| {
        b.iter(|| std::hint::black_box(handle.render().len()))
    });
    for view in [View::Full, View::Aggregate, View::Redacted] {
        let scope = half.clone().with_view(view);
        let text = scope.apply(&handle.render(), b"bench").unwrap();
        assert!(!text.contains("service-9"), "{view:?} leaks");
        group.bench_function(view.as_str(), |b| {
            b.iter(|| std::hint::black_box(scope.apply(&handle.render(), b"bench").unwrap().len()))
        });
    }
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
