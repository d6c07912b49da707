//! Prometheus export: a recorder preconfigured with histogram buckets, and a small,
//! secured HTTP endpoint that serves the scrape text.
//!
//! The endpoint is secure by default: it binds to loopback (`127.0.0.1:9464`), can require a
//! bearer token and/or restrict clients to IP networks, and refuses to start on a non-loopback
//! address with neither unless [`MetricsEndpointBuilder::allow_insecure_public_bind`] is called.
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_breaker::exporter::ExporterError> {
//! use tower_breaker::exporter::{install, MetricsEndpoint};
//!
//! let handle = install()?; // global recorder + upkeep task on this runtime
//! let endpoint = MetricsEndpoint::builder(handle)
//!     .bind("0.0.0.0:9464".parse().unwrap()) // public: needs a token or an allowlist
//!     .bearer_token("s3cret")
//!     .allow_network("10.0.0.0/8")
//!     .build()?
//!     .serve()
//!     .await?;
//! println!("scrape http://{}/metrics", endpoint.local_addr());
//! endpoint.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! On the Prometheus side, give the token with `authorization: { credentials_file: ... }` in
//! the scrape config. The client address checked against the allowlist is always the TCP
//! peer address; `X-Forwarded-For` and similar headers are ignored.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// Histogram buckets (seconds) for metrics ending in `request_duration_seconds`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Histogram buckets (seconds, 1 s to 1 h) for metrics ending in `recovery_duration_seconds`.
pub const RECOVERY_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// How often the task spawned by [`install`] calls [`PrometheusHandle::run_upkeep`].
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Default bind address of [`MetricsEndpoint`]: loopback only.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// Default cap on concurrent connections to [`MetricsEndpoint`]; further ones are closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Default time a client has to send a complete request head (also bounds idle keep-alive).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`ServingEndpoint::shutdown`] lets open connections finish before aborting them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the body of an extra route added with [`MetricsEndpointBuilder::route`].
pub type RouteHandler = Arc<dyn Fn() -> String + Send + Sync>;

/// Error from installing the recorder or building / starting a [`MetricsEndpoint`].
#[derive(Debug)]
pub struct ExporterError {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    RecorderInstalled,
    EmptyToken,
    InvalidToken,
    InvalidPath { field: &'static str, value: String },
    DuplicatePath(String),
    InvalidContentType { path: String },
    InvalidNetwork { value: String, reason: &'static str },
    InsecurePublicBind(SocketAddr),
    ZeroMaxConnections,
    ZeroHeaderReadTimeout,
    Bind { addr: SocketAddr, source: io::Error },
}

impl ExporterError {
    fn new(kind: ErrorKind) -> Self {
        Self { kind }
    }
}

impl fmt::Display for ExporterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::RecorderInstalled => {
                f.write_str("a global metrics recorder is already installed")
            }
            ErrorKind::EmptyToken => f.write_str("bearer_token must not be empty"),
            ErrorKind::InvalidToken => {
                f.write_str("bearer_token must be visible ascii without whitespace")
            }
            ErrorKind::InvalidPath { field, value } => {
                write!(
                    f,
                    "{field} must start with '/' and contain no whitespace, '?' or '#': {value:?}"
                )
            }
            ErrorKind::DuplicatePath(path) => write!(f, "route path {path:?} is already served"),
            ErrorKind::InvalidContentType { path } => {
                write!(
                    f,
                    "route content_type for {path:?} is not a valid header value"
                )
            }
            ErrorKind::InvalidNetwork { value, reason } => {
                write!(f, "invalid allow_network {value:?}: {reason}")
            }
            ErrorKind::InsecurePublicBind(addr) => write!(
                f,
                "refusing to bind metrics endpoint to non-loopback address {addr} without a \
                 bearer_token or an allowlist: anyone who can reach it could read the metrics; \
                 set one, or call allow_insecure_public_bind() to opt in"
            ),
            ErrorKind::ZeroMaxConnections => f.write_str("max_connections must be at least 1"),
            ErrorKind::ZeroHeaderReadTimeout => f.write_str("header_read_timeout must be non-zero"),
            ErrorKind::Bind { addr, .. } => write!(f, "failed to bind metrics endpoint to {addr}"),
        }
    }
}

impl std::error::Error for ExporterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Bind { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A [`PrometheusBuilder`] that renders true histograms (not summaries): [`DURATION_BUCKETS`]
/// for metrics ending in `request_duration_seconds` and [`RECOVERY_BUCKETS`] for metrics
/// ending in `recovery_duration_seconds`. Further settings can be chained before building.
pub fn prometheus_builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("request_duration_seconds".into()),
            DURATION_BUCKETS,
        )
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Suffix("recovery_duration_seconds".into()),
                RECOVERY_BUCKETS,
            )
        })
        .expect("bucket constants are non-empty")
}

/// Builds a recorder from [`prometheus_builder`] without installing it, e.g. for
/// [`metrics::with_local_recorder`] or tests. The caller is responsible for upkeep.
pub fn recorder() -> (PrometheusRecorder, PrometheusHandle) {
    let recorder = prometheus_builder().build_recorder();
    let handle = recorder.handle();
    (recorder, handle)
}

/// Builds the recorder from [`prometheus_builder`] and installs it as the global recorder.
///
/// If called inside a tokio runtime (`tokio::runtime::Handle::try_current()` is `Ok`), a task
/// is spawned on that runtime that calls [`PrometheusHandle::run_upkeep`] every
/// [`UPKEEP_INTERVAL`] (5 s) for as long as the runtime lives. Outside a runtime nothing is
/// spawned and the caller must call `run_upkeep` periodically itself.
///
/// # Errors
///
/// Fails if a global recorder is already installed.
pub fn install() -> Result<PrometheusHandle, ExporterError> {
    let (recorder, handle) = recorder();
    metrics::set_global_recorder(recorder)
        .map_err(|_| ExporterError::new(ErrorKind::RecorderInstalled))?;
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let upkeep = handle.clone();
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick completes immediately
            loop {
                ticks.tick().await;
                upkeep.run_upkeep();
            }
        });
    }
    Ok(handle)
}

/// A configured, not yet running, metrics HTTP endpoint. Start it with [`MetricsEndpoint::serve`].
#[derive(Debug)]
pub struct MetricsEndpoint {
    bind: SocketAddr,
    max_connections: usize,
    header_read_timeout: Duration,
    state: Arc<State>,
}

/// By-value builder for [`MetricsEndpoint`], from [`MetricsEndpoint::builder`].
///
/// Defaults: bind `127.0.0.1:9464`, path `/metrics`, no token, no allowlist,
/// [`DEFAULT_MAX_CONNECTIONS`], [`DEFAULT_HEADER_READ_TIMEOUT`].
#[must_use = "a builder does nothing until build() is called"]
pub struct MetricsEndpointBuilder {
    handle: PrometheusHandle,
    bind: SocketAddr,
    path: String,
    token: Option<String>,
    allow: Vec<IpNet>,
    routes: Vec<(String, String, RouteHandler)>,
    insecure_public_bind: bool,
    max_connections: usize,
    header_read_timeout: Duration,
    error: Option<ExporterError>,
}

impl MetricsEndpoint {
    /// Starts configuring an endpoint that serves `handle.render()`.
    pub fn builder(handle: PrometheusHandle) -> MetricsEndpointBuilder {
        MetricsEndpointBuilder {
            handle,
            bind: DEFAULT_BIND,
            path: "/metrics".to_owned(),
            token: None,
            allow: Vec::new(),
            routes: Vec::new(),
            insecure_public_bind: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            error: None,
        }
    }

    /// Binds the listener and spawns the server on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// Fails if the address cannot be bound.
    ///
    /// # Panics
    ///
    /// Panics if not polled inside a tokio runtime.
    pub async fn serve(self) -> Result<ServingEndpoint, ExporterError> {
        let bind_error = |source| {
            ExporterError::new(ErrorKind::Bind {
                addr: self.bind,
                source,
            })
        };
        let listener = TcpListener::bind(self.bind).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let (shutdown, stop) = watch::channel(false);
        tracing::info!(%local_addr, path = %self.state.path, "metrics endpoint listening");
        let task = tokio::spawn(accept_loop(
            listener,
            self.state,
            self.max_connections,
            self.header_read_timeout,
            stop,
        ));
        Ok(ServingEndpoint {
            local_addr,
            shutdown,
            task: Some(task),
        })
    }
}

impl MetricsEndpointBuilder {
    /// Address to listen on (default `127.0.0.1:9464`; port 0 picks a free port).
    ///
    /// A non-loopback address (including `0.0.0.0` / `[::]`) is refused by [`build`](Self::build)
    /// unless a bearer token or an allowlist is set, or the exposure is explicitly accepted
    /// with [`allow_insecure_public_bind`](Self::allow_insecure_public_bind).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Path of the Prometheus scrape route (default `/metrics`); must start with `/`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Requires `Authorization: Bearer <token>` on every route (compared in constant time).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Allows a single client address (TCP peer address). With any allowlist entry set,
    /// other clients get 403.
    pub fn allow_ip(mut self, ip: IpAddr) -> Self {
        self.allow.push(IpNet::host(ip));
        self
    }

    /// Allows a client network in CIDR notation, e.g. `"10.0.0.0/8"` or `"::1/128"` (a bare
    /// address means a single host). Invalid input is reported by [`build`](Self::build).
    pub fn allow_network(mut self, cidr: &str) -> Self {
        match IpNet::parse(cidr) {
            Ok(net) => self.allow.push(net),
            Err(reason) => {
                let kind = ErrorKind::InvalidNetwork {
                    value: cidr.to_owned(),
                    reason,
                };
                self.error.get_or_insert(ExporterError::new(kind));
            }
        }
        self
    }

    /// Serves `render()` at `path` with `content_type`, behind the same IP and token checks.
    pub fn route(
        mut self,
        path: impl Into<String>,
        content_type: impl Into<String>,
        render: RouteHandler,
    ) -> Self {
        self.routes.push((path.into(), content_type.into(), render));
        self
    }

    /// Explicit opt-in to serve metrics on a non-loopback address with no token and no
    /// allowlist, i.e. to anyone who can reach the port. Prefer a token or an allowlist.
    pub fn allow_insecure_public_bind(mut self) -> Self {
        self.insecure_public_bind = true;
        self
    }

    /// Cap on concurrent connections (default 64); connections beyond it are closed at once.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Time a client has to send a complete request head, also bounding idle keep-alive
    /// connections (default 5 s).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// Fails on an empty or non-ASCII token, a path not starting with `/`, a duplicate route,
    /// an invalid content type or CIDR, a zero limit, or a non-loopback bind without a token
    /// or allowlist (see [`allow_insecure_public_bind`](Self::allow_insecure_public_bind)).
    pub fn build(self) -> Result<MetricsEndpoint, ExporterError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let token = match self.token {
            Some(token) if token.is_empty() => {
                return Err(ExporterError::new(ErrorKind::EmptyToken));
            }
            Some(token) if !token.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(ExporterError::new(ErrorKind::InvalidToken));
            }
            token => token.map(|t| t.into_bytes().into_boxed_slice()),
        };
        validate_path("path", &self.path)?;
        let mut routes: Vec<Route> = Vec::with_capacity(self.routes.len());
        for (path, content_type, render) in self.routes {
            validate_path("route path", &path)?;
            if path == self.path || routes.iter().any(|r| r.path == path) {
                return Err(ExporterError::new(ErrorKind::DuplicatePath(path)));
            }
            let Ok(content_type) = HeaderValue::try_from(content_type) else {
                return Err(ExporterError::new(ErrorKind::InvalidContentType { path }));
            };
            routes.push(Route {
                path,
                content_type,
                render,
            });
        }
        if self.max_connections == 0 {
            return Err(ExporterError::new(ErrorKind::ZeroMaxConnections));
        }
        if self.header_read_timeout.is_zero() {
            return Err(ExporterError::new(ErrorKind::ZeroHeaderReadTimeout));
        }
        let loopback = self.bind.ip().to_canonical().is_loopback();
        if !loopback && token.is_none() && self.allow.is_empty() {
            if !self.insecure_public_bind {
                return Err(ExporterError::new(ErrorKind::InsecurePublicBind(self.bind)));
            }
            tracing::warn!(addr = %self.bind, "metrics endpoint is public without authentication");
        }
        Ok(MetricsEndpoint {
            bind: self.bind,
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            state: Arc::new(State {
                handle: self.handle,
                path: self.path,
                token,
                allow: self.allow,
                routes,
            }),
        })
    }
}

impl fmt::Debug for MetricsEndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsEndpointBuilder")
            .field("bind", &self.bind)
            .field("path", &self.path)
            .field("bearer_token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow", &self.allow)
            .field(
                "routes",
                &self.routes.iter().map(|r| &r.0).collect::<Vec<_>>(),
            )
            .field("allow_insecure_public_bind", &self.insecure_public_bind)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish_non_exhaustive()
    }
}

fn validate_path(field: &'static str, path: &str) -> Result<(), ExporterError> {
    let ok = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if ok {
        Ok(())
    } else {
        Err(ExporterError::new(ErrorKind::InvalidPath {
            field,
            value: path.to_owned(),
        }))
    }
}

/// A running [`MetricsEndpoint`]. Dropping it signals shutdown without waiting;
/// [`shutdown`](Self::shutdown) waits for the server to stop.
#[derive(Debug)]
#[must_use = "dropping a ServingEndpoint shuts the server down"]
pub struct ServingEndpoint {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ServingEndpoint {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, lets open ones finish their current request (at most 5 s,
    /// then they are aborted), and waits for the server task to end.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        let Some(task) = self.task.take() else { return };
        if let Err(err) = task.await {
            tracing::warn!(error = %err, "metrics endpoint task failed");
        }
    }
}

impl Drop for ServingEndpoint {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

struct Route {
    path: String,
    content_type: HeaderValue,
    render: RouteHandler,
}

struct State {
    handle: PrometheusHandle,
    path: String,
    token: Option<Box<[u8]>>,
    allow: Vec<IpNet>,
    routes: Vec<Route>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("path", &self.path)
            .field("bearer_token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("allow", &self.allow)
            .field(
                "routes",
                &self.routes.iter().map(|r| &r.path).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl State {
    fn respond<B>(&self, req: &Request<B>, peer: IpAddr) -> Response<Full<Bytes>> {
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(peer)) {
            tracing::debug!(%peer, "metrics request refused: peer not in allowlist");
            return text(StatusCode::FORBIDDEN, "forbidden\n");
        }
        if let Some(expected) = &self.token {
            let challenge = match bearer(req.headers()) {
                None => "Bearer",
                Some(given) if !constant_time_eq(given, expected) => {
                    "Bearer error=\"invalid_token\""
                }
                Some(_) => "",
            };
            if !challenge.is_empty() {
                tracing::debug!(%peer, "metrics request refused: missing or wrong bearer token");
                let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
                let value = HeaderValue::from_static(challenge);
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                return resp;
            }
        }
        let path = req.uri().path();
        let route = if path == self.path {
            None
        } else if let Some(route) = self.routes.iter().find(|r| r.path == path) {
            Some(route)
        } else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            let allow = HeaderValue::from_static("GET, HEAD");
            resp.headers_mut().insert(header::ALLOW, allow);
            return resp;
        }
        // For HEAD, hyper sends the headers (with the real length) and omits the body.
        let (content_type, body) = match route {
            None => (
                HeaderValue::from_static(PROMETHEUS_TEXT),
                self.handle.render(),
            ),
            Some(route) => (route.content_type.clone(), (route.render)()),
        };
        response(StatusCode::OK, content_type, body)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let content_type = HeaderValue::from_static("text/plain; charset=utf-8");
    response(status, content_type, body.to_owned())
}

fn response(status: StatusCode, content_type: HeaderValue, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let split = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = value.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares without early exit; the work depends only on `given.len()`.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    if expected.is_empty() {
        return false;
    }
    let mut diff = given.len() ^ expected.len();
    for (i, &byte) in given.iter().enumerate() {
        diff |= usize::from(byte ^ expected[i % expected.len()]);
    }
    std::hint::black_box(diff) == 0
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    max_connections: usize,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        tracing::warn!(%peer, max_connections, "metrics endpoint busy, closing connection");
                        continue;
                    };
                    let conn = serve_connection(stream, peer, Arc::clone(&state), header_read_timeout, stop.clone(), permit);
                    connections.spawn(conn);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics endpoint accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("metrics endpoint connections did not finish in time, aborting them");
        connections.shutdown().await;
    }
    tracing::info!("metrics endpoint stopped");
}

/// Resolves once shutdown is signalled (or the sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let peer_ip = peer.ip();
    let service = service_fn(move |req| {
        std::future::ready(Ok::<_, Infallible>(state.respond(&req, peer_ip)))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "metrics endpoint connection ended with error");
    }
}

/// An IP network: address plus prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }

    /// Parses `addr/prefix` (or a bare address as a single host). Host bits may be set.
    fn parse(input: &str) -> Result<Self, &'static str> {
        let (addr, prefix) = match input.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (input, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| "not an ip address")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| "prefix length out of range")?
            }
            Some(_) => return Err("prefix length must be a decimal number"),
        };
        if prefix > max {
            return Err("prefix length out of range");
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` (or its IPv4 form, if it is IPv4-mapped IPv6) is inside the network.
    fn contains(&self, ip: IpAddr) -> bool {
        self.contains_exact(ip) || self.contains_exact(ip.to_canonical())
    }

    fn contains_exact(&self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => (u32::from(net).into(), u32::from(ip).into(), 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => (u128::from(net), u128::from(ip), 128),
            _ => return false,
        };
        // Equal in the top `prefix` bits of a `bits`-wide value.
        (net ^ ip)
            .checked_shr(bits - u32::from(self.prefix))
            .unwrap_or(0)
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_ipv4_and_ipv6_networks() {
        assert_eq!(
            IpNet::parse("10.0.0.0/8"),
            Ok(IpNet {
                addr: ip("10.0.0.0"),
                prefix: 8
            })
        );
        assert_eq!(
            IpNet::parse("::1/128"),
            Ok(IpNet {
                addr: ip("::1"),
                prefix: 128
            })
        );
        assert_eq!(
            IpNet::parse("0.0.0.0/0"),
            Ok(IpNet {
                addr: ip("0.0.0.0"),
                prefix: 0
            })
        );
        assert_eq!(
            IpNet::parse("192.168.1.7"),
            Ok(IpNet::host(ip("192.168.1.7")))
        );
        assert_eq!(
            IpNet::parse("fe80::"),
            Ok(IpNet {
                addr: ip("fe80::"),
                prefix: 128
            })
        );
    }

    #[test]
    fn rejects_bad_networks() {
        for bad in [
            "",
            "/8",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
            " 10.0.0.0/8",
            "10.0.0.0/0008",
            "10.0.0.0/256",
            "localhost/8",
            "[::1]/128",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn membership() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("127.0.0.1")));
        assert!(
            net.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped peers match IPv4 networks"
        );
        let odd = IpNet::parse("192.168.1.200/26").unwrap();
        assert!(odd.contains(ip("192.168.1.192")) && odd.contains(ip("192.168.1.255")));
        assert!(!odd.contains(ip("192.168.1.191")));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("::1")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(IpNet::parse("::/0").unwrap().contains(ip("::1")));
        assert!(IpNet::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(!IpNet::parse("::1/128").unwrap().contains(ip("::2")));
    }

    #[test]
    fn bearer_and_token_comparison() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bEaReR  abc "),
        );
        assert_eq!(bearer(&headers), Some(&b"abc"[..]));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secretsecret", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"", b""));
    }
}
