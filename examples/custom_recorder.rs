//! Swap Prometheus for another `metrics` recorder.
//!
//! ```sh
//! cargo run --example custom_recorder
//! ```
//!
//! The breaker only speaks the `metrics` facade, so any recorder collects its
//! signals: here metrics-util's `DebuggingRecorder`, installed as the global
//! recorder *after* the layer was built (the breaker picks it up on the next
//! call). The example trips the breaker, lets the open duration pass on a
//! manual clock, recovers, and prints every series the recorder saw.
//! Expect `circuit_breaker_state{state="closed"} = 1`, a transitions counter
//! for closed -> open -> half_open -> closed, and rejected requests.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower::BoxError> {
    let (clock, time) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("ledger")
        .clock(clock)
        .consecutive_failures(3)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(5)))
        .build()?;

    // Installed after the layer was built: the breaker notices on its next call.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    let mut svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err(std::io::Error::other("ledger unavailable"))
        } else {
            Ok("booked")
        }
    }));
    for fail in [true, true, true, false, false] {
        let result = svc.ready().await?.call(fail).await;
        println!("call(fail = {fail}) -> {result:?}");
    }
    time.advance(Duration::from_secs(5));
    println!("after 5 s: {:?}", svc.ready().await?.call(false).await);
    println!("state: {:?}\n", layer.handle().state());

    let mut series: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _unit, _help, value)| {
            let value = match value {
                DebugValue::Counter(v) => v.to_string(),
                DebugValue::Gauge(v) => v.to_string(),
                DebugValue::Histogram(v) => format!("{} samples", v.len()),
            };
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
                .collect();
            format!("{}{{{}}} = {value}", key.name(), labels.join(","))
        })
        .collect();
    series.sort();
    for line in series {
        println!("{line}");
    }
    Ok(())
}
