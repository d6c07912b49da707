//! A real axum server on 127.0.0.1 with the breaker as a router layer:
//! failing handler trips it, rejections are 503 with Retry-After, and it
//! recovers once the handler is healthy. The breaker runs on a manual clock.
#![cfg(feature = "axum")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_breaker::axum::RejectWith503Layer;
use tower_breaker::classify::HttpClassifier;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock, State};

/// Bound on every network operation in these tests.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .expect("I/O timed out")
}

/// One `GET /` over HTTP/1.1 with `Connection: close`.
async fn get_root(addr: SocketAddr) -> Reply {
    let mut stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    let head = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    bounded(stream.write_all(head.as_bytes()))
        .await
        .expect("write");
    let mut raw = Vec::new();
    bounded(stream.read_to_end(&mut raw)).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("a full reply");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let retry_after = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_owned())
    });
    Reply {
        status,
        retry_after,
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn breaker_in_a_router_trips_and_recovers() {
    let (clock, manual) = Clock::manual();
    let breaker = CircuitBreakerLayer::builder()
        .name("axum-upstream")
        .consecutive_failures(3)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(10)))
        .clock(clock)
        .classifier(HttpClassifier::new())
        .build()
        .unwrap();
    let handle = breaker.handle();

    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/",
            get({
                let (healthy, calls) = (healthy.clone(), calls.clone());
                move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if healthy.load(Ordering::SeqCst) {
                        (StatusCode::OK, [("retry-after", "0")], "ok").into_response()
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "20")],
                            "down",
                        )
                            .into_response()
                    }
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RejectWith503Layer::new())
                .layer(breaker),
        );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Three failures from the handler itself.
    for n in 1..=3 {
        let reply = get_root(addr).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (503, "down"),
            "call {n}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(handle.state(), State::Open);
    // The handler's Retry-After (20 s) outlasts the 10 s backoff.
    assert_eq!(
        handle.snapshot().open_remaining,
        Some(Duration::from_secs(20))
    );

    // Now the breaker answers, without reaching the handler.
    healthy.store(true, Ordering::SeqCst);
    let reply = get_root(addr).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "service unavailable: circuit open");
    assert_eq!(reply.retry_after.as_deref(), Some("20"));
    manual.advance(Duration::from_millis(10_500));
    let reply = get_root(addr).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.retry_after.as_deref(), Some("10"), "rounded up");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // After the open period a probe goes through, succeeds, and closes.
    manual.advance(Duration::from_secs(10));
    let reply = get_root(addr).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    assert_eq!(handle.state(), State::Closed);
    let reply = get_root(addr).await;
    assert_eq!(reply.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    server.abort();
}
