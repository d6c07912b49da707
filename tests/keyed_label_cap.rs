//! Keyed breakers under the process-wide `service` label cap. Its own test
//! binary: the cap is process-wide.

use std::time::Duration;

use futures::FutureExt;
use tower::{service_fn, Layer, ServiceExt};
use tower_breaker::keyed::key_fn;
use tower_breaker::metrics::set_service_limit;
use tower_breaker::{CircuitBreakerLayer, Clock};

#[test]
fn keys_past_the_process_label_cap_overflow_until_labels_free_up() {
    set_service_limit(3);
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .clock(clock)
        .keyed(key_fn(|req: &&'static str| Some(*req)))
        .max_keys(100)
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: &'static str| async {
        Ok::<_, std::io::Error>(())
    }));
    let call = |key: &'static str| {
        svc.clone()
            .oneshot(key)
            .now_or_never()
            .expect("ready at once")
            .unwrap()
    };

    assert_eq!(layer.label_budget(), 3);
    for key in ["a", "b", "c", "d", "e"] {
        call(key);
    }
    // Three labels for this layer: d and e are judged by breakers of their
    // own (named after them), which report under `__overflow__`.
    assert_eq!(layer.len(), 5);
    assert_eq!(layer.handle("d").unwrap().name(), "d");
    assert!(layer.overflow_handle().is_none(), "no key past max_keys");

    // Eviction frees labels; new keys get labels of their own again.
    manual.advance(Duration::from_secs(10));
    assert_eq!(layer.evict_idle(), 5);
    call("f");
    assert_eq!(layer.handle("f").unwrap().name(), "f");
    assert_eq!(layer.len(), 1);
}
