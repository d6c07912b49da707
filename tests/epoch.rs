//! A call in flight across many transitions. The epoch that every
//! transition bumps tells a current call from a stale one; it used to have
//! 24 bits, so after 2^24 transitions a call admitted before them was
//! judged current again and its late failure tripped the breaker.

use futures::channel::oneshot;
use futures::FutureExt;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_breaker::{CircuitBreakerLayer, State};

/// 2^24 real transitions: about 2 s optimized (minutes unoptimized), so
/// `.ci/reliability` runs it (`--ignored`, profile `reliability`).
#[test]
#[ignore = "2^24 transitions: run optimized by .ci/reliability"]
fn a_call_in_flight_across_2_pow_24_transitions_is_not_judged() {
    let layer = CircuitBreakerLayer::builder()
        .name("epoch")
        .consecutive_failures(1)
        .count_window(1)
        .minimum_calls(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|rx: oneshot::Receiver<bool>| async move {
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(std::io::Error::other("late failure")),
        }
    }));
    let (tx, rx) = oneshot::channel();
    svc.ready().now_or_never().unwrap().unwrap();
    let mut call = Box::pin(svc.call(rx));
    assert!(call
        .poll_unpin(&mut std::task::Context::from_waker(
            futures::task::noop_waker_ref()
        ))
        .is_pending());

    // A breaker toggled by an operator script, or flapping: 2^24 transitions.
    for _ in 0..(1u32 << 23) {
        handle.disable();
        handle.force_closed();
    }
    assert_eq!(handle.state(), State::Closed);

    tx.send(false).unwrap();
    call.now_or_never().unwrap().unwrap_err();
    assert_eq!(
        handle.state(),
        State::Closed,
        "a failure admitted 2^24 transitions ago is stale"
    );
}
