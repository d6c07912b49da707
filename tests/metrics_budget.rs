//! The cardinality budget: how many series one breaker costs at each
//! metrics level, with classic and with native histograms. The README's
//! table says the same: a change that adds series must change both, on
//! purpose.
#![cfg(feature = "prometheus")]

use std::collections::BTreeSet;
use std::time::Duration;

use futures::FutureExt;
use tower::{Layer, Service, ServiceExt};
use tower_breaker::exporter::RecorderBuilder;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock, MetricsLevel};

/// (series with classic histograms, series with native histograms) of one
/// breaker: as built, and after successes, failures, a trip, a refusal
/// and a recovery.
fn budget(level: MetricsLevel, limit: Option<u32>) -> [(usize, usize); 2] {
    let (recorder, handle) = RecorderBuilder::new().build().unwrap();
    let name = format!("budget-{level:?}-{limit:?}")
        .to_lowercase()
        .replace(['(', ')'], "");
    let count = || {
        let text = handle.render();
        let mut classic = 0;
        let mut other = 0;
        let mut histograms = BTreeSet::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if !line.contains(&format!("service=\"{name}\"")) {
                continue;
            }
            classic += 1;
            let (series, _) = line.rsplit_once(' ').unwrap();
            let family = series.split('{').next().unwrap();
            match ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| family.strip_suffix(s))
            {
                // One native series per histogram and label set.
                Some(histogram) if family.contains("_seconds") => {
                    let labels = series.split('{').nth(1).unwrap_or("");
                    let labels: Vec<&str> = labels
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|l| !l.starts_with("le="))
                        .collect();
                    histograms.insert(format!("{histogram}{labels:?}"));
                }
                _ => other += 1,
            }
        }
        (classic, other + histograms.len())
    };
    let (clock, time) = Clock::manual();
    metrics::with_local_recorder(&recorder, || {
        let builder = CircuitBreakerLayer::builder()
            .name(&name)
            .clock(clock)
            .metrics_level(level)
            .consecutive_failures(2)
            .half_open_permits(1)
            .open_duration(Backoff::fixed(Duration::from_secs(1)));
        let builder = match limit {
            Some(n) => builder.max_concurrent_calls(n),
            None => builder,
        };
        let layer = builder.build().unwrap();
        let built = count();
        let mut svc = layer.layer(tower::service_fn(|fail: bool| async move {
            if fail {
                Err(std::io::Error::other("down"))
            } else {
                Ok(())
            }
        }));
        let mut send = |fail| {
            let ready = svc.ready().now_or_never().unwrap();
            if let Ok(ready) = ready {
                let _ = ready.call(fail).now_or_never().unwrap();
            }
        };
        // Success, two failures (a trip), a refusal, then a recovery.
        for fail in [false, true, true, false] {
            send(fail);
        }
        time.advance(Duration::from_secs(1));
        send(false);
        [built, count()]
    })
}

#[test]
fn series_per_breaker_at_each_level() {
    let got: Vec<_> = [
        MetricsLevel::Minimal,
        MetricsLevel::Standard,
        MetricsLevel::Full,
    ]
    .into_iter()
    .map(|level| (level, budget(level, None)))
    .collect();
    for (level, [built, used]) in &got {
        println!("{level:?}: built {built:?}, after traffic {used:?}");
    }
    // (classic, native), as built and after traffic. Keep README.md's
    // "Cardinality budget" table in step.
    let expected = [
        (MetricsLevel::Minimal, [(15, 15), (15, 15)]),
        (MetricsLevel::Standard, [(36, 23), (37, 24)]),
        (MetricsLevel::Full, [(90, 26), (91, 27)]),
    ];
    assert_eq!(got, expected);
}

/// A concurrency limit adds its two gauges and the capacity refusals'
/// counter, at Standard and above (with the other refusals by state).
#[test]
fn a_concurrency_limit_adds_its_series() {
    let got: Vec<_> = [
        MetricsLevel::Minimal,
        MetricsLevel::Standard,
        MetricsLevel::Full,
    ]
    .into_iter()
    .map(|level| (level, budget(level, Some(8))))
    .collect();
    for (level, [built, used]) in &got {
        println!("{level:?} with a limit: built {built:?}, after traffic {used:?}");
    }
    let expected = [
        (MetricsLevel::Minimal, [(15, 15), (15, 15)]),
        (MetricsLevel::Standard, [(39, 26), (40, 27)]),
        (MetricsLevel::Full, [(93, 29), (94, 30)]),
    ];
    assert_eq!(got, expected);
}
