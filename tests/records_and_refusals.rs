//! A call's record and a kept refusal, at their edges: the time left of
//! very long open durations on both refusal paths, exact to the
//! nanosecond; HalfOpen and ForcedOpen refusals; hooks that panic while a
//! probe is finished (plain and streaming); a cancelled probe.

mod support;
use support::{call_at_once, fails_when_asked, trips_at_once};

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_breaker::{CircuitOpen, Clock, State};

fn open_of(result: Result<(), BoxError>) -> CircuitOpen {
    result
        .unwrap_err()
        .downcast_ref::<CircuitOpen>()
        .cloned()
        .expect("a CircuitOpen")
}

fn cx() -> Context<'static> {
    Context::from_waker(futures::task::noop_waker_ref())
}

/// An open duration past 2^61 ns (73 years): the refusal `poll_ready`
/// keeps for `call` must still know its time left, as it did before and
/// as the refusal of a `call` without `poll_ready` does.
fn long_open(name: &str, open_for: Duration) {
    let (clock, manual) = Clock::manual();
    manual.advance(Duration::from_nanos(1_234_567_891));
    let layer = trips_at_once(name, open_for, clock).build().unwrap();
    let mut svc = layer.layer(fails_when_asked());
    let _ = call_at_once(&mut svc, true);
    assert_eq!(layer.handle().state(), State::Open);
    let remaining = layer.handle().snapshot().open_remaining.expect("open");

    // `call` without `poll_ready`: decided by `admit`, exact.
    let mut unready = svc.clone();
    let direct = open_of(unready.call(false).now_or_never().unwrap());
    assert_eq!(
        direct.retry_after(),
        Some(remaining),
        "call without poll_ready"
    );

    // `poll_ready`, then `call`: the kept `Refusal`.
    let ready = svc.ready().now_or_never().unwrap().unwrap();
    let kept = open_of(ready.call(false).now_or_never().unwrap());
    assert_eq!(kept.state(), State::Open);
    assert_eq!(kept.retry_after(), Some(remaining), "poll_ready then call");
}

#[test]
fn a_hundred_year_open_duration_keeps_its_retry_after() {
    long_open("edge-100y", Duration::from_secs(100 * 365 * 86_400));
}

#[test]
fn an_open_duration_of_duration_max_keeps_its_retry_after() {
    long_open("edge-max", Duration::MAX);
}

/// Around 2^61 ns (73 years), where a kept refusal once lost its time
/// left: every value is a real time left.
#[test]
fn an_open_duration_around_two_to_the_61_ns_keeps_its_retry_after() {
    for (i, nanos) in [(1u64 << 61) - 2, (1 << 61) - 1, 1 << 61]
        .into_iter()
        .enumerate()
    {
        long_open(&format!("edge-2^61-{i}"), Duration::from_nanos(nanos));
    }
}

/// Nanosecond-exact retry_after, both paths, for odd values.
#[test]
fn retry_after_is_exact_to_the_nanosecond_on_both_paths() {
    for (i, open_ns) in [1u64, 2, 3, 999_999_999, 1_000_000_001, 123_456_789_012_345]
        .into_iter()
        .enumerate()
    {
        let (clock, manual) = Clock::manual();
        manual.advance(Duration::from_nanos(7));
        let layer = trips_at_once(
            &format!("edge-exact-{i}"),
            Duration::from_nanos(open_ns),
            clock,
        )
        .build()
        .unwrap();
        let mut svc = layer.layer(fails_when_asked());
        let _ = call_at_once(&mut svc, true);
        // Still open for every step below but the last.
        let step = if open_ns > 1 { open_ns / 2 } else { 0 };
        manual.advance(Duration::from_nanos(step));
        let left = Duration::from_nanos(open_ns - step);
        if open_ns - step == 0 {
            continue;
        }
        let ready = svc.ready().now_or_never().unwrap().unwrap();
        let kept = open_of(ready.call(false).now_or_never().unwrap());
        assert_eq!(kept.retry_after(), Some(left), "{open_ns}");
        let direct = open_of(svc.clone().call(false).now_or_never().unwrap());
        assert_eq!(direct.retry_after(), Some(left), "{open_ns}");
    }
}

/// HalfOpen and ForcedOpen refusals kept from `poll_ready`: no retry_after,
/// the right state.
#[test]
fn half_open_and_forced_open_refusals_round_trip() {
    let (clock, manual) = Clock::manual();
    let layer = trips_at_once("edge-states", Duration::from_secs(1), clock)
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err(std::io::Error::other("down"))
        } else {
            futures::future::pending::<()>().await;
            Ok(())
        }
    }));
    let _ = call_at_once(&mut svc, true);
    manual.advance(Duration::from_secs(2));
    let mut probe = Box::pin(svc.ready().now_or_never().unwrap().unwrap().call(false));
    assert!(probe.as_mut().poll(&mut cx()).is_pending());
    assert_eq!(layer.handle().state(), State::HalfOpen);
    let kept = open_of(call_at_once(&mut svc, false));
    assert_eq!((kept.state(), kept.retry_after()), (State::HalfOpen, None));
    layer.handle().force_open();
    let kept = open_of(call_at_once(&mut svc, false));
    assert_eq!(
        (kept.state(), kept.retry_after()),
        (State::ForcedOpen, None)
    );
    drop(probe);
}

/// A hook that panics as a probe closes the breaker, under a limit of one
/// slot and one permit: the slot comes back once, the state is Closed.
#[test]
fn a_hook_panicking_on_close_gives_the_probe_slot_back_once() {
    let (clock, manual) = Clock::manual();
    let armed = Arc::new(AtomicBool::new(false));
    let a = armed.clone();
    let layer = trips_at_once("edge-hook-close", Duration::from_secs(1), clock)
        .max_concurrent_calls(1)
        .on_state_change(move |change| {
            if a.load(Ordering::SeqCst) && change.to == State::Closed {
                panic!("hook panics on close");
            }
        })
        .build()
        .unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let i = inside.clone();
    let mut svc = layer.layer(service_fn(move |fail: bool| {
        let inside = i.clone();
        async move {
            if fail {
                return Err(std::io::Error::other("down"));
            }
            inside.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }));
    let _ = call_at_once(&mut svc, true);
    assert_eq!(layer.handle().state(), State::Open);
    manual.advance(Duration::from_secs(2));
    armed.store(true, Ordering::SeqCst);
    let mut probe = Box::pin(svc.ready().now_or_never().unwrap().unwrap().call(false));
    let unwound = catch_unwind(AssertUnwindSafe(|| probe.as_mut().poll(&mut cx())));
    assert!(unwound.is_err(), "the hook panicked");
    drop(probe);
    armed.store(false, Ordering::SeqCst);
    assert_eq!(layer.handle().state(), State::Closed);
    // The one slot is free: two calls in a row pass.
    for _ in 0..2 {
        let r = call_at_once(&mut svc, false);
        assert!(r.is_ok(), "{:?}", r.err());
    }
    // Held call: the limit of one still holds.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let mut held_svc = layer.layer(service_fn(move |_: ()| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            Ok::<_, std::io::Error>(())
        }
    }));
    let mut held = Box::pin(held_svc.ready().now_or_never().unwrap().unwrap().call(()));
    assert!(held.as_mut().poll(&mut cx()).is_pending());
    let r = call_at_once(&mut svc, false);
    assert!(open_of(r).is_capacity());
}

/// A hook that panics as a probe fails (HalfOpen -> Open): the slot comes
/// back, the next half-open has its permit.
#[test]
fn a_hook_panicking_on_reopen_leaks_neither_slot_nor_permit() {
    let (clock, manual) = Clock::manual();
    let armed = Arc::new(AtomicBool::new(false));
    let a = armed.clone();
    let layer = trips_at_once("edge-hook-reopen", Duration::from_secs(1), clock)
        .max_concurrent_calls(1)
        .on_state_change(move |change| {
            if a.load(Ordering::SeqCst) && change.from == State::HalfOpen {
                panic!("hook panics on reopen");
            }
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(fails_when_asked());
    let _ = call_at_once(&mut svc, true);
    manual.advance(Duration::from_secs(2));
    armed.store(true, Ordering::SeqCst);
    let mut probe = Box::pin(svc.ready().now_or_never().unwrap().unwrap().call(true));
    let unwound = catch_unwind(AssertUnwindSafe(|| probe.as_mut().poll(&mut cx())));
    assert!(unwound.is_err(), "the hook panicked");
    drop(probe);
    armed.store(false, Ordering::SeqCst);
    assert_eq!(layer.handle().state(), State::Open);
    let snap = layer.handle().snapshot();
    assert_eq!(snap.half_open_probes, 0);
    manual.advance(Duration::from_secs(10));
    let r = call_at_once(&mut svc, false);
    assert!(r.is_ok(), "{:?}", r.err());
    assert_eq!(layer.handle().state(), State::Closed);
}

/// A dropped probe future under a limit: the permit and the slot come back.
#[test]
fn a_cancelled_probe_gives_back_permit_and_slot() {
    let (clock, manual) = Clock::manual();
    let layer = trips_at_once("edge-cancel", Duration::from_secs(1), clock)
        .max_concurrent_calls(1)
        .build()
        .unwrap();
    let hang = Arc::new(AtomicBool::new(true));
    let h = hang.clone();
    let mut svc = layer.layer(service_fn(move |fail: bool| {
        let hang = h.load(Ordering::SeqCst);
        async move {
            if fail {
                return Err(std::io::Error::other("down"));
            }
            if hang {
                futures::future::pending::<()>().await;
            }
            Ok(())
        }
    }));
    let _ = call_at_once(&mut svc, true);
    manual.advance(Duration::from_secs(2));
    for _ in 0..3 {
        let mut probe = Box::pin(svc.ready().now_or_never().unwrap().unwrap().call(false));
        assert!(probe.as_mut().poll(&mut cx()).is_pending());
        assert_eq!(layer.handle().snapshot().half_open_probes, 1);
        drop(probe);
        assert_eq!(layer.handle().snapshot().half_open_probes, 0);
        assert_eq!(layer.handle().state(), State::HalfOpen);
    }
    hang.store(false, Ordering::SeqCst);
    let r = call_at_once(&mut svc, false);
    assert!(r.is_ok());
    assert_eq!(layer.handle().state(), State::Closed);
}

#[cfg(feature = "axum")]
#[test]
fn axum_retry_after_header_for_a_long_open_duration() {
    use axum_core::response::IntoResponse;
    let (clock, _manual) = Clock::manual();
    let layer = trips_at_once(
        "edge-axum-long",
        Duration::from_secs(100 * 365 * 86_400),
        clock,
    )
    .build()
    .unwrap();
    let mut svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), _>(std::io::Error::other("down"))
    }));
    let _ = call_at_once(&mut svc, ());
    let open = open_of(call_at_once(&mut svc, ()));
    let response = open.into_response();
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some((100u64 * 365 * 86_400).to_string())
    );
}

/// A streaming gRPC probe (judged at its first message) whose close the
/// hook panics on: the slot comes back once, never twice.
#[cfg(feature = "grpc")]
#[test]
fn a_streaming_probe_with_a_panicking_hook_gives_its_slot_back_once() {
    use bytes::Bytes;
    use futures::channel::mpsc;
    use http_body::{Body as _, Frame};
    use http_body_util::StreamBody;
    use tower_breaker::classify::GrpcClassifier;
    type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, std::convert::Infallible>>;

    let (clock, manual) = Clock::manual();
    let armed = Arc::new(AtomicBool::new(false));
    let a = armed.clone();
    let layer = trips_at_once("edge-grpc-probe-hook", Duration::from_secs(1), clock)
        .max_concurrent_calls(1)
        .classifier(GrpcClassifier::new())
        .on_state_change(move |change| {
            if a.load(Ordering::SeqCst) && change.to == State::Closed {
                panic!("hook panics on close");
            }
        })
        .build()
        .unwrap();
    let senders: Arc<std::sync::Mutex<Vec<Tx>>> = Default::default();
    let s = senders.clone();
    let mut svc = layer.layer(service_fn(move |code: &'static str| {
        let (tx, rx) = mpsc::unbounded();
        if !code.is_empty() {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", code.parse().unwrap());
            tx.unbounded_send(Ok(Frame::trailers(trailers))).unwrap();
        }
        s.lock().unwrap().push(tx);
        let res = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(rx))
            .unwrap();
        async move { Ok::<_, std::convert::Infallible>(res) }
    }));
    // Trip: UNAVAILABLE.
    let body = call_at_once(&mut svc, "14").unwrap().into_body();
    let mut body = Box::pin(body);
    while let Poll::Ready(Some(_)) = body.as_mut().poll_frame(&mut cx()) {}
    drop(body);
    assert_eq!(layer.handle().state(), State::Open);
    manual.advance(Duration::from_secs(2));
    // The probe streams.
    let probe = call_at_once(&mut svc, "").unwrap();
    let mut body = Box::pin(probe.into_body());
    let tx = senders.lock().unwrap().last().unwrap().clone();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]))))
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        body.as_mut().poll_frame(&mut cx()).is_ready()
    }));
    armed.store(false, Ordering::SeqCst);
    assert!(unwound.is_err(), "the hook panicked");
    assert_eq!(layer.handle().state(), State::Closed);
    // The body lives on; the stream ends; the body is dropped.
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]))))
        .unwrap();
    drop(tx);
    while let Poll::Ready(Some(_)) = body.as_mut().poll_frame(&mut cx()) {}
    drop(body);
    // One slot: a held stream takes it, the next call is refused for it.
    let held = call_at_once(&mut svc, "");
    let held = held.expect("a slot is free");
    let r = call_at_once(&mut svc, "");
    match r {
        Err(e) => assert!(e.downcast_ref::<CircuitOpen>().unwrap().is_capacity()),
        Ok(_) => panic!("two slots: the probe's slot came back twice"),
    }
    drop(held);
    let again = call_at_once(&mut svc, "");
    assert!(again.is_ok(), "the held stream's slot came back");
}
