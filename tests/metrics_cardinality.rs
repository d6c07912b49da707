//! The process-wide cap on `service` label values. In its own test binary:
//! the cap is global, and other tests' breakers would count against it.

#[path = "support/recorded.rs"]
mod recorded;

use metrics_util::debugging::DebuggingRecorder;
use tower_breaker::metrics::{set_service_limit, OVERFLOW_LABEL};
use tower_breaker::CircuitBreakerLayer;

use recorded::{one_hot, Recorded};

fn build(name: &str) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder().name(name).build().unwrap()
}

#[test]
fn names_past_the_cap_share_the_overflow_label() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        set_service_limit(2);
        let a = build("alpha");
        let b = build("beta");
        // The same name again is no new value.
        let a2 = build("alpha");
        let c = build("gamma");
        // Hostile names are sanitized before they are counted.
        let d = build("delta\"}\n");
        assert_eq!(a.handle().name(), "alpha");
        assert_eq!(a2.handle().name(), "alpha");
        assert_eq!(b.handle().name(), "beta");
        assert_eq!(c.handle().name(), OVERFLOW_LABEL);
        assert_eq!(d.handle().name(), OVERFLOW_LABEL);

        let m = Recorded::new(recorder.snapshotter());
        assert_eq!(
            m.label_values("circuit_breaker_state", "service"),
            ["__overflow__", "alpha", "beta"]
                .into_iter()
                .map(String::from)
                .collect()
        );
        assert_eq!(
            m.states("circuit_breaker", "__overflow__"),
            one_hot("closed")
        );

        // A name is released when its last breaker goes, making room.
        drop(b);
        let e = build("epsilon");
        assert_eq!(e.handle().name(), "epsilon");
        drop(a);
        assert_eq!(
            build("zeta").handle().name(),
            OVERFLOW_LABEL,
            "alpha is still held by a2"
        );
        drop(a2);
        let f = build("delta\"}\n");
        assert_eq!(f.handle().name(), "delta___");

        // Raising the cap lets new names through; lowering it keeps those in use.
        set_service_limit(1);
        assert_eq!(build("eta").handle().name(), OVERFLOW_LABEL);
        assert_eq!(f.handle().name(), "delta___");
        set_service_limit(10);
        assert_eq!(build("theta").handle().name(), "theta");
        assert_eq!(e.handle().name(), "epsilon");
    });
}
