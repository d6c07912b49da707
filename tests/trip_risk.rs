//! The `trip_risk` gauge: what each state shows, and that a failure streak
//! refreshes it.
#![cfg(feature = "prometheus")]

use tower::{service_fn, Layer, ServiceExt};
use tower_breaker::exporter::MetricsHandle as PrometheusHandle;
use tower_breaker::{CircuitBreakerLayer, Clock, State};

fn risk(handle: &PrometheusHandle, service: &str) -> f64 {
    let prefix = format!("circuit_breaker_trip_risk{{service=\"{service}\"}}");
    handle
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
        .expect("trip_risk series")
}

#[tokio::test(flavor = "current_thread")]
async fn shadow_mode_shows_the_shadow_machine() {
    let (recorder, prom) = tower_breaker::exporter::recorder();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (clock, _manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("risk-shadow")
        .consecutive_failures(2)
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: ()| async {
        Err::<(), _>(std::io::Error::other("down"))
    }));
    handle.metrics_only();
    assert_eq!(
        risk(&prom, "risk-shadow"),
        0.0,
        "entering shadow mode is not a trip"
    );
    let _ = svc.clone().oneshot(()).await;
    assert_eq!(risk(&prom, "risk-shadow"), 0.5);
    let _ = svc.clone().oneshot(()).await;
    assert_eq!(handle.snapshot().machine_state, State::Open);
    assert_eq!(handle.state(), State::MetricsOnly);
    assert_eq!(risk(&prom, "risk-shadow"), 1.0, "the shadow machine opened");
    handle.disable();
    assert_eq!(risk(&prom, "risk-shadow"), 0.0);
    handle.force_open();
    assert_eq!(risk(&prom, "risk-shadow"), 1.0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_growing_streak_refreshes_the_risk() {
    let (recorder, prom) = tower_breaker::exporter::recorder();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let layer = CircuitBreakerLayer::builder()
        .name("risk-streak")
        .consecutive_failures(4)
        .without_failure_rate()
        .count_window(2)
        .minimum_calls(1)
        .build()
        .unwrap();
    let fail = |f: bool| {
        layer.layer(service_fn(move |_: ()| async move {
            if f {
                Err(std::io::Error::other("down"))
            } else {
                Ok(())
            }
        }))
    };
    for expected in [0.25, 0.5, 0.75] {
        // From the third failure on, a failure replaces a failure in the
        // two-call window: the totals stay, the streak grows.
        let _ = fail(true).oneshot(()).await;
        assert_eq!(risk(&prom, "risk-streak"), expected);
    }
    fail(false).oneshot(()).await.unwrap();
    fail(false).oneshot(()).await.unwrap();
    assert_eq!(risk(&prom, "risk-streak"), 0.0);
}
