//! The cost of a scrape at mesh scale, per line of exposition, against the
//! exporter's own: in one run, for 100, 1,000 and 10,000 services,
//!
//! - `plain`: a bare `PrometheusRecorder` (the exporter alone, with the same
//!   buckets) holding one counter, one gauge and one histogram per service,
//!   the baseline;
//! - `minimal` and `full`: breakers at `MetricsLevel::Minimal` and `Full`
//!   that saw some traffic (successes, failures, a trip, a rejection and a
//!   recovery), in the crate's recorder (`exporter::recorder()`).
//!
//! Each render writes into a buffer kept between renders (the exporter's
//! `render_to_write` for the plain case), as the endpoint does.
//! Throughput is in lines, so criterion reports lines per second; the setup
//! prints each case's lines per service and recorder memory per line (bytes
//! allocated and still live after populating, counted by this binary's
//! allocator, with the layers dropped so only the recorder's memory stays).
//!
//! The `scoped` group renders 1,000 services as a scoped credential of the
//! metrics endpoint sees them (half the services, each view), next to the
//! unscoped render: a scoped render must cost at most 1.5x an unscoped one.
//!
//! Run: `cargo bench -p tower-breaker-benches --bench render -- --warm-up-time 1 --measurement-time 3`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::FutureExt;
use tower::{Layer, Service, ServiceExt};
use tower_breaker::exporter::{MetricsHandle, Scope, View};
use tower_breaker::{exporter, Backoff, CircuitBreakerLayer, Clock, MetricsLevel};

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Clone, Copy, Debug)]
enum Case {
    Plain,
    Minimal,
    Full,
}

/// A handle on a recorder populated for `n` services, kept alive with its
/// recorder.
struct Populated {
    handle: MetricsHandle,
    _recorder: Box<dyn std::any::Any>,
    /// Recorder bytes still allocated after populating.
    bytes: isize,
}

fn breakers(recorder: &dyn metrics::Recorder, n: usize, level: MetricsLevel) {
    let (clock, time) = Clock::manual();
    metrics::with_local_recorder(recorder, || {
        for i in 0..n {
            let layer = CircuitBreakerLayer::builder()
                .name(format!("service-{i}"))
                .clock(clock.clone())
                .metrics_level(level)
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
            // Success, two failures (a trip), a rejection, a recovery.
            for fail in [false, true, true, false] {
                send(fail);
            }
            time.advance(Duration::from_secs(1));
            send(false);
            // The layer goes: its series stay until their expiry.
        }
    });
}

fn populated(case: Case, n: usize) -> Populated {
    let before = LIVE.load(Ordering::Relaxed);
    let (recorder, handle): (Box<dyn std::any::Any>, MetricsHandle) = match case {
        Case::Plain => {
            let recorder = exporter::prometheus_builder().build_recorder();
            let handle = MetricsHandle::from(recorder.handle());
            metrics::with_local_recorder(&recorder, || {
                for i in 0..n {
                    let service = format!("service-{i}");
                    metrics::counter!("plain_requests_total", "service" => service.clone())
                        .increment(3);
                    metrics::gauge!("plain_state", "service" => service.clone()).set(1.0);
                    metrics::histogram!("plain_request_duration_seconds", "service" => service)
                        .record(0.01);
                }
            });
            (Box::new(recorder), handle)
        }
        Case::Minimal | Case::Full => {
            let (recorder, handle) = exporter::recorder();
            let level = match case {
                Case::Minimal => MetricsLevel::Minimal,
                _ => MetricsLevel::Full,
            };
            breakers(&recorder, n, level);
            (Box::new(recorder), handle)
        }
    };
    // The first render moves histogram samples into their buckets.
    let _ = handle.render();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    Populated {
        handle,
        _recorder: recorder,
        bytes,
    }
}

fn lines(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

fn render(c: &mut Criterion) {
    tower_breaker::metrics::set_service_limit(20_000);
    let mut group = c.benchmark_group("render");
    group.sample_size(20);
    for n in [100usize, 1_000, 10_000] {
        for case in [Case::Plain, Case::Minimal, Case::Full] {
            let populated = populated(case, n);
            let text = populated.handle.render();
            let lines = lines(&text);
            assert!(text.contains(&format!("service=\"service-{}\"", n - 1)));
            println!(
                "render/{case:?}/{n}: {} lines per service, {:.0} recorder bytes per line, {:.0} per service",
                lines / n,
                populated.bytes as f64 / lines as f64,
                populated.bytes as f64 / n as f64,
            );
            group.throughput(Throughput::Elements(lines as u64));
            let id = BenchmarkId::new(format!("{case:?}").to_lowercase(), n);
            // Into a buffer kept between renders, as the endpoint does: a
            // fresh one would add the kernel's cost of faulting in pages.
            let mut buffer = String::new();
            group.bench_with_input(id, &n, |b, _| {
                b.iter(|| {
                    populated.handle.render_into(&mut buffer);
                    std::hint::black_box(buffer.len())
                })
            });
        }
    }
    group.finish();

    // Services service-0..999: the patterns keep service-0*..service-4*,
    // about half. Scoped renders are made as the endpoint makes them, from
    // the series (`render_scoped`); `Scope::apply` over the text is the
    // slower path for a handle without the crate's store.
    let handle = populated(Case::Full, 1_000).handle;
    let half = Scope::services((0..5).map(|d| format!("service-{d}*")));
    let mut group = c.benchmark_group("scoped");
    group.sample_size(20);
    let mut buffer = String::new();
    group.bench_function("unscoped", |b| {
        b.iter(|| {
            handle.render_into(&mut buffer);
            std::hint::black_box(buffer.len())
        })
    });
    for view in [View::Full, View::Aggregate, View::Redacted] {
        let scope = half.clone().with_view(view);
        let text = handle.render_scoped(&scope, b"bench-key-16-bytes");
        assert!(!text.contains("service-9"), "{view:?} leaks");
        group.bench_function(view.as_str(), |b| {
            b.iter(|| {
                std::hint::black_box(handle.render_scoped(&scope, b"bench-key-16-bytes").len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
