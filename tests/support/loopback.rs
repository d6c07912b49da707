//! Shared pieces of the loopback protocol tests: a tonic health server with a
//! switchable fault layer, bounded waits, and the outcomes a breaker
//! recorded, read from one process-wide `DebuggingRecorder`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Layer, Service};

/// Bound on every network operation in these tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`IO_TIMEOUT`].
pub async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .expect("I/O timed out")
}

static RECORDER: OnceLock<Snapshotter> = OnceLock::new();
static TOTALS: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());

/// Installs the process-wide recorder (once); call before building layers.
pub fn install_recorder() {
    RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this test binary");
        snapshotter
    });
}

/// What the breaker named `service` recorded so far, one entry per call:
/// `"success"`, `"ignored"` or `"failure:<kind>"`, sorted. Tests running at
/// once drain the same snapshotter, so every reading is kept in totals.
pub fn seen(service: &str) -> Vec<String> {
    let snapshotter = RECORDER.get().expect("install_recorder() first");
    let mut totals = TOTALS.lock().unwrap();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let DebugValue::Counter(n) = value else {
            continue;
        };
        let key = key.key();
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        let Some(svc) = label("service") else {
            continue;
        };
        let entry = match key.name() {
            "circuit_breaker_failures_total" => format!("failure:{}", label("kind").unwrap()),
            "circuit_breaker_requests_total" => match label("status").as_deref() {
                Some(s @ ("success" | "ignored")) => s.to_owned(),
                _ => continue,
            },
            _ => continue,
        };
        *totals.entry((svc, entry)).or_default() += n;
    }
    let mut out = Vec::new();
    for ((svc, entry), n) in totals.iter() {
        if svc == service {
            out.extend(std::iter::repeat_n(entry.clone(), *n as usize));
        }
    }
    out
}

/// What the fault layer does with the next calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Pass calls to the real service.
    Pass = 0,
    /// Never answer.
    Stall = 1,
    /// Answer 200 with an HTML page, as a misconfigured proxy does.
    Html = 2,
    /// Answer a trailers-only UNAVAILABLE with a 20 s pushback.
    Unavailable = 3,
    /// Panic in the handler.
    Panic = 4,
}

/// Server-side switch, counting the calls that reached it.
#[derive(Clone, Default)]
pub struct Faults {
    mode: Arc<AtomicU8>,
    pub hits: Arc<AtomicUsize>,
}

impl Faults {
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Stall,
            2 => Mode::Html,
            3 => Mode::Unavailable,
            4 => Mode::Panic,
            _ => Mode::Pass,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
pub struct Inject<S> {
    inner: S,
    faults: Faults,
}

impl<S> Layer<S> for Faults {
    type Service = Inject<S>;
    fn layer(&self, inner: S) -> Inject<S> {
        Inject {
            inner,
            faults: self.clone(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Inject<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.faults.hits.fetch_add(1, Ordering::SeqCst);
        let res = http::Response::builder();
        let res = match self.faults.mode() {
            Mode::Pass => return Box::pin(self.inner.call(req)),
            Mode::Stall => return Box::pin(std::future::pending()),
            Mode::Panic => panic!("handler panicked"),
            Mode::Html => {
                res.header("content-type", "text/html; charset=utf-8")
                    .body(tonic::body::Body::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"<html><body>bad gateway config</body></html>"),
                    )))
            }
            Mode::Unavailable => res
                .header("content-type", "application/grpc")
                .header("grpc-status", "14")
                .header("grpc-message", "injected")
                .header("grpc-retry-pushback-ms", "20000")
                .body(tonic::body::Body::empty()),
        };
        let res = res.expect("valid response");
        Box::pin(async move { Ok(res) })
    }
}
