//! With no recorder installed the breaker skips timing calls (nothing would
//! record the durations). A recorder of the user's own must never be taken
//! for that no-op one, even a zero-sized one, which has no address of its
//! own: its calls are timed and every duration reaches it.

#[path = "support/traffic.rs"]
mod traffic;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tower::Layer;
use tower_breaker::{CircuitBreakerLayer, Clock};

use traffic::{ms, send, upstream, Call, Sent};

static DURATIONS: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Keeps what it is given in statics: the recorder itself has no fields.
struct ZeroSized;

struct Kept(String);

impl HistogramFn for Kept {
    fn record(&self, value: f64) {
        DURATIONS.lock().unwrap().push((self.0.clone(), value));
    }
}

struct Requests;

impl metrics::CounterFn for Requests {
    fn increment(&self, value: u64) {
        REQUESTS.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, _: u64) {}
}

impl Recorder for ZeroSized {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let success = key
            .labels()
            .any(|l| l.key() == "status" && l.value() == "success");
        if key.name().ends_with("requests_total") && success {
            Counter::from_arc(Arc::new(Requests))
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Kept(key.name().to_string())))
    }
}

#[tokio::test]
async fn a_zero_sized_recorder_gets_every_duration() {
    assert_eq!(std::mem::size_of::<ZeroSized>(), 0);
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("zst")
        .clock(clock)
        .build()
        .unwrap();
    let svc = layer.layer(upstream(manual.clone()));
    // First with no recorder at all: the calls go untimed and unrecorded.
    assert_eq!(send(&svc, Call::Ok(ms(5))).await, Sent::Ok);

    // Then globally, as an application would install it.
    metrics::set_global_recorder(ZeroSized).unwrap();
    for d in [3, 7] {
        assert_eq!(send(&svc, Call::Ok(ms(d))).await, Sent::Ok);
    }
    assert_eq!(REQUESTS.load(Ordering::Relaxed), 2);
    let durations: Vec<f64> = DURATIONS
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, _)| name == "circuit_breaker_request_duration_seconds")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(durations, [0.003, 0.007]);
}
