//! A global recorder installed BEFORE the layer is built. The global recorder
//! can be set once per process, hence a test binary of its own.

#[path = "support/recorded.rs"]
mod recorded;
#[path = "support/traffic.rs"]
mod traffic;

use metrics_util::debugging::DebuggingRecorder;
use tower::Layer;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock};

use recorded::{one_hot, Recorded};
use traffic::{ms, send, upstream, Call, Sent};

#[tokio::test]
async fn a_recorder_installed_before_the_layer_sees_it_from_construction() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("early")
        .consecutive_failures(1)
        .open_duration(Backoff::fixed(std::time::Duration::from_secs(5)))
        .half_open_permits(1)
        .clock(clock)
        .build()
        .unwrap();
    let mut m = Recorded::new(snapshotter);
    assert_eq!(m.states("circuit_breaker", "early"), one_hot("closed"));
    assert!(m.description("circuit_breaker_state").is_some());
    let transition = |m: &Recorded, from, to, reason| {
        m.counter(
            "circuit_breaker_transitions_total",
            &[
                ("service", "early"),
                ("from", from),
                ("to", to),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(transition(&m, "closed", "open", "consecutive_failures"), 0);

    let svc = layer.layer(upstream(manual.clone()));
    send(&svc, Call::Fail(ms(1))).await;
    assert_eq!(send(&svc, Call::Ok(ms(1))).await, Sent::Rejected);
    m.observe();
    assert_eq!(m.states("circuit_breaker", "early"), one_hot("open"));
    manual.advance(std::time::Duration::from_secs(5));
    assert_eq!(send(&svc, Call::Ok(ms(1))).await, Sent::Ok);
    m.observe();
    assert_eq!(m.states("circuit_breaker", "early"), one_hot("closed"));
    assert_eq!(transition(&m, "closed", "open", "consecutive_failures"), 1);
    assert_eq!(transition(&m, "open", "half_open", "timeout_elapsed"), 1);
    assert_eq!(transition(&m, "half_open", "closed", "probe_succeeded"), 1);
    assert_eq!(transition(&m, "half_open", "open", "probe_failed"), 0);
    assert_eq!(
        m.counter(
            "circuit_breaker_rejections_total",
            &[("service", "early"), ("state", "open")]
        ),
        1
    );
    // Tripped at 1 ms, closed at 5.002 s.
    let recovery = m.histogram(
        "circuit_breaker_recovery_duration_seconds",
        &[("service", "early")],
    );
    assert_eq!(recovery.len(), 1);
    assert!((recovery[0] - 5.001).abs() < 1e-9, "{recovery:?}");
}
