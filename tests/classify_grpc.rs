//! gRPC classification through a real breaker: every code in headers and in
//! trailers, streaming bodies, dropped bodies, pushback.
#![cfg(feature = "grpc")]

#[path = "support/outcomes.rs"]
mod outcomes;
use outcomes::{expected, recorded};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::executor::block_on;
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, StreamBody};
use tower::{service_fn, Layer, ServiceExt};
use tower_breaker::classify::{GrpcClassifier, GrpcCode};
use tower_breaker::{
    Backoff, CircuitBreakerLayer, CircuitOpen, Clock, FailureKind, Outcome, State,
};

type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;
type TestBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

fn trailers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

/// A response with the given HTTP status, headers and body frames.
fn response(status: u16, headers: HeaderMap, frames: Frames) -> Response<TestBody> {
    let mut res = Response::new(StreamBody::new(futures::stream::iter(frames)));
    *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
    *res.headers_mut() = headers;
    res
}

/// The headers of a gRPC answer that is not trailers-only.
fn grpc() -> HeaderMap {
    trailers(&[("content-type", "application/grpc")])
}

fn message() -> Result<Frame<Bytes>, std::io::Error> {
    Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))
}

/// One call through a breaker with `classifier`, answered by `make`, its
/// body read to the end.
fn call_with(
    classifier: GrpcClassifier,
    make: impl Fn() -> Response<TestBody> + Clone + Send + 'static,
) -> Vec<String> {
    recorded(|| {
        let layer = CircuitBreakerLayer::builder()
            .name("grpc-table")
            .classifier(classifier)
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(move |_: ()| {
            let make = make.clone();
            async move { Ok::<_, Infallible>(make()) }
        }));
        block_on(async {
            let res = svc.oneshot(()).await.unwrap();
            let _ = res.into_body().collect().await;
        });
    })
}

fn default_outcome(code: GrpcCode) -> Outcome {
    match code {
        GrpcCode::Unavailable => Outcome::Failure(FailureKind::GRPC_UNAVAILABLE),
        GrpcCode::DeadlineExceeded => Outcome::Failure(FailureKind::GRPC_DEADLINE_EXCEEDED),
        GrpcCode::Internal => Outcome::Failure(FailureKind::GRPC_INTERNAL),
        GrpcCode::ResourceExhausted => Outcome::Failure(FailureKind::GRPC_RESOURCE_EXHAUSTED),
        GrpcCode::Unknown => Outcome::Failure(FailureKind::GRPC_UNKNOWN),
        GrpcCode::Cancelled => Outcome::Failure(FailureKind::GRPC_CANCELLED),
        _ => Outcome::Success,
    }
}

#[test]
fn every_code_in_headers_trailers_only() {
    for code in GrpcCode::ALL {
        let want = default_outcome(code);
        assert_eq!(GrpcClassifier::new().classify_code(code), want);
        let seen = call_with(GrpcClassifier::new(), move || {
            let value = code.code().to_string();
            response(200, trailers(&[("grpc-status", &value)]), vec![])
        });
        assert_eq!(seen, expected(want), "{code}");
    }
}

#[test]
fn every_code_in_trailers() {
    for code in GrpcCode::ALL {
        let want = default_outcome(code);
        let seen = call_with(GrpcClassifier::new(), move || {
            let value = code.code().to_string();
            let frames = vec![
                message(),
                message(),
                Ok(Frame::trailers(trailers(&[
                    ("grpc-status", &value),
                    ("grpc-message", "x"),
                ]))),
            ];
            response(
                200,
                trailers(&[("content-type", "application/grpc")]),
                frames,
            )
        });
        assert_eq!(seen, expected(want), "{code}");
    }
}

#[test]
fn every_code_can_be_made_to_fail() {
    for code in GrpcCode::ALL {
        let classifier = GrpcClassifier::new().failing_codes([code]);
        let seen = call_with(classifier, move || {
            let value = code.code().to_string();
            let frames = vec![Ok(Frame::trailers(trailers(&[("grpc-status", &value)])))];
            response(200, grpc(), frames)
        });
        assert_eq!(seen, [format!("failure:{}", code.failure_kind())], "{code}");
    }
}

#[test]
fn missing_or_malformed_status_is_unknown() {
    let unknown = expected(Outcome::Failure(FailureKind::GRPC_UNKNOWN));
    // The stream ends without trailers.
    let seen = call_with(GrpcClassifier::new(), || {
        response(200, grpc(), vec![message()])
    });
    assert_eq!(seen, unknown);
    // Trailers without grpc-status.
    let seen = call_with(GrpcClassifier::new(), || {
        let frames = vec![Ok(Frame::trailers(trailers(&[("x-other", "1")])))];
        response(200, grpc(), frames)
    });
    assert_eq!(seen, unknown);
    for bad in ["17", "-1", "abc", ""] {
        let seen = call_with(GrpcClassifier::new(), move || {
            let frames = vec![Ok(Frame::trailers(trailers(&[("grpc-status", bad)])))];
            response(200, grpc(), frames)
        });
        assert_eq!(seen, unknown, "{bad:?}");
        let seen = call_with(GrpcClassifier::new(), move || {
            response(200, trailers(&[("grpc-status", bad)]), vec![])
        });
        assert_eq!(seen, unknown, "{bad:?}");
    }
    // Unless UNKNOWN is not a failure.
    let seen = call_with(GrpcClassifier::new().success(GrpcCode::Unknown), || {
        response(200, grpc(), vec![])
    });
    assert_eq!(seen, ["success"]);
}

#[test]
fn non_grpc_answers_map_their_http_status() {
    let table = [
        (503, Outcome::Failure(FailureKind::GRPC_UNAVAILABLE)),
        (502, Outcome::Failure(FailureKind::GRPC_UNAVAILABLE)),
        (429, Outcome::Failure(FailureKind::GRPC_UNAVAILABLE)),
        (400, Outcome::Failure(FailureKind::GRPC_INTERNAL)),
        (500, Outcome::Failure(FailureKind::GRPC_UNKNOWN)),
        (404, Outcome::Success), // UNIMPLEMENTED
        (401, Outcome::Success), // UNAUTHENTICATED
    ];
    for (status, want) in table {
        let seen = call_with(GrpcClassifier::new(), move || {
            response(status, HeaderMap::new(), vec![message()])
        });
        assert_eq!(seen, expected(want), "{status}");
    }
    // A 200 that is not gRPC (an HTML page from a proxy, no content type,
    // a look-alike type) is judged at its headers as UNKNOWN, as the spec
    // has a client synthesize it; the body is never read.
    for content_type in [
        Some("text/html; charset=utf-8"),
        None,
        Some("application/grpcx"),
        Some("application/grpc-web"),
    ] {
        let seen = call_with(GrpcClassifier::new(), move || {
            let headers = match content_type {
                Some(ct) => trailers(&[("content-type", ct)]),
                None => HeaderMap::new(),
            };
            let frames = vec![Ok(Frame::trailers(trailers(&[("grpc-status", "0")])))];
            response(200, headers, frames)
        });
        assert_eq!(
            seen,
            expected(Outcome::Failure(FailureKind::GRPC_UNKNOWN)),
            "{content_type:?}"
        );
    }
    // gRPC's own types, in any case, with a suffix or parameters.
    for content_type in [
        "application/grpc",
        "application/grpc+proto",
        "Application/GRPC+json",
        "application/grpc; charset=utf-8",
    ] {
        let seen = call_with(GrpcClassifier::new(), move || {
            let frames = vec![Ok(Frame::trailers(trailers(&[("grpc-status", "0")])))];
            response(200, trailers(&[("content-type", content_type)]), frames)
        });
        assert_eq!(seen, ["success"], "{content_type}");
    }
    // A grpc-status in the headers wins over the HTTP status.
    let seen = call_with(GrpcClassifier::new(), || {
        response(503, trailers(&[("grpc-status", "0")]), vec![])
    });
    assert_eq!(seen, ["success"]);
}

#[test]
fn a_broken_stream_is_an_error() {
    let seen = call_with(GrpcClassifier::new(), || {
        response(
            200,
            grpc(),
            vec![message(), Err(std::io::Error::other("reset"))],
        )
    });
    assert_eq!(seen, expected(Outcome::Failure(FailureKind::ERROR)));
}

/// A breaker that trips on the first failure, with one probe, on a manual
/// clock.
fn tripping() -> (
    CircuitBreakerLayer<GrpcClassifier>,
    tower_breaker::ManualClock,
) {
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("grpc-streaming")
        .consecutive_failures(1)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(5)))
        .clock(clock)
        .classifier(GrpcClassifier::new())
        .build()
        .unwrap();
    (layer, manual)
}

type ChannelBody = StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>>;

/// Calls through `layer` once; the response body is fed through the sender.
async fn streaming_call(
    layer: &CircuitBreakerLayer<GrpcClassifier>,
) -> Result<
    (
        mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>,
        tower_breaker::body::GrpcBody<ChannelBody>,
    ),
    tower::BoxError,
> {
    let (tx, rx) = mpsc::unbounded();
    let rx = std::sync::Mutex::new(Some(rx));
    let svc = layer.layer(service_fn(move |_: ()| {
        let body = StreamBody::new(rx.lock().unwrap().take().unwrap());
        let mut res = Response::new(body);
        *res.headers_mut() = grpc();
        async move { Ok::<_, Infallible>(res) }
    }));
    let res = svc.oneshot(()).await?;
    Ok((tx, res.into_body()))
}

#[tokio::test]
async fn streaming_body_is_judged_at_its_trailers() {
    let (layer, _) = tripping();
    let handle = layer.handle();
    let (tx, mut body) = streaming_call(&layer).await.unwrap();
    for _ in 0..3 {
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"chunk"))))
            .unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert!(frame.is_data());
        assert!(!body.is_end_stream());
        assert_eq!(handle.snapshot().calls, 0, "judged before the trailers");
    }
    tx.unbounded_send(Ok(Frame::trailers(trailers(&[
        ("grpc-status", "14"),
        ("grpc-retry-pushback-ms", "60000"),
    ]))))
    .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.trailers_ref().unwrap()["grpc-status"], "14");
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::Open);
    // The pushback outlasts the 5 s backoff.
    assert_eq!(snap.open_remaining, Some(Duration::from_secs(60)));
}

#[tokio::test]
async fn pushback_in_headers_and_only_on_failure() {
    let (layer, manual) = tripping();
    let svc = |status: &'static str, pushback: &'static str| {
        layer.layer(service_fn(move |_: ()| async move {
            let mut res = Response::new(Empty::<Bytes>::new());
            let headers = res.headers_mut();
            headers.insert("grpc-status", HeaderValue::from_static(status));
            headers.insert("grpc-retry-pushback-ms", HeaderValue::from_static(pushback));
            Ok::<_, Infallible>(res)
        }))
    };
    // Successes carry pushback that must not linger for the next trip.
    svc("0", "90000").oneshot(()).await.unwrap();
    svc("5", "90000").oneshot(()).await.unwrap(); // NOT_FOUND: a success
    assert_eq!(layer.handle().state(), State::Closed);
    svc("14", "-1").oneshot(()).await.unwrap(); // negative: no wait
    let snap = layer.handle().snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(snap.open_remaining, Some(Duration::from_secs(5)));

    manual.advance(Duration::from_secs(5));
    svc("8", "30000").oneshot(()).await.unwrap(); // RESOURCE_EXHAUSTED probe
    let snap = layer.handle().snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(snap.open_remaining, Some(Duration::from_secs(30)));
    manual.advance(Duration::from_secs(30));
    svc("0", "0").oneshot(()).await.unwrap();
    assert_eq!(layer.handle().state(), State::Closed);
}

#[tokio::test]
async fn dropped_body_gives_back_the_half_open_permit() {
    let (layer, manual) = tripping();
    let handle = layer.handle();
    let (tx, mut body) = streaming_call(&layer).await.unwrap();
    tx.unbounded_send(Ok(Frame::trailers(trailers(&[("grpc-status", "14")]))))
        .unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(handle.state(), State::Open);
    manual.advance(Duration::from_secs(5));

    // The one probe: its headers arrive, its body does not finish.
    let (_tx, probe_body) = streaming_call(&layer).await.unwrap();
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().half_open_probes, 1);
    let refused = streaming_call(&layer).await.unwrap_err();
    assert!(refused.is::<CircuitOpen>(), "{refused}");

    // The client walks away mid-stream: ignored, permit back.
    drop(probe_body);
    assert_eq!(handle.snapshot().half_open_probes, 0);
    assert_eq!(handle.state(), State::HalfOpen);
    let (tx, mut body) = streaming_call(&layer).await.unwrap();
    tx.unbounded_send(Ok(Frame::trailers(trailers(&[("grpc-status", "0")]))))
        .unwrap();
    body.frame().await.unwrap().unwrap();
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test]
async fn end_of_stream_is_polled_before_reporting_the_end() {
    let (layer, _) = tripping();
    let svc = layer.layer(service_fn(|_: ()| async {
        let mut res = Response::new(Empty::<Bytes>::new());
        *res.headers_mut() = grpc();
        Ok::<_, Infallible>(res)
    }));
    let mut body = svc.oneshot(()).await.unwrap().into_body();
    // Empty says it is done at once; the wrapper asks to be polled so the
    // missing status is judged rather than dropped.
    assert!(!body.is_end_stream());
    assert!(body.frame().await.is_none());
    assert!(body.is_end_stream());
    assert_eq!(layer.handle().state(), State::Open, "no status: UNKNOWN");
}

#[test]
fn streams_of_frames_pass_through_unchanged() {
    let seen = block_on(async {
        let (layer, _) = tripping();
        let svc = layer.layer(service_fn(|_: ()| async {
            let frames: Frames = vec![
                message(),
                Ok(Frame::data(Bytes::from_static(b"tail"))),
                Ok(Frame::trailers(trailers(&[("grpc-status", "0")]))),
            ];
            Ok::<_, Infallible>(response(200, grpc(), frames))
        }));
        let collected = svc
            .oneshot(())
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    });
    assert_eq!(&seen.0[..], b"\0\0\0\0\0tail");
    assert_eq!(seen.1.unwrap()["grpc-status"], "0");
}
