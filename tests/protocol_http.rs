//! Protocol edges on real HTTP traffic: hyper and axum servers on
//! 127.0.0.1, hyper-util's legacy client, and what the breaker records of
//! each, kind included.
#![cfg(all(feature = "http", feature = "hyper-util"))]

#[path = "support/loopback.rs"]
mod loopback;
use loopback::{bounded, install_recorder, seen};

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
