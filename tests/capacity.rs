//! Capacity thresholds: the concurrency limit (`max_concurrent_calls`) and a
//! keyed layer's open-share guard (`max_open_share`).

#[path = "support/recorded.rs"]
mod recorded;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use metrics_util::debugging::DebuggingRecorder;
use tokio::sync::{Barrier, Semaphore};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_breaker::keyed::key_fn;
use tower_breaker::{CircuitBreakerLayer, CircuitOpen, Clock, State};

use recorded::Recorded;

fn refusal(result: Result<impl Sized, BoxError>) -> Option<CircuitOpen> {
    match result {
        Err(e) => e.downcast_ref::<CircuitOpen>().cloned(),
        Ok(_) => None,
    }
}

/// Many tasks on several threads never put more than the limit in the
/// inner service, and every call is either served or refused for capacity.
#[test]
fn never_more_than_the_limit_in_flight() {
    const LIMIT: usize = 3;
    const TASKS: usize = 32;
    const CALLS: usize = 200;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let layer = CircuitBreakerLayer::builder()
            .name("capacity-stress")
            .max_concurrent_calls(LIMIT as u32)
            .build()
            .unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let (i, m, g) = (inside.clone(), most.clone(), gate.clone());
        // `true` holds the call until the gate opens.
        let svc = layer.layer(service_fn(move |hold: bool| {
            let (inside, most, gate) = (i.clone(), m.clone(), g.clone());
            async move {
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                if hold {
                    gate.acquire().await.unwrap().forget();
                } else {
                    tokio::task::yield_now().await;
                }
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            }
        }));
        let barrier = Arc::new(Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (svc, barrier) = (svc.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let (mut served, mut refused) = (0, 0);
                    for c in 0..CALLS {
                        let call = svc.clone().oneshot(false);
                        if (t + c) % 7 == 0 {
                            // Some futures are dropped before they finish.
                            drop(call);
                            continue;
                        }
                        match call.await {
                            Ok(()) => served += 1,
                            Err(e) => {
                                let open = e.downcast_ref::<CircuitOpen>().unwrap();
                                assert!(open.is_capacity(), "{open}");
                                refused += 1;
                            }
                        }
                    }
                    (served, refused)
                })
            })
            .collect();
        let (mut served, mut refused) = (0, 0);
        for task in tasks {
            let (s, r) = task.await.unwrap();
            served += s;
            refused += r;
        }
        assert!(most.load(Ordering::SeqCst) <= LIMIT);
        assert!(served > 0);
        assert_eq!(inside.load(Ordering::SeqCst), 0);
        // Every slot came back: `LIMIT` calls held at once all pass, and the
        // next one is refused for capacity.
        let held: Vec<_> = (0..LIMIT)
            .map(|_| tokio::spawn(svc.clone().oneshot(true)))
            .collect();
        while inside.load(Ordering::SeqCst) < LIMIT {
            tokio::task::yield_now().await;
        }
        let over = refusal(svc.clone().oneshot(false).await).expect("refused");
        assert!(over.is_capacity());
        gate.add_permits(LIMIT);
        for call in held {
            call.await.unwrap().unwrap();
        }
        assert_eq!(layer.handle().state(), State::Closed);
        assert!(refused > 0, "the limit was never reached");
    });
}

/// A slot is given back when the call finishes, fails, or its future is
/// dropped; a refusal for capacity is told apart from an open breaker in
/// the error and in the metrics.
#[test]
fn slots_come_back_and_refusals_say_why() {
    let recorder = DebuggingRecorder::new();
    let mut m = Recorded::new(recorder.snapshotter());
    metrics::with_local_recorder(&recorder, || {
        let layer = CircuitBreakerLayer::builder()
            .name("capacity-slots")
            .consecutive_failures(100)
            .max_concurrent_calls(2)
            .build()
            .unwrap();
        // Each call waits for a permit of the gate.
        let gate = Arc::new(Semaphore::new(0));
        let g = gate.clone();
        let mut svc = layer.layer(service_fn(move |fail: bool| {
            let gate = g.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                if fail {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(())
                }
            }
        }));
        let mut call = |fail| {
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            svc.call(fail)
        };
        let first = call(false);
        let mut second = Box::pin(call(true));
        let third = call(false).now_or_never().expect("refused at once");
        let open = refusal(third).expect("a refusal");
        assert!(open.is_capacity());
        assert_eq!(open.capacity_limit(), Some(2));
        assert_eq!(open.state(), State::Closed);
        assert_eq!(open.retry_after(), None);
        assert!(open.to_string().contains("at capacity"), "{open}");
        m.observe();
        let capacity = [("service", "capacity-slots"), ("state", "capacity")];
        assert_eq!(m.counter("circuit_breaker_rejections_total", &capacity), 1);
        let rejected = [("service", "capacity-slots"), ("status", "rejected")];
        assert_eq!(m.counter("circuit_breaker_requests_total", &rejected), 1);
        let gauge = |m: &Recorded, name| m.gauge(name, &[("service", "capacity-slots")]);

        // Dropping a call in flight gives its slot back.
        drop(first);
        m.observe();
        assert_eq!(gauge(&m, "circuit_breaker_in_flight"), 1.0);
        assert_eq!(gauge(&m, "circuit_breaker_capacity_utilization"), 0.5);
        let mut third = Box::pin(call(false));
        // A failed call gives it back too.
        gate.add_permits(2);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(matches!(second.as_mut().poll(&mut cx), Poll::Ready(Err(_))));
        assert!(matches!(third.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        m.observe();
        assert_eq!(gauge(&m, "circuit_breaker_in_flight"), 0.0);
        assert_eq!(gauge(&m, "circuit_breaker_capacity_utilization"), 0.0);

        // An open breaker refuses as open, not as full.
        layer.handle().force_open();
        let open = refusal(call(false).now_or_never().unwrap()).unwrap();
        assert!(!open.is_capacity());
        assert_eq!(open.state(), State::ForcedOpen);
    });
}

/// Disabled and MetricsOnly let every call pass, as their docs say: a call
/// that finds no slot free passes without one (a shadow refusal in
/// MetricsOnly), and gives nothing back when it ends.
#[test]
fn overrides_that_pass_everything_pass_over_the_limit() {
    let recorder = DebuggingRecorder::new();
    let mut m = Recorded::new(recorder.snapshotter());
    metrics::with_local_recorder(&recorder, || {
        let layer = CircuitBreakerLayer::builder()
            .name("capacity-modes")
            .max_concurrent_calls(1)
            .build()
            .unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let g = gate.clone();
        let mut svc = layer.layer(service_fn(move |_: ()| {
            let gate = g.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(())
            }
        }));
        let mut call = || {
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            svc.call(())
        };
        let shadow = [("service", "capacity-modes"), ("state", "metrics_only")];
        let in_flight = |m: &Recorded| {
            m.gauge(
                "circuit_breaker_in_flight",
                &[("service", "capacity-modes")],
            )
        };
        for (mode, shadow_refusals) in [(State::Disabled, 0), (State::MetricsOnly, 1)] {
            match mode {
                State::Disabled => layer.handle().disable(),
                _ => layer.handle().metrics_only(),
            }
            let holder = call();
            let over = call();
            let mut over = Box::pin(over);
            gate.add_permits(1);
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            assert!(
                matches!(over.as_mut().poll(&mut cx), Poll::Ready(Ok(()))),
                "{mode:?}: the call over the limit passes"
            );
            m.observe();
            // The call over the limit held no slot and gave none back.
            assert_eq!(in_flight(&m), 1.0, "{mode:?}");
            drop(holder);
            m.observe();
            assert_eq!(in_flight(&m), 0.0, "{mode:?}");
            assert_eq!(
                m.counter("circuit_breaker_rejections_total", &shadow),
                shadow_refusals
            );
        }
        // Back to normal: the limit refuses again.
        layer.handle().reset();
        let _holder = call();
        assert!(refusal(call().now_or_never().unwrap())
            .unwrap()
            .is_capacity());
    });
}

/// Breakers without a limit report no capacity series.
#[test]
fn no_limit_no_capacity_series() {
    let recorder = DebuggingRecorder::new();
    let m = {
        metrics::with_local_recorder(&recorder, || {
            let _layer = CircuitBreakerLayer::builder()
                .name("capacity-none")
                .build()
                .unwrap();
        });
        Recorded::new(recorder.snapshotter())
    };
    assert!(!m.has(
        "circuit_breaker_rejections_total",
        &[("service", "capacity-none"), ("state", "capacity")]
    ));
    assert!(!m.has("circuit_breaker_in_flight", &[("service", "capacity-none")]));
    let err = CircuitBreakerLayer::builder()
        .max_concurrent_calls(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_concurrent_calls");
}

/// The limit is per key in a keyed layer.
#[test]
fn keyed_breakers_have_a_limit_each() {
    let layer = CircuitBreakerLayer::builder()
        .max_concurrent_calls(1)
        .keyed(key_fn(|req: &(&'static str, bool)| Some(req.0.to_owned())))
        .build()
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let mut svc = layer.layer(service_fn(move |_: (&'static str, bool)| {
        let gate = g.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            Ok::<_, Infallible>(())
        }
    }));
    let mut call = |key| {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        svc.call((key, false))
    };
    let _a = call("a");
    let _b = call("b"); // another key: its own slot
    let refused = refusal(call("a").now_or_never().unwrap()).unwrap();
    assert!(refused.is_capacity());
    assert_eq!(refused.service(), "a");
}

/// `max_open_share(0.5)` with 10 failing keys: at most 5 refuse, the others
/// keep serving, and the held-back trips are counted.
#[test]
fn the_open_share_caps_refusing_keys() {
    let recorder = DebuggingRecorder::new();
    let mut m = Recorded::new(recorder.snapshotter());
    metrics::with_local_recorder(&recorder, || {
        let (clock, time) = Clock::manual();
        let layer = CircuitBreakerLayer::builder()
            .name("fleet")
            .clock(clock)
            .consecutive_failures(2)
            .keyed(key_fn(|req: &(String, bool)| Some(req.0.clone())))
            .max_open_share(0.5)
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let mut svc = layer.layer(service_fn(move |(_, fail): (String, bool)| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(())
                }
            }
        }));
        let mut send = |key: &str, fail| {
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            svc.call((key.to_owned(), fail)).now_or_never().unwrap()
        };
        let keys: Vec<String> = (0..10).map(|i| format!("fleet-{i}")).collect();
        for _ in 0..4 {
            for key in &keys {
                let _ = send(key, true);
            }
        }
        let refusing = keys
            .iter()
            .filter(|k| layer.handle(k).unwrap().state() == State::Open)
            .count();
        assert_eq!(refusing, 5);
        // The others still reach the upstream.
        let before = calls.load(Ordering::SeqCst);
        let served: Vec<_> = keys
            .iter()
            .filter(|k| refusal(send(k, false)).is_none())
            .collect();
        assert_eq!(served.len(), 5);
        assert_eq!(calls.load(Ordering::SeqCst) - before, 5);
        m.observe();
        assert_eq!(
            m.gauge("circuit_breaker_open_share", &[("service", "fleet")]),
            0.5
        );
        let held_back: Vec<u64> = keys
            .iter()
            .map(|k| {
                let labels = [("service", k.as_str()), ("reason", "consecutive_failures")];
                let name = "circuit_breaker_trips_suppressed_total";
                if m.has(name, &labels) {
                    m.counter(name, &labels)
                } else {
                    0
                }
            })
            .collect();
        // The five keys held Closed were each held back at least once.
        assert_eq!(
            held_back.iter().filter(|n| **n > 0).count(),
            5,
            "{held_back:?}"
        );

        // When refusing keys recover, held-back ones may open.
        time.advance(Duration::from_secs(60));
        for key in &keys {
            let _ = send(key, false); // probes succeed: the open ones close
        }
        for key in &keys[..] {
            let h = layer.handle(key).unwrap();
            if h.state() == State::HalfOpen {
                let _ = send(key, false);
                let _ = send(key, false);
            }
        }
        let open_now = keys
            .iter()
            .filter(|k| layer.handle(k).unwrap().state() == State::Open)
            .count();
        assert_eq!(open_now, 0);
        for _ in 0..2 {
            for key in &keys {
                let _ = send(key, true);
            }
        }
        let refusing = keys
            .iter()
            .filter(|k| layer.handle(k).unwrap().state() == State::Open)
            .count();
        assert_eq!(refusing, 5);
    });
    let err = CircuitBreakerLayer::builder()
        .keyed(key_fn(|_: &()| None::<String>))
        .max_open_share(1.5)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_open_share");
}

/// A streaming call holds its slot until its body ends or is dropped.
#[cfg(feature = "grpc")]
#[test]
fn a_body_holds_its_slot_until_dropped() {
    use tower_breaker::classify::GrpcClassifier;
    let layer = CircuitBreakerLayer::builder()
        .name("capacity-body")
        .classifier(GrpcClassifier::new())
        .max_concurrent_calls(1)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: ()| async {
        let body = http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0"));
        let res = http::Response::builder().header("content-type", "application/grpc");
        Ok::<_, Infallible>(res.body(body).unwrap())
    }));
    let response = svc.clone().oneshot(()).now_or_never().unwrap().unwrap();
    // The response is here, its body not read: the call is still in flight.
    let refused = refusal(svc.clone().oneshot(()).now_or_never().unwrap()).unwrap();
    assert!(refused.is_capacity());
    drop(response);
    assert!(svc.clone().oneshot(()).now_or_never().unwrap().is_ok());
}

/// An evicted key stops counting in the open share.
#[test]
fn evicted_keys_leave_the_open_share() {
    let (clock, time) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("fleet-evict")
        .clock(clock)
        .consecutive_failures(1)
        .keyed(key_fn(|req: &(String, bool)| Some(req.0.clone())))
        .max_open_share(0.5)
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|(_, fail): (String, bool)| async move {
        if fail {
            Err(std::io::Error::other("down"))
        } else {
            Ok(())
        }
    }));
    let mut send = |key: &str, fail| {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        svc.call((key.to_owned(), fail)).now_or_never().unwrap()
    };
    let _ = send("e-0", true); // 1 of 1 may open: at least one always may
    assert_eq!(layer.handle("e-0").unwrap().state(), State::Open);
    let _ = send("e-1", true); // 2 of 2 would be more than half
    assert_eq!(layer.handle("e-1").unwrap().state(), State::Closed);
    time.advance(Duration::from_secs(11));
    let _ = send("e-1", false); // a call sweeps the idle keys
    layer.evict_idle();
    assert!(layer.handle("e-0").is_none(), "e-0 idle, evicted");
    // e-0 no longer counts: e-1 (alone) may open.
    let _ = send("e-1", true);
    assert_eq!(layer.handle("e-1").unwrap().state(), State::Open);
}

/// The open-share gauge follows keys that join, not only transitions: one
/// open key among ten live ones is a share of 0.1.
#[test]
fn the_open_share_gauge_follows_keys_that_join() {
    let recorder = DebuggingRecorder::new();
    let mut m = Recorded::new(recorder.snapshotter());
    metrics::with_local_recorder(&recorder, || {
        let layer = CircuitBreakerLayer::builder()
            .name("fleet-joins")
            .consecutive_failures(1)
            .keyed(key_fn(|req: &(String, bool)| Some(req.0.clone())))
            .max_open_share(1.0)
            .build()
            .unwrap();
        let mut svc = layer.layer(service_fn(|(_, fail): (String, bool)| async move {
            if fail {
                Err(std::io::Error::other("down"))
            } else {
                Ok(())
            }
        }));
        let mut send = |key: &str, fail| {
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let _ = svc.call((key.to_owned(), fail)).now_or_never().unwrap();
        };
        send("k0", true);
        m.observe();
        assert_eq!(
            m.gauge("circuit_breaker_open_share", &[("service", "fleet-joins")]),
            1.0
        );
        for i in 1..10 {
            send(&format!("k{i}"), false);
        }
        m.observe();
        assert_eq!(
            m.gauge("circuit_breaker_open_share", &[("service", "fleet-joins")]),
            0.1
        );
    });
}

/// A state-change hook that panics while a call's outcome is recorded
/// unwinds through a call that is already finished: its slot goes back
/// once, and the limit still holds.
#[test]
fn a_panicking_hook_gives_a_slot_back_once() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let layer = CircuitBreakerLayer::builder()
        .name("capacity-hook-panic")
        .consecutive_failures(1)
        .max_concurrent_calls(2)
        .on_state_change(|change| {
            if change.to == State::Open {
                panic!("hook panics");
            }
        })
        .build()
        .unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (i, g) = (inside.clone(), gate.clone());
    let mut svc = layer.layer(service_fn(move |fail: bool| {
        let (inside, gate) = (i.clone(), g.clone());
        async move {
            if fail {
                return Err(std::io::Error::other("down"));
            }
            inside.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            inside.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    }));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let mut call = |fail| {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        svc.call(fail)
    };
    let mut held = Box::pin(call(false));
    assert!(held.as_mut().poll(&mut cx).is_pending());
    let mut failing = Box::pin(call(true));
    let unwound = catch_unwind(AssertUnwindSafe(|| failing.as_mut().poll(&mut cx)));
    assert!(unwound.is_err(), "the hook panicked");
    drop(failing);
    layer.handle().reset();
    // One slot is free, not two.
    let mut second = Box::pin(call(false));
    assert!(second.as_mut().poll(&mut cx).is_pending());
    let third = refusal(call(false).now_or_never().unwrap()).expect("refused");
    assert!(third.is_capacity());
    assert_eq!(inside.load(Ordering::SeqCst), 2);
}
