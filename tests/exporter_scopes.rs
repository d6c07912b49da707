//! Label-based authorization on the metrics endpoint: each credential sees
//! only its scope, over real HTTP on loopback. Each view's text is also
//! written to `target/metrics-sample-<view>.prom` for `promtool check
//! metrics` (see `.ci/run`).
#![cfg(feature = "prometheus")]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::{service_fn, Layer, ServiceExt};
use tower_breaker::exporter::{self, MetricsEndpoint, Scope, ServingEndpoint, View};
use tower_breaker::{CircuitBreakerLayer, FailureKind, Outcome};

const EVERYTHING: &str = "scopes-full-token-00001";
const PAYMENTS: &str = "scopes-payments-token-01";
const AGGREGATE: &str = "scopes-aggregate-token-1";
const REDACTED: &str = "scopes-redacted-token-01";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Services with names that keep every character a label may hold.
const SERVICES: [&str; 5] = [
    "payments-eu",
    "payments-us",
    "orders",
    "ledger.v2:8080",
    "a/b_c",
];

/// A name the label sanitizer changes (to `pay_ments-eu`): not `payments-*`.
const SANITIZED: &str = "pay ments-eu";

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Breakers for every service, with traffic: successes, failures of two
/// kinds, one trip; a dependency edge per service; an unrelated metric.
fn recorder_with_traffic() -> (
    tower_breaker::exporter::MetricsHandle,
    Vec<tower_breaker::CircuitBreakerHandle>,
) {
    let (recorder, handle) = exporter::recorder();
    let mut keep = Vec::new();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("unrelated_app_total").increment(7);
        // An application's series with a `service` label and a label that
        // names another service: only the everything scope sees it.
        metrics::counter!(
            "http_client_requests_total",
            "service" => "orders",
            "target" => "payments-eu.internal"
        )
        .increment(3);
        let odd = CircuitBreakerLayer::builder()
            .name(SANITIZED)
            .build()
            .unwrap();
        keep.push(odd.handle());
        for (i, name) in SERVICES.iter().enumerate() {
            let layer = CircuitBreakerLayer::builder()
                .name(*name)
                .caller(if i % 2 == 0 { "gateway" } else { "payments-eu" })
                .consecutive_failures(3)
                .classify_errors_with(|e| {
                    if e.to_string() == "slow" {
                        Outcome::Failure(FailureKind::TIMEOUT)
                    } else {
                        Outcome::Failure(FailureKind::ERROR)
                    }
                })
                .build()
                .unwrap();
            let svc = layer.layer(service_fn(|r: &'static str| async move {
                match r {
                    "ok" => Ok(()),
                    other => Err(std::io::Error::other(other)),
                }
            }));
            for r in ["ok", "ok", "slow", "bad"] {
                let _ = svc.clone().oneshot(r).now_or_never().unwrap();
            }
            if *name == "orders" {
                let _ = svc.clone().oneshot("bad").now_or_never().unwrap();
            }
            keep.push(layer.handle());
        }
    });
    (handle, keep)
}

async fn serve(handle: tower_breaker::exporter::MetricsHandle) -> ServingEndpoint {
    MetricsEndpoint::builder(handle)
        .bind("127.0.0.1:0".parse().unwrap())
        .bearer_token(EVERYTHING)
        .viewer(PAYMENTS, "services=payments-*".parse().unwrap())
        .viewer(AGGREGATE, Scope::all().with_view(View::Aggregate))
        .viewer(
            REDACTED,
            Scope::services(["payments-*", "orders"]).with_view(View::Redacted),
        )
        .redaction_key("fleet-wide secret")
        .dependency_routes()
        .route(
            "/legacy",
            "text/plain",
            std::sync::Arc::new(|| "legacy".to_owned()),
        )
        .build()
        .unwrap()
        .serve()
        .await
        .unwrap()
}

/// (name, labels) of every sample line, parsed the simple way the tests
/// can trust: the exporter writes no spaces inside label values here.
fn series(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect()
}

fn write_sample(view: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join(format!("metrics-sample-{view}.prom"));
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn each_credential_sees_only_its_scope() {
    let (handle, _breakers) = recorder_with_traffic();
    let ep = serve(handle).await;
    let addr = ep.local_addr();

    // Unknown token: 401. The plain token sees everything, unrelated too.
    assert_eq!(
        get(addr, "/metrics", Some("not-a-known-token-00")).await.0,
        401
    );
    let (status, everything) = get(addr, "/metrics", Some(EVERYTHING)).await;
    assert_eq!(status, 200);
    assert!(everything.contains("unrelated_app_total 7"));
    assert!(everything.contains("http_client_requests_total"));
    assert!(everything.contains("service=\"pay_ments-eu\""));
    for name in SERVICES {
        assert!(
            everything.contains(&format!("service=\"{name}\"")),
            "{name}"
        );
    }

    // Full view of payments-*: only those services, nothing unrelated.
    let (status, payments) = get(addr, "/metrics", Some(PAYMENTS)).await;
    assert_eq!(status, 200);
    write_sample("full", &payments);
    let seen: BTreeSet<String> = series(&payments)
        .iter()
        .flat_map(|(_, labels, _)| {
            ["service", "upstream"]
                .iter()
                .filter_map(|k| labels.get(*k).cloned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        seen,
        ["payments-eu", "payments-us"].map(String::from).into()
    );
    assert!(series(&payments)
        .iter()
        .all(|(_, labels, _)| labels.contains_key("service")));
    for hidden in [
        "orders",
        "ledger",
        "a/b_c",
        "unrelated",
        "gateway",
        "http_client",
        "pay_ments",
    ] {
        assert!(!payments.contains(hidden), "{hidden} leaked: {payments}");
    }
    // Its dependency graph: only payments-eu -> payments-us.
    let (status, json) = get(addr, "/dependencies.json", Some(PAYMENTS)).await;
    assert_eq!(status, 200);
    assert!(
        json.contains("\"payments-eu\"") && json.contains("\"payments-us\""),
        "{json}"
    );
    assert!(
        !json.contains("gateway") && !json.contains("orders"),
        "{json}"
    );
    // A route that knows no scope is refused to it.
    assert_eq!(get(addr, "/legacy", Some(PAYMENTS)).await.0, 403);
    assert_eq!(get(addr, "/legacy", Some(EVERYTHING)).await.1, "legacy");

    // Aggregate: no service label anywhere, totals over all services.
    let (status, aggregate) = get(addr, "/metrics", Some(AGGREGATE)).await;
    assert_eq!(status, 200);
    write_sample("aggregate", &aggregate);
    let samples = series(&aggregate);
    assert!(samples
        .iter()
        .all(|(_, l, _)| !l.contains_key("service") && !l.contains_key("upstream")));
    let value = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
    };
    assert_eq!(
        value("circuit_breaker_state", Some(("state", "open"))),
        Some(1.0)
    );
    assert_eq!(
        value("circuit_breaker_state", Some(("state", "closed"))),
        Some(5.0)
    );
    assert_eq!(
        value(
            "circuit_breaker_requests_total",
            Some(("status", "success"))
        ),
        Some(10.0)
    );
    assert_eq!(
        value(
            "circuit_breaker_requests_total",
            Some(("status", "failure"))
        ),
        Some(11.0)
    );
    // The error rate is the totals' ratio: 11 failures in 21 judged calls.
    let rate = value("circuit_breaker_error_rate", None).unwrap();
    assert!((rate - 11.0 / 21.0).abs() < 1e-9, "{rate}");
    assert_eq!(
        get(addr, "/dependencies.json", Some(AGGREGATE)).await.0,
        403
    );

    // Redacted: no real name anywhere, kinds collapsed, no edges.
    let (status, redacted) = get(addr, "/metrics", Some(REDACTED)).await;
    assert_eq!(status, 200);
    write_sample("redacted", &redacted);
    for name in SERVICES
        .iter()
        .chain(&["payments", "gateway", "ledger", "target", "http_client"])
    {
        assert!(!redacted.contains(name), "{name} leaked: {redacted}");
    }
    let samples = series(&redacted);
    let ids: BTreeSet<&String> = samples
        .iter()
        .filter_map(|(_, l, _)| l.get("service"))
        .collect();
    assert_eq!(ids.len(), 3, "payments-eu, payments-us, orders: {ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("svc-")));
    let kinds: BTreeSet<&String> = samples
        .iter()
        .filter_map(|(_, l, _)| l.get("kind"))
        .collect();
    assert_eq!(kinds, [&"error".to_owned()].into());
    assert!(samples.iter().all(|(_, l, _)| !l.contains_key("upstream")));
    // Stable: the same ids on the next scrape.
    let again = get(addr, "/metrics", Some(REDACTED)).await.1;
    let ids_again: BTreeSet<String> = series(&again)
        .into_iter()
        .filter_map(|(_, mut l, _)| l.remove("service"))
        .collect();
    assert_eq!(ids_again, ids.into_iter().cloned().collect());
    assert_eq!(get(addr, "/dependencies.dot", Some(REDACTED)).await.0, 403);

    ep.shutdown().await;
}
