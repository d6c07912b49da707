//! Each trip policy, alone and composed.

mod support;

use std::time::Duration;

use support::{send, Call, Seen, Transitions, Upstream};
use tower::Layer;
use tower_breaker::{CircuitBreakerLayer, Clock, Reason, State};

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window_waits_for_minimum_calls() {
    let t = Transitions::default();
    let layer = CircuitBreakerLayer::builder()
        .name("p-count")
        .clock(Clock::tokio())
        .failure_rate(0.5)
        .count_window(10)
        .minimum_calls(6)
        .on_state_change(t.hook())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());

    // 4 failures out of 5 calls: 80%, but below the minimum of 6 calls.
    for call in [Call::Fail, Call::Fail, Call::Ok, Call::Fail, Call::Fail] {
        send(&mut svc, call).await;
    }
    assert_eq!(handle.state(), State::Closed);
    let snap = handle.snapshot();
    assert_eq!((snap.calls, snap.failures), (5, 4));
    assert!((snap.failure_rate - 0.8).abs() < 1e-9);
    // The sixth call is a success: the window reaches its minimum at 4/6 =
    // 67% >= 50%, and that success is judged too. (Only failures and slow
    // calls used to be judged, so this success left the breaker Closed.)
    send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Open);
    assert_eq!(t.last().reason, Reason::FailureRate);
    assert_eq!(t.last().snapshot.calls, 6);
}

/// The case: count window 10, minimum 10, threshold 50%. Five
/// failures then five successes reach the threshold exactly when the tenth
/// call fills the window, as five successes then five failures do.
#[tokio::test(start_paused = true)]
async fn the_threshold_is_reached_whatever_the_order() {
    for (name, calls) in [
        ("p-order-fail-first", [Call::Fail, Call::Ok]),
        ("p-order-ok-first", [Call::Ok, Call::Fail]),
    ] {
        let layer = CircuitBreakerLayer::builder()
            .name(name)
            .clock(Clock::tokio())
            .failure_rate(0.5)
            .count_window(10)
            .minimum_calls(10)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(Upstream::default().service());
        for call in calls {
            for _ in 0..5 {
                send(&mut svc, call).await;
            }
        }
        assert_eq!(handle.state(), State::Open, "{name}");
    }
}

/// A time window whose old successes age out, leaving 4 failures in 5
/// calls, trips on the next call, though that call succeeds.
#[tokio::test(start_paused = true)]
async fn a_time_window_trips_when_old_successes_age_out() {
    let t = Transitions::default();
    let layer = CircuitBreakerLayer::builder()
        .name("p-time-age")
        .clock(Clock::tokio())
        .failure_rate(0.5)
        .time_window(Duration::from_secs(10), 10)
        .minimum_calls(5)
        .on_state_change(t.hook())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());
    // t = 0: six successes; t = 5 s: four failures (4 in 10, 40%).
    for _ in 0..6 {
        send(&mut svc, Call::Ok).await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..4 {
        send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Closed);
    // t = 10.5 s: the successes have aged out; one more success makes it
    // 4 failures in 5 calls.
    tokio::time::advance(Duration::from_millis(5_500)).await;
    assert_eq!(send(&mut svc, Call::Ok).await, Seen::Ok);
    assert_eq!(handle.state(), State::Open);
    assert_eq!(t.last().reason, Reason::FailureRate);
    assert_eq!(
        (t.last().snapshot.calls, t.last().snapshot.failures),
        (5, 4)
    );
}

/// Setting another policy keeps the default 50% failure-rate policy (as
/// in resilience4j): a 75%-failing upstream trips a breaker configured
/// only with a slow-call rate. (Setting any policy used to drop it.)
#[tokio::test(start_paused = true)]
async fn another_policy_keeps_the_default_failure_rate() {
    let t = Transitions::default();
    let layer = CircuitBreakerLayer::builder()
        .name("p-default-rate")
        .clock(Clock::tokio())
        .slow_call_rate(0.5, Duration::from_secs(1))
        .count_window(20)
        .minimum_calls(20)
        .on_state_change(t.hook())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());
    for i in 0..20 {
        let call = if i % 4 == 0 { Call::Ok } else { Call::Fail };
        send(&mut svc, call).await;
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(t.last().reason, Reason::FailureRate);
    assert!((t.last().snapshot.failure_rate - 0.75).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn count_window_forgets_old_failures() {
    let layer = CircuitBreakerLayer::builder()
        .name("p-forget")
        .clock(Clock::tokio())
        .failure_rate(0.5)
        .count_window(4)
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());
    // F O O O: 25%.
    for call in [Call::Fail, Call::Ok, Call::Ok, Call::Ok] {
        send(&mut svc, call).await;
    }
    // O O O F: the first failure has left the window, still 25%.
    send(&mut svc, Call::Fail).await;
    assert_eq!(handle.snapshot().failures, 1);
    assert_eq!(handle.state(), State::Closed);
    // O O F F: 50%, trips.
    send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_time_window() {
    let t = Transitions::default();
    let layer = CircuitBreakerLayer::builder()
        .name("p-time")
        .clock(Clock::tokio())
        .failure_rate(0.5)
        .time_window(Duration::from_secs(10), 10)
        .minimum_calls(4)
        .on_state_change(t.hook())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());

    // Three failures, then silence longer than the window.
    for _ in 0..3 {
        send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.snapshot().failures, 3);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(handle.snapshot().calls, 0, "the window forgot them");
    // One more failure is 1 of 1: below the minimum, no trip.
    send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Closed);
    // Within one window: 2 ok + 2 failed = 50% at 4 calls.
    send(&mut svc, Call::Ok).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);
    send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
    assert_eq!(t.last().reason, Reason::FailureRate);
    assert_eq!(t.last().snapshot.calls, 4);
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_trips_on_slow_successes() {
    let t = Transitions::default();
    let layer = CircuitBreakerLayer::builder()
        .name("p-slow")
        .clock(Clock::tokio())
        .slow_call_rate(0.5, Duration::from_millis(500))
        .without_failure_rate()
        .count_window(10)
        .minimum_calls(4)
        .on_state_change(t.hook())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());
    send(&mut svc, Call::Ok).await;
    send(&mut svc, Call::SlowOk(Duration::from_millis(499))).await;
    send(&mut svc, Call::SlowOk(Duration::from_millis(500))).await;
    assert_eq!(
        handle.snapshot().slow_calls,
        1,
        "499 ms is not slow, 500 ms is"
    );
    // Failures alone do not trip a slow-call-only breaker.
    for _ in 0..5 {
        send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Closed);
    for _ in 0..5 {
        send(&mut svc, Call::SlowOk(Duration::from_secs(1))).await;
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(t.last().reason, Reason::SlowCallRate);
}

#[tokio::test(start_paused = true)]
async fn policies_compose_and_the_first_to_fire_is_the_reason() {
    let t = Transitions::default();
    let layer = CircuitBreakerLayer::builder()
        .name("p-compose")
        .clock(Clock::tokio())
        .consecutive_failures(3)
        .failure_rate(0.5)
        .count_window(20)
        .minimum_calls(10)
        .on_state_change(t.hook())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());
    // Three in a row trip before the rate policy has enough calls.
    for _ in 0..3 {
        send(&mut svc, Call::Fail).await;
    }
    assert_eq!(t.last().reason, Reason::ConsecutiveFailures);

    handle.reset();
    // Alternating failures never make three in a row, but reach 50%.
    for i in 0..10 {
        let call = if i % 2 == 0 { Call::Ok } else { Call::Fail };
        assert_ne!(send(&mut svc, call).await, Seen::Rejected(State::Open));
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(t.last().reason, Reason::FailureRate);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_count_nowhere() {
    let layer = CircuitBreakerLayer::builder()
        .name("p-ignored")
        .clock(Clock::tokio())
        .consecutive_failures(2)
        .classifier(tower_breaker::classify::classify_fn(|r: &&'static str| {
            if *r == "ok" {
                tower_breaker::Outcome::Ignored
            } else {
                tower_breaker::Outcome::Success
            }
        }))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());
    send(&mut svc, Call::Fail).await;
    send(&mut svc, Call::Ok).await; // ignored: does not break the run
    send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        handle.snapshot().calls,
        2,
        "the ignored call is not in the window"
    );
}
