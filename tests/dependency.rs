//! Dependency edges, the graph dump, and a failure cascade through three
//! breaker-wrapped services in one process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_breaker::dependency::DependencyGraph;
use tower_breaker::{Backoff, CircuitBreakerLayer, CircuitOpen, Clock, State};

fn layer(name: &str, caller: &str, streak: u32, clock: &Clock) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .caller(caller)
        .consecutive_failures(streak)
        .open_duration(Backoff::fixed(std::time::Duration::from_secs(30)))
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// `client -> a -> b -> c`, each arrow a breaker. C fails; B answers its
/// callers with its own error (as over the wire: a 503, not C's error); A
/// passes its breaker's rejection on.
#[tokio::test]
async fn a_failure_cascade_shows_in_the_graph() {
    let (clock, _manual) = Clock::manual();
    let c_calls = Arc::new(AtomicUsize::new(0));
    let c = service_fn({
        let c_calls = c_calls.clone();
        move |_: ()| {
            c_calls.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>(std::io::Error::other("c is down")) }
        }
    });
    let b_to_c = layer("cascade-c", "cascade-b", 3, &clock).layer(c);
    let b = service_fn(move |_: ()| {
        let to_c = b_to_c.clone();
        async move {
            to_c.oneshot(())
                .await
                .map_err(|_| std::io::Error::other("b: 503 upstream unavailable"))
        }
    });
    let a_to_b = layer("cascade-b", "cascade-a", 3, &clock).layer(b);
    let a = service_fn(move |_: ()| {
        let to_b = a_to_b.clone();
        async move { to_b.oneshot(()).await }
    });
    let client_to_a = layer("cascade-a", "cascade-client", 10, &clock).layer(a);
    let a_handle = client_to_a.handle();

    let mut results = Vec::new();
    for _ in 0..10 {
        let r: Result<(), BoxError> = client_to_a.clone().oneshot(()).await;
        results.push(r);
    }
    // B's breaker to C opened after three failures: C was called three times.
    assert_eq!(c_calls.load(Ordering::Relaxed), 3);
    // A saw B fail three times (B's 503s), then its breaker to B opened and
    // A's callers got rejections naming B.
    let rejected: Vec<&CircuitOpen> = results
        .iter()
        .filter_map(|r| r.as_ref().err()?.downcast_ref::<CircuitOpen>())
        .collect();
    assert_eq!(rejected.len(), 7, "{results:?}");
    assert!(rejected
        .iter()
        .all(|e| e.service() == "cascade-b" && e.state() == State::Open));
    // The client's breaker to A counted B's three 503s, passed on by A, but
    // not the rejections: a nested breaker's refusal is not A's failure.
    assert_eq!(a_handle.state(), State::Closed);
    assert_eq!(a_handle.snapshot().consecutive_failures, 3);

    let graph = DependencyGraph::snapshot();
    let edge = |caller, upstream| graph.edge(caller, upstream).expect("edge");
    let bc = edge("cascade-b", "cascade-c");
    assert_eq!(
        (bc.state, bc.error_rate, bc.trip_risk),
        (State::Open, 1.0, 1.0)
    );
    let ab = edge("cascade-a", "cascade-b");
    assert_eq!((ab.state, ab.error_rate), (State::Open, 1.0));
    let ca = edge("cascade-client", "cascade-a");
    assert_eq!(
        (ca.state, ca.error_rate, ca.breakers),
        (State::Closed, 1.0, 1)
    );
    assert!((ca.trip_risk - 0.3).abs() < 1e-9, "3 of 10 in a row");

    let json = graph.to_json();
    for needle in [
        r#"{"caller":"cascade-a","upstream":"cascade-b","state":"open","error_rate":1,"trip_risk":1,"breakers":1}"#,
        r#"{"caller":"cascade-b","upstream":"cascade-c","state":"open","error_rate":1,"trip_risk":1,"breakers":1}"#,
        r#"{"caller":"cascade-client","upstream":"cascade-a","state":"closed","error_rate":1,"trip_risk":0.3"#,
    ] {
        assert!(json.contains(needle), "{needle} in {json}");
    }
    let dot = graph.to_dot();
    assert!(
        dot.contains(r#""cascade-b" -> "cascade-c" [label="open 100.0% errors", color=red"#),
        "{dot}"
    );
    assert!(dot
        .contains(r#""cascade-client" -> "cascade-a" [label="closed 100.0% errors", color=green"#));
}

#[cfg(feature = "prometheus")]
#[test]
fn an_edge_lives_as_long_as_its_breakers() {
    let (recorder, handle) = tower_breaker::exporter::recorder();
    let series = r#"circuit_breaker_dependency{service="life-gateway",upstream="life-orders"}"#;
    let value = || {
        let text = handle.render();
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .map(|v| v.trim().to_owned())
    };
    metrics::with_local_recorder(&recorder, || {
        let build = || {
            CircuitBreakerLayer::builder()
                .name("life-orders")
                .caller("life-gateway")
                .build()
                .unwrap()
        };
        let first = build();
        assert_eq!(value().as_deref(), Some("1"));
        let second = build();
        let graph = DependencyGraph::snapshot();
        assert_eq!(
            graph.edge("life-gateway", "life-orders").unwrap().breakers,
            2
        );
        assert!(graph.nodes().contains(&"life-gateway"));
        drop(first);
        let graph = DependencyGraph::snapshot();
        assert_eq!(
            graph.edge("life-gateway", "life-orders").unwrap().breakers,
            1
        );
        assert_eq!(value().as_deref(), Some("1"));
        drop(second);
        assert!(DependencyGraph::snapshot()
            .edge("life-gateway", "life-orders")
            .is_none());
        assert_eq!(value().as_deref(), Some("0"), "a gone edge reads 0");
    });
}

#[tokio::test(flavor = "current_thread")]
async fn a_late_recorder_gets_the_edge_and_the_state_shows() {
    use metrics_util::debugging::DebuggingRecorder;
    let layer = CircuitBreakerLayer::builder()
        .name("late-inventory")
        .caller("late-orders")
        .metrics_prefix("late")
        .build()
        .unwrap();
    let handle = layer.handle();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    svc.oneshot(()).await.unwrap();
    let found = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .any(|(k, ..)| {
            k.key().name() == "late_dependency"
                && k.key()
                    .labels()
                    .any(|l| l.key() == "service" && l.value() == "late-orders")
        });
    assert!(
        found,
        "the prefix applies and the late recorder gets the edge"
    );
    handle.force_open();
    let graph = DependencyGraph::snapshot();
    let edge = graph.edge("late-orders", "late-inventory").unwrap();
    assert_eq!((edge.state, edge.trip_risk), (State::ForcedOpen, 1.0));
    handle.disable();
    let graph = DependencyGraph::snapshot();
    let edge = graph.edge("late-orders", "late-inventory").unwrap();
    assert_eq!((edge.state, edge.trip_risk), (State::Disabled, 0.0));
}

#[test]
fn callers_are_checked_and_sanitized() {
    let err = CircuitBreakerLayer::builder()
        .caller(" ")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "caller");
    let _layer = CircuitBreakerLayer::builder()
        .name("sane-upstream")
        .caller("bad\"caller}")
        .build()
        .unwrap();
    let graph = DependencyGraph::snapshot();
    assert!(graph.edge("bad_caller_", "sane-upstream").is_some());
    // Without a caller (and no local service set in this process) no edge.
    let _plain = CircuitBreakerLayer::builder()
        .name("no-caller")
        .build()
        .unwrap();
    assert!(DependencyGraph::snapshot()
        .edges()
        .iter()
        .all(|e| e.upstream != "no-caller"));
}

#[cfg(feature = "prometheus")]
#[tokio::test]
async fn the_metrics_endpoint_serves_the_graph() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_breaker::exporter::MetricsEndpoint;

    let _layer = CircuitBreakerLayer::builder()
        .name("served-search")
        .caller("served-web")
        .build()
        .unwrap();
    let (_recorder, handle) = tower_breaker::exporter::recorder();
    let endpoint = MetricsEndpoint::builder(handle)
        .bind("127.0.0.1:0".parse().unwrap())
        .dependency_routes()
        .build()
        .unwrap()
        .serve()
        .await
        .unwrap();
    let addr = endpoint.local_addr();
    let get = |path: &'static str| async move {
        let io = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            let mut raw = String::new();
            stream.read_to_string(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), io)
            .await
            .expect("bounded")
            .expect("io")
    };
    let json = get("/dependencies.json").await;
    assert!(json.starts_with("HTTP/1.1 200"), "{json}");
    assert!(json
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    assert!(json.contains(r#"{"caller":"served-web","upstream":"served-search","state":"closed""#));
    let dot = get("/dependencies.dot").await;
    assert!(dot
        .to_ascii_lowercase()
        .contains("content-type: text/vnd.graphviz"));
    assert!(dot.contains(r#""served-web" -> "served-search""#), "{dot}");
    endpoint.shutdown().await;
}
