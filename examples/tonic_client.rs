//! A tonic gRPC client with a circuit breaker in its channel stack, against a
//! flaky gRPC server in the same process.
//!
//! ```sh
//! cargo run --example tonic_client --all-features
//! ```
//!
//! The server is tonic-health's pre-generated `Health` service (no protoc
//! needed) behind a small layer that answers `UNAVAILABLE` (trailers-only,
//! with `grpc-retry-pushback-ms: 1000`) while an outage is on. The client
//! stack is `map_err(status_from_error)` over the breaker (with a
//! `GrpcClassifier`: UNAVAILABLE, DEADLINE_EXCEEDED, ... are failures) over
//! the tonic `Channel`, and calls `Check` every 100 ms, 40 times.
//!
//! Expect: `SERVING` for calls 1-5; the outage starts, three `UNAVAILABLE`
//! from the server (`injected outage`), and the breaker opens; then
//! `UNAVAILABLE: circuit open` with `retry-after` metadata, answered
//! locally, while the server is not reached; a probe every second (the
//! server's pushback outlasts the breaker's 500 ms) fails until the outage
//! ends at call 20, and the first probe after that closes the breaker. It
//! ends with the count of calls the server saw. Runs about 4 seconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{Layer, Service, ServiceBuilder};
use tower_breaker::classify::GrpcClassifier;
use tower_breaker::tonic::status_from_error;
use tower_breaker::{Backoff, CircuitBreakerLayer};

/// The server's outage switch, and how many calls reached it.
#[derive(Clone, Default)]
struct Outage {
    on: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
}

/// The server-side service that fails while the outage is on.
#[derive(Clone)]
struct Flaky<S> {
    inner: S,
    outage: Outage,
}

impl<S> Layer<S> for Outage {
    type Service = Flaky<S>;
    fn layer(&self, inner: S) -> Flaky<S> {
        Flaky {
            inner,
            outage: self.clone(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Flaky<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.outage.seen.fetch_add(1, Ordering::SeqCst);
        if self.outage.on.load(Ordering::SeqCst) {
            // A trailers-only gRPC error: status in the headers, no body.
            let res = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "14") // UNAVAILABLE
                .header("grpc-message", "injected outage")
                .header("grpc-retry-pushback-ms", "1000")
                .body(tonic::body::Body::empty())
                .expect("a valid response");
            return Box::pin(async move { Ok(res) });
        }
        Box::pin(self.inner.call(req))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The flaky server, on a free port of 127.0.0.1.
    let outage = Outage::default();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        Server::builder()
            .layer(outage.clone())
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    // The client: breaker in the channel stack, rejections as UNAVAILABLE.
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let breaker = CircuitBreakerLayer::builder()
        .name("health")
        .classifier(GrpcClassifier::new())
        .consecutive_failures(3)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_millis(500)))
        .build()?;
    let handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breaker)
        .service(channel);
    let mut client = HealthClient::new(svc);

    for i in 1..=40 {
        match i {
            6 => {
                println!("-- outage starts");
                outage.on.store(true, Ordering::SeqCst);
            }
            20 => {
                println!("-- outage ends");
                outage.on.store(false, Ordering::SeqCst);
            }
            _ => {}
        }
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match client.check(request).await {
            Ok(reply) => println!(
                "{i:2}: {:?}   breaker {:?}",
                reply.get_ref().status(),
                handle.state()
            ),
            Err(status) => println!(
                "{i:2}: {:?}: {} (retry-after {:?})   breaker {:?}",
                status.code(),
                status.message(),
                status.metadata().get("retry-after"),
                handle.state()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "server saw {} of 40 calls; breaker {:?}",
        outage.seen.load(Ordering::SeqCst),
        handle.state()
    );
    server.abort();
    Ok(())
}
