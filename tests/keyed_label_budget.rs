//! Each keyed layer has its own budget of `service` labels inside the
//! process-wide cap, and named breakers keep their names. Its own test
//! binary: the cap is process-wide.

use futures::FutureExt;
use tower::{service_fn, Layer, ServiceExt};
use tower_breaker::keyed::{key_fn, DEFAULT_MAX_KEYS};
use tower_breaker::metrics::DEFAULT_SERVICE_LIMIT;
use tower_breaker::{CircuitBreakerLayer, CircuitOpen};

/// 1,100 attacker-chosen keys on a keyed layer with the defaults cannot take
/// the labels of breakers built later with explicit names, nor those of a
/// second keyed layer. (With the old shared cap, the keys used up all 1,000
/// labels and "payments" and "ledger" were named `__overflow__`, sharing
/// series, their refusals naming the wrong service.)
#[test]
fn a_flood_of_keys_takes_no_label_from_others() {
    const { assert!(DEFAULT_MAX_KEYS < DEFAULT_SERVICE_LIMIT) };
    let flooded = CircuitBreakerLayer::builder()
        .keyed(key_fn(|req: &String| Some(req.clone())))
        .build()
        .unwrap();
    assert_eq!(flooded.label_budget(), DEFAULT_MAX_KEYS);
    let flood = flooded.layer(service_fn(|_: String| async {
        Ok::<_, std::io::Error>(())
    }));
    for i in 0..1_100 {
        flood
            .clone()
            .oneshot(format!("junk-{i}"))
            .now_or_never()
            .unwrap()
            .unwrap();
    }
    assert_eq!(flooded.len(), DEFAULT_MAX_KEYS);
    assert!(flooded.handle("junk-1099").is_none(), "past the budget");

    let mut named_layers = Vec::new();
    for name in ["payments", "ledger"] {
        let named = CircuitBreakerLayer::builder().name(name).build().unwrap();
        assert_eq!(named.handle().name(), name);
        named.handle().force_open();
        let err = named
            .layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }))
            .oneshot(())
            .now_or_never()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.downcast_ref::<CircuitOpen>().unwrap().service(), name);
        named_layers.push(named);
    }

    // A second keyed layer gets what is left of the cap: the 500 the first
    // did not reserve, less the two names.
    let second = CircuitBreakerLayer::builder()
        .keyed(key_fn(|req: &&'static str| Some(*req)))
        .build()
        .unwrap();
    assert_eq!(
        second.label_budget(),
        DEFAULT_SERVICE_LIMIT - DEFAULT_MAX_KEYS - 2
    );
    let svc = second.layer(service_fn(|_: &'static str| async {
        Ok::<_, std::io::Error>(())
    }));
    svc.oneshot("orders").now_or_never().unwrap().unwrap();
    assert_eq!(second.handle("orders").unwrap().name(), "orders");

    // Dropping a layer (and its services) returns its budget.
    drop((flooded, flood));
    let third = CircuitBreakerLayer::builder()
        .keyed(key_fn(|req: &&'static str| Some(*req)))
        .build()
        .unwrap();
    assert_eq!(third.label_budget(), DEFAULT_MAX_KEYS);
}
