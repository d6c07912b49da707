//! Protocol edges on real HTTP traffic: hyper and axum servers on
//! 127.0.0.1, hyper-util's legacy client, and what the breaker records of
//! each, kind included.
#![cfg(all(feature = "http", feature = "hyper-util", feature = "axum"))]

#[path = "support/loopback.rs"]
mod loopback;
use loopback::{bounded, install_recorder, seen};

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use tower_breaker::classify::HttpClassifier;
use tower_breaker::{CircuitBreakerLayer, State};

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_connect_failure() {
    install_recorder();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let breaker = CircuitBreakerLayer::builder()
        .name("http-dns")
        .consecutive_failures(1)
        .classifier(HttpClassifier::new())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let req = Request::get("http://tower-breaker-test.invalid/")
        .body(Empty::new())
        .unwrap();
    let err = bounded(breaker.layer(client).oneshot(req))
        .await
        .unwrap_err();
    assert!(
        err.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect()),
        "{err:?}"
    );
    assert_eq!(seen("http-dns"), ["failure:connect"]);
    assert_eq!(handle.state(), State::Open);
}

/// Serves one HTTP/1.1 connection that answers 200 with a chunked body and
/// closes it after the first chunk, without the last chunk.
async fn truncated_chunked_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let reply = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                let _ = stream.write_all(reply.as_bytes()).await;
                // Dropped here: the body ends without its last chunk.
            });
        }
    });
    addr
}

type Frames =
    futures::channel::mpsc::UnboundedSender<Result<http_body::Frame<Bytes>, std::io::Error>>;

/// Serves HTTP/2 whose response body sends one frame and then waits: the
/// test breaks it through the returned slot once the headers are in, which
/// hyper turns into an `RST_STREAM`.
async fn reset_h2_server() -> (std::net::SocketAddr, Arc<Mutex<Option<Frames>>>) {
    use hyper::server::conn::http2;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slot: Arc<Mutex<Option<Frames>>> = Arc::default();
    let server_slot = slot.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let slot = server_slot.clone();
            let service = hyper::service::service_fn(move |_req| {
                let (tx, rx) = futures::channel::mpsc::unbounded();
                tx.unbounded_send(Ok(http_body::Frame::data(Bytes::from_static(b"partial"))))
                    .unwrap();
                *slot.lock().unwrap() = Some(tx);
                let body = http_body_util::StreamBody::new(rx);
                async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
            });
            tokio::spawn(async move {
                let _ = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, slot)
}

/// Breaks the body of the last response `reset_h2_server` began.
fn break_body(slot: &Mutex<Option<Frames>>) {
    let tx = slot.lock().unwrap().take().expect("a response in progress");
    tx.unbounded_send(Err(std::io::Error::other("upstream broke mid-body")))
        .unwrap();
}

/// A hyper-util client speaking HTTP/1.1, or HTTP/2 only.
fn client(http2: bool) -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(http2);
    builder.build_http()
}

fn get(addr: std::net::SocketAddr) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .body(Empty::new())
        .unwrap()
}

/// Reads a response's body to its end; whether it broke.
async fn body_breaks<B: http_body::Body>(res: http::Response<B>) -> bool {
    use http_body_util::BodyExt;
    bounded(res.into_body().collect()).await.is_err()
}

fn breaker<C>(name: &str, classifier: C) -> CircuitBreakerLayer<C> {
    CircuitBreakerLayer::builder()
        .name(name)
        .classifier(classifier)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_truncated_http1_body_fails_at_the_end_of_the_body() {
    install_recorder();
    let addr = truncated_chunked_server().await;
    let at_end = breaker(
        "http1-truncated-end",
        HttpClassifier::new().at_end_of_body(),
    );
    let res = bounded(at_end.layer(client(false)).oneshot(get(addr)))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        seen("http1-truncated-end").is_empty(),
        "judged before the end"
    );
    assert!(body_breaks(res).await);
    assert_eq!(seen("http1-truncated-end"), ["failure:error"]);

    // Judged at the headers, the same answer is a success.
    let at_headers = breaker("http1-truncated-headers", HttpClassifier::new());
    let res = bounded(at_headers.layer(client(false)).oneshot(get(addr)))
        .await
        .unwrap();
    assert!(body_breaks(res).await);
    assert_eq!(seen("http1-truncated-headers"), ["success"]);
}

#[tokio::test]
async fn an_http2_reset_mid_body_fails_at_the_end_of_the_body() {
    install_recorder();
    let (addr, slot) = reset_h2_server().await;
    let at_end = breaker("h2-reset-end", HttpClassifier::new().at_end_of_body());
    let res = bounded(at_end.layer(client(true)).oneshot(get(addr)))
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    break_body(&slot);
    assert!(body_breaks(res).await);
    assert_eq!(seen("h2-reset-end"), ["failure:error"]);

    let at_headers = breaker("h2-reset-headers", HttpClassifier::new());
    let res = bounded(at_headers.layer(client(true)).oneshot(get(addr)))
        .await
        .unwrap();
    break_body(&slot);
    assert!(body_breaks(res).await);
    assert_eq!(seen("h2-reset-headers"), ["success"]);
}

#[tokio::test]
async fn a_whole_body_succeeds_and_a_dropped_one_is_ignored() {
    install_recorder();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "whole body" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let at_end = breaker("http-whole-body", HttpClassifier::new().at_end_of_body());
    let svc = at_end.layer(client(false));
    let res = bounded(svc.clone().oneshot(get(addr))).await.unwrap();
    assert!(!body_breaks(res).await);
    assert_eq!(seen("http-whole-body"), ["success"]);
    let res = bounded(svc.oneshot(get(addr))).await.unwrap();
    drop(res);
    assert_eq!(seen("http-whole-body"), ["ignored", "success"]);
    server.abort();
}
