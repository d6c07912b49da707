//! The metrics endpoint against hostile clients, over real sockets on
//! loopback. The hostile clients connect from 127.0.0.2 (still loopback on
//! Linux), the scraper from 127.0.0.1, so per-peer limits tell them apart.
//! Every wait is bounded.
#![cfg(feature = "prometheus")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tower_breaker::exporter::{self, MetricsEndpoint, MetricsEndpointBuilder, ServingEndpoint};

const TOKEN: &str = "hostile-test-token-0123";
const SCRAPER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Bound on any single network wait.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn builder() -> MetricsEndpointBuilder {
    let (recorder, handle) = exporter::recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("hostile_test_total").increment(1);
    });
    MetricsEndpoint::builder(handle).bind(SocketAddr::new(SCRAPER, 0))
}

async fn serve(builder: MetricsEndpointBuilder) -> ServingEndpoint {
    builder.build().unwrap().serve().await.unwrap()
}

/// A connection from `from` to `to`.
async fn connect(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    tokio::time::timeout(IO_TIMEOUT, socket.connect(to))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// One request with `Connection: close`; the status, or `None` if the
/// server closed the connection without answering.
async fn status(from: IpAddr, to: SocketAddr, path: &str, token: Option<&str>) -> Option<u16> {
    let mut stream = connect(from, to).await;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut reply))
        .await
        .expect("read timed out");
    let text = String::from_utf8_lossy(&reply);
    text.split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// One request with `Connection: close`; the whole reply as text.
async fn raw(from: IpAddr, to: SocketAddr, path: &str, token: Option<&str>) -> String {
    let mut stream = connect(from, to).await;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut reply))
        .await
        .expect("read timed out");
    String::from_utf8_lossy(&reply).into_owned()
}

/// Scrapes until the scraper is served, for at most `within`; how long it took.
async fn scraped_within(to: SocketAddr, token: Option<&str>, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if status(SCRAPER, to, "/metrics", token).await == Some(200) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the scraper was locked out for {within:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Opens `n` connections from the attacker that pipeline requests for a
/// large body and never read: the server's writes block.
async fn pipelining_attackers(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut stream = connect(ATTACKER, to).await;
        let auth = format!("Authorization: Bearer {TOKEN}\r\n");
        let one = format!("GET /big HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
        let _ = stream.write_all(one.repeat(50).as_bytes()).await;
        conns.push(stream);
    }
    conns
}

fn with_big_route(builder: MetricsEndpointBuilder) -> MetricsEndpointBuilder {
    let big: exporter::RouteHandler = Arc::new(|| "x".repeat(1 << 20));
    builder.route("/big", "text/plain", big)
}

/// Clients that pipeline requests and never read used to hold their slots
/// forever: with `max_connections` of them, the scraper was locked out.
/// A write that makes no progress now ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_lock_out_the_scraper() {
    let ep = serve(with_big_route(
        builder()
            .bearer_token(TOKEN)
            .max_connections(4)
            // One peer may take every slot: only the write timeout helps.
            .max_connections_per_ip(4)
            .write_timeout(Duration::from_millis(300)),
    ))
    .await;
    let addr = ep.local_addr();
    let _attackers = pipelining_attackers(addr, 4).await;
    let took = scraped_within(addr, Some(TOKEN), Duration::from_secs(5)).await;
    eprintln!("the scraper was served after {took:?}");
    ep.shutdown().await;
}

/// With the default per-peer cap, one peer cannot take every slot in the
/// first place: the scraper is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_slot() {
    let ep = serve(with_big_route(
        builder()
            .bearer_token(TOKEN)
            .max_connections(4)
            .max_connections_per_ip(2)
            // Only so that shutdown does not wait for the stuck writes.
            .write_timeout(Duration::from_millis(300)),
    ))
    .await;
    let addr = ep.local_addr();
    let _attackers = pipelining_attackers(addr, 4).await;
    assert_eq!(
        status(SCRAPER, addr, "/metrics", Some(TOKEN)).await,
        Some(200)
    );
    ep.shutdown().await;
}

/// Connections that never send a byte, from several peers, cannot take
/// every slot for long: when the endpoint is full, a newcomer closes the
/// oldest connection that has not authenticated. (Silent connections used
/// to hold their slots until the header timeout, and were renewed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_make_room_for_the_scraper() {
    let ep = serve(
        builder()
            .bearer_token(TOKEN)
            .max_connections(4)
            .max_connections_per_ip(2)
            .header_read_timeout(Duration::from_secs(30)),
    )
    .await;
    let addr = ep.local_addr();
    let mut silent = Vec::new();
    for peer in [ATTACKER, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))] {
        for _ in 0..2 {
            silent.push(connect(peer, addr).await);
        }
    }
    // Every slot is taken by a connection that said nothing; the scraper is
    // served anyway, and again.
    for _ in 0..3 {
        assert_eq!(
            status(SCRAPER, addr, "/metrics", Some(TOKEN)).await,
            Some(200)
        );
    }
    ep.shutdown().await;
}

/// A connection that lives past `connection_timeout` is closed after its
/// current response, even while it keeps sending requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_after_their_lifetime() {
    let ep = serve(
        builder()
            .connection_timeout(Duration::from_millis(300))
            .max_requests_per_connection(1_000_000),
    )
    .await;
    // Timed from before the connection: the server's clock starts at accept.
    let started = Instant::now();
    let mut stream = connect(SCRAPER, ep.local_addr()).await;
    let mut served = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
        match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => served += 1,
            Err(_) => panic!("read timed out"),
        }
        assert!(
            started.elapsed() < IO_TIMEOUT,
            "the connection was never closed"
        );
    }
    assert!(served >= 1);
    assert!(
        // Not closed early (by the request cap, say): it lived its 300 ms.
        started.elapsed() >= Duration::from_millis(290),
        "closed after {:?}, before its lifetime",
        started.elapsed()
    );
    ep.shutdown().await;
}

/// At most `max_requests_per_connection` requests are answered on one
/// connection, however many are pipelined.
#[tokio::test]
async fn requests_per_connection_are_bounded() {
    let ep = serve(builder().max_requests_per_connection(3)).await;
    let mut stream = connect(SCRAPER, ep.local_addr()).await;
    let pipelined = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10);
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut reply))
        .await
        .expect("the connection must close after the third response")
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    ep.shutdown().await;
}

/// The allowlist is checked at accept: a peer outside it is disconnected at
/// once and takes no slot. (It used to be checked per request, so idle
/// connections from anywhere held slots until the header timeout.)
#[tokio::test]
async fn peers_outside_the_allowlist_take_no_slot() {
    let ep = serve(
        builder()
            .allow_ip(SCRAPER)
            .max_connections(1)
            .header_read_timeout(Duration::from_secs(30)),
    )
    .await;
    let addr = ep.local_addr();
    let mut outsiders = Vec::new();
    for _ in 0..5 {
        let mut stream = connect(ATTACKER, addr).await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("an outsider is disconnected at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        outsiders.push(stream);
    }
    assert_eq!(status(SCRAPER, addr, "/metrics", None).await, Some(200));
    ep.shutdown().await;
}

/// A peer that keeps failing authentication is refused for a while, with
/// `429` and then at accept; other peers are not affected.
#[tokio::test]
async fn failed_authentication_is_limited_per_peer() {
    let ep = serve(
        builder()
            .bearer_token(TOKEN)
            .auth_failure_limit(3, Duration::from_secs(60)),
    )
    .await;
    let addr = ep.local_addr();
    let wrong = Some("wrong-token-wrong-token");
    assert_eq!(status(ATTACKER, addr, "/metrics", wrong).await, Some(401));
    // No credential at all guesses nothing: 401, not counted.
    for _ in 0..5 {
        assert_eq!(status(ATTACKER, addr, "/metrics", None).await, Some(401));
    }
    assert_eq!(status(ATTACKER, addr, "/metrics", wrong).await, Some(401));
    // The third wrong token blocks the peer: 429 with Retry-After, answered
    // only after a pause (the tarpit), so guesses come slowly.
    let started = Instant::now();
    let reply = raw(ATTACKER, addr, "/metrics", wrong).await;
    assert!(reply.starts_with("HTTP/1.1 429"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("retry-after: 60"),
        "{reply}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // A valid credential is still served, even from the blocked peer: a
    // neighbour's guesses cannot lock a scraper out.
    assert_eq!(
        status(ATTACKER, addr, "/metrics", Some(TOKEN)).await,
        Some(200)
    );
    assert_eq!(
        status(SCRAPER, addr, "/metrics", Some(TOKEN)).await,
        Some(200)
    );
    ep.shutdown().await;
}

/// Counts the events whose message contains a phrase.
struct Counting {
    phrase: &'static str,
    seen: Arc<AtomicUsize>,
}

struct MessageVisitor<'a> {
    phrase: &'a str,
    hit: bool,
}

impl tracing::field::Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}").contains(self.phrase) {
            self.hit = true;
        }
    }
}

impl tracing::Subscriber for Counting {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut visitor = MessageVisitor {
            phrase: self.phrase,
            hit: false,
        };
        event.record(&mut visitor);
        if visitor.hit {
            self.seen.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The "busy" line is written at most once per 10 s however many
/// connections are turned away, so a flood cannot flood the logs.
#[tokio::test]
async fn the_busy_log_line_is_throttled() {
    let seen = Arc::new(AtomicUsize::new(0));
    let subscriber = Counting {
        phrase: "busy",
        seen: seen.clone(),
    };
    let _guard = tracing::subscriber::set_default(subscriber);
    let ep = serve(builder().max_connections(1)).await;
    let addr = ep.local_addr();
    let mut holder = connect(SCRAPER, addr).await;
    holder
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(IO_TIMEOUT, holder.read(&mut buf)).await;
    for _ in 0..30 {
        let mut turned_away = connect(ATTACKER, addr).await;
        let _ = tokio::time::timeout(IO_TIMEOUT, turned_away.read(&mut buf)).await;
    }
    // At most one (a thread-local subscriber may miss events when another
    // test's thread caches a callsite's interest meanwhile: never more).
    let lines = seen.load(Ordering::Relaxed);
    assert!(lines <= 1, "{lines} busy lines for 30 refusals");
    drop(holder);
    ep.shutdown().await;
}
