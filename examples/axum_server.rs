//! An axum 0.8 server with a circuit breaker in front of a flaky handler,
//! and `/metrics` for Prometheus.
//!
//! ```sh
//! cargo run --example axum_server --all-features
//! # in another shell:
//! for i in $(seq 40); do curl -s -o /dev/null -w '%{http_code} ' 127.0.0.1:3000/; done; echo
//! curl -s 127.0.0.1:3000/metrics | grep '^circuit_breaker_state'
//! ```
//!
//! The handler at `/` fails (500) 80% of the time for the first 20 seconds
//! of every minute and answers 200 otherwise. The breaker around it
//! (`HttpClassifier`: 5xx and 429 are failures) trips at 50% failures over
//! the last 20 calls; while open, `/` answers `503 service unavailable:
//! circuit open` with a `Retry-After` header, without running the handler.
//! Five seconds later a few probes go through, and once the handler is
//! healthy again the breaker closes. Expect a run of 500s, then 503s, then
//! 200s; `/metrics` (outside the breaker) shows `circuit_breaker_state`,
//! `circuit_breaker_transitions_total` and the rest for `service="flaky"`.
//! Stop it with Ctrl-C. `--port N` changes the port (default 3000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
use tower_breaker::axum::RejectWith503Layer;
use tower_breaker::classify::HttpClassifier;
use tower_breaker::{exporter, Backoff, CircuitBreakerLayer};

/// The flaky handler's state: when it started, and a counter for its dice.
struct Flaky {
    started: Instant,
    calls: AtomicU64,
}

impl Flaky {
    /// Whether this call fails: 80% of calls in the first 20 s of each minute.
    fn fails(&self) -> bool {
        let bad_period = self.started.elapsed().as_secs() % 60 < 20;
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        bad_period && dice(n) < 0.8
    }
}

/// A number in `[0, 1)` from a counter (splitmix64): pseudo-random, no crate.
fn dice(n: u64) -> f64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

async fn flaky(State(flaky): State<Arc<Flaky>>) -> (StatusCode, &'static str) {
    if flaky.fails() {
        (StatusCode::INTERNAL_SERVER_ERROR, "flaky: failed\n")
    } else {
        (StatusCode::OK, "flaky: ok\n")
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::args().skip_while(|a| a != "--port").nth(1) {
        Some(port) => port.parse()?,
        None => 3000,
    };
    // The Prometheus recorder, installed before the breaker is built.
    let metrics = exporter::install()?;

    let breaker = CircuitBreakerLayer::builder()
        .name("flaky")
        .classifier(HttpClassifier::new())
        .failure_rate(0.5)
        .minimum_calls(10)
        .count_window(20)
        .half_open_permits(2)
        .open_duration(Backoff::exponential(
            Duration::from_secs(5),
            Duration::from_secs(30),
        ))
        .build()?;
    let handle = breaker.handle();

    let state = Arc::new(Flaky {
        started: Instant::now(),
        calls: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/", get(flaky))
        // Only the routes above go through the breaker.
        .route_layer(
            ServiceBuilder::new()
                .layer(RejectWith503Layer::new())
                .layer(breaker),
        )
        .route("/metrics", get(move || async move { metrics.render() }))
        .with_state(state);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("axum_server on http://{}/", listener.local_addr()?);
    println!("  flaky for the first 20 s of each minute; metrics on /metrics");
    println!("  breaker state now: {:?}", handle.state());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
