//! Scoped views with global labels named like a breaker label: only the
//! label that names the breaker in a family (`service`, or `name` under the
//! resilience4j naming) decides the scope, in the store's views and in the
//! text filter alike.
#![cfg(feature = "prometheus")]

use tower_breaker::exporter::{RecorderBuilder, Scope};
use tower_breaker::{CircuitBreakerLayer, MetricsNaming};

fn views(global: (&str, &str), naming: MetricsNaming, scope: &str) -> (String, String) {
    let (recorder, handle) = RecorderBuilder::new()
        .global_label(global.0, global.1)
        .build()
        .unwrap();
    let _layers: Vec<_> = metrics::with_local_recorder(&recorder, || {
        ["orders", "payments"]
            .map(|name| {
                CircuitBreakerLayer::builder()
                    .name(format!("globals-{name}"))
                    .metrics_naming(naming)
                    .build()
                    .unwrap()
            })
            .to_vec()
    });
    let scope: Scope = scope.parse().unwrap();
    let store = handle.render_scoped(&scope, b"key");
    let text = scope.apply(&handle.render(), b"key").unwrap();
    (store, text)
}

#[test]
fn a_global_service_label_does_not_scope_resilience4j_series() {
    let (store, text) = views(
        ("service", "checkout"),
        MetricsNaming::Resilience4j,
        "services=globals-orders;view=full",
    );
    for view in [&store, &text] {
        assert!(view.contains("name=\"globals-orders\""), "{view}");
        assert!(!view.contains("globals-payments"), "{view}");
    }
    let (store, text) = views(
        ("service", "checkout"),
        MetricsNaming::Resilience4j,
        "services=checkout;view=full",
    );
    assert!(!store.contains("globals-"), "{store}");
    assert!(!text.contains("globals-"), "{text}");
}

#[test]
fn a_global_name_label_does_not_scope_native_series() {
    let (store, text) = views(
        ("name", "pod-1"),
        MetricsNaming::Native,
        "services=globals-orders;view=full",
    );
    for view in [&store, &text] {
        assert!(view.contains("service=\"globals-orders\""), "{view}");
        assert!(view.contains("circuit_breaker_requests_total"), "{view}");
        assert!(!view.contains("globals-payments"), "{view}");
    }
}
