//! Each transition of the state machine, driven through the service.

mod support;

use std::time::Duration;

use support::{send, Call, Seen, Transitions, Upstream};
use tower::Layer;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock, Reason, State};

fn builder(name: &str, transitions: &Transitions) -> tower_breaker::Builder {
    CircuitBreakerLayer::builder()
        .name(name)
        .clock(Clock::tokio())
        .consecutive_failures(3)
        .half_open_permits(2)
        .open_duration(Backoff::fixed(Duration::from_secs(10)))
        .on_state_change(transitions.hook())
}

#[tokio::test(start_paused = true)]
async fn closed_open_half_open_closed() {
    let transitions = Transitions::default();
    let layer = builder("t-cycle", &transitions).build().unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());

    // Closed: failures pass through as the inner error.
    for _ in 0..2 {
        assert_eq!(send(&mut svc, Call::Fail).await, Seen::Failed);
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(send(&mut svc, Call::Fail).await, Seen::Failed);
    assert_eq!(handle.state(), State::Open);
    let opened = transitions.last();
    assert_eq!(opened.reason, Reason::ConsecutiveFailures);
    assert_eq!(
        opened.snapshot.consecutive_failures, 3,
        "snapshot taken before reset"
    );
    assert_eq!(opened.open_for, Some(Duration::from_secs(10)));

    // Open: refused without calling the upstream.
    let before = upstream.count();
    assert_eq!(send(&mut svc, Call::Ok).await, Seen::Rejected(State::Open));
    assert_eq!(upstream.count(), before);
    let remaining = handle.snapshot().open_remaining.unwrap();
    assert_eq!(remaining, Duration::from_secs(10));

    // Still open just before the duration elapses.
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(send(&mut svc, Call::Ok).await, Seen::Rejected(State::Open));

    // Half-open after it: two probes, both succeed, and the breaker closes.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(send(&mut svc, Call::Ok).await, Seen::Ok);
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(send(&mut svc, Call::Ok).await, Seen::Ok);
    assert_eq!(handle.state(), State::Closed);
    let closed = transitions.last();
    assert_eq!(closed.recovery, Some(Duration::from_secs(10)));

    assert_eq!(
        transitions.path(),
        [
            ("closed", "open", "consecutive_failures"),
            ("open", "half_open", "timeout_elapsed"),
            ("half_open", "closed", "probe_succeeded"),
        ]
    );
    // Closing cleared the counts.
    let snap = handle.snapshot();
    assert_eq!(
        (snap.calls, snap.failures, snap.consecutive_failures),
        (0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn failed_probe_reopens_with_exponential_backoff() {
    let transitions = Transitions::default();
    let layer = builder("t-reopen", &transitions)
        .open_duration(Backoff::exponential(
            Duration::from_secs(1),
            Duration::from_secs(3),
        ))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());

    for _ in 0..3 {
        send(&mut svc, Call::Fail).await;
    }
    let mut opens = vec![handle.snapshot().open_remaining.unwrap()];
    for _ in 0..3 {
        tokio::time::advance(opens.last().copied().unwrap()).await;
        assert_eq!(
            send(&mut svc, Call::Fail).await,
            Seen::Failed,
            "probe admitted"
        );
        assert_eq!(handle.state(), State::Open);
        assert_eq!(transitions.last().reason, Reason::ProbeFailed);
        opens.push(handle.snapshot().open_remaining.unwrap());
    }
    let secs: Vec<u64> = opens.iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, [1, 2, 3, 3], "doubling, capped at 3 s");

    // Recovering resets the backoff.
    tokio::time::advance(Duration::from_secs(3)).await;
    send(&mut svc, Call::Ok).await;
    send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);
    for _ in 0..3 {
        send(&mut svc, Call::Fail).await;
    }
    assert_eq!(
        handle.snapshot().open_remaining,
        Some(Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_after_m_successes() {
    let transitions = Transitions::default();
    let layer = builder("t-m-of-n", &transitions)
        .half_open_permits(5)
        .half_open_successes(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());
    for _ in 0..3 {
        send(&mut svc, Call::Fail).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().half_open_successes, 1);
    send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_waits_at_most_max_wait() {
    let transitions = Transitions::default();
    let layer = builder("t-max-wait", &transitions)
        .max_half_open_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Upstream::default().service());
    for _ in 0..3 {
        send(&mut svc, Call::Fail).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    // One probe is admitted and succeeds; the second never comes.
    send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(send(&mut svc, Call::Ok).await, Seen::Rejected(State::Open));
    assert_eq!(transitions.last().reason, Reason::MaxWaitElapsed);
}

#[tokio::test(start_paused = true)]
async fn stale_outcomes_do_not_count() {
    // A slow call admitted while Closed finishes after the breaker opened and
    // recovered: its failure must not reopen the breaker.
    let transitions = Transitions::default();
    let layer = builder("t-stale", &transitions)
        .consecutive_failures(1)
        .half_open_permits(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|d: Option<Duration>| async move {
        match d {
            Some(d) => {
                tokio::time::sleep(d).await;
                Err::<(), _>(std::io::Error::other("late failure"))
            }
            None => Ok(()),
        }
    }));
    use tower::{Service, ServiceExt};
    let slow = svc
        .ready()
        .await
        .unwrap()
        .call(Some(Duration::from_secs(60)));
    let slow = tokio::spawn(slow);
    handle.force_open();
    handle.force_closed();
    assert_eq!(handle.state(), State::Closed);
    assert!(slow.await.unwrap().is_err());
    assert_eq!(
        handle.state(),
        State::Closed,
        "a stale failure is not judged"
    );
}

/// Fails every call; calls with `Some(d)` also carry a `Retry-After` of `d`.
#[derive(Clone, Copy, Debug)]
struct HintOnFailure;

impl tower_breaker::classify::Classify<(bool, Option<Duration>)> for HintOnFailure {
    type Response = ();

    fn classify_response(
        &self,
        (ok, hint): (bool, Option<Duration>),
        call: tower_breaker::InFlight,
    ) {
        if let Some(hint) = hint {
            call.retry_after(hint);
        }
        call.finish(if ok {
            tower_breaker::Outcome::Success
        } else {
            tower_breaker::Outcome::Failure(tower_breaker::FailureKind::HTTP_5XX)
        });
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_extends_the_trip_but_goes_stale_after_a_success() {
    use tower::{Service, ServiceExt};
    let layer = CircuitBreakerLayer::builder()
        .name("t-hint")
        .clock(Clock::tokio())
        .consecutive_failures(2)
        .open_duration(Backoff::fixed(Duration::from_secs(10)))
        .classifier(HintOnFailure)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(
        |r: (bool, Option<Duration>)| async move { Ok::<_, std::io::Error>(r) },
    ));
    // A hint, then a success: stale.
    svc.ready()
        .await
        .unwrap()
        .call((false, Some(Duration::from_secs(120))))
        .await
        .unwrap();
    svc.ready().await.unwrap().call((true, None)).await.unwrap();
    svc.ready()
        .await
        .unwrap()
        .call((false, None))
        .await
        .unwrap();
    svc.ready()
        .await
        .unwrap()
        .call((false, None))
        .await
        .unwrap();
    assert_eq!(
        handle.snapshot().open_remaining,
        Some(Duration::from_secs(10))
    );

    // A hint on the tripping failure keeps the breaker open that long.
    handle.reset();
    svc.ready()
        .await
        .unwrap()
        .call((false, None))
        .await
        .unwrap();
    svc.ready()
        .await
        .unwrap()
        .call((false, Some(Duration::from_secs(120))))
        .await
        .unwrap();
    assert_eq!(
        handle.snapshot().open_remaining,
        Some(Duration::from_secs(120))
    );
}
