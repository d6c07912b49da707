//! Layer order decides what a panic or a timeout means to the breaker; these
//! tests pin the orders the README recommends and the ones it warns about,
//! on real axum and tonic servers on 127.0.0.1.
//!
//! - axum: CatchPanic *inside* the breaker makes a panic a 500, a failure;
//!   outside, the panic unwinds through the breaker and is ignored.
//! - a timeout inside the breaker is a `timeout` failure; outside, it drops
//!   the breaker's call, which is ignored. tonic's `Server::timeout` is
//!   always outside the layers of `Server::layer`.
#![cfg(all(feature = "axum", feature = "tonic"))]

#[path = "support/loopback.rs"]
mod loopback;
use loopback::{bounded, install_recorder, seen, Faults, Mode};

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::timeout::TimeoutLayer;
use tower::ServiceBuilder;
use tower_breaker::axum::RejectWith503Layer;
use tower_breaker::classify::{GrpcClassifier, HttpClassifier};
use tower_breaker::tonic::status_from_error;
use tower_breaker::CircuitBreakerLayer;
use tower_http::catch_panic::CatchPanicLayer;

/// How long a handler that never answers is given; the tests wait for the
/// servers' answers only.
const DEADLINE: Duration = Duration::from_millis(20);

fn http_breaker(name: &str) -> CircuitBreakerLayer<HttpClassifier> {
    CircuitBreakerLayer::builder()
        .name(name)
        .classifier(HttpClassifier::new())
        .build()
        .unwrap()
}

async fn panics() -> &'static str {
    panic!("handler bug")
}

async fn never() -> &'static str {
    std::future::pending().await
}

/// Serves `app` on 127.0.0.1:0.
async fn serve(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, server)
}

/// The status of `GET /` on `addr`.
async fn get_root(addr: SocketAddr) -> StatusCode {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{addr}/").parse::<http::Uri>().unwrap();
    bounded(client.get(uri)).await.expect("a reply").status()
}

#[tokio::test]
async fn axum_catch_panic_inside_the_breaker_makes_a_panic_a_failure() {
    install_recorder();
    let app = Router::new().route("/", get(panics)).layer(
        ServiceBuilder::new()
            .layer(RejectWith503Layer::new())
            .layer(http_breaker("order-panic-inside"))
            .layer(CatchPanicLayer::new()),
    );
    let (addr, server) = serve(app).await;
    assert_eq!(get_root(addr).await, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(seen("order-panic-inside"), ["failure:http_5xx"]);
    server.abort();
}

#[tokio::test]
async fn axum_catch_panic_outside_the_breaker_leaves_a_panic_ignored() {
    install_recorder();
    let app = Router::new().route("/", get(panics)).layer(
        ServiceBuilder::new()
            .layer(CatchPanicLayer::new())
            .layer(RejectWith503Layer::new())
            .layer(http_breaker("order-panic-outside")),
    );
    let (addr, server) = serve(app).await;
    assert_eq!(get_root(addr).await, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(seen("order-panic-outside"), ["ignored"]);
    server.abort();
}

#[tokio::test]
async fn axum_timeout_inside_the_breaker_is_a_timeout_failure() {
    install_recorder();
    let app = Router::new().route("/", get(never)).layer(
        ServiceBuilder::new()
            .layer(RejectWith503Layer::new())
            .layer(http_breaker("order-timeout-inside"))
            .layer(TimeoutLayer::new(DEADLINE)),
    );
    let (addr, server) = serve(app).await;
    // RejectWith503 answers the timeout error with a bare 500.
    assert_eq!(get_root(addr).await, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(seen("order-timeout-inside"), ["failure:timeout"]);
    server.abort();
}

#[tokio::test]
async fn axum_timeout_outside_the_breaker_leaves_it_ignored() {
    install_recorder();
    let app = Router::new().route("/", get(never)).layer(
        ServiceBuilder::new()
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                DEADLINE,
            ))
            .layer(RejectWith503Layer::new())
            .layer(http_breaker("order-timeout-outside")),
    );
    let (addr, server) = serve(app).await;
    assert_eq!(get_root(addr).await, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(seen("order-timeout-outside"), ["ignored"]);
    server.abort();
}

/// A tonic health server whose `Server::layer` is `stack` around a stalled
/// handler, with `Server::timeout` when given; returns the status a client
/// gets from `Check`.
async fn tonic_stalled<L, B>(stack: L, server_timeout: Option<Duration>) -> tonic::Status
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
    L: tower::Layer<tonic::service::Routes> + Clone + Send + 'static,
    L::Service: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<tower::BoxError> + Send,
{
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut builder = Server::builder();
        if let Some(timeout) = server_timeout {
            builder = builder.timeout(timeout);
        }
        builder
            .layer(stack)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    let channel = bounded(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let status = bounded(HealthClient::new(channel).check(request))
        .await
        .unwrap_err();
    server.abort();
    status
}

fn grpc_breaker(name: &str) -> CircuitBreakerLayer<GrpcClassifier> {
    CircuitBreakerLayer::builder()
        .name(name)
        .classifier(GrpcClassifier::new())
        .build()
        .unwrap()
}

#[tokio::test]
async fn tonic_server_timeout_is_outside_the_breaker_and_ignored() {
    install_recorder();
    let faults = Faults::default();
    faults.set(Mode::Stall);
    let stack = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(grpc_breaker("order-tonic-server-timeout"))
        .layer(faults)
        .into_inner();
    let status = tonic_stalled(stack, Some(DEADLINE)).await;
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(seen("order-tonic-server-timeout"), ["ignored"]);
}

#[tokio::test]
async fn tonic_tower_timeout_inside_the_breaker_is_a_timeout_failure() {
    install_recorder();
    let faults = Faults::default();
    faults.set(Mode::Stall);
    let stack = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(grpc_breaker("order-tonic-timeout-inside"))
        .layer(TimeoutLayer::new(DEADLINE))
        .layer(faults)
        .into_inner();
    let status = tonic_stalled(stack, None).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(seen("order-tonic-timeout-inside"), ["failure:timeout"]);
}
