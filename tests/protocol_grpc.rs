//! Protocol edges on real gRPC traffic: a tonic health server on 127.0.0.1
//! (HTTP/2) with a switchable fault layer, and a tonic client with the
//! breaker in its channel stack or the server's. Each test checks what the
//! breaker recorded, kind included.
#![cfg(feature = "tonic")]

#[path = "support/loopback.rs"]
mod loopback;
use loopback::{bounded, install_recorder, seen, Faults, Mode, IO_TIMEOUT};

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;
use tower_breaker::classify::{GrpcClassifier, GrpcCode};
use tower_breaker::tonic::status_from_error;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock, State};

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

/// Starts the health server on 127.0.0.1:0 behind `faults`, with
/// `Server::timeout` when given.
async fn start_server(
    faults: Faults,
    timeout: Option<Duration>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut builder = Server::builder();
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        builder
            .layer(faults)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (addr, server)
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    bounded(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect")
}

/// A client breaker that trips on the first failure.
fn client_breaker(name: &str) -> CircuitBreakerLayer<GrpcClassifier> {
    CircuitBreakerLayer::builder()
        .name(name)
        .consecutive_failures(1)
        .classifier(GrpcClassifier::new())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_servers_own_timeout_answers_cancelled_and_trips_the_client() {
    install_recorder();
    let faults = Faults::default();
    faults.set(Mode::Stall);
    // The server gives up on its stalled handler after 20 ms and answers
    // CANCELLED; the test itself waits for nothing but the answer.
    let (addr, server) = start_server(faults.clone(), Some(Duration::from_millis(20))).await;
    let breaker = client_breaker("grpc-server-timeout");
    let handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breaker)
        .service(channel(addr).await);
    let mut client = HealthClient::new(svc);
    let status = bounded(client.check(check())).await.unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(seen("grpc-server-timeout"), ["failure:grpc_cancelled"]);
    assert_eq!(handle.state(), State::Open);
    server.abort();
}

#[tokio::test]
async fn received_cancelled_can_still_be_ignored() {
    install_recorder();
    let faults = Faults::default();
    faults.set(Mode::Stall);
    let (addr, server) = start_server(faults.clone(), Some(Duration::from_millis(20))).await;
    let breaker = CircuitBreakerLayer::builder()
        .name("grpc-cancelled-ignored")
        .consecutive_failures(1)
        .classifier(GrpcClassifier::new().ignore(GrpcCode::Cancelled))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breaker)
        .service(channel(addr).await);
    let status = bounded(HealthClient::new(svc).check(check()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Cancelled);
    assert_eq!(seen("grpc-cancelled-ignored"), ["ignored"]);
    server.abort();
}

#[tokio::test]
async fn a_client_deadline_is_a_timeout() {
    install_recorder();
    let faults = Faults::default();
    faults.set(Mode::Stall);
    let (addr, server) = start_server(faults.clone(), None).await;
    // tonic's channel enforces `Endpoint::timeout` (and `grpc-timeout`)
    // inside itself: the breaker around it sees the channel's error.
    let channel = bounded(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .timeout(Duration::from_millis(20))
            .connect(),
    )
    .await
    .unwrap();
    let breaker = client_breaker("grpc-client-deadline");
    let svc = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breaker)
        .service(channel);
    let status = bounded(HealthClient::new(svc).check(check()))
        .await
        .unwrap_err();
    // tonic reports its own deadline as CANCELLED to the caller; the breaker
    // saw the channel's `TimeoutExpired`.
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(seen("grpc-client-deadline"), ["failure:timeout"]);
    server.abort();
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_connect_failure() {
    install_recorder();
    let channel = Endpoint::from_static("http://tower-breaker-test.invalid:50051")
        .connect_timeout(IO_TIMEOUT)
        .connect_lazy();
    let breaker = client_breaker("grpc-dns");
    let svc = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breaker)
        .service(channel);
    let status = bounded(HealthClient::new(svc).check(check()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(seen("grpc-dns"), ["failure:connect"]);
}

#[tokio::test]
async fn an_html_page_on_a_grpc_call_is_unknown_at_the_headers() {
    install_recorder();
    let faults = Faults::default();
    faults.set(Mode::Html);
    let (addr, server) = start_server(faults.clone(), None).await;
    let breaker = client_breaker("grpc-html");
    let handle = breaker.handle();
    let svc = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breaker)
        .service(channel(addr).await);
    let status = bounded(HealthClient::new(svc).check(check()))
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(seen("grpc-html"), ["failure:grpc_unknown"]);
    assert_eq!(handle.state(), State::Open);
    server.abort();
}

/// The server-side recipe: `map_err(status_from_error)` outside the breaker
/// in `Server::layer`, so a refusal reaches the client as UNAVAILABLE with
/// its wait, not as an HTTP/2 reset.
#[tokio::test]
async fn a_server_side_breaker_refuses_with_unavailable_and_pushback() {
    install_recorder();
    let faults = Faults::default();
    let (clock, manual) = Clock::manual();
    let breaker = CircuitBreakerLayer::builder()
        .name("grpc-server-side")
        .consecutive_failures(1)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(10)))
        .clock(clock)
        .classifier(GrpcClassifier::new())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stack = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breaker)
        .layer(faults.clone());
    let server = tokio::spawn(async move {
        Server::builder()
            .layer(stack)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    let mut client = HealthClient::new(channel(addr).await);

    bounded(client.check(check())).await.unwrap();
    faults.set(Mode::Unavailable);
    let status = bounded(client.check(check())).await.unwrap_err();
    assert_eq!(status.message(), "injected");
    assert_eq!(handle.state(), State::Open);

    // Refused by the server's breaker: UNAVAILABLE, retryable, with the wait.
    faults.set(Mode::Pass);
    let status = bounded(client.check(check())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "circuit open");
    assert_eq!(status.metadata().get("retry-after").unwrap(), "20");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "20000"
    );
    assert_eq!(faults.hits(), 2, "the handler was not reached");
    assert_eq!(
        seen("grpc-server-side"),
        ["failure:grpc_unavailable", "success"]
    );

    manual.advance(Duration::from_secs(20));
    bounded(client.check(check())).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    server.abort();
}

/// Without the recipe tonic resets the stream: the client sees INTERNAL
/// and no wait. Pinned so the recipe's reason stays visible.
#[tokio::test]
async fn without_the_recipe_a_server_side_refusal_is_a_reset() {
    let breaker = CircuitBreakerLayer::builder()
        .name("grpc-server-side-bare")
        .classifier(GrpcClassifier::new())
        .build()
        .unwrap();
    breaker.handle().force_open();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        Server::builder()
            .layer(breaker)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    let mut client = HealthClient::new(channel(addr).await);
    let status = bounded(client.check(check())).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_none());
    server.abort();
}

#[tokio::test]
async fn keyed_by_authority_sees_the_origin_given_to_the_client() {
    // Generated clients send path-only URIs, and the channel adds the
    // origin inside itself: give the client the origin with `with_origin`.
    let faults = Faults::default();
    let (addr, server) = start_server(faults.clone(), None).await;
    let breakers = CircuitBreakerLayer::builder()
        .name("grpc-keyed")
        .classifier(GrpcClassifier::new())
        .keyed(tower_breaker::keyed::ByAuthority)
        .build()
        .unwrap();
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    let svc = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breakers.clone())
        .service(channel(addr).await);
    let mut client = HealthClient::with_origin(svc.clone(), origin);
    bounded(client.check(check())).await.unwrap();
    let key = addr.to_string();
    assert!(breakers.handle(&key).is_some(), "keyed by {key}");
    assert!(breakers.handle("unknown").is_none());

    // Without it, every call goes to the fallback key.
    let mut bare = HealthClient::new(svc);
    bounded(bare.check(check())).await.unwrap();
    assert!(breakers.handle("unknown").is_some());
    server.abort();
}

/// A `MakeWriter` keeping what a `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn keyed_by_authority_warns_once_when_no_call_has_a_key() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let faults = Faults::default();
    let (addr, server) = start_server(faults.clone(), None).await;
    let breakers = CircuitBreakerLayer::builder()
        .name("grpc-keyed-warn")
        .classifier(GrpcClassifier::new())
        .keyed(tower_breaker::keyed::ByAuthority)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .map_err(status_from_error)
        .layer(breakers.clone())
        .service(channel(addr).await);
    let mut client = HealthClient::new(svc);
    let warning = "no request so far carried a key";
    for _ in 0..99 {
        bounded(client.check(check())).await.unwrap();
    }
    assert!(!logs.text().contains(warning), "{}", logs.text());
    for _ in 0..150 {
        bounded(client.check(check())).await.unwrap();
    }
    assert_eq!(logs.text().matches(warning).count(), 1, "{}", logs.text());
    assert!(breakers.handle("unknown").is_some());
    server.abort();
}
