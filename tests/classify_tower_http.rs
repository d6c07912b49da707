//! tower-http's classifiers as the breaker's classifier (`classify::TowerHttp`).
#![cfg(feature = "tower-http")]

use std::convert::Infallible;

use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderMap, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use tower::{service_fn, Layer, ServiceExt};
use tower_breaker::classify::TowerHttp;
use tower_breaker::{CircuitBreakerLayer, State};
use tower_http::classify::{GrpcCode, GrpcErrorsAsFailures, ServerErrorsAsFailures};

/// `ServerErrorsAsFailures`: 5xx is a failure of kind `http_5xx`, judged at
/// the headers; anything else a success.
#[tokio::test]
async fn server_errors_as_failures_trips_on_5xx() {
    let layer = CircuitBreakerLayer::builder()
        .name("tower-http-server-errors")
        .consecutive_failures(2)
        .classifier(TowerHttp::new(ServerErrorsAsFailures::new()))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|status: u16| async move {
        let mut res = Response::new(Empty::<Bytes>::new());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok::<_, Infallible>(res)
    }));
    for status in [200, 404, 429] {
        let res = svc.clone().oneshot(status).await.unwrap();
        assert_eq!(res.status().as_u16(), status);
    }
    assert_eq!(
        layer.handle().snapshot().failures,
        0,
        "4xx are not server errors"
    );
    svc.clone().oneshot(503).await.unwrap();
    assert_eq!(layer.handle().state(), State::Closed);
    svc.clone().oneshot(500).await.unwrap();
    assert_eq!(layer.handle().state(), State::Open);
}

/// A gRPC answer's body: one message, then the status in trailers, if any.
type GrpcBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn grpc_response(trailers: Option<&'static str>) -> Response<GrpcBody> {
    let mut frames = vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))];
    if let Some(code) = trailers {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", code.parse().unwrap());
        frames.push(Ok(Frame::trailers(map)));
    }
    let mut res = Response::new(StreamBody::new(futures::stream::iter(frames)));
    res.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    res
}

/// `GrpcErrorsAsFailures`: the status in the trailers decides, at the end of
/// the stream; a body dropped before it says nothing.
#[tokio::test]
async fn grpc_errors_as_failures_judges_at_the_trailers() {
    let layer = CircuitBreakerLayer::builder()
        .name("tower-http-grpc")
        .consecutive_failures(2)
        .classifier(TowerHttp::new(
            GrpcErrorsAsFailures::new().with_success(GrpcCode::NotFound),
        ))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|code: Option<&'static str>| async move {
        Ok::<_, Infallible>(grpc_response(code))
    }));
    let snapshot = || layer.handle().snapshot();

    // OK and a code configured as a success.
    for code in ["0", "5"] {
        let body = svc.clone().oneshot(Some(code)).await.unwrap().into_body();
        body.collect().await.unwrap();
    }
    assert_eq!((snapshot().calls, snapshot().failures), (2, 0));

    // UNAVAILABLE: not judged until the trailers arrive.
    let body = svc.clone().oneshot(Some("14")).await.unwrap().into_body();
    assert_eq!(snapshot().calls, 2);
    body.collect().await.unwrap();
    assert_eq!((snapshot().calls, snapshot().failures), (3, 1));

    // Dropped before the end: ignored, nothing judged.
    let body = svc.clone().oneshot(Some("14")).await.unwrap().into_body();
    drop(body);
    assert_eq!((snapshot().calls, snapshot().failures), (3, 1));

    // A second UNAVAILABLE trips.
    let body = svc.clone().oneshot(Some("14")).await.unwrap().into_body();
    body.collect().await.unwrap();
    assert_eq!(layer.handle().state(), State::Open);
    assert!(svc
        .clone()
        .oneshot(Some("0"))
        .now_or_never()
        .unwrap()
        .is_err());
}
