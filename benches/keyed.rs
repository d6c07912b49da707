//! Keyed breakers: the per-call cost of finding a key's breaker, with 1,
//! 1,000 and 100,000 live keys, next to a plain breaker, on the same loop
//! shape as `benches/peers.rs` (`ready().await` + `call().await` on a
//! current-thread runtime, timed over `iters` calls by `iter_custom`).
//!
//! Two access patterns per size: `hot/<n>` calls one key while `n` keys are
//! live (the cost of the lookup as the map grows), `round_robin/<n>` walks
//! all `n` keys in turn, so with many keys every call touches a breaker
//! that has left the CPU caches (the worst case of a mesh proxy).
//!
//! Run: `cargo bench -p tower-breaker-benches --bench keyed -- --warm-up-time 1 --measurement-time 3`.

use std::borrow::Cow;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{CircuitBreakerLayer, KeyExtractor, MetricsLevel};

/// A request is the index of its key in a shared table of key strings.
#[derive(Clone)]
struct Keys(Arc<Vec<String>>);

impl KeyExtractor<usize> for Keys {
    fn key<'a>(&'a self, req: &'a usize) -> Option<Cow<'a, str>> {
        Some(Cow::Borrowed(&self.0[*req]))
    }
}

fn inner() -> impl Service<
    usize,
    Response = usize,
    Error = std::io::Error,
    Future = Ready<Result<usize, std::io::Error>>,
> + Clone {
    tower::service_fn(|req: usize| ready(Ok(req)))
}

/// Times `iters` calls of `svc`, requests `0, 1, .., n-1, 0, ..` (`n = 1`:
/// always key 0).
fn run<S>(rt: &tokio::runtime::Runtime, svc: &mut S, n: usize, iters: u64) -> Duration
where
    S: Service<usize>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        let mut key = 0;
        for _ in 0..iters {
            let r = svc.ready().await.unwrap().call(key).await.unwrap();
            std::hint::black_box(r);
            key += 1;
            if key == n {
                key = 0;
            }
        }
        start.elapsed()
    })
}

fn keyed(c: &mut Criterion) {
    tower_breaker::metrics::set_service_limit(200_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("keyed");

    let plain = CircuitBreakerLayer::builder()
        .name("plain")
        .metrics_level(MetricsLevel::Minimal)
        .build()
        .unwrap();
    let mut svc = plain.layer(inner());
    group.bench_function("plain", |b| {
        b.iter_custom(|iters| run(&rt, &mut svc, 1, iters))
    });

    for n in [1usize, 1_000, 100_000] {
        let keys = Keys(Arc::new((0..n).map(|i| format!("upstream-{i}")).collect()));
        let layer = CircuitBreakerLayer::builder()
            .metrics_prefix(format!("keyed_{n}"))
            .metrics_level(MetricsLevel::Minimal)
            .keyed(keys)
            .max_keys(n)
            .build()
            .unwrap();
        let mut svc = layer.layer(inner());
        // Create every key before timing.
        run(&rt, &mut svc, n, n as u64);
        assert_eq!(layer.len(), n);
        group.bench_with_input(BenchmarkId::new("hot", n), &n, |b, _| {
            b.iter_custom(|iters| run(&rt, &mut svc, 1, iters))
        });
        group.bench_with_input(BenchmarkId::new("round_robin", n), &n, |b, &n| {
            b.iter_custom(|iters| run(&rt, &mut svc, n, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, keyed);
criterion_main!(benches);
