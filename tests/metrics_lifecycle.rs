//! The lifecycle of a series in the crate's Prometheus recorder: a gone
//! breaker's series leave the exposition after their expiry, a live one's
//! never do.
#![cfg(all(feature = "prometheus", feature = "http"))]

use std::collections::BTreeSet;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use http::Request;
use tower::{service_fn, BoxError, Layer, Service};
use tower_breaker::exporter::{MetricsHandle, RecorderBuilder};
use tower_breaker::keyed::ByAuthority;
use tower_breaker::{CircuitBreakerLayer, Clock};

const EXPIRY: Duration = Duration::from_secs(120);

fn call<S>(svc: &mut S, uri: &str)
where
    S: Service<Request<()>, Error = BoxError>,
{
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let _ = svc
        .call(Request::get(uri).body(()).unwrap())
        .now_or_never()
        .expect("ready at once");
}

/// The `service` values in the exposition that start with `prefix`.
fn services(handle: &MetricsHandle, prefix: &str) -> BTreeSet<String> {
    let text = handle.render();
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(rest) = line.split("service=\"").nth(1) {
            let value = rest.split('"').next().unwrap();
            if value.starts_with(prefix) {
                out.insert(value.to_owned());
            }
        }
    }
    out
}

/// The churn of FINDINGS.md: 20 waves of 100 new upstream keys, each wave
/// evicted before the next. The services in /metrics stay bounded by the
/// live keys plus those still inside their expiry, and all leave at the end.
#[test]
fn evicted_keys_leave_the_exposition() {
    let (clock, time) = Clock::manual();
    let (recorder, handle) = RecorderBuilder::new()
        .series_expiry(EXPIRY)
        .clock(clock.clone())
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        let layer = CircuitBreakerLayer::builder()
            .clock(clock)
            .keyed(ByAuthority)
            .max_keys(100)
            .idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut svc = layer.layer(service_fn(|_: Request<()>| async { Ok::<_, BoxError>(()) }));
        let mut most = 0;
        for wave in 0..20 {
            for key in 0..100 {
                call(&mut svc, &format!("http://churn-{wave}-{key}.test/"));
            }
            assert_eq!(layer.len(), 100);
            let seen = services(&handle, "churn-");
            // This wave's keys are live and shown.
            assert!((0..100).all(|k| seen.contains(&format!("churn-{wave}-{k}.test"))));
            most = most.max(seen.len());
            time.advance(Duration::from_secs(61));
            assert_eq!(layer.evict_idle(), 100);
            assert!(layer.is_empty());
            // A scrape every 61 s: gone keys stay at most the expiry plus
            // two sweeps (30 s each here), so at most 3 waves of 61 s.
            let seen = services(&handle, "churn-");
            let waves: BTreeSet<&str> = seen.iter().map(|s| s.split('-').nth(1).unwrap()).collect();
            assert!(waves.len() <= 4, "wave {wave}: {waves:?} still shown");
        }
        assert!(most <= 400, "at most {most} services shown");
        // With no new keys, everything leaves within the expiry and two sweeps.
        for _ in 0..4 {
            time.advance(Duration::from_secs(30));
            let _ = handle.render();
        }
        time.advance(Duration::from_secs(61));
        assert_eq!(services(&handle, "churn-"), BTreeSet::new());
        let (held, gone) = handle.breaker_series();
        assert_eq!(gone, 0, "{held} series held");
    });
}

/// A live breaker that nothing calls keeps every series, through many
/// expiry periods: alerts keep seeing its state.
#[test]
fn a_live_untouched_breaker_keeps_its_series() {
    let (clock, time) = Clock::manual();
    let (recorder, handle) = RecorderBuilder::new()
        .series_expiry(EXPIRY)
        .clock(clock.clone())
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        let _layer = CircuitBreakerLayer::builder()
            .name("quiet-live")
            .clock(clock)
            .build()
            .unwrap();
        let first = handle.render();
        let state = r#"circuit_breaker_state{service="quiet-live",state="closed"} 1"#;
        assert!(first.contains(state), "{first}");
        let lines = |text: &str| text.lines().filter(|l| l.contains("quiet-live")).count();
        for _ in 0..10 {
            time.advance(EXPIRY);
            let text = handle.render();
            assert!(text.contains(state), "{text}");
            assert_eq!(lines(&text), lines(&first));
        }
        assert_eq!(handle.breaker_series().1, 0, "nothing is marked gone");
    });
}

/// A dropped breaker's series leave after the expiry; a name taken again
/// before then keeps them, and its counters continue.
#[test]
fn a_dropped_breaker_goes_and_a_returning_one_continues() {
    let (clock, time) = Clock::manual();
    let (recorder, handle) = RecorderBuilder::new()
        .series_expiry(EXPIRY)
        .clock(clock.clone())
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        let build = |name: &str| {
            let layer = CircuitBreakerLayer::builder()
                .name(name)
                .clock(clock.clone())
                .build()
                .unwrap();
            let mut svc = layer.layer(service_fn(|_: Request<()>| async { Ok::<_, BoxError>(()) }));
            call(&mut svc, "http://x.test/");
            svc
        };
        let requests = |name: &str| {
            let series =
                format!("circuit_breaker_requests_total{{service=\"{name}\",status=\"success\"}} ");
            handle
                .render()
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_owned))
        };
        drop(build("gone-for-good"));
        drop(build("back-soon"));
        assert_eq!(requests("gone-for-good").as_deref(), Some("1"));
        time.advance(Duration::from_secs(60));
        let back = build("back-soon");
        assert_eq!(requests("back-soon").as_deref(), Some("2"), "continues");
        for _ in 0..6 {
            time.advance(Duration::from_secs(30));
            let _ = handle.render();
        }
        assert_eq!(requests("gone-for-good"), None, "expired");
        assert_eq!(requests("back-soon").as_deref(), Some("2"));
        drop(back);
    });
}

#[test]
fn series_expiry_is_validated() {
    for bad in [Duration::ZERO, Duration::from_secs(86_401)] {
        let err = RecorderBuilder::new()
            .series_expiry(bad)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("series_expiry"), "{err}");
    }
    let err = RecorderBuilder::new()
        .duration_buckets(&[1.0, 0.5])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("duration_buckets"), "{err}");
    let err = RecorderBuilder::new()
        .global_label("bad-name", "x")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("global_label"), "{err}");
}
