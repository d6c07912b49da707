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

/// Through a real hyper HTTP/1 server: a gRPC answer with no status in its
/// headers and an empty body is judged (tower-http reads no trailers as
/// OK), not dropped unpolled as ignored by a server that saw its end; the
/// half-open probes close the breaker.
#[tokio::test]
async fn an_empty_grpc_body_is_judged_behind_a_hyper_server() {
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tower_breaker::Clock;

    let (clock, time) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("tower-http-hyper")
        .clock(clock)
        .consecutive_failures(1)
        .half_open_permits(1)
        .half_open_successes(1)
        .classifier(TowerHttp::new(GrpcErrorsAsFailures::new()))
        .build()
        .unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    let svc = layer.layer(service_fn(
        move |_: http::Request<hyper::body::Incoming>| {
            let fail = f.load(Ordering::SeqCst);
            async move {
                if fail {
                    return Err(std::io::Error::other("down"));
                }
                Ok(Response::builder()
                    .header("content-type", "application/grpc")
                    .body(Empty::<Bytes>::new())
                    .unwrap())
            }
        },
    ));
    let serve_once = |svc: tower_breaker::CircuitBreaker<_, _>| async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(
                    TokioIo::new(server),
                    hyper::service::service_fn(move |req| svc.clone().oneshot(req)),
                )
                .await;
        });
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(conn);
        let res = sender.send_request(http::Request::new(Empty::new())).await;
        if let Ok(res) = res {
            let _ = res.into_body().collect().await;
        }
        drop(sender);
        let _ = server.await;
    };
    serve_once(svc.clone()).await;
    assert_eq!(layer.handle().state(), State::Open);
    fail.store(false, Ordering::SeqCst);
    time.advance(Duration::from_secs(600));
    serve_once(svc.clone()).await;
    assert_eq!(
        layer.handle().state(),
        State::Closed,
        "the probe was judged"
    );
}
