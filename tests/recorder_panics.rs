//! A recorder that panics while a call is finished: the breaker's judgment
//! survives it (a probe's permit is given back).

mod support;
use support::{call_at_once, fails_when_asked, trips_at_once};

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use futures::FutureExt;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tower::{Layer, Service, ServiceExt};
use tower_breaker::{CircuitOpen, Clock, State};

static ARMED: AtomicBool = AtomicBool::new(false);

struct Panicky;
impl CounterFn for Panicky {
    fn increment(&self, _: u64) {
        if ARMED.load(Ordering::SeqCst) {
            panic!("recorder panics");
        }
    }
    fn absolute(&self, _: u64) {}
}
impl GaugeFn for Panicky {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}
impl HistogramFn for Panicky {
    fn record(&self, _: f64) {}
}

struct PanickyRecorder;
impl Recorder for PanickyRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Panicky))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Panicky))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Panicky))
    }
}

/// A probe whose outcome the recorder panics on: the slot goes back (it
/// does), and the half-open permit must too, or the breaker stays
/// half-open refusing every call.
#[test]
fn a_recorder_panicking_on_a_probe_outcome_leaks_no_permit() {
    let recorder: &'static PanickyRecorder = Box::leak(Box::new(PanickyRecorder));
    metrics::with_local_recorder(recorder, || {
        let (clock, manual) = Clock::manual();
        let layer = trips_at_once("edge-recorder-probe", Duration::from_secs(1), clock)
            .max_concurrent_calls(1)
            .build()
            .unwrap();
        let mut svc = layer.layer(fails_when_asked());
        let _ = call_at_once(&mut svc, true);
        assert_eq!(layer.handle().state(), State::Open);
        manual.advance(Duration::from_secs(2));
        let ready = svc.ready().now_or_never().unwrap().unwrap();
        assert_eq!(layer.handle().state(), State::HalfOpen);
        ARMED.store(true, Ordering::SeqCst);
        let mut probe = Box::pin(ready.call(false));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let unwound = catch_unwind(AssertUnwindSafe(|| probe.as_mut().poll(&mut cx)));
        ARMED.store(false, Ordering::SeqCst);
        assert!(unwound.is_err(), "the recorder panicked");
        drop(probe);
        let snap = layer.handle().snapshot();
        // The probe's outcome is lost, but not its permit.
        assert_eq!(
            (snap.state, snap.half_open_probes),
            (State::HalfOpen, 0),
            "the probe's permit is still taken"
        );
        let next = call_at_once(&mut svc, false);
        if let Err(e) = &next {
            panic!("wedged: {:?}", e.downcast_ref::<CircuitOpen>());
        }
    });
}
