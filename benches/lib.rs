//! What the benchmarks share: the floors measured beside the breaker on
//! the same loop (`peers.rs`, `callgrind_loop.rs`). The benchmarks are the
//! `[[bench]]` targets beside this file (see Cargo.toml and BENCHMARKS.md).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

/// The floor of any breaker whose future records the outcome: a middleware
/// that clones an `Arc` of shared state into each call's future, and adds
/// one to an atomic counter there when the call completes (the window
/// update), mapping errors to `BoxError` as tower middleware does. No state
/// machine. Success path only.
///
/// Metered ([`ArcFloor::metered`]), it adds what full metrics cannot do
/// without: two TSC reads for the duration, a requests counter and a
/// duration histogram, their handles registered once with the current
/// recorder.
///
/// Judged ([`ArcFloor::judged`], [`ArcFloor::judged_metered`]), it adds
/// the least a breaker with tower-breaker's decisions does besides: the
/// state word read to admit the call, the current recorder looked up
/// through the metrics facade (one installed after the layer is built must
/// still count the call) and compared with the one the handles belong to,
/// and the exact last-N window written: the cursor's `fetch_add` and the
/// slot compared with the sample.
///
/// The variants are types of their own (`METERED`, `JUDGED`), so each
/// compiles to only what it measures.
#[derive(Clone)]
pub struct ArcFloor<S, const METERED: bool = false, const JUDGED: bool = false> {
    inner: S,
    shared: Arc<Shared>,
}

struct Shared {
    calls: AtomicU64,
    meter: Option<Meter>,
    judge: Option<Judge>,
}

/// What [`ArcFloor::judged`] adds.
struct Judge {
    /// 0: Closed.
    state: AtomicU64,
    /// The recorder the handles belong to.
    recorder: AtomicUsize,
    cursor: AtomicU64,
    /// The last 100 outcomes, 0 for a success.
    slots: Box<[AtomicU8]>,
}

impl Judge {
    fn new() -> Self {
        Judge {
            state: AtomicU64::new(0),
            recorder: AtomicUsize::new(current_recorder()),
            cursor: AtomicU64::new(0),
            slots: (0..100).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Admits the call: the state word, the current recorder.
    #[inline]
    fn admit(&self) -> bool {
        self.state.load(Ordering::Acquire) == 0
            && current_recorder() == self.recorder.load(Ordering::Relaxed)
    }

    /// Writes a success into the window.
    #[inline]
    fn record(&self) {
        let i = (self.cursor.fetch_add(1, Ordering::Relaxed) % 100) as usize;
        if self.slots[i].load(Ordering::Relaxed) != 0 {
            self.slots[i].store(0, Ordering::Relaxed);
        }
    }
}

/// The address of the current recorder, as the facade finds it.
fn current_recorder() -> usize {
    metrics::with_recorder(|r| (r as *const dyn metrics::Recorder).cast::<()>() as usize)
}

struct Meter {
    clock: quanta::Clock,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl<S> ArcFloor<S> {
    /// `arc_floor`: the `Arc` and the atomic add.
    pub fn new(inner: S) -> Self {
        Self::with(inner)
    }
}

impl<S> ArcFloor<S, true> {
    /// `arc_floor_metrics`: the same, timed, counted and recorded in the
    /// recorder current when it is built.
    pub fn metered(inner: S) -> Self {
        Self::with(inner)
    }
}

impl<S> ArcFloor<S, false, true> {
    /// `judged_floor`: the `Arc`, with the judgment of a breaker.
    pub fn judged(inner: S) -> Self {
        Self::with(inner)
    }
}

impl<S> ArcFloor<S, true, true> {
    /// `judged_floor_metrics`: the judged floor, metered.
    pub fn judged_metered(inner: S) -> Self {
        Self::with(inner)
    }
}

impl<S, const METERED: bool, const JUDGED: bool> ArcFloor<S, METERED, JUDGED> {
    fn with(inner: S) -> Self {
        ArcFloor {
            inner,
            shared: Arc::new(Shared {
                calls: AtomicU64::new(0),
                meter: METERED.then(Meter::new),
                judge: JUDGED.then(Judge::new),
            }),
        }
    }
}

impl Meter {
    fn new() -> Self {
        Meter {
            clock: quanta::Clock::new(),
            requests: metrics::counter!("floor_requests_total", "status" => "success"),
            duration: metrics::histogram!("floor_request_duration_seconds", "status" => "success"),
        }
    }
}

/// The future of an [`ArcFloor`] call (inner futures here are `Unpin`).
pub struct ArcFloorFuture<F, const METERED: bool, const JUDGED: bool> {
    future: F,
    shared: Option<Arc<Shared>>,
    start: u64,
}

impl<T, E, F, const METERED: bool, const JUDGED: bool> Future for ArcFloorFuture<F, METERED, JUDGED>
where
    E: Into<BoxError>,
    F: Future<Output = Result<T, E>> + Unpin,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = std::task::ready!(Pin::new(&mut this.future).poll(cx));
        if let Some(shared) = this.shared.take() {
            match &shared.judge {
                Some(judge) if JUDGED => judge.record(),
                _ => {
                    shared.calls.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let (true, Some(m)) = (METERED, &shared.meter) {
                let elapsed = m.clock.delta_as_nanos(this.start, m.clock.raw());
                m.requests.increment(1);
                m.duration.record(elapsed as f64 * 1e-9);
            }
        }
        Poll::Ready(result.map_err(Into::into))
    }
}

impl<R, S: Service<R>, const METERED: bool, const JUDGED: bool> Service<R>
    for ArcFloor<S, METERED, JUDGED>
where
    S::Error: Into<BoxError>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ArcFloorFuture<S::Future, METERED, JUDGED>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        if let (true, Some(judge)) = (JUDGED, &self.shared.judge) {
            // A floor, not a breaker: the answer is kept, not acted on.
            std::hint::black_box(judge.admit());
        }
        let start = match &self.shared.meter {
            Some(m) if METERED => m.clock.raw(),
            _ => 0,
        };
        ArcFloorFuture {
            future: self.inner.call(req),
            shared: Some(self.shared.clone()),
            start,
        }
    }
}

/// The floor of a refusal by a tower middleware: what any breaker that
/// keeps the conventions tower-breaker keeps must do to refuse one call,
/// and nothing else. It reads the clock to learn whether the open
/// duration has elapsed, counts the refusal on one shared atomic, and
/// returns an error naming the breaker (an `Arc<str>` cloned into it) as a
/// `BoxError`: one allocation. No state machine, no metrics.
///
/// `D` says how the refusal is delivered, to measure what each convention
/// costs: [`Boxed`] (all of the above), [`BoxedNameless`] (no name in the
/// error) and [`Typed`] (the middleware's own error type, as failsafe and
/// recloser return: no allocation).
pub struct RefusalFloor<D = Boxed> {
    shared: Arc<RefusalShared>,
    deliver: std::marker::PhantomData<fn() -> D>,
}

impl<D> Clone for RefusalFloor<D> {
    fn clone(&self) -> Self {
        RefusalFloor {
            shared: self.shared.clone(),
            deliver: std::marker::PhantomData,
        }
    }
}

struct RefusalShared {
    clock: quanta::Clock,
    until: AtomicU64,
    refused: AtomicU64,
    name: Arc<str>,
}

/// The error a [`RefusalFloor`] refuses with.
#[derive(Debug)]
pub struct FloorRefused {
    /// The breaker's name, unless the floor leaves it out.
    pub name: Option<Arc<str>>,
    /// Raw clock ticks until the open duration elapses.
    pub left: u64,
}

impl std::fmt::Display for FloorRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("circuit breaker is open")
    }
}

impl std::error::Error for FloorRefused {}

/// How a [`RefusalFloor`] delivers its refusal.
pub trait Deliver {
    /// The service's error type.
    type Error;
    /// The refusal of the breaker called `name`.
    fn refusal(name: &Arc<str>, left: u64) -> Self::Error;
}

/// A `BoxError` naming the breaker: tower-breaker's conventions.
#[derive(Debug)]
pub enum Boxed {}
/// A `BoxError` that does not name the breaker.
#[derive(Debug)]
pub enum BoxedNameless {}
/// An error type of the middleware's own, naming the breaker: nothing
/// allocated.
#[derive(Debug)]
pub enum Typed {}

impl Deliver for Boxed {
    type Error = BoxError;
    fn refusal(name: &Arc<str>, left: u64) -> BoxError {
        Box::new(FloorRefused {
            name: Some(name.clone()),
            left,
        })
    }
}

impl Deliver for BoxedNameless {
    type Error = BoxError;
    fn refusal(_: &Arc<str>, left: u64) -> BoxError {
        Box::new(FloorRefused { name: None, left })
    }
}

impl Deliver for Typed {
    type Error = FloorRefused;
    fn refusal(name: &Arc<str>, left: u64) -> FloorRefused {
        FloorRefused {
            name: Some(name.clone()),
            left,
        }
    }
}

impl<D> Default for RefusalFloor<D> {
    fn default() -> Self {
        RefusalFloor {
            shared: Arc::new(RefusalShared {
                clock: quanta::Clock::new(),
                // Open for ever: every call is refused.
                until: AtomicU64::new(u64::MAX),
                refused: AtomicU64::new(0),
                name: Arc::from("floor"),
            }),
            deliver: std::marker::PhantomData,
        }
    }
}

impl<R, D: Deliver> Service<R> for RefusalFloor<D> {
    type Response = u64;
    type Error = D::Error;
    type Future = std::future::Ready<Result<u64, D::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        let shared = &*self.shared;
        let now = shared.clock.raw();
        let until = shared.until.load(Ordering::Acquire);
        if now >= until {
            return std::future::ready(Ok(0));
        }
        shared.refused.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Err(D::refusal(&shared.name, until - now)))
    }
}
