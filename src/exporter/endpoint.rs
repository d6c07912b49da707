//! The secured `/metrics` endpoint: configuration, the accept loop, and the
//! connections, with their defences against hostile clients.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::error::{ErrorKind, ExporterError};
use super::guard::{PeerLimits, PeerSlot, Peers, Throttle};
use super::io::WriteTimeout;
use super::net::IpNet;
use super::protobuf;
use super::recorder::MetricsHandle;
use super::renders::{blocking, Renders};
use super::scope::{Redactor, Scope};
use super::status::{self, STATUS_JSON_PATH, STATUS_PAGE_PATH};

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

/// The most connections [`MetricsEndpointBuilder::max_connections`] may allow.
pub const MAX_CONNECTIONS: usize = 65_536;

/// The longest any of the endpoint's timeouts may be.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Default time a render of the exposition is shared by the scrapes that
/// come after it: 1 s.
pub const DEFAULT_RENDER_SHARING: Duration = Duration::from_secs(1);

/// The longest [`MetricsEndpointBuilder::render_sharing`]: 1 minute.
pub const MAX_RENDER_SHARING: Duration = Duration::from_secs(60);

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
///   so one client cannot take every slot. When every slot is taken, a
///   newcomer closes the oldest connection that has not authenticated yet
///   (one that has sent no request with a valid credential), so silent
///   connections from many peers cannot starve the scraper either.
/// - **Deadlines.** A request head must arrive within
///   [`header_read_timeout`]; a write that makes no progress for
///   [`write_timeout`] (a client that pipelines requests and never reads the
///   responses) ends the connection; every connection is closed after its
///   current response once it has lived [`connection_timeout`], and after
///   [`max_requests_per_connection`] requests.
/// - **Failed authentication.** A peer that sends a wrong token
///   [`DEFAULT_AUTH_FAILURES`] times within a minute (see
///   [`auth_failure_limit`]) gets, for a minute, `429 Too Many Requests`
///   for each further wrong token, answered after a one-second pause: it
///   guesses at most one token a second per connection it may hold. A valid
///   credential is always served, so the guesses of a neighbour sharing the
///   scraper's address (a NAT, a proxy in front, the same host) cannot lock
///   the scraper out.
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
    handle: MetricsHandle,
    render_sharing: Duration,
    bind: SocketAddr,
    path: String,
    token: Option<String>,
    viewers: Vec<(String, Scope)>,
    redaction_key: Option<Vec<u8>>,
    allow: Vec<IpNet>,
    routes: Vec<(String, String, Handler)>,
    insecure_public_bind: bool,
    status_page: bool,
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
    /// Starts configuring an endpoint that serves `handle.render()` (a
    /// [`MetricsHandle`], or a plain `PrometheusHandle`).
    pub fn builder(handle: impl Into<MetricsHandle>) -> MetricsEndpointBuilder {
        MetricsEndpointBuilder {
            handle: handle.into(),
            render_sharing: DEFAULT_RENDER_SHARING,
            bind: DEFAULT_BIND,
            path: "/metrics".to_owned(),
            token: None,
            viewers: Vec::new(),
            redaction_key: None,
            allow: Vec::new(),
            routes: Vec::new(),
            insecure_public_bind: false,
            status_page: false,
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

    /// How long a render of the exposition is served to the scrapes that
    /// come after it (default [`DEFAULT_RENDER_SHARING`], at most
    /// [`MAX_RENDER_SHARING`]; zero renders for every scrape). Renders run
    /// on tokio's blocking pool, never on the runtime's workers, one at a
    /// time: scrapes that arrive during a render wait for it and share it.
    pub fn render_sharing(mut self, time: Duration) -> Self {
        self.render_sharing = time;
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

    /// The secret the redacted view's service ids are keyed with, at least
    /// [`MIN_TOKEN_LEN`] bytes. The same secret gives the same ids in every
    /// process (so replicas can be summed); without one, a random key is
    /// drawn and ids hold for this process only. Keep it as secret as a
    /// token: whoever knows it can find a name's id.
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

    /// Also serves a live status page at [`STATUS_PAGE_PATH`] (`/breakers`)
    /// and the JSON it polls at [`STATUS_JSON_PATH`] (`/breakers.json`),
    /// behind the same checks: one tile per breaker of the caller's scope
    /// (state, error and slow-call rates, trip risk, requests and
    /// rejections per second, time in the state, the last transition),
    /// riskiest first, with a filter box, and the dependency graph drawn as
    /// SVG. It refreshes about once a second and says when the endpoint
    /// stops answering. One self-contained page (HTML, CSS and JavaScript,
    /// under 100 KB): no CDN, no external fetch, no build step.
    ///
    /// A browser sends no bearer token: the endpoint also takes the token as
    /// the password of HTTP Basic authentication (any user name), and its
    /// `401` asks for it, so the browser prompts once and sends it with the
    /// page's requests. The redacted view shows hashed names and no graph;
    /// the aggregate view has no breaker to show (403).
    pub fn status_page(mut self) -> Self {
        self.status_page = true;
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
    /// IPv6 /64 (default 8; at most `max_connections`).
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

    /// A peer that presents a wrong token `failures` times within `window`
    /// gets, for `window`, `429` after a one-second pause for each further
    /// wrong token (default 10 within a minute). A valid credential is
    /// always served. A request without any credential gets its 401 but is
    /// not counted: it guesses nothing, and a browser sends one before its
    /// login prompt.
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
        if self.render_sharing > MAX_RENDER_SHARING {
            return Err(ExporterError::setting(
                "render_sharing",
                format!("must be at most {MAX_RENDER_SHARING:?}"),
            ));
        }
        let mut credentials: Vec<Credential> = Vec::new();
        let has_bearer = usize::from(self.token.is_some());
        let tokens = self.token.map(|t| (t, Scope::all())).into_iter();
        for (index, (token, scope)) in tokens.chain(self.viewers).enumerate() {
            check_token(&token)?;
            scope.validate().map_err(|e| {
                ExporterError::new(ErrorKind::Scope {
                    // Viewers counted from 1, in the order added.
                    token_index: index + 1 - has_bearer,
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
        if self
            .redaction_key
            .as_ref()
            .is_some_and(|k| k.len() < MIN_TOKEN_LEN)
        {
            return Err(ExporterError::setting(
                "redaction_key",
                format!("must be at least {MIN_TOKEN_LEN} bytes: with a short key, ids can be found from guessed names"),
            ));
        }
        validate_path("path", &self.path)?;
        let mut routes: Vec<Route> = Vec::with_capacity(self.routes.len());
        if self.status_page {
            for path in [STATUS_PAGE_PATH, STATUS_JSON_PATH] {
                if self.path == path || self.routes.iter().any(|r| r.0 == path) {
                    return Err(ExporterError::new(ErrorKind::DuplicatePath(
                        path.to_owned(),
                    )));
                }
            }
        }
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
        if self.max_connections > MAX_CONNECTIONS {
            return Err(ExporterError::setting(
                "max_connections",
                format!(
                    "must be at most {MAX_CONNECTIONS}, got {}",
                    self.max_connections
                ),
            ));
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
            if self.allow.iter().any(IpNet::is_too_wide) {
                return Err(ExporterError::new(ErrorKind::CatchAllOnly(self.bind)));
            }
        }
        if !loopback
            && !authenticated
            && (self.allow.is_empty() || self.allow.iter().any(IpNet::is_too_wide))
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
                renders: Renders::new(self.handle.clone(), self.render_sharing),
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
                    connections: self.max_connections_per_ip.min(self.max_connections),
                    auth_failures: self.auth_failures,
                    window: self.auth_window,
                    block: self.auth_window,
                }),
                logs: Logs::default(),
                status_page: self.status_page,
                status_counts: status::Counts::default(),
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

impl Route {
    /// Whether `scope` may use the route at all (a plain route: only a
    /// scope that sees everything).
    fn allows(&self, scope: &Scope) -> bool {
        match self.render {
            Handler::Plain(_) => scope.is_everything(),
            Handler::Scoped(_) => true,
        }
    }

    /// The route's body for `scope`, made on the blocking pool; `Err` if
    /// the scope is refused, `Ok(None)` if the handler panicked.
    async fn render(&self, scope: Arc<Scope>) -> Result<Option<Bytes>, ()> {
        let body = match &self.render {
            Handler::Plain(render) => {
                if !scope.is_everything() {
                    return Err(());
                }
                let render = Arc::clone(render);
                blocking(move || Some(render())).await
            }
            Handler::Scoped(render) => {
                let render = Arc::clone(render);
                blocking(move || render(&scope)).await
            }
        };
        match body {
            Some(Some(body)) => Ok(Some(Bytes::from(body))),
            Some(None) => Err(()),
            None => Ok(None),
        }
    }
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
    accept: Throttle,
    closed: Throttle,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            busy: Throttle::new(LOG_EVERY),
            peer_full: Throttle::new(LOG_EVERY),
            not_allowed: Throttle::new(LOG_EVERY),
            auth: Throttle::new(LOG_EVERY),
            accept: Throttle::new(LOG_EVERY),
            closed: Throttle::new(LOG_EVERY),
        }
    }
}

/// What `respond` decided: the response, a pause before sending it (the
/// tarpit of a blocked peer's failed guesses), and whether the request
/// authenticated.
struct Answer {
    response: Response<Full<Bytes>>,
    delay: Option<Duration>,
    authenticated: bool,
}

impl From<Response<Full<Bytes>>> for Answer {
    fn from(response: Response<Full<Bytes>>) -> Self {
        Answer {
            response,
            delay: None,
            authenticated: true,
        }
    }
}

struct State {
    handle: MetricsHandle,
    /// The shared renders of the exposition, made off the workers.
    renders: Renders,
    path: String,
    /// No credential: everyone (on loopback, or opted in) sees everything.
    credentials: Vec<Credential>,
    everything: Arc<Scope>,
    redactor: Redactor,
    allow: Vec<IpNet>,
    routes: Vec<Route>,
    peers: Arc<Peers>,
    logs: Logs,
    status_page: bool,
    status_counts: status::Counts,
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

    async fn respond<B>(self: &Arc<Self>, req: &Request<B>, peer: IpAddr) -> Answer {
        let refused = |response| Answer {
            response,
            delay: None,
            authenticated: false,
        };
        if !self.allowed(peer) {
            return refused(text(StatusCode::FORBIDDEN, "forbidden\n"));
        }
        // A valid credential is always served, whatever others at the same
        // address tried: only failed attempts are limited.
        let scope = match self.authenticate(req.headers()) {
            Ok(scope) => scope,
            Err(challenge) => {
                // Only a token presented and wrong is a guess: a request with
                // none is a browser's first try before its login prompt.
                let guessed = req.headers().contains_key(header::AUTHORIZATION);
                let blocked = guessed && self.peers.auth_failed(peer);
                if let Some(held_back) = self.logs.auth.admit() {
                    tracing::debug!(
                        %peer,
                        blocked,
                        held_back,
                        "metrics request refused: missing or unknown bearer token"
                    );
                }
                if let (true, Some(left)) = (blocked, self.peers.blocked(peer)) {
                    // Held a second before the answer: a blocked peer makes
                    // at most one guess a second per connection it may hold.
                    return Answer {
                        response: too_many(left),
                        delay: Some(TARPIT),
                        authenticated: false,
                    };
                }
                let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
                let headers = resp.headers_mut();
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                // Browsers answer this one (the status page): the token is
                // the password.
                headers.append(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Basic realm=\"tower-breaker metrics\", charset=\"UTF-8\"",
                    ),
                );
                return refused(resp);
            }
        };
        self.serve(req, scope).await.into()
    }

    /// The answer to an authenticated request.
    async fn serve<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        scope: Arc<Scope>,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if self.status_page && (path == STATUS_PAGE_PATH || path == STATUS_JSON_PATH) {
            return self.status(req.method(), path, scope).await;
        }
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
        // Protobuf (native histograms) for a scraper that asks for it and
        // may see everything; scoped views are text.
        let wants_protobuf = route.is_none()
            && scope.is_everything()
            && req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(protobuf::accepts);
        let content_type = match route {
            None if wants_protobuf => HeaderValue::from_static(protobuf::CONTENT_TYPE),
            None => HeaderValue::from_static(PROMETHEUS_TEXT),
            Some(route) => route.content_type.clone(),
        };
        // HEAD renders nothing: the headers only.
        if req.method() == Method::HEAD {
            if route.is_some_and(|r| !r.allows(&scope)) {
                return text(StatusCode::FORBIDDEN, "forbidden for this scope\n");
            }
            return response(StatusCode::OK, content_type, Bytes::new());
        }
        let body = match route {
            None if wants_protobuf => self
                .renders
                .protobuf()
                .await
                .map(|b| Bytes::from_owner(Shared(b))),
            None => self.metrics(scope).await,
            Some(route) => match route.render(scope).await {
                Ok(body) => body,
                Err(()) => return text(StatusCode::FORBIDDEN, "forbidden for this scope\n"),
            },
        };
        match body {
            Some(body) => response(StatusCode::OK, content_type, body),
            None => text(StatusCode::INTERNAL_SERVER_ERROR, "render failed\n"),
        }
    }

    /// The status page and its data.
    async fn status(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        scope: Arc<Scope>,
    ) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let forbidden = || text(StatusCode::FORBIDDEN, "forbidden for this scope\n");
        let mut resp = if path == STATUS_PAGE_PATH {
            if !status::shows(&scope) {
                return forbidden();
            }
            response(
                StatusCode::OK,
                HeaderValue::from_static("text/html; charset=utf-8"),
                Bytes::from_static(status::PAGE.as_bytes()),
            )
        } else {
            if !status::shows(&scope) {
                return forbidden();
            }
            let state = Arc::clone(self);
            let data = blocking(move || {
                status::json(&scope, &state.redactor, &state.status_counts, || {
                    state.handle.render()
                })
            })
            .await
            .flatten();
            let Some(data) = data else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "render failed\n");
            };
            response(
                StatusCode::OK,
                HeaderValue::from_static("application/json"),
                Bytes::from(data),
            )
        };
        let headers = resp.headers_mut();
        // The page loads nothing from anywhere else, and may only call back.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        resp
    }

    /// The caller's scope: that of the credential its bearer token matches
    /// (every credential is compared, in constant time each), or everything
    /// when no credential is configured; else the `WWW-Authenticate`
    /// challenge.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Scope>, &'static str> {
        if self.credentials.is_empty() {
            return Ok(self.everything.clone());
        }
        let basic = basic_password(headers);
        let Some(given) = bearer(headers).or(basic.as_deref()) else {
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

    /// The metrics as `scope` may see them; `None` if the render failed.
    async fn metrics(self: &Arc<Self>, scope: Arc<Scope>) -> Option<Bytes> {
        if scope.is_everything() {
            let text = self.renders.text().await?;
            return Some(Bytes::from_owner(Shared(text)));
        }
        let state = Arc::clone(self);
        let body =
            blocking(move || state.handle.render_scoped_with(&scope, &state.redactor)).await?;
        Some(Bytes::from(body))
    }
}

/// A shared render as a response body, without a copy.
struct Shared<T>(Arc<T>);

impl<T: AsRef<[u8]>> AsRef<[u8]> for Shared<T> {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let content_type = HeaderValue::from_static("text/plain; charset=utf-8");
    response(status, content_type, Bytes::from_static(body.as_bytes()))
}

fn too_many(left: Duration) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts\n");
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

fn response(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
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

/// The password of an `Authorization: Basic <base64(user:password)>` header
/// (the status page's browser sends the token that way).
fn basic_password(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let split = value.iter().position(|&b| b == b' ')?;
    let (scheme, encoded) = value.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64_decode(encoded.trim_ascii())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let password = decoded[colon + 1..].to_vec();
    (!password.is_empty()).then_some(password)
}

/// Standard base64 with padding; `None` on anything else.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn sextet(b: u8) -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if input.is_empty() || input.len() % 4 != 0 || input.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let chunks = input.len() / 4;
    for (i, chunk) in input.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != chunks) {
            return None;
        }
        let mut n = 0u32;
        for &b in &chunk[..4 - pad] {
            n = n << 6 | sextet(b)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
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
    let conns: Arc<Mutex<Conns>> = Arc::default();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = admit(&state, peer) else {
                        // Dropping the stream closes it: no slot was taken.
                        continue;
                    };
                    let permit = match Arc::clone(&permits).try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        // Full: make room by closing the oldest connection
                        // that has not authenticated yet, if there is one.
                        Err(_) if evict_one(&conns) => None,
                        Err(_) => {
                            if let Some(held_back) = state.logs.busy.admit() {
                                tracing::warn!(%peer, held_back, "metrics endpoint busy, closing connection");
                            }
                            continue;
                        }
                    };
                    let (state, permits, conns, stop) =
                        (Arc::clone(&state), Arc::clone(&permits), Arc::clone(&conns), stop.clone());
                    connections.spawn(async move {
                        let permit = match permit {
                            Some(permit) => permit,
                            None => match tokio::time::timeout(EVICTION_WAIT, permits.acquire_owned()).await {
                                Ok(Ok(permit)) => permit,
                                _ => return,
                            },
                        };
                        let entry = Conns::open(&conns);
                        serve_connection(stream, peer, state, limits, stop, (permit, slot), entry).await;
                    });
                }
                Err(err) => {
                    if let Some(held_back) = state.logs.accept.admit() {
                        tracing::warn!(error = %err, held_back, "metrics endpoint accept failed");
                    }
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

/// How long a newcomer waits for the slot of the connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_millis(500);

/// How long a failed authentication of a blocked peer is held before its
/// 429: a peer guesses at most `max_connections_per_ip` tokens a second.
const TARPIT: Duration = Duration::from_secs(1);

/// The open connections, oldest first, with whether each has
/// authenticated: when every slot is taken, a newcomer closes the oldest
/// that has not, so idle or silent connections cannot starve the scraper.
#[derive(Debug, Default)]
struct Conns {
    next: u64,
    open: std::collections::BTreeMap<u64, ConnEntry>,
}

#[derive(Clone, Debug)]
struct ConnEntry {
    authenticated: Arc<AtomicBool>,
    evict: Arc<Notify>,
}

/// A connection's place in [`Conns`], left when dropped.
#[derive(Debug)]
struct ConnGuard {
    conns: Arc<Mutex<Conns>>,
    id: u64,
    entry: ConnEntry,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .open
            .remove(&self.id);
    }
}

impl Conns {
    fn open(conns: &Arc<Mutex<Conns>>) -> ConnGuard {
        let entry = ConnEntry {
            authenticated: Arc::new(AtomicBool::new(false)),
            evict: Arc::new(Notify::new()),
        };
        let mut guard = conns.lock().unwrap_or_else(|p| p.into_inner());
        guard.next += 1;
        let id = guard.next;
        guard.open.insert(id, entry.clone());
        ConnGuard {
            conns: Arc::clone(conns),
            id,
            entry,
        }
    }
}

/// Closes the oldest connection that has not authenticated; whether there
/// was one.
fn evict_one(conns: &Mutex<Conns>) -> bool {
    let mut guard = conns.lock().unwrap_or_else(|p| p.into_inner());
    let victim = guard
        .open
        .iter()
        .find(|(_, e)| !e.authenticated.load(Ordering::Relaxed))
        .map(|(id, _)| *id);
    match victim.and_then(|id| guard.open.remove(&id)) {
        Some(entry) => {
            entry.evict.notify_one();
            true
        }
        None => false,
    }
}

/// Decides at accept whether a connection may be served: its peer is in
/// the allowlist and under its own cap.
fn admit(state: &State, peer: SocketAddr) -> Option<PeerSlot> {
    let ip = peer.ip();
    if !state.allowed(ip) {
        if let Some(held_back) = state.logs.not_allowed.admit() {
            tracing::debug!(%peer, held_back, "metrics connection refused: peer not in allowlist");
        }
        return None;
    }
    let Some(slot) = state.peers.connect(ip) else {
        if let Some(held_back) = state.logs.peer_full.admit() {
            tracing::warn!(%peer, held_back, "metrics connection refused: the peer holds its share of connections");
        }
        return None;
    };
    Some(slot)
}

/// The slots a connection holds while it lives.
type Admitted = (OwnedSemaphorePermit, PeerSlot);

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
    place: ConnGuard,
) {
    let peer_ip = peer.ip();
    let served = AtomicUsize::new(0);
    let max_requests = limits.max_requests;
    let authenticated = Arc::clone(&place.entry.authenticated);
    let logs = Arc::clone(&state);
    let served = Arc::new(served);
    let service = service_fn(move |req| {
        let state = Arc::clone(&state);
        let authenticated = Arc::clone(&authenticated);
        let served = Arc::clone(&served);
        async move {
            let answer = state.respond(&req, peer_ip).await;
            if answer.authenticated {
                authenticated.store(true, Ordering::Relaxed);
            }
            let mut resp = answer.response;
            if served.fetch_add(1, Ordering::Relaxed) + 1 >= max_requests {
                // hyper closes the connection after this response.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            if let Some(delay) = answer.delay {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
    let mut conn = std::pin::pin!(builder.serve_connection(io, service));
    let evict = Arc::clone(&place.entry.evict);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = evict.notified() => {
            // Evicted for a newcomer before it authenticated: dropped.
            Ok(())
        }
        () = tokio::time::sleep(limits.connection_timeout) => {
            // Lived long enough: finish the current response, then close;
            // a response that cannot be written in time is dropped.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.write_timeout, conn).await {
                Ok(result) => result,
                Err(_) => {
                    if let Some(held_back) = logs.logs.closed.admit() {
                        tracing::debug!(%peer, held_back, "metrics connection closed at the end of its lifetime with a response unwritten");
                    }
                    Ok(())
                }
            }
        }
    };
    drop(place);
    if let Err(err) = result {
        if let Some(held_back) = logs.logs.closed.admit() {
            tracing::debug!(%peer, error = %err, held_back, "metrics endpoint connection ended with error");
        }
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

    #[test]
    fn basic_authentication_carries_the_token_as_the_password() {
        let mut headers = HeaderMap::new();
        // base64("any:the-token-0123456789")
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YW55OnRoZS10b2tlbi0wMTIzNDU2Nzg5"),
        );
        assert_eq!(
            basic_password(&headers).as_deref(),
            Some(&b"the-token-0123456789"[..])
        );
        for bad in [
            "Basic",
            "Basic !!!!",
            "Basic YW55",
            "Bearer YW55OnRvaw==",
            "Basic YW55Og==",
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
            assert_eq!(basic_password(&headers), None, "{bad}");
        }
        assert_eq!(base64_decode(b"TWFu"), Some(b"Man".to_vec()));
        assert_eq!(base64_decode(b"TWE="), Some(b"Ma".to_vec()));
        assert_eq!(base64_decode(b"TQ=="), Some(b"M".to_vec()));
        assert_eq!(base64_decode(b"TQ==TWFu"), None);
        assert_eq!(base64_decode(b"T==="), None);
    }
}
