//! HTTP classification through a real breaker: every status, Retry-After,
//! error closures.
#![cfg(feature = "http")]

#[path = "support/outcomes.rs"]
mod outcomes;
use outcomes::{expected, recorded};

use std::convert::Infallible;
use std::fmt;
use std::time::{Duration, SystemTime};

use futures::executor::block_on;
use http::{Response, StatusCode};
use tower::{service_fn, Layer, ServiceExt};
use tower_breaker::classify::{Classify, HttpClassifier};
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock, FailureKind, Outcome, State};

/// One call through a breaker with `classifier`, answered with `status`.
fn call_with(classifier: HttpClassifier, status: u16) -> Vec<String> {
    recorded(|| {
        let layer = CircuitBreakerLayer::builder()
            .name("http-table")
            .classifier(classifier)
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(move |_: ()| async move {
            Ok::<_, Infallible>(Response::builder().status(status).body(()).unwrap())
        }));
        block_on(svc.oneshot(())).unwrap();
    })
}

#[test]
fn default_table_every_status() {
    for code in 100..=599u16 {
        let want = match code {
            429 => Outcome::Failure(FailureKind::HTTP_429),
            500..=599 => Outcome::Failure(FailureKind::HTTP_5XX),
            _ => Outcome::Success,
        };
        let status = StatusCode::from_u16(code).unwrap();
        assert_eq!(
            HttpClassifier::new().classify_status(status),
            want,
            "{code}"
        );
        assert_eq!(
            call_with(HttpClassifier::new(), code),
            expected(want),
            "{code}"
        );
    }
}

#[test]
fn configured_table_by_class() {
    let classifier = HttpClassifier::new()
        .failure_statuses(400..500)
        .ignored_statuses(404..=404)
        .success_statuses(503..=503)
        .failure_statuses(301..=301);
    let table = [
        (100, Outcome::Success),
        (200, Outcome::Success),
        (204, Outcome::Success),
        (301, Outcome::Failure(FailureKind::custom("http_3xx"))),
        (302, Outcome::Success),
        (400, Outcome::Failure(FailureKind::HTTP_4XX)),
        (404, Outcome::Ignored),
        (429, Outcome::Failure(FailureKind::HTTP_429)),
        (499, Outcome::Failure(FailureKind::HTTP_4XX)),
        (500, Outcome::Failure(FailureKind::HTTP_5XX)),
        (503, Outcome::Success),
        (599, Outcome::Failure(FailureKind::HTTP_5XX)),
        (600, Outcome::Success),
        (999, Outcome::Success),
    ];
    for (code, want) in table {
        assert_eq!(call_with(classifier, code), expected(want), "{code}");
    }
}

/// A breaker that trips on the first failure and would stay open 5 s.
fn tripping(
    classifier: HttpClassifier,
) -> (
    CircuitBreakerLayer<HttpClassifier>,
    tower_breaker::ManualClock,
) {
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("http-retry-after")
        .consecutive_failures(1)
        .open_duration(Backoff::fixed(Duration::from_secs(5)))
        .retry_after_cap(Duration::from_secs(300))
        .clock(clock)
        .classifier(classifier)
        .build()
        .unwrap();
    (layer, manual)
}

async fn answer(
    layer: &CircuitBreakerLayer<HttpClassifier>,
    status: u16,
    retry_after: Option<String>,
) {
    let svc = layer.layer(service_fn(move |_: ()| {
        let retry_after = retry_after.clone();
        async move {
            let mut res = Response::builder().status(status);
            if let Some(value) = retry_after {
                res = res.header("retry-after", value);
            }
            Ok::<_, Infallible>(res.body(()).unwrap())
        }
    }));
    svc.oneshot(()).await.unwrap();
}

#[tokio::test]
async fn retry_after_seconds_extends_the_open_period() {
    let (layer, _) = tripping(HttpClassifier::new());
    answer(&layer, 503, Some("60".into())).await;
    let snap = layer.handle().snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(snap.open_remaining, Some(Duration::from_secs(60)));
}

#[tokio::test]
async fn retry_after_on_429_and_shorter_hints_keep_the_backoff() {
    let (layer, _) = tripping(HttpClassifier::new());
    answer(&layer, 429, Some("2".into())).await;
    // The hint only lengthens: the 5 s backoff wins.
    assert_eq!(
        layer.handle().snapshot().open_remaining,
        Some(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn retry_after_http_date_extends_the_open_period() {
    let (layer, _) = tripping(HttpClassifier::new());
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    answer(&layer, 503, Some(date)).await;
    let remaining = layer.handle().snapshot().open_remaining.unwrap();
    // The date has one-second resolution and the wall clock moves on.
    assert!(
        remaining > Duration::from_secs(110) && remaining <= Duration::from_secs(120),
        "{remaining:?}"
    );
}

#[tokio::test]
async fn retry_after_is_capped() {
    let (layer, _) = tripping(HttpClassifier::new());
    answer(&layer, 503, Some("86400".into())).await;
    assert_eq!(
        layer.handle().snapshot().open_remaining,
        Some(Duration::from_secs(300))
    );
}

#[tokio::test]
async fn retry_after_of_successes_garbage_or_disabled_is_not_used() {
    let (layer, _) = tripping(HttpClassifier::new());
    // A successful answer's header must not linger for the next trip.
    answer(&layer, 200, Some("60".into())).await;
    answer(&layer, 500, Some("soon".into())).await;
    assert_eq!(
        layer.handle().snapshot().open_remaining,
        Some(Duration::from_secs(5))
    );

    let (layer, _) = tripping(HttpClassifier::new().honor_retry_after(false));
    answer(&layer, 503, Some("60".into())).await;
    assert_eq!(
        layer.handle().snapshot().open_remaining,
        Some(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn failed_probe_reopens_for_the_retry_after() {
    let (layer, manual) = tripping(HttpClassifier::new());
    answer(&layer, 503, None).await;
    manual.advance(Duration::from_secs(5));
    answer(&layer, 503, Some("42".into())).await;
    let snap = layer.handle().snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(snap.open_remaining, Some(Duration::from_secs(42)));
}

#[derive(Debug)]
struct Overloaded;
impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("overloaded")
    }
}
impl std::error::Error for Overloaded {}

#[tokio::test]
async fn error_closure_sees_the_concrete_error() {
    let layer = CircuitBreakerLayer::builder()
        .name("http-error-closure")
        .classifier(HttpClassifier::new())
        .classify_errors_with(|e: &(dyn std::error::Error + 'static)| {
            if e.is::<Overloaded>() {
                Outcome::Ignored
            } else {
                Outcome::Failure(FailureKind::custom("other"))
            }
        })
        .build()
        .unwrap();
    let classifier_sees = |e: &(dyn std::error::Error + 'static)| {
        <HttpClassifier as Classify<Response<()>>>::classify_error(&HttpClassifier::new(), e)
    };
    // The HTTP classifier keeps the default error sorting.
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(
        classifier_sees(&refused),
        Outcome::Failure(FailureKind::CONNECT)
    );

    let svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err(Overloaded)
        } else {
            Ok(Response::new(()))
        }
    }));
    let recorder_view = recorded(|| {
        block_on(async {
            let err = svc.clone().oneshot(true).await.unwrap_err();
            assert!(err.is::<Overloaded>());
        })
    });
    // The layer was built outside the recorder scope; its handles follow
    // the local recorder, and the closure's verdict is what was recorded.
    assert_eq!(recorder_view, ["ignored"]);
    assert_eq!(layer.handle().snapshot().calls, 0);
}
