//! Disabled, ForcedOpen, MetricsOnly and reset.

mod support;

use std::time::Duration;

use support::{send, Call, Seen, Transitions, Upstream};
use tower::Layer;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock, Reason, State};

fn layer(name: &str, t: &Transitions) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .clock(Clock::tokio())
        .consecutive_failures(2)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(5)))
        .on_state_change(t.hook())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn disabled_lets_everything_through_and_judges_nothing() {
    let t = Transitions::default();
    let layer = layer("o-disabled", &t);
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());
    handle.disable();
    for _ in 0..10 {
        assert_eq!(send(&mut svc, Call::Fail).await, Seen::Failed);
    }
    assert_eq!(handle.state(), State::Disabled);
    assert_eq!(upstream.count(), 10);
    assert_eq!(handle.snapshot().calls, 0);
    assert_eq!(t.path(), [("closed", "disabled", "manual")]);
}

#[tokio::test(start_paused = true)]
async fn forced_open_refuses_without_calling_the_upstream() {
    let t = Transitions::default();
    let layer = layer("o-forced", &t);
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());
    handle.force_open();
    tokio::time::advance(Duration::from_secs(3600)).await;
    for _ in 0..5 {
        assert_eq!(
            send(&mut svc, Call::Ok).await,
            Seen::Rejected(State::ForcedOpen)
        );
    }
    assert_eq!(upstream.count(), 0);
    assert_eq!(handle.snapshot().rejected, 5);
    handle.force_closed();
    assert_eq!(send(&mut svc, Call::Ok).await, Seen::Ok);
    assert_eq!(
        t.path(),
        [
            ("closed", "forced_open", "manual"),
            ("forced_open", "closed", "manual")
        ]
    );
    assert_eq!(t.last().recovery, Some(Duration::from_secs(3600)));
}

#[tokio::test(start_paused = true)]
async fn metrics_only_runs_the_machine_in_the_shadow() {
    let t = Transitions::default();
    let layer = layer("o-shadow", &t);
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());
    handle.metrics_only();
    send(&mut svc, Call::Fail).await;
    send(&mut svc, Call::Fail).await;
    // The shadow machine tripped, but calls still flow.
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::MetricsOnly);
    assert_eq!(snap.machine_state, State::Open);
    for _ in 0..3 {
        assert_eq!(send(&mut svc, Call::Ok).await, Seen::Ok);
    }
    assert_eq!(upstream.count(), 5);
    assert_eq!(handle.snapshot().shadow_rejected, 3);
    assert_eq!(handle.snapshot().rejected, 0);
    let shadow = t.last();
    assert!(shadow.shadow);
    assert_eq!(
        (shadow.from, shadow.to, shadow.reason),
        (State::Closed, State::Open, Reason::ConsecutiveFailures)
    );
    // The shadow machine recovers like the real one.
    tokio::time::advance(Duration::from_secs(5)).await;
    send(&mut svc, Call::Ok).await;
    assert_eq!(handle.snapshot().machine_state, State::Closed);
    assert_eq!(handle.state(), State::MetricsOnly);
}

#[tokio::test(start_paused = true)]
async fn reset_starts_over() {
    let t = Transitions::default();
    let layer = layer("o-reset", &t);
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());
    send(&mut svc, Call::Fail).await;
    send(&mut svc, Call::Fail).await;
    send(&mut svc, Call::Ok).await;
    assert_eq!(handle.snapshot().rejected, 1);
    handle.reset();
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!(
        (snap.rejected, snap.calls, snap.consecutive_failures),
        (0, 0, 0)
    );
    assert_eq!(t.last().recovery, None, "a reset is not a recovery");
    assert_eq!(send(&mut svc, Call::Ok).await, Seen::Ok);
}
