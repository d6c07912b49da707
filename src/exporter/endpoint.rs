//! The secured `/metrics` endpoint: configuration, the accept loop, and the
//! connections, with their defences against hostile clients.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::error::{ErrorKind, ExporterError};
use super::guard::{PeerLimits, PeerSlot, Peers, Throttle};
use super::io::WriteTimeout;
use super::net::IpNet;
use super::scope::{self, Redactor, Scope};

/// Default bind address of [`MetricsEndpoint`]: loopback only.
pub const DEFAULT_BIND: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// Default cap on concurrent connections to [`MetricsEndpoint`]; further ones are closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Default cap on the connections one peer (an IPv4 address, or an IPv6 /64)
/// may hold at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 8;

/// Default time a client has to send a complete request head (also bounds idle keep-alive).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Default total lifetime of a connection: then it is closed after its
/// current response (a scraper simply reconnects).
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Default time a blocked write may wait for the client to read.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of requests served on one connection before it is closed.
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: usize = 100;

/// Default number of failed authentications a peer may make within a
/// minute before it is refused for a minute.
pub const DEFAULT_AUTH_FAILURES: u32 = 10;

/// The shortest bearer token [`MetricsEndpointBuilder::build`] accepts, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// The longest any of the endpoint's timeouts may be.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long [`ServingEndpoint::shutdown`] lets open connections finish before aborting them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// At most one log line per kind of refusal this often, with a count of the rest.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Renders the body of an extra route added with [`MetricsEndpointBuilder::route`].
pub type RouteHandler = Arc<dyn Fn() -> String + Send + Sync>;

/// Renders the body of a route added with
/// [`MetricsEndpointBuilder::scoped_route`] for the caller's [`Scope`];
/// `None` refuses the scope (403).
pub type ScopedRouteHandler = Arc<dyn Fn(&Scope) -> Option<String> + Send + Sync>;

/// A configured, not yet running, metrics HTTP endpoint. Start it with [`MetricsEndpoint::serve`].
///
/// It defends itself against clients that misbehave, on purpose or not:
///
/// - **Allowlist at accept.** A peer outside the allowlist is disconnected at
///   once, before it takes a connection slot.
/// - **Connection caps.** At most [`max_connections`] at once, and at most
///   [`max_connections_per_ip`] per peer (an IPv4 address, or an IPv6 /64),
///   so one client cannot take every slot.
/// - **Deadlines.** A request head must arrive within
///   [`header_read_timeout`]; a write that makes no progress for
///   [`write_timeout`] (a client that pipelines requests and never reads the
///   responses) ends the connection; every connection is closed after its
///   current response once it has lived [`connection_timeout`], and after
///   [`max_requests_per_connection`] requests.
/// - **Failed authentication.** A peer that sends a wrong or missing token
///   [`DEFAULT_AUTH_FAILURES`] times within a minute (see
///   [`auth_failure_limit`]) gets `429 Too Many Requests`, and its new
///   connections are closed at accept, for a minute.
/// - **Quiet logs.** Refusals are logged at most once per 10 s per kind, with
///   the number held back.
///
/// [`max_connections`]: MetricsEndpointBuilder::max_connections
/// [`max_connections_per_ip`]: MetricsEndpointBuilder::max_connections_per_ip
/// [`header_read_timeout`]: MetricsEndpointBuilder::header_read_timeout
/// [`write_timeout`]: MetricsEndpointBuilder::write_timeout
/// [`connection_timeout`]: MetricsEndpointBuilder::connection_timeout
/// [`max_requests_per_connection`]: MetricsEndpointBuilder::max_requests_per_connection
/// [`auth_failure_limit`]: MetricsEndpointBuilder::auth_failure_limit
#[derive(Debug)]
pub struct MetricsEndpoint {
    bind: SocketAddr,
    limits: ConnectionLimits,
    state: Arc<State>,
}

/// What bounds each connection.
#[derive(Clone, Copy, Debug)]
struct ConnectionLimits {
    max_connections: usize,
    header_read_timeout: Duration,
    connection_timeout: Duration,
    write_timeout: Duration,
    max_requests: usize,
}

/// By-value builder for [`MetricsEndpoint`], from [`MetricsEndpoint::builder`].
///
/// Defaults: bind `127.0.0.1:9464`, path `/metrics`, no token, no allowlist,
/// [`DEFAULT_MAX_CONNECTIONS`], [`DEFAULT_MAX_CONNECTIONS_PER_IP`],
/// [`DEFAULT_HEADER_READ_TIMEOUT`], [`DEFAULT_CONNECTION_TIMEOUT`],
/// [`DEFAULT_WRITE_TIMEOUT`], [`DEFAULT_MAX_REQUESTS_PER_CONNECTION`],
/// [`DEFAULT_AUTH_FAILURES`] failed authentications a minute.
#[must_use = "a builder does nothing until build() is called"]
pub struct MetricsEndpointBuilder {
    handle: PrometheusHandle,
    bind: SocketAddr,
    path: String,
    token: Option<String>,
    viewers: Vec<(String, Scope)>,
    redaction_key: Option<Vec<u8>>,
    allow: Vec<IpNet>,
    routes: Vec<(String, String, Handler)>,
    insecure_public_bind: bool,
    max_connections: usize,
    max_connections_per_ip: usize,
    header_read_timeout: Duration,
    connection_timeout: Duration,
    write_timeout: Duration,
    max_requests: usize,
    auth_failures: u32,
    auth_window: Duration,
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
            viewers: Vec::new(),
            redaction_key: None,
            allow: Vec::new(),
            routes: Vec::new(),
            insecure_public_bind: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_requests: DEFAULT_MAX_REQUESTS_PER_CONNECTION,
            auth_failures: DEFAULT_AUTH_FAILURES,
            auth_window: Duration::from_secs(60),
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
        let task = tokio::spawn(accept_loop(listener, self.state, self.limits, stop));
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
    /// A non-loopback address (including `0.0.0.0` / `[::]`) is refused by
    /// [`build`](Self::build) unless a bearer token or an allowlist narrower
    /// than everyone is set, or the exposure is explicitly accepted with
    /// [`allow_insecure_public_bind`](Self::allow_insecure_public_bind). The
    /// endpoint speaks plain HTTP: on a network you do not trust, put a TLS
    /// terminating proxy (or a service mesh sidecar) in front of it, so the
    /// token does not travel in the clear.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// URL path of the metrics (default `/metrics`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Requires `Authorization: Bearer <token>` on every request. The token
    /// must be at least [`MIN_TOKEN_LEN`] (16) bytes of visible ASCII. It
    /// sees everything (the scope [`Scope::all`]); add scoped credentials
    /// with [`viewer`](Self::viewer).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Adds a credential that sees only `scope`: some services, in a full,
    /// aggregate or redacted [`View`](super::View). With any credential set,
    /// a request without a known token gets 401; a credential whose scope may
    /// not use a route gets 403.
    ///
    /// ```
    /// use tower_breaker::exporter::{recorder, MetricsEndpoint, Scope, View};
    ///
    /// let endpoint = MetricsEndpoint::builder(recorder().1)
    ///     .bearer_token("prometheus-scraper-token")          // everything
    ///     .viewer("payments-team-token-0001", "services=payments-*".parse().unwrap())
    ///     .viewer("status-page-token-00001", Scope::all().with_view(View::Aggregate))
    ///     .build()
    ///     .unwrap();
    /// # let _ = endpoint;
    /// ```
    pub fn viewer(mut self, token: impl Into<String>, scope: Scope) -> Self {
        self.viewers.push((token.into(), scope));
        self
    }

    /// The secret the redacted view's service ids are keyed with. The same
    /// secret gives the same ids in every process (so replicas can be
    /// summed); without one, a random key is drawn and ids hold for this
    /// process only.
    pub fn redaction_key(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.redaction_key = Some(secret.as_ref().to_vec());
        self
    }

    /// Admits this client address (may be called repeatedly; any match admits).
    pub fn allow_ip(mut self, ip: IpAddr) -> Self {
        self.allow.push(IpNet::host(ip));
        self
    }

    /// Admits a client network in CIDR notation, e.g. `10.0.0.0/8` or `fd00::/8`.
    /// An invalid value makes [`build`](Self::build) fail.
    pub fn allow_network(mut self, cidr: &str) -> Self {
        match IpNet::parse(cidr) {
            Ok(net) => self.allow.push(net),
            Err(reason) => {
                self.error
                    .get_or_insert(ExporterError::new(ErrorKind::InvalidNetwork {
                        value: cidr.to_owned(),
                        reason,
                    }));
            }
        }
        self
    }

    /// Serves `render()` at `path` with `content_type`, behind the same IP
    /// and token checks. It knows no scope, so only a credential that sees
    /// everything may use it (others get 403): use
    /// [`scoped_route`](Self::scoped_route) to serve scoped callers.
    pub fn route(
        mut self,
        path: impl Into<String>,
        content_type: impl Into<String>,
        render: RouteHandler,
    ) -> Self {
        let handler = Handler::Plain(render);
        self.routes
            .push((path.into(), content_type.into(), handler));
        self
    }

    /// Serves `render(scope)` at `path` with `content_type`, behind the same
    /// IP and token checks; `render` gets the caller's [`Scope`] and returns
    /// `None` to refuse it (403).
    pub fn scoped_route(
        mut self,
        path: impl Into<String>,
        content_type: impl Into<String>,
        render: ScopedRouteHandler,
    ) -> Self {
        let handler = Handler::Scoped(render);
        self.routes
            .push((path.into(), content_type.into(), handler));
        self
    }

    /// Accepts a non-loopback bind with no token or allowlist (or only a
    /// catch-all allowlist), e.g. behind a trusted network boundary. Logs a
    /// warning at startup.
    pub fn allow_insecure_public_bind(mut self) -> Self {
        self.insecure_public_bind = true;
        self
    }

    /// Maximum concurrent connections (default 64); connections over the cap are closed.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Maximum concurrent connections of one peer, an IPv4 address or an
    /// IPv6 /64 (default 8).
    pub fn max_connections_per_ip(mut self, max: usize) -> Self {
        self.max_connections_per_ip = max;
        self
    }

    /// Time a client has to send a complete request head, also bounding idle keep-alive
    /// connections (default 5 s, at most [`MAX_TIMEOUT`]).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Total lifetime of a connection: past it, the connection is closed
    /// after its current response (default 60 s, at most [`MAX_TIMEOUT`]).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How long a write may stay blocked on a client that does not read
    /// before the connection is dropped (default 10 s, at most [`MAX_TIMEOUT`]).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Requests served on one connection before it is closed (default 100).
    pub fn max_requests_per_connection(mut self, max: usize) -> Self {
        self.max_requests = max;
        self
    }

    /// A peer that fails authentication `failures` times within `window` is
    /// refused (`429`, and its new connections closed at accept) for
    /// `window` (default 10 within a minute).
    pub fn auth_failure_limit(mut self, failures: u32, window: Duration) -> Self {
        self.auth_failures = failures;
        self.auth_window = window;
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// Fails, naming the setting, on: a token that is empty, not visible
    /// ASCII or shorter than [`MIN_TOKEN_LEN`]; a path not starting with `/`;
    /// a duplicate route; an invalid content type or CIDR; a limit of zero;
    /// a timeout of zero or over [`MAX_TIMEOUT`]; a non-loopback bind with
    /// no token and no allowlist, or only a catch-all one (`0.0.0.0/0`,
    /// `::/0`), unless [`allow_insecure_public_bind`](Self::allow_insecure_public_bind).
    pub fn build(self) -> Result<MetricsEndpoint, ExporterError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut credentials: Vec<Credential> = Vec::new();
        let tokens = self.token.map(|t| (t, Scope::all())).into_iter();
        for (index, (token, scope)) in tokens.chain(self.viewers).enumerate() {
            check_token(&token)?;
            scope.validate().map_err(|e| {
                ExporterError::new(ErrorKind::Scope {
                    token_index: index,
                    reason: e.to_string(),
                })
            })?;
            let token = token.into_bytes().into_boxed_slice();
            if credentials.iter().any(|c| c.token == token) {
                return Err(ExporterError::new(ErrorKind::DuplicateToken));
            }
            credentials.push(Credential {
                token,
                scope: Arc::new(scope),
            });
        }
        let authenticated = !credentials.is_empty();
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
        for (field, value) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_requests_per_connection", self.max_requests),
            ("auth_failure_limit", self.auth_failures as usize),
        ] {
            if value == 0 {
                return Err(ExporterError::setting(field, "must be at least 1"));
            }
        }
        for (field, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("connection_timeout", self.connection_timeout),
            ("write_timeout", self.write_timeout),
            ("auth_failure_limit window", self.auth_window),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(ExporterError::setting(
                    field,
                    format!("must be in (0, {MAX_TIMEOUT:?}], got {value:?}"),
                ));
            }
        }
        let loopback = self.bind.ip().to_canonical().is_loopback();
        if !loopback && !authenticated && !self.insecure_public_bind {
            if self.allow.is_empty() {
                return Err(ExporterError::new(ErrorKind::InsecurePublicBind(self.bind)));
            }
            if self.allow.iter().any(IpNet::is_catch_all) {
                return Err(ExporterError::new(ErrorKind::CatchAllOnly(self.bind)));
            }
        }
        if !loopback
            && !authenticated
            && (self.allow.is_empty() || self.allow.iter().any(IpNet::is_catch_all))
        {
            tracing::warn!(addr = %self.bind, "metrics endpoint is public without authentication");
        }
        Ok(MetricsEndpoint {
            bind: self.bind,
            limits: ConnectionLimits {
                max_connections: self.max_connections,
                header_read_timeout: self.header_read_timeout,
                connection_timeout: self.connection_timeout,
                write_timeout: self.write_timeout,
                max_requests: self.max_requests,
            },
            state: Arc::new(State {
                handle: self.handle,
                path: self.path,
                credentials,
                everything: Arc::new(Scope::all()),
                redactor: match &self.redaction_key {
                    Some(secret) => Redactor::with_secret(secret),
                    None => Redactor::random(),
                },
                allow: self.allow,
                routes,
                peers: Peers::new(PeerLimits {
                    connections: self.max_connections_per_ip,
                    auth_failures: self.auth_failures,
                    window: self.auth_window,
                    block: self.auth_window,
                }),
                logs: Logs::default(),
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
            .field(
                "viewers",
                &self.viewers.iter().map(|(_, s)| s).collect::<Vec<_>>(),
            )
            .field("allow", &self.allow)
            .field(
                "routes",
                &self.routes.iter().map(|r| &r.0).collect::<Vec<_>>(),
            )
            .field("allow_insecure_public_bind", &self.insecure_public_bind)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_requests_per_connection", &self.max_requests)
            .finish_non_exhaustive()
    }
}

fn check_token(token: &str) -> Result<(), ExporterError> {
    if token.is_empty() {
        return Err(ExporterError::new(ErrorKind::EmptyToken));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ExporterError::new(ErrorKind::InvalidToken));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(ExporterError::new(ErrorKind::ShortToken {
            min: MIN_TOKEN_LEN,
        }));
    }
    Ok(())
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

/// How a route renders its body.
#[derive(Clone)]
enum Handler {
    /// Knows no scope: served to credentials that see everything.
    Plain(RouteHandler),
    Scoped(ScopedRouteHandler),
}

struct Route {
    path: String,
    content_type: HeaderValue,
    render: Handler,
}

/// A bearer token and what it may see.
struct Credential {
    token: Box<[u8]>,
    scope: Arc<Scope>,
}

/// The throttles of the refusal log lines, one per kind.
#[derive(Debug)]
struct Logs {
    busy: Throttle,
    peer_full: Throttle,
    not_allowed: Throttle,
    auth: Throttle,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            busy: Throttle::new(LOG_EVERY),
            peer_full: Throttle::new(LOG_EVERY),
            not_allowed: Throttle::new(LOG_EVERY),
            auth: Throttle::new(LOG_EVERY),
        }
    }
}

struct State {
    handle: PrometheusHandle,
    path: String,
    /// No credential: everyone (on loopback, or opted in) sees everything.
    credentials: Vec<Credential>,
    everything: Arc<Scope>,
    redactor: Redactor,
    allow: Vec<IpNet>,
    routes: Vec<Route>,
    peers: Arc<Peers>,
    logs: Logs,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("path", &self.path)
            .field("credentials", &self.credentials.len())
            .field("allow", &self.allow)
            .field(
                "routes",
                &self.routes.iter().map(|r| &r.path).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl State {
    fn allowed(&self, peer: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(peer))
    }

    fn respond<B>(&self, req: &Request<B>, peer: IpAddr) -> Response<Full<Bytes>> {
        if !self.allowed(peer) {
            return text(StatusCode::FORBIDDEN, "forbidden\n");
        }
        if let Some(left) = self.peers.blocked(peer) {
            return too_many(left);
        }
        let scope = match self.authenticate(req.headers()) {
            Ok(scope) => scope,
            Err(challenge) => {
                let blocked = self.peers.auth_failed(peer);
                if let Some(held_back) = self.logs.auth.admit() {
                    tracing::debug!(
                        %peer,
                        blocked,
                        held_back,
                        "metrics request refused: missing or unknown bearer token"
                    );
                }
                if let (true, Some(left)) = (blocked, self.peers.blocked(peer)) {
                    return too_many(left);
                }
                let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
                let value = HeaderValue::from_static(challenge);
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                return resp;
            }
        };
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
            None => match self.metrics(&scope) {
                Some(body) => (HeaderValue::from_static(PROMETHEUS_TEXT), body),
                None => return text(StatusCode::INTERNAL_SERVER_ERROR, "render failed\n"),
            },
            Some(route) => {
                let body = match &route.render {
                    Handler::Scoped(render) => render(&scope),
                    Handler::Plain(render) => scope.is_everything().then(|| render()),
                };
                match body {
                    Some(body) => (route.content_type.clone(), body),
                    None => return text(StatusCode::FORBIDDEN, "forbidden for this scope\n"),
                }
            }
        };
        response(StatusCode::OK, content_type, body)
    }

    /// The caller's scope: that of the credential its bearer token matches
    /// (every credential is compared, in constant time each), or everything
    /// when no credential is configured; else the `WWW-Authenticate`
    /// challenge.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Scope>, &'static str> {
        if self.credentials.is_empty() {
            return Ok(self.everything.clone());
        }
        let Some(given) = bearer(headers) else {
            return Err("Bearer");
        };
        let mut found = None;
        for credential in &self.credentials {
            if constant_time_eq(given, &credential.token) && found.is_none() {
                found = Some(credential.scope.clone());
            }
        }
        found.ok_or("Bearer error=\"invalid_token\"")
    }

    /// The metrics as `scope` may see them; `None` if the recorder's text
    /// did not parse (never expected).
    fn metrics(&self, scope: &Scope) -> Option<String> {
        let text = self.handle.render();
        if scope.is_everything() {
            return Some(text);
        }
        match scope::render(&text, scope, &self.redactor) {
            Ok(body) => Some(body),
            Err(err) => {
                tracing::error!(error = %err, "metrics endpoint could not parse the exposition");
                None
            }
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let content_type = HeaderValue::from_static("text/plain; charset=utf-8");
    response(status, content_type, body.to_owned())
}

fn too_many(left: Duration) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts\n");
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
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
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(admitted) = admit(&state, &permits, peer) else {
                        // Dropping the stream closes it: no slot was taken.
                        continue;
                    };
                    let conn = serve_connection(stream, peer, Arc::clone(&state), limits, stop.clone(), admitted);
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

/// The slots a connection holds while it lives.
type Admitted = (OwnedSemaphorePermit, PeerSlot);

/// Decides at accept whether a connection may take a slot: its peer is in
/// the allowlist, not blocked for failed authentication, under its own cap,
/// and the endpoint under its total cap.
fn admit(state: &State, permits: &Arc<Semaphore>, peer: SocketAddr) -> Option<Admitted> {
    let ip = peer.ip();
    if !state.allowed(ip) {
        if let Some(held_back) = state.logs.not_allowed.admit() {
            tracing::debug!(%peer, held_back, "metrics connection refused: peer not in allowlist");
        }
        return None;
    }
    if state.peers.blocked(ip).is_some() {
        if let Some(held_back) = state.logs.auth.admit() {
            tracing::debug!(%peer, held_back, "metrics connection refused: too many failed authentications");
        }
        return None;
    }
    let Some(slot) = state.peers.connect(ip) else {
        if let Some(held_back) = state.logs.peer_full.admit() {
            tracing::warn!(%peer, held_back, "metrics connection refused: the peer holds its share of connections");
        }
        return None;
    };
    let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
        if let Some(held_back) = state.logs.busy.admit() {
            tracing::warn!(%peer, held_back, "metrics endpoint busy, closing connection");
        }
        return None;
    };
    Some((permit, slot))
}

/// Resolves once shutdown is signalled (or the sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    _admitted: Admitted,
) {
    let peer_ip = peer.ip();
    let served = AtomicUsize::new(0);
    let max_requests = limits.max_requests;
    let service = service_fn(move |req| {
        let mut resp = state.respond(&req, peer_ip);
        if served.fetch_add(1, Ordering::Relaxed) + 1 >= max_requests {
            // hyper closes the connection after this response.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        std::future::ready(Ok::<_, Infallible>(resp))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
    let mut conn = std::pin::pin!(builder.serve_connection(io, service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = tokio::time::sleep(limits.connection_timeout) => {
            // Lived long enough: finish the current response, then close;
            // a response that cannot be written in time is dropped.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.write_timeout, conn).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "metrics endpoint connection ended with error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
