//! The tower `Service` contract, checked with tower-test mocks.

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
async fn inner_poll_ready_errors_release_the_probe_permit() {
    let layer = layer("c-ready-error");
    let (mut svc, mut handle) = mock::spawn_layer::<u8, u8, _>(layer.clone());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let call = svc.call(1);
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(UpstreamError);
    call.await.unwrap_err();
    tokio::time::advance(Duration::from_secs(1)).await;

    // Half-open: the probe's readiness fails, the permit comes back.
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
