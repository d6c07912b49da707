//! Integration tests for `tower_breaker::exporter` over real HTTP on 127.0.0.1.
#![cfg(feature = "prometheus")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_breaker::exporter::{
    self, ExporterError, MetricsEndpoint, MetricsEndpointBuilder, ServingEndpoint,
};

/// Bound on every network operation in these tests.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const TOKEN: &str = "t0ps3cret-t0ps3cret";
const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .expect("I/O timed out")
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole reply.
async fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    bounded(stream.write_all(head.as_bytes()))
        .await
        .expect("write");
    let mut raw = Vec::new();
    bounded(stream.read_to_end(&mut raw)).await.expect("read");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8(raw.to_vec()).expect("utf-8 reply");
    let (head, body) = text.split_once("\r\n\r\n").expect("complete head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A handle whose rendering contains `exporter_test_total 3`.
fn handle_with_counter() -> tower_breaker::exporter::MetricsHandle {
    let (recorder, handle) = exporter::recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("exporter_test_total").increment(3);
    });
    handle
}

fn builder() -> MetricsEndpointBuilder {
    MetricsEndpoint::builder(handle_with_counter()).bind(LOCAL)
}

async fn serve(builder: MetricsEndpointBuilder) -> ServingEndpoint {
    builder
        .build()
        .expect("valid config")
        .serve()
        .await
        .expect("serve")
}

fn auth() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

#[tokio::test]
async fn authorised_scrape_returns_metrics() {
    let ep = serve(builder().bearer_token(TOKEN)).await;
    let (name, value) = auth();
    let reply = request(ep.local_addr(), "GET", "/metrics", &[(name, &value)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        reply.body.contains("exporter_test_total 3"),
        "{}",
        reply.body
    );
    ep.shutdown().await;
}

#[tokio::test]
async fn no_auth_configured_on_loopback_serves_metrics() {
    let ep = serve(builder()).await;
    let reply = request(ep.local_addr(), "GET", "/metrics", &[]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("exporter_test_total 3"));
    ep.shutdown().await;
}

#[tokio::test]
async fn head_returns_headers_and_renders_nothing() {
    let renders = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = renders.clone();
    let route: exporter::RouteHandler = Arc::new(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        "x".to_owned()
    });
    let ep = serve(
        builder()
            .bearer_token(TOKEN)
            .route("/counted", "text/plain", route),
    )
    .await;
    let (name, value) = auth();
    for path in ["/metrics", "/counted"] {
        let reply = request(ep.local_addr(), "HEAD", path, &[(name, &value)]).await;
        assert_eq!(reply.status, 200);
        assert!(reply.body.is_empty(), "{reply:?}");
        assert!(reply.header("content-type").is_some(), "{reply:?}");
        // Nothing was rendered, so no length is claimed.
        assert_eq!(reply.header("content-length"), None, "{reply:?}");
    }
    assert_eq!(renders.load(std::sync::atomic::Ordering::SeqCst), 0);
    let reply = request(ep.local_addr(), "GET", "/counted", &[(name, &value)]).await;
    assert_eq!(reply.body, "x");
    assert_eq!(renders.load(std::sync::atomic::Ordering::SeqCst), 1);
    ep.shutdown().await;
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_without_metrics() {
    let ep = serve(builder().bearer_token(TOKEN)).await;
    let addr = ep.local_addr();
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "Bearer t0ps3cre")],
        vec![("Authorization", "Basic dDBwczNjcmV0")],
        vec![("Authorization", TOKEN)],
    ] {
        let reply = request(addr, "GET", "/metrics", &headers).await;
        assert_eq!(reply.status, 401, "{headers:?}: {reply:?}");
        let challenge = reply.header("www-authenticate").expect("challenge");
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        assert!(!reply.body.contains("exporter_test_total"), "{reply:?}");
    }
    ep.shutdown().await;
}

#[tokio::test]
async fn peer_outside_allowlist_is_disconnected_without_metrics() {
    // Only the configuration mentions 10.0.0.0/8; all traffic stays on 127.0.0.1.
    let ep = serve(builder().allow_network("10.0.0.0/8").bearer_token(TOKEN)).await;
    let (name, value) = auth();
    // The allowlist is checked at accept, on the TCP peer address: the
    // connection is closed before any request is read, whatever the headers
    // say.
    let mut stream = bounded(TcpStream::connect(ep.local_addr())).await.unwrap();
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"
    );
    let _ = bounded(stream.write_all(head.as_bytes())).await;
    let mut reply = Vec::new();
    let _ = bounded(stream.read_to_end(&mut reply)).await;
    assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
    ep.shutdown().await;
}

#[tokio::test]
async fn peer_inside_allowlist_is_served() {
    let ep = serve(
        builder()
            .allow_network("10.0.0.0/8")
            .allow_network("127.0.0.0/8"),
    )
    .await;
    let reply = request(ep.local_addr(), "GET", "/metrics", &[]).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("exporter_test_total 3"));
    ep.shutdown().await;

    let ep = serve(builder().allow_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))).await;
    let reply = request(ep.local_addr(), "GET", "/metrics", &[]).await;
    assert_eq!(reply.status, 200);
    ep.shutdown().await;
}

#[tokio::test]
async fn post_is_405_and_unknown_path_is_404() {
    let ep = serve(builder().bearer_token(TOKEN)).await;
    let (name, value) = auth();
    let reply = request(ep.local_addr(), "POST", "/metrics", &[(name, &value)]).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    assert!(!reply.body.contains("exporter_test_total"));
    for path in ["/", "/metric", "/metrics/", "/other"] {
        let reply = request(ep.local_addr(), "GET", path, &[(name, &value)]).await;
        assert_eq!(reply.status, 404, "{path}");
    }
    // Query strings do not change the route.
    let reply = request(ep.local_addr(), "GET", "/metrics?x=1", &[(name, &value)]).await;
    assert_eq!(reply.status, 200);
    ep.shutdown().await;
}

#[tokio::test]
async fn custom_path_and_extra_route_behind_auth() {
    let graph: exporter::RouteHandler = Arc::new(|| "{\"edges\":[]}".to_owned());
    let ep = serve(builder().path("/prom").bearer_token(TOKEN).route(
        "/graph.json",
        "application/json",
        graph,
    ))
    .await;
    let (name, value) = auth();
    let reply = request(ep.local_addr(), "GET", "/graph.json", &[(name, &value)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.body, "{\"edges\":[]}");
    let reply = request(ep.local_addr(), "GET", "/graph.json", &[]).await;
    assert_eq!(reply.status, 401);
    assert!(!reply.body.contains("edges"));
    let reply = request(ep.local_addr(), "GET", "/prom", &[(name, &value)]).await;
    assert!(reply.body.contains("exporter_test_total 3"));
    let reply = request(ep.local_addr(), "GET", "/metrics", &[(name, &value)]).await;
    assert_eq!(reply.status, 404);
    ep.shutdown().await;
}

fn build_err(builder: MetricsEndpointBuilder) -> String {
    let err: ExporterError = builder.build().expect_err("config should be refused");
    err.to_string()
}

#[test]
fn build_rejects_bad_settings() {
    let handle = exporter::recorder().1;
    let b = || MetricsEndpoint::builder(handle.clone());
    assert!(build_err(b().bearer_token("")).contains("bearer_token"));
    assert!(build_err(b().bearer_token("a b")).contains("bearer_token"));
    let msg = build_err(b().allow_network("10.0.0/8"));
    assert!(
        msg.contains("allow_network") && msg.contains("10.0.0/8"),
        "{msg}"
    );
    assert!(build_err(b().allow_network("10.0.0.0/33")).contains("allow_network"));
    assert!(build_err(b().path("metrics")).contains("path"));
    assert!(build_err(b().path("")).contains("path"));
    let noop: exporter::RouteHandler = Arc::new(String::new);
    assert!(build_err(b().route("graph", "text/plain", noop.clone())).contains("route path"));
    assert!(build_err(b().route("/metrics", "text/plain", noop.clone())).contains("/metrics"));
    assert!(build_err(b().route("/g", "bad\ntype", noop)).contains("content_type"));
    assert!(build_err(b().max_connections(0)).contains("max_connections"));
    assert!(build_err(b().header_read_timeout(Duration::ZERO)).contains("header_read_timeout"));
    // Bounds are checked in build(), not found by a panic in every connection.
    assert!(build_err(b().header_read_timeout(Duration::MAX)).contains("header_read_timeout"));
    assert!(build_err(b().write_timeout(Duration::MAX)).contains("write_timeout"));
    assert!(build_err(b().connection_timeout(Duration::ZERO)).contains("connection_timeout"));
    assert!(build_err(b().max_connections_per_ip(0)).contains("max_connections_per_ip"));
    assert!(build_err(b().max_requests_per_connection(0)).contains("max_requests_per_connection"));
    assert!(
        build_err(b().auth_failure_limit(0, Duration::from_secs(1))).contains("auth_failure_limit")
    );
    assert!(build_err(b().auth_failure_limit(3, Duration::MAX)).contains("auth_failure_limit"));
    let msg = build_err(b().max_connections(usize::MAX));
    assert!(
        msg.contains("max_connections") && msg.contains("65536"),
        "{msg}"
    );
    let msg = build_err(b().redaction_key("short"));
    assert!(msg.contains("redaction_key"), "{msg}");
    // A short token can be guessed.
    let msg = build_err(b().bearer_token("x"));
    assert!(msg.contains("bearer_token") && msg.contains("16"), "{msg}");
    assert!(b().bearer_token("0123456789abcdef").build().is_ok());
    let err = b().path("x").build().unwrap_err();
    assert!(std::error::Error::source(&err).is_none());
}

#[test]
fn public_bind_requires_auth_or_explicit_opt_in() {
    let handle = exporter::recorder().1;
    let b = || MetricsEndpoint::builder(handle.clone());
    for addr in ["0.0.0.0:9464", "[::]:9464", "192.0.2.1:9464"] {
        let msg = build_err(b().bind(addr.parse().unwrap()));
        assert!(
            msg.contains("non-loopback") && msg.contains("allow_insecure_public_bind"),
            "{msg}"
        );
    }
    let public: SocketAddr = "0.0.0.0:9464".parse().unwrap();
    // Building never binds, so none of these touch the network.
    assert!(b().bind(public).bearer_token(TOKEN).build().is_ok());
    assert!(b().bind(public).allow_network("10.0.0.0/8").build().is_ok());
    // A catch-all network admits (nearly) everyone: no guard on its own.
    for catch_all in ["0.0.0.0/0", "::/0", "0.0.0.0/1", "::ffff:0:0/96"] {
        let msg = build_err(b().bind(public).allow_network(catch_all));
        assert!(msg.contains("catch-all"), "{msg}");
        let msg = build_err(
            b().bind(public)
                .allow_network("10.0.0.0/8")
                .allow_network(catch_all),
        );
        assert!(msg.contains("catch-all"), "{msg}");
        assert!(b()
            .bind(public)
            .allow_network(catch_all)
            .bearer_token(TOKEN)
            .build()
            .is_ok());
        assert!(b()
            .bind(public)
            .allow_network(catch_all)
            .allow_insecure_public_bind()
            .build()
            .is_ok());
    }
    assert!(b()
        .bind(public)
        .allow_insecure_public_bind()
        .build()
        .is_ok());
    assert!(b().bind("[::1]:0".parse().unwrap()).build().is_ok());
    assert!(b().build().is_ok(), "default bind is loopback");
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let ep = serve(builder()).await;
    let addr = ep.local_addr();
    assert_eq!(request(addr, "GET", "/metrics", &[]).await.status, 200);
    bounded(ep.shutdown()).await;
    let refused = bounded(TcpStream::connect(addr)).await;
    assert!(refused.is_err(), "listener still accepting after shutdown");
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let ep = serve(builder()).await;
    let mut stream = bounded(TcpStream::connect(ep.local_addr())).await.unwrap();
    bounded(stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut buf = [0_u8; 1024];
    let n = bounded(stream.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Idle connections are closed gracefully at once, not aborted after the 5 s drain timeout.
    tokio::time::timeout(Duration::from_secs(4), ep.shutdown())
        .await
        .expect("graceful shutdown of an idle connection");
    let mut rest = Vec::new();
    // The server closes the connection; read_to_end returns (or errors) instead of hanging.
    let _ = bounded(stream.read_to_end(&mut rest)).await;
}

#[tokio::test]
async fn drop_shuts_down() {
    let ep = serve(builder()).await;
    let addr = ep.local_addr();
    drop(ep);
    let refused = bounded(async {
        loop {
            match TcpStream::connect(addr).await {
                Err(_) => break,
                Ok(_) => tokio::task::yield_now().await,
            }
        }
    });
    refused.await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed() {
    let ep = serve(builder().max_connections(1)).await;
    let addr = ep.local_addr();
    // The first connection is served and kept alive, holding the only slot.
    let mut first = bounded(TcpStream::connect(addr)).await.unwrap();
    bounded(first.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut buf = [0_u8; 1024];
    let n = bounded(first.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The second is closed without a response.
    let mut second = bounded(TcpStream::connect(addr)).await.unwrap();
    let _ = bounded(second.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    let mut rest = Vec::new();
    let _ = bounded(second.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    drop(first);
    ep.shutdown().await;
}

#[tokio::test]
async fn slow_client_is_disconnected_by_header_timeout() {
    let ep = serve(builder().header_read_timeout(Duration::from_millis(200))).await;
    let mut stream = bounded(TcpStream::connect(ep.local_addr())).await.unwrap();
    bounded(stream.write_all(b"GET /metrics HTTP/1.1\r\n"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    // Never finishing the head: the server must close the connection, well before IO_TIMEOUT.
    let _ = bounded(stream.read_to_end(&mut rest)).await;
    assert!(!String::from_utf8_lossy(&rest).contains("exporter_test_total"));
    ep.shutdown().await;
}

#[test]
fn builder_uses_histogram_buckets() {
    let (recorder, handle) = exporter::recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::histogram!("circuit_breaker_request_duration_seconds").record(0.003);
        metrics::histogram!("circuit_breaker_recovery_duration_seconds").record(42.0);
    });
    let text = handle.render();
    assert!(
        text.contains("circuit_breaker_request_duration_seconds_bucket{le=\"0.005\"} 1"),
        "{text}"
    );
    assert!(text.contains("circuit_breaker_request_duration_seconds_bucket{le=\"0.0005\"} 0"));
    assert!(text.contains("circuit_breaker_recovery_duration_seconds_bucket{le=\"60\"} 1"));
    assert!(text.contains("circuit_breaker_recovery_duration_seconds_bucket{le=\"3600\"} 1"));
    assert!(
        !text.contains("quantile"),
        "summaries instead of histograms: {text}"
    );
    assert_eq!(exporter::DURATION_BUCKETS.first(), Some(&0.0005));
    assert_eq!(exporter::DURATION_BUCKETS.last(), Some(&30.0));
    assert_eq!(exporter::RECOVERY_BUCKETS.first(), Some(&1.0));
    assert_eq!(exporter::RECOVERY_BUCKETS.last(), Some(&3600.0));
}

/// The only test touching the global recorder.
#[tokio::test]
async fn install_sets_global_recorder_once() {
    let handle = exporter::install().expect("first install");
    metrics::counter!("exporter_install_total").increment(1);
    assert!(handle.render().contains("exporter_install_total 1"));
    let err = exporter::install().expect_err("second install");
    assert!(err.to_string().contains("already installed"), "{err}");
}
