//! tonic integration: rejections as `UNAVAILABLE`.
//!
//! A breaker in a tonic client stack fails with a [`BoxError`], which a
//! generated client turns into a `Status`; without help a rejection becomes
//! UNKNOWN. Map the stack's errors with [`status_from_error`] so it becomes
//! UNAVAILABLE, the code clients retry and back off on.
//!
//! **Client side**, outermost first: `map_err(status_from_error)`, the
//! breaker, then the `Channel`. tonic's own deadline (`Endpoint::timeout`,
//! `grpc-timeout`) runs inside the channel, so the breaker sees it and
//! records `timeout`; a connect failure (a name that does not resolve
//! included) is `connect`; a received CANCELLED is a failure (see
//! [`GrpcClassifier`](crate::classify::GrpcClassifier)). A keyed breaker
//! with [`ByAuthority`](crate::keyed::ByAuthority) needs the authority in
//! the request: generated clients send path-only URIs and the channel adds
//! its origin inside itself, so build the client with `with_origin`
//! (`HealthClient::with_origin(svc, "http://orders:50051".parse()?)`), or
//! every call goes to the fallback key (a warning says so once).
//!
//! ```no_run
//! use tower::ServiceBuilder;
//! use tower_breaker::{classify::GrpcClassifier, tonic::status_from_error, CircuitBreakerLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("health")
//!     .classifier(GrpcClassifier::new())
//!     .build()?;
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let svc = ServiceBuilder::new()
//!     .map_err(status_from_error)
//!     .layer(breaker)
//!     .service(channel);
//! let mut client = tonic_health::pb::health_client::HealthClient::new(svc);
//! let reply = client.check(tonic_health::pb::HealthCheckRequest::default()).await;
//! # let _ = reply;
//! # Ok(())
//! # }
//! ```
//!
//! **Server side**, in `Server::builder().layer(...)`: the same order,
//! `map_err(status_from_error)` outside the breaker. Without it tonic
//! answers a refusal with an HTTP/2 reset, which the client sees as INTERNAL
//! "h2 protocol error", not retried and without the wait; with it the
//! client gets UNAVAILABLE with `retry-after` and `grpc-retry-pushback-ms`.
//! `Server::layer` wraps every service of the server, `grpc.health.v1`
//! included: an open breaker then fails health checks too, which drains
//! the instance; key the breaker by service with
//! [`ByPath::segments(1)`](crate::keyed::ByPath::segments) to judge health
//! apart. `Server::timeout` runs outside these layers: when it fires the
//! breaker's call is dropped and counts as ignored, so put a
//! `tower::timeout::TimeoutLayer` inside the breaker for timeouts that count
//! (`status_from_error` answers it with DEADLINE_EXCEEDED).
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_breaker::{classify::GrpcClassifier, tonic::status_from_error, CircuitBreakerLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("inventory-server")
//!     .classifier(GrpcClassifier::new())
//!     .build()?;
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! tonic::transport::Server::builder()
//!     .layer(
//!         ServiceBuilder::new()
//!             .map_err(status_from_error)                            // refusals: UNAVAILABLE
//!             .layer(breaker)
//!             .timeout(Duration::from_secs(5)),                      // inside: counts as `timeout`
//!     )
//!     .add_service(health)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```

use ::tonic::{Code, Status};
use tower::BoxError;

use crate::classify::GrpcCode;
use crate::CircuitOpen;

impl From<CircuitOpen> for Status {
    /// UNAVAILABLE, with `retry-after` (whole seconds, rounded up) and
    /// `grpc-retry-pushback-ms` metadata when the breaker knows when it will
    /// probe again. The message names no upstream. A refusal for capacity is
    /// UNAVAILABLE "concurrency limit reached", with `x-envoy-overloaded:
    /// true` metadata and no pushback.
    fn from(open: CircuitOpen) -> Status {
        if open.is_capacity() {
            let mut status = Status::unavailable("concurrency limit reached");
            status
                .metadata_mut()
                .insert("x-envoy-overloaded", "true".parse().expect("ascii"));
            return status;
        }
        let mut status = Status::unavailable("circuit open");
        if let Some(after) = open.retry_after() {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            let metadata = status.metadata_mut();
            metadata.insert("retry-after", seconds.into());
            metadata.insert("grpc-retry-pushback-ms", millis.into());
        }
        status
    }
}

/// Turns a breaker stack's error into a `Status`: a [`CircuitOpen`] anywhere
/// in the source chain becomes UNAVAILABLE (see `From<CircuitOpen>`), tower's
/// or tokio's `Elapsed` (a `TimeoutLayer` inside the breaker) becomes
/// DEADLINE_EXCEEDED, and anything else goes through `Status::from_error`.
///
/// Use it on both sides: outside the breaker in a client's channel stack,
/// and outside the breaker in a server's `Server::layer`, where without it
/// tonic answers a refusal with an HTTP/2 reset (the client sees INTERNAL,
/// no retry, no wait).
pub fn status_from_error(error: BoxError) -> Status {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(err) = current {
        if let Some(open) = err.downcast_ref::<CircuitOpen>() {
            return open.clone().into();
        }
        if err.is::<tower::timeout::error::Elapsed>() || err.is::<tokio::time::error::Elapsed>() {
            return Status::deadline_exceeded(err.to_string());
        }
        current = err.source();
    }
    Status::from_error(error)
}

impl From<GrpcCode> for Code {
    fn from(code: GrpcCode) -> Code {
        Code::from_i32(code.code())
    }
}

impl From<Code> for GrpcCode {
    fn from(code: Code) -> GrpcCode {
        GrpcCode::from_i32(code as i32).unwrap_or(GrpcCode::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::State;

    #[test]
    fn rejection_is_unavailable_with_pushback() {
        let open = CircuitOpen::new("x".into(), State::Open, Some(Duration::from_millis(1_500)));
        let status = status_from_error(Box::new(open));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "1500"
        );
        let full = status_from_error(Box::new(CircuitOpen::at_capacity(
            "x".into(),
            State::Closed,
            4,
        )));
        assert_eq!(full.code(), Code::Unavailable);
        assert_eq!(full.message(), "concurrency limit reached");
        assert_eq!(full.metadata().get("x-envoy-overloaded").unwrap(), "true");
        assert!(full.metadata().get("grpc-retry-pushback-ms").is_none());
        let other = status_from_error(Box::new(Status::not_found("gone")));
        assert_eq!(other.code(), Code::NotFound);
        let plain = status_from_error("boom".into());
        assert_eq!(plain.code(), Code::Unknown);
        let elapsed = status_from_error(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(elapsed.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn grpc_classifier_judges_status_errors_by_code() {
        use crate::classify::{Classify, GrpcClassifier};
        use crate::{FailureKind, Outcome};
        let judge = |e: &(dyn std::error::Error + 'static)| {
            <GrpcClassifier as Classify<http::Response<http_body_util::Empty<bytes::Bytes>>>>::classify_error(
                &GrpcClassifier::new(),
                e,
            )
        };
        assert_eq!(
            judge(&Status::unavailable("down")),
            Outcome::Failure(FailureKind::GRPC_UNAVAILABLE)
        );
        assert_eq!(judge(&Status::not_found("gone")), Outcome::Success);
        // Received CANCELLED: the server or a proxy spoke.
        assert_eq!(
            judge(&Status::cancelled("bye")),
            Outcome::Failure(FailureKind::GRPC_CANCELLED)
        );
        // tonic's own client deadline, alone or as a status's source.
        assert_eq!(
            judge(&tonic::TimeoutExpired(())),
            Outcome::Failure(FailureKind::TIMEOUT)
        );
        let connect = tonic::ConnectError("dns error".into());
        assert_eq!(judge(&connect), Outcome::Failure(FailureKind::CONNECT));
        let open = CircuitOpen::new("x".into(), State::Open, None);
        assert_eq!(judge(&open), Outcome::Ignored);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(judge(&refused), Outcome::Failure(FailureKind::CONNECT));
    }

    #[test]
    fn codes_convert_both_ways() {
        for code in GrpcCode::ALL {
            assert_eq!(GrpcCode::from(Code::from(code)), code);
        }
    }
}
