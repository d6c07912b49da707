//! A real tonic server and client on 127.0.0.1, with the breaker in the
//! client's channel stack. The server is the pre-generated health service,
//! wrapped in a layer that answers UNAVAILABLE (trailers-only) while told
//! to. The breaker runs on a manual clock.
#![cfg(feature = "tonic")]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_breaker::classify::{Classify, GrpcClassifier};
use tower_breaker::tonic::status_from_error;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock, FailureKind, Outcome, State};

/// Bound on every network operation in these tests.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .expect("I/O timed out")
}

/// Server-side switch: answer every call with a trailers-only UNAVAILABLE.
#[derive(Clone, Default)]
struct Faults {
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Inject<S> {
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
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.faults.hits.fetch_add(1, Ordering::SeqCst);
        if self.faults.failing.load(Ordering::SeqCst) {
            let res = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "14")
                .header("grpc-message", "injected")
                .header("grpc-retry-pushback-ms", "20000")
                .body(tonic::body::Body::empty())
                .unwrap();
            return Box::pin(async move { Ok(res) });
        }
        Box::pin(self.inner.call(req))
    }
}

/// Starts the health server on 127.0.0.1:0 behind `faults`.
async fn start_server(faults: Faults) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        Server::builder()
            .layer(faults)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (addr, server)
}

#[tokio::test]
async fn breaker_in_a_tonic_client_trips_on_unavailable_and_recovers() {
    let faults = Faults::default();
    let (addr, server) = start_server(faults.clone()).await;
    let channel = bounded(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect");

    let (clock, manual) = Clock::manual();
    let breaker = CircuitBreakerLayer::builder()
        .name("tonic-health")
        .consecutive_failures(3)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(10)))
        .clock(clock)
        .classifier(GrpcClassifier::new())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breaker)
        .service(channel);
    let mut client = HealthClient::new(svc);
    let check = || HealthCheckRequest {
        service: String::new(),
    };

    // Healthy calls read their trailers: the breaker records successes.
    let reply = bounded(client.check(check())).await.unwrap();
    assert_eq!(reply.get_ref().status(), ServingStatus::Serving);
    assert_eq!(handle.snapshot().calls, 1);
    assert_eq!(handle.snapshot().failures, 0);

    faults.failing.store(true, Ordering::SeqCst);
    for n in 1..=3 {
        let status = bounded(client.check(check())).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "call {n}");
        assert_eq!(status.message(), "injected");
    }
    assert_eq!(faults.hits.load(Ordering::SeqCst), 4);
    assert_eq!(handle.state(), State::Open);
    // The server's pushback (20 s) outlasts the 10 s backoff.
    assert_eq!(
        handle.snapshot().open_remaining,
        Some(Duration::from_secs(20))
    );

    // Rejected locally, as UNAVAILABLE with the wait in metadata.
    faults.failing.store(false, Ordering::SeqCst);
    let status = bounded(client.check(check())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "circuit open");
    assert_eq!(status.metadata().get("retry-after").unwrap(), "20");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "20000"
    );
    assert_eq!(faults.hits.load(Ordering::SeqCst), 4, "server not reached");

    // After the wait, one probe succeeds and closes the breaker.
    manual.advance(Duration::from_secs(20));
    let reply = bounded(client.check(check())).await.unwrap();
    assert_eq!(reply.get_ref().status(), ServingStatus::Serving);
    assert_eq!(handle.state(), State::Closed);
    bounded(client.check(check())).await.unwrap();
    assert_eq!(faults.hits.load(Ordering::SeqCst), 6);

    server.abort();
}

#[tokio::test]
async fn refused_connection_is_a_connect_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(IO_TIMEOUT)
        .connect_lazy();
    let breaker = CircuitBreakerLayer::builder()
        .name("tonic-refused")
        .consecutive_failures(1)
        .classifier(GrpcClassifier::new())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let svc = breaker.layer(channel);
    let req = http::Request::builder()
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .body(tonic::body::Body::empty())
        .unwrap();
    let err = bounded(svc.oneshot(req)).await.unwrap_err();
    let outcome = <GrpcClassifier as Classify<http::Response<tonic::body::Body>>>::classify_error(
        &GrpcClassifier::new(),
        &*err,
    );
    assert_eq!(outcome, Outcome::Failure(FailureKind::CONNECT), "{err:?}");
    assert_eq!(handle.state(), State::Open);
}
