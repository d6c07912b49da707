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
//!     .bearer_token("a-token-of-16-bytes-or-more")
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

use std::time::Duration;

use metrics_exporter_prometheus::Matcher;
/// The exporter's types this API takes and returns, re-exported so naming
/// them needs no direct dependency on the matching version.
pub use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

mod endpoint;
mod error;
pub(crate) mod exposition;
mod guard;
mod histogram;
mod io;
mod net;
mod protobuf;
mod recorder;
mod renders;
pub(crate) mod scope;
mod status;
mod store;

pub use self::endpoint::{
    MetricsEndpoint, MetricsEndpointBuilder, RouteHandler, ScopedRouteHandler, ServingEndpoint,
    DEFAULT_AUTH_FAILURES, DEFAULT_BIND, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_REQUESTS_PER_CONNECTION,
    DEFAULT_RENDER_SHARING, DEFAULT_WRITE_TIMEOUT, MAX_CONNECTIONS, MAX_RENDER_SHARING,
    MAX_TIMEOUT, MIN_TOKEN_LEN,
};
pub use self::error::ExporterError;
pub use self::recorder::{
    BreakerRecorder, MetricsHandle, RecorderBuilder, DEFAULT_SERIES_EXPIRY, MAX_SERIES_EXPIRY,
};
pub use self::scope::{Scope, ScopeError, View};
pub use self::status::{STATUS_JSON_PATH, STATUS_PAGE_PATH};

/// Histogram buckets (seconds) for metrics ending in `request_duration_seconds`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Histogram buckets (seconds, 1 s to 1 h) for metrics ending in `recovery_duration_seconds`.
pub const RECOVERY_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// How often the task spawned by [`install`] calls [`MetricsHandle::run_upkeep`].
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

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

/// Builds a [`BreakerRecorder`] with the defaults of [`RecorderBuilder`]
/// without installing it, e.g. for [`metrics::with_local_recorder`] or
/// tests. The caller is responsible for upkeep.
pub fn recorder() -> (BreakerRecorder, MetricsHandle) {
    RecorderBuilder::new()
        .build()
        .expect("the default settings are valid")
}

/// Builds the recorder of [`recorder`] and installs it as the global
/// recorder.
///
/// If called inside a tokio runtime (`tokio::runtime::Handle::try_current()` is `Ok`), a task
/// is spawned on that runtime that calls [`MetricsHandle::run_upkeep`] every
/// [`UPKEEP_INTERVAL`] (5 s) for as long as the runtime lives. Outside a runtime nothing is
/// spawned and the caller must call `run_upkeep` periodically itself.
/// [`RecorderBuilder::install`] does the same with other settings.
///
/// # Errors
///
/// Fails if a global recorder is already installed.
pub fn install() -> Result<MetricsHandle, ExporterError> {
    RecorderBuilder::new().install()
}

/// Spawns the upkeep task on the current tokio runtime, if there is one.
fn spawn_upkeep(handle: &MetricsHandle) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let upkeep = handle.clone();
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick completes immediately
            loop {
                ticks.tick().await;
                // Off the runtime's workers: a sweep or drain can be long.
                let upkeep = upkeep.clone();
                let _ = tokio::task::spawn_blocking(move || upkeep.run_upkeep()).await;
            }
        });
    }
}
