//! A loop of calls on one path, for instruction counts under callgrind
//! (`valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*counted*'`): the count is repeatable on a
//! shared machine, where timings are not. No recorder is installed, except
//! on the paths ending in `_metrics`: a Prometheus recorder (as in
//! `peers.rs`, scoped with `metrics::with_local_recorder`).
//!
//! ```sh
//! cargo bench -p tower-breaker-benches --bench callgrind_loop --no-run
//! bin=$(ls target/release/deps/callgrind_loop-* | grep -v '\.d$')
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*counted*' \
//!     "$bin" success 100000   # paths: see PATHS
//! ```
//!
//! The paths ending in `_floor` (and `bare`) are floors, not breakers, on
//! the same loop (`benches/lib.rs`): `bare` (the inner service alone),
//! `arc_floor` (as in `peers.rs`: an `Arc` cloned into each call's future
//! and an atomic add when the call completes), `judged_floor` (that, plus
//! the state word, the recorder lookup and the exact last-N window write a
//! breaker with tower-breaker's decisions must make) and `refusal_floor`
//! (a clock read, a count and an error naming the breaker, boxed); with
//! `_metrics`, also timed, counted and recorded in a histogram.
//!
//! Divide the total by the number of calls. Run by `cargo bench` itself
//! (with criterion's `--bench` argument), it makes a thousand calls of each
//! path and exits, so the bench target stays built and working.

use std::future::ready;
use std::time::Duration;

use tower::{service_fn, Layer, Service, ServiceExt};
use tower_breaker::keyed::key_fn;
use tower_breaker::{Backoff, CircuitBreakerLayer, MetricsLevel};
use tower_breaker_benches::{ArcFloor, Boxed, RefusalFloor};

const PATHS: [&str; 15] = [
    "success",
    "failure",
    "open",
    "time",
    "keyed",
    "capacity",
    "bare",
    "arc_floor",
    "success_metrics",
    "open_metrics",
    "arc_floor_metrics",
    "failure_metrics",
    "refusal_floor",
    "judged_floor",
    "judged_floor_metrics",
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
    match path.strip_suffix("_metrics") {
        Some(path) => {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let metered = path.ends_with("_floor");
            metrics::with_local_recorder(&recorder, || run_in(path, metered, n));
        }
        None => run_in(path, false, n),
    }
}

/// Runs `n` calls of `path` in the current recorder; `metered` is the
/// floor of full metrics.
fn run_in(path: &str, metered: bool, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let inner = service_fn(|x: u64| ready(Ok::<_, std::io::Error>(x)));
    match path {
        "bare" => return measured_loop(&rt, &mut inner.clone(), n),
        "judged_floor" if metered => {
            return measured_loop(&rt, &mut ArcFloor::judged_metered(inner), n)
        }
        "judged_floor" => return measured_loop(&rt, &mut ArcFloor::judged(inner), n),
        "arc_floor" if metered => return measured_loop(&rt, &mut ArcFloor::metered(inner), n),
        "arc_floor" => return measured_loop(&rt, &mut ArcFloor::new(inner), n),
        "refusal_floor" => return measured_loop(&rt, &mut RefusalFloor::<Boxed>::default(), n),
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
