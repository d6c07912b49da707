//! The services of the mesh: flaky and healthy upstreams, proxies with a
//! breaker on their outgoing hop (the A -> B -> C cascade), and the gateway
//! with one breaker per upstream (`KeyedCircuitBreakerLayer`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_breaker::body::HttpBody;
use tower_breaker::classify::{HttpBodyClassifier, HttpClassifier};
use tower_breaker::keyed::ByHeader;
use tower_breaker::{
    Backoff, Builder, CircuitBreakerLayer, CircuitOpen, ConfigError, EarlyWarning,
};

use crate::faults::Faults;

/// The plain HTTP/1 client every hop uses (pooled, loopback only).
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An outgoing hop: breaker, timeout, client.
pub(crate) type Hop =
    BoxCloneSyncService<Request<Full<Bytes>>, http::Response<HttpBody<Incoming>>, BoxError>;

/// The header naming the upstream of a request; the gateway's per-upstream
/// breakers are keyed by it.
pub(crate) const X_UPSTREAM: HeaderName = HeaderName::from_static("x-upstream");

/// How long a hop waits for its upstream; a timeout is a failure.
const HOP_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build_http()
}

/// The breaker configuration of every hop in the demo: trip at 50% failures
/// (5xx, timeouts, connection errors, bodies that break) over the last 50
/// calls, judged when the body ends, open for 2 s
/// doubling to 8 s while probes fail, and warn early when the failure rate
/// trends towards the threshold within 10 s.
pub(crate) fn breaker(caller: &'static str) -> Builder<HttpBodyClassifier> {
    CircuitBreakerLayer::builder()
        .caller(caller)
        .failure_rate(0.5)
        .minimum_calls(20)
        .count_window(50)
        .half_open_permits(3)
        .open_duration(Backoff::exponential(
            Duration::from_secs(2),
            Duration::from_secs(8),
        ))
        .early_warning(
            EarlyWarning::new()
                .horizon(Duration::from_secs(10))
                .smoothing(Duration::from_secs(3))
                .level(0.8),
        )
        .on_early_warning(move |p| {
            let trip_in = match p.time_to_trip {
                Some(t) => format!("{:.1} s", t.as_secs_f64()),
                None => "-".to_owned(),
            };
            tracing::warn!(
                "early warning: {caller} -> {}: failure rate {:.0}% rising {:.1} points/s \
                 towards the {:.0}% threshold, trip expected in {trip_in}",
                p.service,
                p.rate * 100.0,
                p.slope * 100.0,
                p.threshold * 100.0,
            );
        })
        // Judged when the body ends: a 200 whose body breaks is a failure.
        .classifier(HttpClassifier::new().at_end_of_body())
}

/// Wraps the client in a breaker layer (any: plain or keyed) and a timeout.
pub(crate) fn hop<L>(breaker: L, client: HttpClient) -> Hop
where
    L: tower::Layer<tower::timeout::Timeout<HttpClient>>,
    L::Service: tower::Service<
            Request<Full<Bytes>>,
            Response = http::Response<HttpBody<Incoming>>,
            Error = BoxError,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<Full<Bytes>>>>::Future: Send + 'static,
{
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(breaker)
            .timeout(HOP_TIMEOUT)
            .service(client),
    )
}

/// Sends `GET url` through `hop` and turns the outcome into a response for
/// our own caller: the upstream's answer, 503 with `Retry-After` when the
/// breaker refused the call, 504 on a timeout, 502 on other errors.
async fn forward(hop: Hop, url: String, upstream: &'static str) -> Response {
    let request = match Request::get(url)
        .header(X_UPSTREAM, upstream)
        .body(Full::default())
    {
        Ok(request) => request,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    match hop.oneshot(request).await {
        Ok(res) => {
            let (parts, body) = res.into_parts();
            match body.collect().await {
                Ok(body) => Response::from_parts(parts, Body::from(body.to_bytes())),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        Err(e) if e.is::<CircuitOpen>() => tower_breaker::axum::error_response(&*e),
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => {
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// Binds `127.0.0.1:port` (0: any free port) and serves `router` there.
pub(crate) async fn serve(port: u16, router: Router) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(%addr, error = %e, "server failed");
        }
    });
    Ok(addr)
}

/// A flaky upstream (orders, payments): waits the injected latency, then
/// fails with 500 as often as the faults say.
pub(crate) fn flaky(faults: Arc<Faults>) -> Router {
    Router::new()
        .fallback(|State(faults): State<Arc<Faults>>| async move {
            tokio::time::sleep(faults.latency()).await;
            if faults.roll() {
                (StatusCode::INTERNAL_SERVER_ERROR, "injected failure\n")
            } else {
                (StatusCode::OK, "ok\n")
            }
        })
        .with_state(faults)
}

/// A healthy upstream (catalog): always 200 after 2 ms.
pub(crate) fn healthy() -> Router {
    Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(2)).await;
        (StatusCode::OK, "ok\n")
    })
}

/// A slow, healthy upstream: answers after 20 to 150 ms (its own
/// pseudo-random sequence), so calls pile up in bursts.
pub(crate) fn slow() -> Router {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Router::new().fallback(move || {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let millis = 20 + (crate::faults::dice(n) * 130.0) as u64;
        async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            (StatusCode::OK, "ok\n")
        }
    })
}

/// The gateway's hop to `inventory`: a breaker with a concurrency limit
/// (`max_concurrent_calls`), which the demo's load sometimes exceeds: those
/// calls are refused at once with 503 and `x-envoy-overloaded: true`.
pub(crate) fn limited(
    name: &'static str,
    upstream: SocketAddr,
    client: HttpClient,
    limit: u32,
) -> Result<Router, ConfigError> {
    let hop = hop(
        breaker("gateway")
            .name(name)
            .max_concurrent_calls(limit)
            .build()?,
        client,
    );
    Ok(Router::new().fallback(move || {
        let hop = hop.clone();
        async move { forward(hop, format!("http://{upstream}/"), name).await }
    }))
}

/// A service that calls `upstream` (named `name`) for each of its requests,
/// through a breaker: B (checkout) calls C (payments), A (frontend) calls B.
pub(crate) fn proxy(
    caller: &'static str,
    name: &'static str,
    upstream: SocketAddr,
    client: HttpClient,
) -> Result<Router, ConfigError> {
    let hop = hop(breaker(caller).name(name).build()?, client);
    Ok(Router::new().fallback(move || {
        let hop = hop.clone();
        async move { forward(hop, format!("http://{upstream}/"), name).await }
    }))
}

#[derive(Clone)]
struct Gateway {
    /// Upstream name -> address.
    upstreams: Arc<HashMap<&'static str, SocketAddr>>,
    /// One hop for all upstreams, with a breaker per upstream inside.
    hop: Hop,
    faults: Arc<Faults>,
    token: Option<Arc<str>>,
}

/// The gateway: `/<upstream>/...` goes to that upstream through its own
/// breaker, so a failing upstream does not trip calls to a healthy one; and
/// `/admin/faults` reads or sets the flaky upstreams' faults.
///
/// The per-upstream breakers are one `KeyedCircuitBreakerLayer` keyed by the
/// `x-upstream` header the gateway sets: each key gets its own breaker, named
/// after it (`service="orders"`, `service="catalog"`), built from one
/// configuration, with its own `gateway -> <key>` dependency edge.
pub(crate) fn gateway(
    upstreams: &[(&'static str, SocketAddr)],
    client: HttpClient,
    faults: Arc<Faults>,
    token: Option<String>,
) -> Result<Router, ConfigError> {
    let keyed = breaker("gateway")
        .keyed(ByHeader::new(X_UPSTREAM))
        .max_keys(16)
        .build()?;
    let state = Gateway {
        upstreams: Arc::new(upstreams.iter().copied().collect()),
        hop: hop(keyed, client),
        faults,
        token: token.map(Arc::from),
    };
    Ok(Router::new()
        .route("/admin/faults", get(admin).post(admin))
        .fallback(route)
        .with_state(state))
}

async fn route(State(gw): State<Gateway>, uri: Uri) -> Response {
    let path = uri.path();
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let Some((&name, addr)) = gw.upstreams.get_key_value(first) else {
        let mut known: Vec<_> = gw.upstreams.keys().collect();
        known.sort();
        let body = format!("no upstream {first:?}; try one of {known:?}\n");
        return (StatusCode::NOT_FOUND, body).into_response();
    };
    let path_and_query = uri.path_and_query().map_or(path, |p| p.as_str());
    forward(gw.hop, format!("http://{addr}{path_and_query}"), name).await
}

/// `GET /admin/faults`: the current faults as JSON.
/// `POST /admin/faults?failure_rate=0.9&latency_ms=100`: set them by hand
/// (pauses the schedule); `POST /admin/faults?schedule=resume`: resume it.
async fn admin(
    State(gw): State<Gateway>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(token) = &gw.token {
        let expected = format!("Bearer {token}");
        let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if given != Some(expected.as_bytes()) {
            return (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response();
        }
    }
    if method == Method::POST {
        let mut rate = None;
        let mut latency = None;
        let mut resume = false;
        for pair in uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "failure_rate" => match value.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => rate = Some(r),
                    _ => return bad_request("failure_rate must be a number in 0..=1"),
                },
                "latency_ms" => match value.parse::<u64>() {
                    Ok(ms) if ms <= 10_000 => latency = Some(Duration::from_millis(ms)),
                    _ => return bad_request("latency_ms must be a whole number in 0..=10000"),
                },
                "schedule" if value == "resume" => resume = true,
                _ => {
                    return bad_request("expected failure_rate=R, latency_ms=N or schedule=resume")
                }
            }
        }
        if resume {
            gw.faults.resume_schedule();
            tracing::info!("admin: faults follow the schedule again");
        } else if rate.is_some() || latency.is_some() {
            gw.faults.set_manual(rate, latency);
            tracing::info!(faults = %gw.faults.to_json().trim_end(), "admin: faults set by hand, schedule paused");
        }
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        gw.faults.to_json(),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
}
