//! The early warning's cost per update: a call that changes the window's
//! totals (failures and successes alternate, so every call does) with and
//! without `early_warning`, on a manual clock moved 100 ms per call so that
//! every call feeds the estimator (its sampling interval is shorter). The
//! difference is the estimator's cost per update. The closed-success hot
//! path never reaches it (`benches/peers.rs` measures that path).
//!
//! Run: `cargo bench -p tower-breaker-benches --bench predict -- --warm-up-time 1 --measurement-time 3`.

use std::future::{ready, Ready};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{CircuitBreakerLayer, Clock, EarlyWarning, MetricsLevel};

fn inner(
) -> impl Service<bool, Response = (), Error = std::io::Error, Future = Ready<Result<(), std::io::Error>>>
{
    tower::service_fn(|fail: bool| {
        ready(if fail {
            Err(std::io::Error::other("boom"))
        } else {
            Ok(())
        })
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("predict");
    for warn in [false, true] {
        let (clock, manual) = Clock::manual();
        let mut builder = CircuitBreakerLayer::builder()
            .name(if warn { "predict-on" } else { "predict-off" })
            // Never trips: alternating outcomes hold the rate at 50%.
            .failure_rate(1.0)
            .time_window(Duration::from_secs(30), 10)
            .metrics_level(MetricsLevel::Minimal)
            .clock(clock);
        if warn {
            builder = builder.early_warning(EarlyWarning::new());
        }
        let layer = builder.build().unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(inner());
        let name = if warn {
            "failure_or_success/early_warning"
        } else {
            "failure_or_success/plain"
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(async {
                    for i in 0..iters {
                        manual.advance(Duration::from_millis(100));
                        let _ = svc.ready().await.unwrap().call(i % 2 == 0).await;
                    }
                });
                start.elapsed()
            })
        });
        if warn {
            assert!(handle.prediction().is_some(), "the estimator ran");
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
