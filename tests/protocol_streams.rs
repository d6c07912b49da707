//! Long-lived gRPC streams on real HTTP/2: a server on 127.0.0.1 whose
//! `Watch` streams the test drives frame by frame, and a tonic
//! `HealthClient` with the breaker in its channel stack. A healthy stream
//! must neither hold a half-open breaker (refusing every other call) nor
//! count as a slow call because it lived long.
#![cfg(feature = "tonic")]

#[path = "support/loopback.rs"]
mod loopback;
use loopback::{bounded, install_recorder, seen};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::StreamBody;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;
use tower_breaker::classify::{GrpcClassifier, StreamJudgement};
use tower_breaker::tonic::status_from_error;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock, ManualClock, State};

type Frames = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;
type Body = StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>>;

/// `HealthCheckResponse { status: SERVING }`, gRPC-framed.
fn serving() -> Frame<Bytes> {
    Frame::data(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]))
}

fn status(code: &'static str) -> Frame<Bytes> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", code.parse().unwrap());
    Frame::trailers(trailers)
}

/// An HTTP/2 server: `Check` answers SERVING then, at once, the status
/// set in `check` (OK by default); each `Watch` hands its frame sender to
/// the test, which sends its messages and its status.
async fn start_server() -> (SocketAddr, mpsc::UnboundedReceiver<Frames>) {
    start_server_with(Arc::new(Mutex::new("0"))).await
}

async fn start_server_with(
    check: Arc<Mutex<&'static str>>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Frames>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (watches, watch_rx) = mpsc::unbounded::<Frames>();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let watches = watches.clone();
            let check = check.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (tx, rx) = mpsc::unbounded();
                if req.uri().path().ends_with("/Watch") {
                    watches.unbounded_send(tx).unwrap();
                } else {
                    tx.unbounded_send(Ok(serving())).unwrap();
                    tx.unbounded_send(Ok(status(*check.lock().unwrap())))
                        .unwrap();
                }
                let res = Response::builder()
                    .header("content-type", "application/grpc")
                    .body(Body::new(rx))
                    .unwrap();
                async move { Ok::<_, Infallible>(res) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc),
            );
        }
    });
    (addr, watch_rx)
}

type Client = HealthClient<
    tower::util::MapErr<
        tower_breaker::CircuitBreaker<Channel, GrpcClassifier>,
        fn(tower::BoxError) -> tonic::Status,
    >,
>;

async fn client(addr: SocketAddr, breaker: CircuitBreakerLayer<GrpcClassifier>) -> Client {
    let channel = bounded(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect");
    let svc = ServiceBuilder::new()
        .map_err(status_from_error as fn(tower::BoxError) -> tonic::Status)
        .layer(breaker)
        .service(channel);
    HealthClient::new(svc)
}

fn request() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

/// A breaker that half-opens after 1 s with one probe, judged as `judgement`.
fn probe_breaker(
    name: &str,
    judgement: StreamJudgement,
) -> (CircuitBreakerLayer<GrpcClassifier>, ManualClock) {
    let (clock, time) = Clock::manual();
    let breaker = CircuitBreakerLayer::builder()
        .name(name)
        .clock(clock)
        .consecutive_failures(1)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(1)))
        .classifier(GrpcClassifier::new().stream_judgement(judgement))
        .build()
        .unwrap();
    (breaker, time)
}

/// Trips `breaker` with one stream that fails, then lets the open duration
/// pass: the next call is the probe.
async fn trip(
    client: &mut Client,
    watches: &mut mpsc::UnboundedReceiver<Frames>,
    time: &ManualClock,
) {
    use futures::StreamExt;
    let mut stream = bounded(client.watch(request())).await.unwrap().into_inner();
    let frames = bounded(watches.next()).await.unwrap();
    frames.unbounded_send(Ok(status("14"))).unwrap();
    assert!(bounded(stream.message()).await.is_err());
    time.advance(Duration::from_secs(1));
}

#[tokio::test]
async fn a_healthy_watch_that_probes_settles_the_breaker_at_its_first_message() {
    use futures::StreamExt;
    install_recorder();
    let (addr, mut watches) = start_server().await;
    let (breaker, time) = probe_breaker("stream-probe", StreamJudgement::FirstMessage);
    let handle = breaker.handle();
    let mut client = client(addr, breaker).await;
    trip(&mut client, &mut watches, &time).await;
    assert_eq!(handle.state(), State::Open);

    // The probe is a Watch: its first message closes the breaker.
    let mut watch = bounded(client.watch(request())).await.unwrap().into_inner();
    let frames = bounded(watches.next()).await.unwrap();
    frames.unbounded_send(Ok(serving())).unwrap();
    assert!(bounded(watch.message()).await.unwrap().is_some());
    // Nothing more was ready after it: the response streams, and the probe
    // is judged, without the reader asking for more.
    assert_eq!(handle.state(), State::Closed);

    // An hour later the stream still lives, and unary calls flow.
    time.advance(Duration::from_secs(3_600));
    for _ in 0..3 {
        bounded(client.check(request())).await.expect("not refused");
    }
    assert_eq!(handle.state(), State::Closed);
    // Its later status is not judged again: the probe was settled.
    frames.unbounded_send(Ok(status("0"))).unwrap();
    assert!(bounded(watch.message()).await.unwrap().is_none());
    let seen = seen("stream-probe");
    assert_eq!(
        seen,
        [
            "failure:grpc_unavailable",
            "success",
            "success",
            "success",
            "success"
        ],
    );
}

/// The old judgement, kept as an option: a streaming probe holds the
/// breaker half-open, refusing every other call, for as long as it lives.
#[tokio::test]
async fn judged_as_a_whole_a_streaming_probe_holds_the_breaker_half_open() {
    use futures::StreamExt;
    install_recorder();
    let (addr, mut watches) = start_server().await;
    let (breaker, time) = probe_breaker("stream-probe-whole", StreamJudgement::WholeStream);
    let handle = breaker.handle();
    let mut client = client(addr, breaker).await;
    trip(&mut client, &mut watches, &time).await;

    let mut watch = bounded(client.watch(request())).await.unwrap().into_inner();
    let frames = bounded(watches.next()).await.unwrap();
    frames.unbounded_send(Ok(serving())).unwrap();
    assert!(bounded(watch.message()).await.unwrap().is_some());
    assert_eq!(handle.state(), State::HalfOpen);
    time.advance(Duration::from_secs(3_600));
    let refused = bounded(client.check(request())).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(refused.message(), "circuit open");
    // Its status closes the breaker, at last.
    frames.unbounded_send(Ok(status("0"))).unwrap();
    assert!(bounded(watch.message()).await.unwrap().is_none());
    assert_eq!(handle.state(), State::Closed);
}

/// A slow-call breaker (1 s) over two healthy streams that live a minute:
/// timed to their first message, they are not slow.
async fn minute_long_streams(name: &str, judgement: StreamJudgement) -> State {
    use futures::StreamExt;
    install_recorder();
    let (addr, mut watches) = start_server().await;
    let (clock, time) = Clock::manual();
    let breaker = CircuitBreakerLayer::builder()
        .name(name)
        .clock(clock)
        .count_window(2)
        .minimum_calls(2)
        .slow_call_rate(0.5, Duration::from_secs(1))
        .classifier(GrpcClassifier::new().stream_judgement(judgement))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut client = client(addr, breaker).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut watch = bounded(client.watch(request())).await.unwrap().into_inner();
        let frames = bounded(watches.next()).await.unwrap();
        frames.unbounded_send(Ok(serving())).unwrap();
        assert!(bounded(watch.message()).await.unwrap().is_some());
        open.push((watch, frames));
    }
    time.advance(Duration::from_secs(60));
    for (mut watch, frames) in open {
        frames.unbounded_send(Ok(status("0"))).unwrap();
        assert!(bounded(watch.message()).await.unwrap().is_none());
    }
    assert_eq!(seen(name), ["success", "success"]);
    handle.state()
}

#[tokio::test]
async fn a_minute_long_healthy_stream_is_not_a_slow_call() {
    let state = minute_long_streams("stream-slow", StreamJudgement::FirstMessage).await;
    assert_eq!(state, State::Closed);
}

#[tokio::test]
async fn judged_as_a_whole_a_minute_long_stream_is_slow() {
    let state = minute_long_streams("stream-slow-whole", StreamJudgement::WholeStream).await;
    assert_eq!(state, State::Open);
}

/// A streaming probe judged at its start keeps its slot of the concurrency
/// limit until the stream ends: the upstream never sees more than the limit.
#[tokio::test]
async fn a_streaming_probe_keeps_its_slot_until_the_stream_ends() {
    use futures::StreamExt;
    install_recorder();
    let (addr, mut watches) = start_server().await;
    let (clock, time) = Clock::manual();
    let breaker = CircuitBreakerLayer::builder()
        .name("stream-slot")
        .clock(clock)
        .consecutive_failures(1)
        .half_open_permits(1)
        .max_concurrent_calls(1)
        .open_duration(Backoff::fixed(Duration::from_secs(1)))
        .classifier(GrpcClassifier::new())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let mut client = client(addr, breaker).await;
    trip(&mut client, &mut watches, &time).await;

    let mut watch = bounded(client.watch(request())).await.unwrap().into_inner();
    let frames = bounded(watches.next()).await.unwrap();
    frames.unbounded_send(Ok(serving())).unwrap();
    assert!(bounded(watch.message()).await.unwrap().is_some());
    assert_eq!(handle.state(), State::Closed);
    // The stream still holds the only slot.
    let refused = bounded(client.check(request())).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(refused.message(), "concurrency limit reached");
    // Its end gives it back.
    frames.unbounded_send(Ok(status("0"))).unwrap();
    assert!(bounded(watch.message()).await.unwrap().is_none());
    drop(watch);
    bounded(client.check(request()))
        .await
        .expect("the slot came back");
}

/// A unary probe whose failing status follows its message at once is
/// judged by that status, under either setting.
#[tokio::test]
async fn a_unary_probe_is_judged_by_its_status_under_either_setting() {
    for (name, judgement) in [
        ("unary-probe-first", StreamJudgement::FirstMessage),
        ("unary-probe-whole", StreamJudgement::WholeStream),
    ] {
        install_recorder();
        let check = Arc::new(Mutex::new("0"));
        let (addr, mut watches) = start_server_with(check.clone()).await;
        let (breaker, time) = probe_breaker(name, judgement);
        let handle = breaker.handle();
        let mut client = client(addr, breaker).await;
        trip(&mut client, &mut watches, &time).await;
        *check.lock().unwrap() = "14";
        let failed = bounded(client.check(request())).await.unwrap_err();
        assert_eq!(failed.code(), tonic::Code::Unavailable, "{name}");
        assert_eq!(handle.state(), State::Open, "{name}");
    }
}
