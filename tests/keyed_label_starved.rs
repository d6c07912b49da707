//! A keyed layer left with no label still judges its keys. Its own test
//! binary: the label cap is process-wide.

use futures::FutureExt;
use tower::{service_fn, Layer, ServiceExt};
use tower_breaker::keyed::key_fn;
use tower_breaker::metrics::DEFAULT_SERVICE_LIMIT;
use tower_breaker::CircuitBreakerLayer;

/// Budgets taken by other layers leave a layer with no label at all: its
/// keys are still judged, each by a breaker of its own. (A layer with a
/// budget of 0 used to send every key to the unjudged overflow breaker, so
/// it refused nothing.)
#[test]
fn a_layer_with_no_label_left_still_judges_its_keys() {
    let build = |max_keys| {
        CircuitBreakerLayer::builder()
            .consecutive_failures(3)
            .keyed(key_fn(|req: &&'static str| Some(*req)))
            .max_keys(max_keys)
            .build()
            .unwrap()
    };
    // A layer whose max_keys exceeds the cap reserves all of it.
    let greedy = build(1_000_000);
    assert_eq!(greedy.label_budget(), DEFAULT_SERVICE_LIMIT);
    let starved = build(100);
    assert_eq!(starved.label_budget(), 0);
    let svc = starved.layer(service_fn(|_: &'static str| async {
        Err::<(), _>(std::io::Error::other("down"))
    }));
    let mut refused = 0;
    for _ in 0..10 {
        let err = svc
            .clone()
            .oneshot("dead")
            .now_or_never()
            .unwrap()
            .unwrap_err();
        refused += usize::from(err.is::<tower_breaker::CircuitOpen>());
    }
    assert_eq!(refused, 7, "three failures trip it, the rest are refused");
    let handle = starved.handle("dead").unwrap();
    assert_eq!(handle.name(), "dead");
    assert_eq!(handle.state(), tower_breaker::State::Open);
}
