//! Per-call cost of circuit breakers, measured in one run on one loop shape.
//!
//! Every implementation is driven as a tower `Service` on a current-thread
//! tokio runtime: each iteration is `svc.ready().await?.call(req).await`
//! (see [`call_once`]). Criterion's `iter_custom` times one `block_on` of a
//! loop of `iters` calls, so the figure is ns per call and the runtime's
//! per-`block_on` cost is spread over the whole sample.
//!
//! Groups and ids: `success/<impl>`, `failure/<impl>`, `open/<impl>`,
//! `two_threads/<impl>`.
//! - `success`: breaker closed, inner service returns `Ok`.
//! - `failure`: breaker closed, inner service returns `Err`, breaker configured
//!   so that it never trips (checked before and after timing).
//! - `open`: breaker tripped by failing calls during setup (see [`tripped`])
//!   and configured to stay open for an hour; every timed call is rejected.
//! - `two_threads`: success path, two OS threads share one breaker (clones of
//!   one service), each on its own current-thread runtime doing `iters`
//!   calls; reported time is wall time / total calls (aggregate ns per call).
//!
//! `arc_floor` is not a breaker: it is the least a breaker whose future
//! records the outcome must do (an `Arc` clone into the future, one atomic
//! add when it completes), measured on the same loop as a floor;
//! `arc_floor_metrics` adds two TSC reads, a counter and a histogram on the
//! Prometheus recorder: the floor of full metrics.
//!
//! Peers without a tower `Service` (failsafe, recloser) are wrapped in
//! [`Guarded`], the adapter a user would write: `poll_ready` is the inner
//! service's, `call` wraps the inner future in the peer's own
//! future-guarding API (`failsafe::futures::CircuitBreaker::call`,
//! `recloser::AsyncRecloser::call`).
//!
//! The crate under test runs as `tower_breaker` (no recorder installed: the
//! facade's no-op recorder), `tower_breaker_metrics` (a Prometheus recorder),
//! `tower_breaker_metrics_coarse` (the same, timed by `Clock::coarse`) and
//! `tower_breaker_metrics_only` (shadow mode, Prometheus recorder).
//! tower-resilience is built with its `metrics` feature (a cargo feature,
//! so on or off for the whole build): `tower_resilience` runs it with no
//! recorder, `tower_resilience_metrics` with the Prometheus recorder.
//!
//! Run: `cargo bench -p tower-breaker-benches --bench peers -- --warm-up-time 1 --measurement-time 2`.

use std::fmt;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::sync::Barrier;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use tokio::runtime::Runtime;
use tower::{Layer as _, Service, ServiceExt as _};
use tower_breaker_benches::{ArcFloor, Boxed, BoxedNameless, FloorRefused, RefusalFloor, Typed};

type Req = u64;
type Resp = u64;
type Group<'a> = BenchmarkGroup<'a, WallTime>;

/// Time a tripped breaker stays open; far longer than any run.
const HOUR: Duration = Duration::from_secs(3600);
/// Threads in the `two_threads` group.
const THREADS: u32 = 2;

// ---------------------------------------------------------------------------
// Inner service, paths, outcomes
// ---------------------------------------------------------------------------

/// The inner service's error; seatbelt also needs one for rejected calls.
///
/// Word-sized on purpose: with a one-byte error, `Result<u64, Fail>` cost the
/// bare loop ~10 ns more per call on this machine (12 ns instead of 2-3 ns),
/// and the peers a few ns each; `repr(u64)` (or `()`) avoids it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
enum Fail {
    Inner,
    Rejected,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fail::Inner => "inner failure",
            Fail::Rejected => "rejected",
        })
    }
}

impl std::error::Error for Fail {}

type InnerFuture = Ready<Result<Resp, Fail>>;

/// The service every breaker wraps, and the `bare` floor: a `service_fn`
/// that answers at once with `Ok(req)` or `Err(Fail::Inner)`.
fn inner(
    fail: bool,
) -> impl Service<Req, Response = Resp, Error = Fail, Future = InnerFuture> + Clone + Send + Sync {
    tower::service_fn(move |req: Req| ready(if fail { Err(Fail::Inner) } else { Ok(req) }))
}

/// Which path a benchmark measures; also what a call is observed to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Success,
    Failure,
    Open,
}

impl Path {
    const ALL: [Path; 3] = [Path::Success, Path::Failure, Path::Open];

    fn group(self) -> &'static str {
        match self {
            Path::Success => "success",
            Path::Failure => "failure",
            Path::Open => "open",
        }
    }

    /// Whether the inner service fails on this path (on `Open` it fails the
    /// setup calls that trip the breaker; timed calls never reach it).
    fn inner_fails(self) -> bool {
        self != Path::Success
    }
}

/// Tells a breaker's "rejected, circuit open" error from an inner error, so
/// the harness can check that each benchmark measures the path it claims.
trait Rejection {
    fn is_rejection(&self) -> bool;
}

impl Rejection for Fail {
    fn is_rejection(&self) -> bool {
        *self == Fail::Rejected
    }
}

impl<E> Rejection for tower_resilience::circuitbreaker::CircuitBreakerError<E> {
    fn is_rejection(&self) -> bool {
        matches!(self, Self::OpenCircuit)
    }
}

impl<E> Rejection for failsafe::Error<E> {
    fn is_rejection(&self) -> bool {
        matches!(self, Self::Rejected)
    }
}

impl<E> Rejection for recloser::Error<E> {
    fn is_rejection(&self) -> bool {
        matches!(self, Self::Rejected)
    }
}

/// One untimed call for setup and checks: which path did it take?
async fn probe<S>(svc: &mut S) -> Path
where
    S: Service<Req>,
    S::Error: Rejection,
{
    observed(&call_once(svc, 0).await)
}

fn observed<T, E: Rejection>(result: &Result<T, E>) -> Path {
    match result {
        Ok(_) => Path::Success,
        Err(e) if e.is_rejection() => Path::Open,
        Err(_) => Path::Failure,
    }
}

// ---------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------

/// One call: the loop body shared by every implementation.
async fn call_once<S: Service<Req>>(svc: &mut S, req: Req) -> Result<S::Response, S::Error> {
    svc.ready().await?.call(req).await
}

/// `iters` calls back to back. Only the result goes through `black_box`:
/// also hiding the request costs ~1.5 ns a call on this machine (bare floor
/// 3.5 ns instead of 2 ns) and changes nothing a breaker does.
async fn calls<S: Service<Req>>(svc: &mut S, iters: u64) {
    for i in 0..iters {
        let _ = black_box(call_once(svc, i).await);
    }
}

/// On `Path::Open`, trips the breaker by calling the failing inner service
/// until a call is rejected (recloser needs `closed_len + 1` failures, the
/// others one). Shared by every peer so all are opened the same way.
async fn tripped<S>(mut svc: S, path: Path) -> S
where
    S: Service<Req>,
    S::Error: Rejection,
{
    if path == Path::Open {
        for _ in 0..1_000 {
            if probe(&mut svc).await == Path::Open {
                break;
            }
        }
    }
    svc
}

fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------
// Harness: one per metrics recorder
// ---------------------------------------------------------------------------

/// Where `metrics` macros go while a benchmark sets up and runs. Scoped with
/// `metrics::with_local_recorder`, so both variants live in one process.
enum Recorder {
    /// No recorder installed: `metrics` macros hit the no-op recorder.
    None,
    /// `metrics-exporter-prometheus`, as a service would install it (minus
    /// the HTTP listener). Upkeep (draining histogram samples) runs between
    /// samples, outside the timed region, as a 5 s upkeep task would.
    Prometheus(metrics_exporter_prometheus::PrometheusRecorder),
}

impl Recorder {
    fn prometheus() -> Self {
        Recorder::Prometheus(metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder())
    }

    fn scope<T>(&self, f: impl FnOnce() -> T) -> T {
        match self {
            Recorder::None => f(),
            Recorder::Prometheus(r) => metrics::with_local_recorder(r, f),
        }
    }

    fn upkeep(&self) {
        if let Recorder::Prometheus(r) = self {
            r.handle().run_upkeep();
        }
    }
}

struct Harness {
    rt: Runtime,
    recorder: Recorder,
}

impl Harness {
    fn new(recorder: Recorder) -> Self {
        Harness {
            rt: current_thread_runtime(),
            recorder,
        }
    }

    /// Runs a future to completion on this harness's runtime, inside its
    /// recorder scope.
    fn run<F: Future>(&self, fut: F) -> F::Output {
        self.recorder.scope(|| self.rt.block_on(fut))
    }

    /// Builds the service (untimed, inside the recorder scope so metric
    /// handles cached at construction land in the right recorder) and checks
    /// one call takes `path`.
    fn setup<S, F, Fut>(&self, name: &str, path: Path, make_svc: F) -> S
    where
        S: Service<Req>,
        S::Error: Rejection,
        F: FnOnce() -> Fut,
        Fut: Future<Output = S>,
    {
        let mut svc = self.run(make_svc());
        self.check(name, path, &mut svc);
        svc
    }

    fn check<S>(&self, name: &str, path: Path, svc: &mut S)
    where
        S: Service<Req>,
        S::Error: Rejection,
    {
        let got = self.run(probe(svc));
        assert_eq!(
            got, path,
            "{name}: configured for {path:?}, a call took {got:?}"
        );
    }

    /// `<group>/<name>`: one service, one thread, `iters` calls per sample.
    fn bench_tower_service<S, F, Fut>(&self, g: &mut Group<'_>, name: &str, path: Path, make_svc: F)
    where
        S: Service<Req>,
        S::Error: Rejection,
        F: FnOnce() -> Fut,
        Fut: Future<Output = S>,
    {
        let mut svc = self.setup(name, path, make_svc);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let elapsed = self.run(async {
                    let start = Instant::now();
                    calls(&mut svc, iters).await;
                    start.elapsed()
                });
                self.recorder.upkeep();
                elapsed
            })
        });
        // The path must not have changed under load (e.g. failure path tripped).
        self.check(name, path, &mut svc);
    }

    /// `two_threads/<name>`: success path, `THREADS` OS threads, each with a
    /// clone of one service (so one shared breaker) and its own
    /// current-thread runtime, each doing `iters` calls. Returns wall time
    /// (first start to last finish) / `THREADS`, so criterion's per-iteration
    /// figure is aggregate ns per call.
    fn bench_tower_service_two_threads<S, F, Fut>(&self, g: &mut Group<'_>, name: &str, make_svc: F)
    where
        S: Service<Req> + Clone + Send,
        S::Error: Rejection,
        F: FnOnce() -> Fut,
        Fut: Future<Output = S>,
    {
        let mut svc = self.setup(name, Path::Success, make_svc);
        let recorder = &self.recorder;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(THREADS as usize);
                let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
                    let workers: Vec<_> = (0..THREADS)
                        .map(|_| {
                            let mut svc = svc.clone();
                            let barrier = &barrier;
                            s.spawn(move || {
                                let rt = current_thread_runtime();
                                recorder.scope(|| {
                                    barrier.wait();
                                    let start = Instant::now();
                                    rt.block_on(calls(&mut svc, iters));
                                    (start, Instant::now())
                                })
                            })
                        })
                        .collect();
                    workers
                        .into_iter()
                        .map(|w| w.join().expect("worker"))
                        .collect()
                });
                recorder.upkeep();
                let first = spans.iter().map(|s| s.0).min().expect("spans");
                let last = spans.iter().map(|s| s.1).max().expect("spans");
                (last - first) / THREADS
            })
        });
        self.check(name, Path::Success, &mut svc);
    }
}

// ---------------------------------------------------------------------------
// Adapter for breakers that guard a future rather than wrap a service
// ---------------------------------------------------------------------------

/// A breaker API of the form "give me a future, I return a guarded future".
trait Guard: Clone {
    type Error: Rejection;
    type Future: Future<Output = Result<Resp, Self::Error>>;
    fn guard(&self, fut: InnerFuture) -> Self::Future;
    fn inner_error(e: Fail) -> Self::Error;
}

/// Tower `Service` over a [`Guard`]: readiness is the inner service's, the
/// breaker decides (and records) when the returned future is polled.
#[derive(Clone)]
struct Guarded<B, S> {
    breaker: B,
    inner: S,
}

impl<B, S> Service<Req> for Guarded<B, S>
where
    B: Guard,
    S: Service<Req, Response = Resp, Error = Fail, Future = InnerFuture>,
{
    type Response = Resp;
    type Error = B::Error;
    type Future = B::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(B::inner_error)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.breaker.guard(self.inner.call(req))
    }
}

impl<P, I> Guard for failsafe::StateMachine<P, I>
where
    P: failsafe::FailurePolicy + Send + Sync,
    I: failsafe::Instrument + Send + Sync,
{
    type Error = failsafe::Error<Fail>;
    type Future = failsafe::futures::ResponseFuture<InnerFuture, P, I, failsafe::Any>;

    fn guard(&self, fut: InnerFuture) -> Self::Future {
        failsafe::futures::CircuitBreaker::call(self, fut)
    }

    fn inner_error(e: Fail) -> Self::Error {
        failsafe::Error::Inner(e)
    }
}

impl Guard for recloser::AsyncRecloser {
    type Error = recloser::Error<Fail>;
    type Future = recloser::RecloserFuture<InnerFuture, recloser::AnyError>;

    fn guard(&self, fut: InnerFuture) -> Self::Future {
        self.call(fut)
    }

    fn inner_error(e: Fail) -> Self::Error {
        recloser::Error::Inner(e)
    }
}

// ---------------------------------------------------------------------------
// Peers: one constructor each, configured per path
// ---------------------------------------------------------------------------

async fn bare(path: Path) -> impl Service<Req, Response = Resp, Error = Fail> + Clone + Send {
    inner(path.inner_fails())
}

/// tower-resilience 0.13. Success: defaults (count window of 100, 50 %).
/// Failure: `minimum_number_of_calls(usize::MAX)` so the window is never
/// evaluated. Open: `consecutive_failures(1)`, open for an hour.
async fn tower_resilience(
    path: Path,
) -> impl Service<
    Req,
    Response = Resp,
    Error = tower_resilience::circuitbreaker::CircuitBreakerError<Fail>,
> + Clone
       + Send {
    use tower_resilience::circuitbreaker::CircuitBreakerLayer;
    let builder = CircuitBreakerLayer::builder().name("peer");
    let builder = match path {
        Path::Success => builder,
        Path::Failure => builder.minimum_number_of_calls(usize::MAX),
        Path::Open => builder.consecutive_failures(1).wait_duration_in_open(HOUR),
    };
    let layer = builder.build().expect("tower-resilience config");
    tripped(layer.layer(inner(path.inner_fails())), path).await
}

/// failsafe 1.3, same policy type on every path (the default
/// `SuccessRateOverTimeWindow.or_else(ConsecutiveFailures)`). Success:
/// defaults. Failure: required success rate 0 and `u32::MAX` consecutive
/// failures (its counter is a `u32` that wraps after 2^32 failures; one
/// benchmark does far fewer). Open: one consecutive failure, an
/// hour's backoff.
async fn failsafe(
    path: Path,
) -> impl Service<Req, Response = Resp, Error = failsafe::Error<Fail>> + Clone + Send {
    use failsafe::backoff::equal_jittered;
    use failsafe::failure_policy::{
        consecutive_failures, success_rate_over_time_window, ConsecutiveFailures,
        SuccessRateOverTimeWindow,
    };
    use failsafe::FailurePolicy as _;
    let backoff = equal_jittered(Duration::from_secs(10), Duration::from_secs(300));
    let policy = match path {
        Path::Success => {
            SuccessRateOverTimeWindow::default().or_else(ConsecutiveFailures::default())
        }
        Path::Failure => {
            success_rate_over_time_window(0.0, u32::MAX, Duration::from_secs(30), backoff.clone())
                .or_else(consecutive_failures(u32::MAX, backoff))
        }
        Path::Open => SuccessRateOverTimeWindow::default()
            .or_else(consecutive_failures(1, equal_jittered(HOUR, HOUR))),
    };
    let breaker = failsafe::Config::new().failure_policy(policy).build();
    tripped(
        Guarded {
            breaker,
            inner: inner(path.inner_fails()),
        },
        path,
    )
    .await
}

/// recloser 1.4. Success: defaults (ring of 100, 50 %). Failure: error rate
/// threshold 2.0 (a rate never reaches it). Open: ring of 1 (trips on the
/// second failure: the ring reports no rate until it has been filled once),
/// open an hour.
async fn recloser(
    path: Path,
) -> impl Service<Req, Response = Resp, Error = recloser::Error<Fail>> + Clone + Send {
    let builder = recloser::Recloser::custom();
    let builder = match path {
        Path::Success => builder,
        Path::Failure => builder.error_rate(2.0),
        Path::Open => builder.closed_len(1).open_wait(HOUR),
    };
    let breaker = recloser::AsyncRecloser::from(builder.build());
    tripped(
        Guarded {
            breaker,
            inner: inner(path.inner_fails()),
        },
        path,
    )
    .await
}

/// seatbelt 0.11 (features `breaker`, `tower-service`), tokio clock.
/// Success: defaults (10 %, 100 calls, 30 s window). Failure:
/// `min_throughput(u32::MAX)`. Open: `min_throughput(1)`, breaks for an hour.
/// Seatbelt returns the service's own output on rejection: here
/// `Err(Fail::Rejected)`, set with `rejected_input_error`.
async fn seatbelt(path: Path) -> impl Service<Req, Response = Resp, Error = Fail> + Clone + Send {
    use seatbelt::breaker::Breaker;
    use seatbelt::{RecoveryInfo, ResilienceContext};
    let clock = tick::Clock::new_tokio();
    let context = ResilienceContext::new(&clock).name("peer");
    let layer = Breaker::layer("peer", &context)
        .recovery_with(|out: &Result<Resp, Fail>, _| match out {
            Ok(_) => RecoveryInfo::never(),
            Err(_) => RecoveryInfo::retry(),
        })
        .rejected_input_error(|_, _| Fail::Rejected);
    let layer = match path {
        Path::Success => layer,
        Path::Failure => layer.min_throughput(u32::MAX),
        Path::Open => layer.min_throughput(1).break_duration(HOUR),
    };
    tripped(
        layered::Layer::layer(&layer, inner(path.inner_fails())),
        path,
    )
    .await
}

// ---------------------------------------------------------------------------
// tower_breaker, the crate under test
// ---------------------------------------------------------------------------

impl Rejection for FloorRefused {
    fn is_rejection(&self) -> bool {
        true
    }
}

impl Rejection for tower::BoxError {
    fn is_rejection(&self) -> bool {
        self.is::<tower_breaker::CircuitOpen>() || self.is::<tower_breaker_benches::FloorRefused>()
    }
}

/// How the crate under test is set up, beyond the path.
#[derive(Clone, Copy)]
enum Mode {
    /// Defaults: metrics level Full (duration histogram), count window.
    Default,
    /// Shadow mode: the machine runs, nothing is refused.
    MetricsOnly,
    /// Defaults, but timed by [`tower_breaker::Clock::coarse`] (500 µs).
    CoarseClock,
    /// Defaults plus a concurrency limit (`max_concurrent_calls(1024)`).
    Capacity,
}

/// tower-breaker. Success: defaults (failure rate 50% over 100 calls, full
/// metrics). Failure: only a consecutive-failures policy of `u32::MAX`, so
/// it never trips. Open: trips on one failure, open for an hour.
async fn tower_breaker(
    path: Path,
    mode: Mode,
) -> impl Service<Req, Response = Resp, Error = tower::BoxError> + Clone + Send {
    use tower_breaker::{Backoff, CircuitBreakerLayer, Clock};
    let builder = CircuitBreakerLayer::builder().name("bench");
    let builder = match mode {
        Mode::CoarseClock => builder.clock(Clock::coarse(Duration::from_micros(500))),
        Mode::Capacity => builder.max_concurrent_calls(1024),
        Mode::Default | Mode::MetricsOnly => builder,
    };
    let builder = match path {
        Path::Success => builder,
        Path::Failure => builder
            .consecutive_failures(u32::MAX)
            .without_failure_rate(),
        Path::Open => builder
            .consecutive_failures(1)
            .open_duration(Backoff::fixed(HOUR)),
    };
    let layer = builder.build().expect("tower-breaker config");
    if let Mode::MetricsOnly = mode {
        layer.handle().metrics_only();
    }
    tripped(layer.layer(inner(path.inner_fails())), path).await
}

// ---------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------

fn peers(c: &mut Criterion) {
    let plain = Harness::new(Recorder::None);
    let prometheus = Harness::new(Recorder::prometheus());

    for path in Path::ALL {
        let mut g = c.benchmark_group(path.group());
        if path != Path::Open {
            plain.bench_tower_service(&mut g, "bare", path, || bare(path));
        }
        if path == Path::Open {
            plain.bench_tower_service(&mut g, "refusal_floor", path, || async {
                RefusalFloor::<Boxed>::default()
            });
            plain.bench_tower_service(&mut g, "refusal_floor_nameless", path, || async {
                RefusalFloor::<BoxedNameless>::default()
            });
            plain.bench_tower_service(&mut g, "refusal_floor_typed", path, || async {
                RefusalFloor::<Typed>::default()
            });
        }
        if path == Path::Success {
            plain.bench_tower_service(&mut g, "arc_floor", path, || async {
                ArcFloor::new(inner(false))
            });
            prometheus.bench_tower_service(&mut g, "arc_floor_metrics", path, || async {
                ArcFloor::metered(inner(false))
            });
            plain.bench_tower_service(&mut g, "judged_floor", path, || async {
                ArcFloor::judged(inner(false))
            });
            prometheus.bench_tower_service(&mut g, "judged_floor_metrics", path, || async {
                ArcFloor::judged_metered(inner(false))
            });
        }
        plain.bench_tower_service(&mut g, "tower_resilience", path, || tower_resilience(path));
        prometheus.bench_tower_service(&mut g, "tower_resilience_metrics", path, || {
            tower_resilience(path)
        });
        plain.bench_tower_service(&mut g, "failsafe", path, || failsafe(path));
        plain.bench_tower_service(&mut g, "recloser", path, || recloser(path));
        plain.bench_tower_service(&mut g, "seatbelt", path, || seatbelt(path));
        plain.bench_tower_service(&mut g, "tower_breaker", path, || {
            tower_breaker(path, Mode::Default)
        });
        if path == Path::Success {
            // What a concurrency limit costs when it is set (with none set,
            // the `tower_breaker` line is the one to compare across commits).
            plain.bench_tower_service(&mut g, "tower_breaker_capacity", path, || {
                tower_breaker(path, Mode::Capacity)
            });
        }
        prometheus.bench_tower_service(&mut g, "tower_breaker_metrics", path, || {
            tower_breaker(path, Mode::Default)
        });
        prometheus.bench_tower_service(&mut g, "tower_breaker_metrics_coarse", path, || {
            tower_breaker(path, Mode::CoarseClock)
        });
        if path != Path::Open {
            // Shadow mode never refuses: there is no open path to measure.
            prometheus.bench_tower_service(&mut g, "tower_breaker_metrics_only", path, || {
                tower_breaker(path, Mode::MetricsOnly)
            });
        }
        g.finish();
    }

    let mut g = c.benchmark_group("two_threads");
    plain.bench_tower_service_two_threads(&mut g, "bare", || bare(Path::Success));
    plain.bench_tower_service_two_threads(&mut g, "arc_floor", || async {
        ArcFloor::new(inner(false))
    });
    prometheus.bench_tower_service_two_threads(&mut g, "arc_floor_metrics", || async {
        ArcFloor::metered(inner(false))
    });
    plain.bench_tower_service_two_threads(&mut g, "tower_resilience", || {
        tower_resilience(Path::Success)
    });
    prometheus.bench_tower_service_two_threads(&mut g, "tower_resilience_metrics", || {
        tower_resilience(Path::Success)
    });
    plain.bench_tower_service_two_threads(&mut g, "failsafe", || failsafe(Path::Success));
    plain.bench_tower_service_two_threads(&mut g, "recloser", || recloser(Path::Success));
    plain.bench_tower_service_two_threads(&mut g, "seatbelt", || seatbelt(Path::Success));
    plain.bench_tower_service_two_threads(&mut g, "tower_breaker", || {
        tower_breaker(Path::Success, Mode::Default)
    });
    prometheus.bench_tower_service_two_threads(&mut g, "tower_breaker_metrics", || {
        tower_breaker(Path::Success, Mode::Default)
    });
    prometheus.bench_tower_service_two_threads(&mut g, "tower_breaker_metrics_coarse", || {
        tower_breaker(Path::Success, Mode::CoarseClock)
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short defaults; `--warm-up-time` / `--measurement-time` on the command
    // line override them. No plots: they took longer than the measurements.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .without_plots();
    targets = peers
}
criterion_main!(benches);
