//! A [tower] circuit breaker for service meshes, with first-class metrics.
//!
//! [`CircuitBreakerLayer`] wraps any [`tower::Service`] and runs the breaker
//! state machine: **Closed** (requests flow), **Open** (requests are refused
//! without reaching the inner service), **HalfOpen** (a few probes test the
//! upstream), plus the overrides **Disabled**, **ForcedOpen** and
//! **MetricsOnly** (shadow mode). See [`state`] for the machine.
//!
//! Every signal goes out through the [`metrics`](::metrics) facade: state,
//! transitions, error and slow-call rates, requests, latency, rejections,
//! failures by kind, recovery time. Whatever recorder you install collects
//! them; the crate never installs one itself. The `prometheus` feature adds a
//! helper that does, and a secured `/metrics` endpoint.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_breaker::{Backoff, CircuitBreakerLayer, CircuitOpen};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("inventory")
//!     .consecutive_failures(5)
//!     .failure_rate(0.5)
//!     .minimum_calls(20)
//!     .open_duration(Backoff::exponential(Duration::from_secs(5), Duration::from_secs(120)))
//!     .build()?;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service(service_fn(|req: String| async move { Ok::<_, std::io::Error>(req) }));
//!
//! match svc.oneshot("hello".to_owned()).await {
//!     Ok(body) => assert_eq!(body, "hello"),
//!     Err(e) if e.is::<CircuitOpen>() => { /* fail fast: the upstream is down */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Outcomes
//!
//! By default an `Err` from the inner service is a failure and an `Ok` a
//! success. A [`Classify`](classify::Classify) decides otherwise: for HTTP
//! status codes, gRPC statuses in trailers, or your own rules.
//!
//! - `classify::HttpClassifier` (feature `http`): 5xx and 429 fail, and a
//!   failing response's `Retry-After` keeps the breaker open longer; it
//!   judges at the headers, or with `at_end_of_body()` when the body ends,
//!   so a body that breaks after a 200 is a failure.
//! - `classify::GrpcClassifier` (feature `grpc`): `grpc-status` from headers
//!   or trailers, with `grpc-retry-pushback-ms`.
//! - `axum::RejectWith503Layer` (feature `axum`) puts a breaker in an axum
//!   `Router`, answering rejections with 503; `tonic::status_from_error`
//!   (feature `tonic`) turns them into UNAVAILABLE in a tonic client.
//!
//! # Time
//!
//! The breaker reads time from a [`Clock`]: the system clock by default,
//! [`Clock::tokio`] to follow `tokio::time::pause()` in tests,
//! [`Clock::manual`], or [`Clock::coarse`] where reading the TSC is slow.
//! With no recorder installed and no policy that needs durations, the
//! success path reads no clock at all.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
mod backoff;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod body;
mod breaker;
pub mod capacity;
pub mod classify;
mod clock;
pub mod dependency;
mod error;
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub mod exporter;
mod future;
mod handle;
pub mod keyed;
mod layer;
mod live;
pub mod metrics;
mod padded;
mod policy;
pub mod predict;
mod service;
pub mod state;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;
mod window;

pub use crate::backoff::Backoff;
pub use crate::breaker::InFlight;
pub use crate::classify::{FailureKind, Outcome};
pub use crate::clock::{Clock, ManualClock};
pub use crate::error::{CircuitOpen, ConfigError};
pub use crate::future::ResponseFuture;
pub use crate::handle::CircuitBreakerHandle;
pub use crate::keyed::{KeyExtractor, KeyedBuilder, KeyedCircuitBreaker, KeyedCircuitBreakerLayer};
pub use crate::layer::{Builder, CircuitBreakerLayer, MAX_WINDOW_SIZE};
pub use crate::metrics::{MetricsLevel, MetricsNaming};
pub use crate::predict::{EarlyWarning, Prediction};
pub use crate::service::CircuitBreaker;
pub use crate::state::{Reason, Snapshot, State, StateChange};

/// The parsers, for the fuzz targets. Not a stable API.
#[cfg(feature = "http")]
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::classify::parse::{grpc_retry_pushback_ms, grpc_status, retry_after};

    /// Parses an exposition and renders it in every view of a scope:
    /// `None` if it does not parse; else each view's output, which must
    /// parse again.
    #[cfg(feature = "prometheus")]
    pub fn exposition_views(text: &str, patterns: &[&str]) -> Option<Vec<String>> {
        use crate::exporter::scope::{render, Redactor};
        use crate::exporter::{Scope, View};
        crate::exporter::exposition::parse(text).ok()?;
        let redactor = Redactor::with_secret(b"fuzz");
        let scope = Scope::services(patterns.iter().copied());
        let views = [View::Full, View::Aggregate, View::Redacted]
            .into_iter()
            .map(|view| {
                render(text, &scope.clone().with_view(view), &redactor).expect("parsed once")
            })
            .collect();
        Some(views)
    }

    /// Whether `text` parses as a Prometheus text exposition.
    #[cfg(feature = "prometheus")]
    pub fn exposition_parses(text: &str) -> bool {
        crate::exporter::exposition::parse(text).is_ok()
    }
}

/// The README's examples, compiled as doctests (they need the optional
/// features they show).
#[cfg(all(
    doctest,
    feature = "axum",
    feature = "tonic",
    feature = "prometheus",
    feature = "tower-http"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The error type of the breaker's service: the inner error, or [`CircuitOpen`].
pub use tower::BoxError;
