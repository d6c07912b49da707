//! A loop of calls on one path, for instruction counts under callgrind
//! (`valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*counted*'`): the count is repeatable on a
//! shared machine, where timings are not. No recorder is installed.
//!
//! ```sh
//! cargo bench -p tower-breaker-benches --bench callgrind_loop --no-run
//! bin=$(ls target/release/deps/callgrind_loop-* | grep -v '\.d$')
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*counted*' \
//!     "$bin" success 100000   # paths: success failure open time keyed capacity
//! ```
//!
//! Two more paths are floors, not breakers, on the same loop: `bare` (the
//! inner service alone) and `arc_floor` (as in `peers.rs`: an `Arc` cloned
//! into each call's future and an atomic add when the call completes).
//!
//! Divide the total by the number of calls. Run by `cargo bench` itself
//! (with criterion's `--bench` argument), it makes a thousand calls of each
//! path and exits, so the bench target stays built and working.

use std::future::{ready, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{service_fn, Layer, Service, ServiceExt};
use tower_breaker::keyed::key_fn;
use tower_breaker::{Backoff, CircuitBreakerLayer, MetricsLevel};

const PATHS: [&str; 8] = [
    "success",
    "failure",
    "open",
    "time",
    "keyed",
    "capacity",
    "bare",
    "arc_floor",
];

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some(path) if PATHS.contains(&path) => {
            let n = args.next().map_or(100_000, |a| a.parse().expect("a count"));
            run(path, n);
        }
        // `cargo bench` passes `--bench`: a short run of every path.
        _ => PATHS.iter().for_each(|path| run(path, 1_000)),
    }
}

fn run(path: &str, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let inner = service_fn(|x: u64| ready(Ok::<_, std::io::Error>(x)));
    match path {
        "bare" => return measured_loop(&rt, &mut inner.clone(), n),
        "arc_floor" => {
            let calls = Arc::new(AtomicU64::new(0));
            return measured_loop(&rt, &mut ArcFloor { inner, calls }, n);
        }
        _ => {}
    }
    if path == "keyed" {
        let layer = CircuitBreakerLayer::builder()
            .metrics_level(MetricsLevel::Minimal)
            .keyed(key_fn(|_: &u64| Some("upstream-1")))
            .build()
            .unwrap();
        let mut svc = layer.layer(service_fn(|x: u64| ready(Ok::<_, std::io::Error>(x))));
        return measured_loop(&rt, &mut svc, n);
    }
    let builder = CircuitBreakerLayer::builder().name("callgrind");
    let builder = match path {
        "success" => builder,
        // A success under a concurrency limit that is never reached.
        "capacity" => builder.max_concurrent_calls(1_024),
        "time" => builder.time_window(Duration::from_secs(10), 10),
        "failure" => builder
            .consecutive_failures(u32::MAX)
            .without_failure_rate(),
        _ => builder
            .consecutive_failures(1)
            .open_duration(Backoff::fixed(Duration::from_secs(3_600))),
    };
    let layer = builder.build().unwrap();
    let fail = matches!(path, "failure" | "open");
    let mut svc = layer.layer(service_fn(move |x: u64| {
        ready(if fail {
            Err(std::io::Error::other("down"))
        } else {
            Ok(x)
        })
    }));
    measured_loop(&rt, &mut svc, n);
}

/// Warms up (handles resolved, clocks calibrated, the breaker tripped for
/// the open path), then [`counted`] makes `n` calls: only it is counted.
#[inline(never)]
fn measured_loop<S: Service<u64>>(rt: &tokio::runtime::Runtime, svc: &mut S, n: u64) {
    rt.block_on(async {
        for i in 0..100 {
            let _ = svc.ready().await.ok().unwrap().call(i).await;
        }
    });
    counted(rt, svc, n);
}

#[inline(never)]
fn counted<S: Service<u64>>(rt: &tokio::runtime::Runtime, svc: &mut S, n: u64) {
    rt.block_on(async {
        let mut ok = 0u64;
        for i in 0..n {
            if svc.ready().await.ok().unwrap().call(i).await.is_ok() {
                ok += 1;
            }
        }
        std::hint::black_box(ok);
    });
}

/// The floor of `peers.rs` (`arc_floor`), success path: an `Arc` cloned
/// into each call's future, an atomic add when the call completes, errors
/// mapped to `BoxError`.
#[derive(Clone)]
struct ArcFloor<S> {
    inner: S,
    calls: Arc<AtomicU64>,
}

pin_project_lite::pin_project! {
    struct ArcFloorFuture<F> {
        #[pin]
        future: F,
        calls: Option<Arc<AtomicU64>>,
    }
}

impl<T, E: Into<tower::BoxError>, F: Future<Output = Result<T, E>>> Future for ArcFloorFuture<F> {
    type Output = Result<T, tower::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        if let Some(calls) = this.calls.take() {
            calls.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(result.map_err(Into::into))
    }
}

impl<S: Service<u64>> Service<u64> for ArcFloor<S>
where
    S::Error: Into<tower::BoxError>,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = ArcFloorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ArcFloorFuture {
            future: self.inner.call(req),
            calls: Some(self.calls.clone()),
        }
    }
}
