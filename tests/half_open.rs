//! Half-open probe limits under concurrency, and cancelled probes.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{send, Call, Upstream};
use tokio::sync::Notify;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_breaker::{Backoff, CircuitBreakerLayer, CircuitOpen, Clock, State};

fn layer(name: &str, permits: u32) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .clock(Clock::tokio())
        .consecutive_failures(1)
        .half_open_permits(permits)
        .open_duration(Backoff::fixed(Duration::from_secs(1)))
        .build()
        .unwrap()
}

/// An upstream whose calls park until released, counting calls in flight.
#[derive(Clone, Default)]
struct Gate {
    release: Arc<Notify>,
    /// Calls made (counted when `call` runs).
    called: Arc<AtomicUsize>,
    /// Calls whose future has started.
    entered: Arc<AtomicUsize>,
}

impl Gate {
    fn service(
        &self,
    ) -> impl Service<
        (),
        Response = (),
        Error = std::io::Error,
        Future = impl Future<Output = Result<(), std::io::Error>> + Send,
    > + Clone
           + Send {
        let gate = self.clone();
        tower::service_fn(move |()| {
            gate.called.fetch_add(1, Ordering::SeqCst);
            let gate = gate.clone();
            async move {
                gate.entered.fetch_add(1, Ordering::SeqCst);
                gate.release.notified().await;
                Ok(())
            }
        })
    }
}

async fn trip(layer: &CircuitBreakerLayer) {
    let mut svc = layer.layer(Upstream::default().service());
    send(&mut svc, Call::Fail).await;
    assert_eq!(layer.handle().state(), State::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn exactly_n_probes_under_concurrency() {
    let layer = layer("h-concurrent", 3);
    trip(&layer).await;
    let gate = Gate::default();
    let svc = layer.layer(gate.service());

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(()).await })
        })
        .collect();
    // Let every task reach the breaker.
    while gate.entered.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(gate.entered.load(Ordering::SeqCst), 3);
    assert_eq!(layer.handle().snapshot().half_open_probes, 3);
    gate.release.notify_waiters();

    let mut refused = 0;
    let mut passed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => passed += 1,
            Err(e) => {
                let open = e.downcast_ref::<CircuitOpen>().expect("a rejection");
                assert_eq!(open.state(), State::HalfOpen);
                refused += 1;
            }
        }
    }
    assert_eq!((passed, refused), (3, 97));
    assert_eq!(layer.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn probes_race_on_a_multi_threaded_runtime() {
    // Real threads: the permit count is one atomic word, so no interleaving
    // admits more than N.
    let layer = layer("h-threads", 4);
    let handle = layer.handle();
    handle.force_open();
    let gate = Gate::default();
    let svc = layer.layer(gate.service());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    for round in 0..20 {
        handle.force_closed();
        // Trip again with a failing call, then let time pass.
        let mut failing = layer.layer(Upstream::default().service());
        send(&mut failing, Call::Fail).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        // The paused clock is read from the runtime that runs the test: move
        // Open -> HalfOpen here, then race on the other runtime.
        send(&mut failing, Call::Ok).await;
        assert_eq!(handle.state(), State::HalfOpen, "round {round}");
        let called_before = gate.called.load(Ordering::SeqCst);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let mut svc = svc.clone();
                rt.spawn(async move {
                    let svc = svc.ready().await?;
                    Ok::<_, BoxError>(svc.call(()))
                })
            })
            .collect();
        let mut futures = Vec::new();
        for task in tasks {
            futures.push(task.await.unwrap().unwrap());
        }
        // One permit went to the success above; three are left.
        let admitted = gate.called.load(Ordering::SeqCst) - called_before;
        assert_eq!(admitted, 3, "round {round}");
        // Drop the probes unpolled.
        drop(futures);
        assert_eq!(
            handle.snapshot().half_open_probes,
            1,
            "dropped probes gave their permits back"
        );
    }
    rt.shutdown_background();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_returns_its_permit() {
    let layer = layer("h-drop", 1);
    trip(&layer).await;
    let gate = Gate::default();
    let mut svc = layer.layer(gate.service());
    let handle = layer.handle();

    let probe = svc.ready().await.unwrap().call(());
    let probe = tokio::spawn(probe);
    while gate.entered.load(Ordering::SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    assert_eq!(handle.snapshot().half_open_probes, 1);
    // The only permit is taken: the next call is refused.
    let mut other = svc.clone();
    let err = other.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());

    // Cancel the probe: its permit comes back, counted as ignored.
    probe.abort();
    let _ = probe.await;
    assert_eq!(handle.snapshot().half_open_probes, 0);
    assert_eq!(handle.state(), State::HalfOpen);
    let mut ok = layer.layer(Upstream::default().service());
    assert_eq!(send(&mut ok, Call::Ok).await, support::Seen::Ok);
    assert_eq!(handle.state(), State::Closed);
}

/// `poll_ready` takes no probe permit: `call` does. A service made ready
/// and then kept (or dropped, or unwrapped) without a call holds nothing,
/// so under the default configuration (no maximum half-open wait) it can
/// never wedge the breaker half-open. (It used to: the permit taken in
/// `poll_ready` stayed with the kept service, and every other caller was
/// refused for as long as it lived.)
#[tokio::test(start_paused = true)]
async fn a_ready_service_kept_without_call_holds_no_permit() {
    let layer = CircuitBreakerLayer::builder()
        .name("h-ready-kept")
        .clock(Clock::tokio())
        .consecutive_failures(1)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(1)))
        .build()
        .unwrap();
    trip(&layer).await;
    let handle = layer.handle();
    let mut kept = layer.layer(Upstream::default().service());
    kept.ready().await.unwrap();
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().half_open_probes, 0);

    // A day later, another caller still gets the probe and closes it.
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    let mut other = layer.layer(Upstream::default().service());
    assert_eq!(send(&mut other, Call::Ok).await, support::Seen::Ok);
    assert_eq!(handle.state(), State::Closed);

    // The kept service's call, long after, is judged in the breaker's
    // current state (Closed): it goes through.
    assert_eq!(send(&mut kept, Call::Ok).await, support::Seen::Ok);

    // Dropped or unwrapped after `poll_ready`, a service gives nothing back
    // because it took nothing.
    trip(&layer).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut svc = layer.layer(Upstream::default().service());
    svc.ready().await.unwrap();
    drop(svc);
    let mut svc = layer.layer(Upstream::default().service());
    svc.ready().await.unwrap();
    let _inner = svc.into_inner();
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().half_open_probes, 0);
}

/// The permit is taken at `call`: two services made ready in half-open with
/// one permit both pass `poll_ready`, and the second `call` is refused.
#[tokio::test(start_paused = true)]
async fn the_probe_permit_is_taken_at_call() {
    let layer = layer("h-permit-at-call", 1);
    trip(&layer).await;
    let gate = Gate::default();
    let mut first = layer.layer(gate.service());
    let mut second = layer.layer(gate.service());
    first.ready().await.unwrap();
    second.ready().await.unwrap();
    let probe = tokio::spawn(first.call(()));
    let err = second.call(()).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().state(),
        State::HalfOpen
    );
    assert_eq!(gate.called.load(Ordering::SeqCst), 1);
    gate.release.notify_waiters();
    while gate.entered.load(Ordering::SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    gate.release.notify_waiters();
    probe.await.unwrap().unwrap();
    assert_eq!(layer.handle().state(), State::Closed);
}
