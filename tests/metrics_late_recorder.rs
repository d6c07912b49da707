//! A global recorder installed AFTER the layer was built. The global recorder
//! can be set once per process, hence a test binary of its own.

#[path = "support/recorded.rs"]
mod recorded;
#[path = "support/traffic.rs"]
mod traffic;

use metrics::Unit;
use metrics_util::debugging::DebuggingRecorder;
use tower::Layer;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock};

use recorded::{assert_all_close, one_hot, Recorded};
use traffic::{ms, send, upstream, Call, Sent};

#[tokio::test]
async fn a_recorder_installed_after_the_layer_gets_everything_on_the_first_call() {
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("late")
        .consecutive_failures(2)
        .open_duration(Backoff::fixed(std::time::Duration::from_secs(5)))
        .clock(clock)
        .build()
        .unwrap();
    let svc = layer.layer(upstream(manual.clone()));
    // Calls before any recorder go nowhere.
    send(&svc, Call::Ok(ms(1))).await;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    // The breaker cannot know of the recorder before its next call.
    let mut m = Recorded::new(snapshotter);
    assert!(m.names().is_empty());

    send(&svc, Call::Fail(ms(2))).await;
    m.observe();
    assert_eq!(m.states("circuit_breaker", "late"), one_hot("closed"));
    let requests = |m: &Recorded, status| {
        m.counter(
            "circuit_breaker_requests_total",
            &[("service", "late"), ("status", status)],
        )
    };
    assert_eq!(requests(&m, "failure"), 1);
    assert_eq!(requests(&m, "success"), 0, "the call before the recorder");
    assert_eq!(
        m.counter(
            "circuit_breaker_failures_total",
            &[("service", "late"), ("kind", "error")]
        ),
        1
    );
    let trip = [
        ("service", "late"),
        ("from", "closed"),
        ("to", "open"),
        ("reason", "consecutive_failures"),
    ];
    assert_eq!(m.counter("circuit_breaker_transitions_total", &trip), 0);
    assert_all_close(
        m.histogram(
            "circuit_breaker_request_duration_seconds",
            &[("service", "late"), ("status", "failure")],
        ),
        &[0.002],
    );
    for (name, unit) in [
        ("circuit_breaker_state", None),
        ("circuit_breaker_transitions_total", Some(Unit::Count)),
        ("circuit_breaker_requests_total", Some(Unit::Count)),
        ("circuit_breaker_failures_total", Some(Unit::Count)),
        (
            "circuit_breaker_request_duration_seconds",
            Some(Unit::Seconds),
        ),
        ("circuit_breaker_error_rate", None),
    ] {
        let (got, help) = m
            .description(name)
            .unwrap_or_else(|| panic!("{name} not described"));
        assert_eq!(*got, unit, "{name}");
        assert!(!help.is_empty());
    }

    // The cached handles keep working: trip and refuse.
    send(&svc, Call::Fail(ms(2))).await;
    assert_eq!(send(&svc, Call::Ok(ms(1))).await, Sent::Rejected);
    m.observe();
    assert_eq!(m.states("circuit_breaker", "late"), one_hot("open"));
    assert_eq!(m.counter("circuit_breaker_transitions_total", &trip), 1);
    assert_eq!(requests(&m, "rejected"), 1);
}
