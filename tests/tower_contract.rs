//! The tower `Service` contract, checked with tower-test mocks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{Backoff, CircuitBreakerLayer, CircuitOpen, Clock, State};
use tower_test::mock;

fn layer(name: &str) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .clock(Clock::tokio())
        .consecutive_failures(1)
        .open_duration(Backoff::fixed(Duration::from_secs(1)))
        .build()
        .unwrap()
}

#[derive(Debug)]
struct UpstreamError;
impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream error")
    }
}
impl std::error::Error for UpstreamError {}

#[tokio::test(start_paused = true)]
async fn readiness_and_errors_pass_through_while_closed() {
    let layer = layer("c-closed");
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(layer.clone());

    // Not ready while the inner service is not.
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let response = svc.call(7);
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 7);
    send.send_error(UpstreamError);
    let err = response.await.unwrap_err();
    assert!(
        err.is::<UpstreamError>(),
        "the inner error is passed through as is"
    );
    assert_eq!(layer.handle().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_neither_polls_nor_calls_the_inner_service() {
    let layer = layer("c-open");
    layer.handle().force_open();
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(layer.clone());
    handle.allow(0);
    // Ready at once although the inner service is not: it is not polled.
    assert_ready_ok!(svc.poll_ready());
    let err = svc.call(1).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!(open.state(), State::ForcedOpen);
    assert_eq!(open.service(), "c-open");
    assert!(
        handle.poll_request().is_pending(),
        "no request reached the mock"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_poll_ready_errors_leave_no_permit_taken() {
    let layer = layer("c-ready-error");
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(layer.clone());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let call = svc.call(1);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(UpstreamError);
    call.await.unwrap_err();
    tokio::time::advance(Duration::from_secs(1)).await;

    // Half-open: the probe's readiness fails; `poll_ready` took no permit.
    handle.send_error(UpstreamError);
    assert_ready_err!(svc.poll_ready());
    assert_eq!(layer.handle().snapshot().half_open_probes, 0);
    assert_eq!(layer.handle().state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn one_layer_shares_one_breaker() {
    let layer = layer("c-shared");
    let mut a = layer.layer(tower::service_fn(|_: ()| async {
        Err::<(), _>(UpstreamError)
    }));
    let b = layer.layer(tower::service_fn(|_: ()| async {
        Ok::<_, UpstreamError>(())
    }));
    a.ready().await.unwrap().call(()).await.unwrap_err();
    let err = b.oneshot(()).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(a.handle().state(), State::Open);
}

/// A decision taken in `poll_ready` is re-checked at `call`: a service made
/// ready while Closed, then `force_open()` before `call`, is refused and
/// the inner service is not called. (It used to be called.)
#[tokio::test(start_paused = true)]
async fn a_breaker_opened_between_poll_ready_and_call_refuses_the_call() {
    let layer = layer("c-ready-then-open");
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(layer.clone());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    layer.handle().force_open();
    let err = svc.call(1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().state(),
        State::ForcedOpen
    );
    assert!(
        handle.poll_request().is_pending(),
        "the mock was not called"
    );
    assert_eq!(layer.handle().snapshot().rejected, 1);

    // Closed again, the readiness the mock granted is still there.
    layer.handle().force_closed();
    assert_ready_ok!(svc.poll_ready());
    let response = svc.call(2);
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 2);
    send.send_response(2);
    assert_eq!(response.await.unwrap(), 2);
}

/// Each `poll_ready` decides a refusal afresh: a service made ready while
/// the breaker refused, polled again after it recovered, lets the call
/// through. (The refusal used to stay cached until a call consumed it.)
#[tokio::test(start_paused = true)]
async fn a_refusal_is_decided_afresh_by_the_next_poll_ready() {
    let layer = layer("c-refusal-afresh");
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(layer.clone());
    layer.handle().force_open();
    handle.allow(0);
    assert_ready_ok!(svc.poll_ready());
    layer.handle().force_closed();
    // Now the inner service is polled: not ready yet, then ready.
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let response = svc.call(3);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(3);
    assert_eq!(response.await.unwrap(), 3);
    assert_eq!(layer.handle().snapshot().rejected, 0, "nothing was refused");
}

/// Callers waiting for the inner service's readiness (here behind
/// `ConcurrencyLimit`, whose `poll_ready` returns Pending until the slot
/// frees) when the breaker trips: their next `poll_ready` finds the ticket
/// they hold stale and decides again, so they are refused while it is
/// open, and one of them is the probe once half-open. (Their tickets from
/// before the trip used to be kept across polls, so they all went through,
/// open or not.) The re-check in `call` itself is
/// `a_breaker_opened_between_poll_ready_and_call_refuses_the_call`.
#[tokio::test(start_paused = true)]
async fn callers_waiting_for_readiness_are_judged_after_a_trip() {
    let layer = CircuitBreakerLayer::builder()
        .name("c-waiting")
        .clock(Clock::tokio())
        .consecutive_failures(1)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(1)))
        .build()
        .unwrap();
    let called = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = {
        let (called, gate) = (called.clone(), gate.clone());
        tower::service_fn(move |()| {
            called.fetch_add(1, Ordering::SeqCst);
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                Ok::<_, UpstreamError>(())
            }
        })
    };
    let svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .concurrency_limit(1)
        .service(upstream.clone());

    // One call holds the only slot; ten more wait for it in poll_ready,
    // each holding a ticket taken while Closed.
    let first = tokio::spawn(svc.clone().oneshot(()));
    while called.load(Ordering::SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    let waiting: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // Another path through the same breaker trips it.
    let failing = layer.layer(tower::service_fn(|_: ()| async {
        Err::<(), _>(UpstreamError)
    }));
    failing.oneshot(()).await.unwrap_err();
    assert_eq!(layer.handle().state(), State::Open);

    // The slot frees while the breaker is open: every waiter is refused.
    gate.add_permits(1);
    first.await.unwrap().unwrap();
    for task in waiting {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(
            err.downcast_ref::<CircuitOpen>().unwrap().state(),
            State::Open
        );
    }
    assert_eq!(
        called.load(Ordering::SeqCst),
        1,
        "no waiter reached the upstream"
    );

    // Half-open: of two callers made ready, one probe goes, one is refused
    // (without the concurrency limit, which would keep the second waiting).
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut a = layer.layer(upstream.clone());
    let mut b = layer.layer(upstream);
    a.ready().await.unwrap();
    b.ready().await.unwrap();
    let probe = tokio::spawn(a.call(()));
    let err = b.call(()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().state(),
        State::HalfOpen
    );
    gate.add_permits(1);
    probe.await.unwrap().unwrap();
    assert_eq!(called.load(Ordering::SeqCst), 2);
    assert_eq!(layer.handle().state(), State::Closed, "the probe succeeded");
}
