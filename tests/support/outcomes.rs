//! What a breaker's metrics recorded of each call's outcome, for the
//! classification tests.
#![allow(dead_code)]

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower_breaker::Outcome;

/// What the breaker's metrics recorded for calls made by `run`: the
/// `status` of `requests_total`, and for failures the `kind`, as
/// `"success"`, `"ignored"` or `"failure:<kind>"`.
pub fn recorded(run: impl FnOnce()) -> Vec<String> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, run);
    let mut seen = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let DebugValue::Counter(n) = value else {
            continue;
        };
        if n == 0 {
            continue;
        }
        let key = key.key();
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        match key.name() {
            "circuit_breaker_failures_total" => {
                seen.push(format!("failure:{}", label("kind").unwrap()))
            }
            "circuit_breaker_requests_total" => {
                if let Some(s @ ("success" | "ignored")) = label("status").as_deref() {
                    seen.push(s.to_owned())
                }
            }
            _ => {}
        }
    }
    seen.sort();
    seen
}

pub fn expected(outcome: Outcome) -> Vec<String> {
    vec![match outcome {
        Outcome::Failure(kind) => format!("failure:{kind}"),
        other => other.as_str().to_owned(),
    }]
}
