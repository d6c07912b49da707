//! The load generator: a fixed request rate spread round-robin over the
//! targets, with a bound on requests in flight, until told to stop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::sync::{watch, Semaphore};

use crate::mesh::HttpClient;

/// At most this many requests in flight; ticks beyond it are skipped.
const MAX_IN_FLIGHT: usize = 256;
/// Each request gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The body of a breaker's 503 (see `tower_breaker::axum`).
const REJECTED_BODY: &[u8] = b"service unavailable: circuit open";
/// The body of its 503 when its concurrency limit is reached.
const OVERLOADED_BODY: &[u8] = b"service unavailable: concurrency limit reached";

/// What one target answered.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) ok: AtomicU64,
    /// 5xx (and other non-2xx) answers from the upstream.
    pub(crate) failed: AtomicU64,
    /// 503 from a breaker on the way.
    pub(crate) rejected: AtomicU64,
    /// No answer: connection error or timeout.
    pub(crate) errors: AtomicU64,
    pub(crate) skipped: AtomicU64,
}

/// Totals at one point in time, to report differences.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Totals {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) rejected: u64,
    pub(crate) errors: u64,
    pub(crate) skipped: u64,
}

impl Totals {
    pub(crate) fn minus(self, earlier: Totals) -> Totals {
        Totals {
            ok: self.ok - earlier.ok,
            failed: self.failed - earlier.failed,
            rejected: self.rejected - earlier.rejected,
            errors: self.errors - earlier.errors,
            skipped: self.skipped - earlier.skipped,
        }
    }
}

impl Stats {
    pub(crate) fn totals(&self) -> Totals {
        Totals {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }
}

/// A URL the generator calls, with what it got back.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) url: String,
    pub(crate) stats: Stats,
}

impl Target {
    pub(crate) fn new(name: &'static str, url: String) -> Target {
        Target {
            name,
            url,
            stats: Stats::default(),
        }
    }
}

/// Sends `rate` requests per second over `targets` until `stop` turns true,
/// then waits (at most the request timeout) for those in flight.
pub(crate) async fn run(
    targets: Arc<[Target]>,
    rate: u32,
    client: HttpClient,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let index = next % targets.len();
        next = next.wrapping_add(1);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            targets[index].stats.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (targets, client) = (targets.clone(), client.clone());
        tokio::spawn(async move {
            let target = &targets[index];
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, call(&client, &target.url)).await;
            let counter = match outcome {
                Ok(Ok((status, _))) if status.is_success() => &target.stats.ok,
                Ok(Ok((status, body)))
                    if status == 503
                        && (body.starts_with(REJECTED_BODY)
                            || body.starts_with(OVERLOADED_BODY)) =>
                {
                    &target.stats.rejected
                }
                Ok(Ok(_)) => &target.stats.failed,
                Ok(Err(_)) | Err(_) => &target.stats.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    // Wait for the requests in flight (each is bounded by its timeout).
    let all = u32::try_from(MAX_IN_FLIGHT).expect("small");
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, slots.acquire_many(all)).await;
}

/// Every `every`, `size` calls to `target` at once, until `stop` turns
/// true: bursts that go past a concurrency limit now and then.
pub(crate) async fn bursts(
    target: Arc<Target>,
    size: usize,
    every: Duration,
    client: HttpClient,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let calls = (0..size).map(|_| {
            let (target, client) = (target.clone(), client.clone());
            async move {
                let outcome =
                    tokio::time::timeout(REQUEST_TIMEOUT, call(&client, &target.url)).await;
                let counter = match outcome {
                    Ok(Ok((status, _))) if status.is_success() => &target.stats.ok,
                    Ok(Ok((status, body)))
                        if status == 503 && body.starts_with(OVERLOADED_BODY) =>
                    {
                        &target.stats.rejected
                    }
                    Ok(Ok(_)) => &target.stats.failed,
                    Ok(Err(_)) | Err(_) => &target.stats.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        futures_join_all(calls).await;
    }
}

/// Runs every future to completion, concurrently.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    calls: impl Iterator<Item = F>,
) {
    let tasks: Vec<_> = calls.map(tokio::spawn).collect();
    for task in tasks {
        let _ = task.await;
    }
}

async fn call(
    client: &HttpClient,
    url: &str,
) -> Result<(http::StatusCode, Bytes), tower::BoxError> {
    let request = Request::get(url).body(Full::default())?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
