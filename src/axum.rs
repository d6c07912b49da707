//! axum integration: rejections as `503 Service Unavailable`.
//!
//! [`CircuitOpen`] implements `IntoResponse`. axum's `Router::layer` wants
//! services that never fail (`Error: Into<Infallible>`), and the breaker's
//! error is a [`BoxError`]: put [`RejectWith503Layer`] outside it to turn a
//! rejection into its 503 and any other error into a bare 500, without a
//! `HandleErrorLayer`.
//!
//! Layer order decides what a panic or a timeout means. Outermost first:
//! `RejectWith503Layer`, the breaker, then tower-http's `CatchPanicLayer`
//! and `tower::timeout::TimeoutLayer` *inside* it. A panic caught inside is
//! a 500, a failure; caught outside, it unwinds through the breaker, whose
//! call is dropped and ignored. A timeout inside is a failure of kind
//! `timeout` (answered 500); outside, it drops the breaker's call, ignored.
//! tower-http's `TimeoutLayer` answers with a status instead of an error:
//! inside the breaker, choose one the classifier fails (its default 408 is
//! a success for [`HttpClassifier`](crate::classify::HttpClassifier)
//! unless `failure_statuses(408..=408)`).
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower::ServiceBuilder;
//! use tower_breaker::{axum::RejectWith503Layer, classify::HttpClassifier, CircuitBreakerLayer};
//!
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("catalog")
//!     .classifier(HttpClassifier::new())
//!     .build()
//!     .unwrap();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(ServiceBuilder::new().layer(RejectWith503Layer::new()).layer(breaker));
//! # let _ = app;
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use pin_project_lite::pin_project;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use crate::CircuitOpen;

/// The body of a rejection. It names no upstream: the breaker's name is
/// internal.
const REJECTED_BODY: &str = "service unavailable: circuit open";

/// The body of a refusal for capacity.
const OVERLOADED_BODY: &str = "service unavailable: concurrency limit reached";

impl IntoResponse for CircuitOpen {
    /// `503 Service Unavailable`, with `Retry-After` in whole seconds
    /// (rounded up) when the breaker knows when it will probe again. A
    /// refusal for capacity says so in its body and, as Envoy does for its
    /// overflows, with `x-envoy-overloaded: true`, without `Retry-After`.
    fn into_response(self) -> Response {
        let body = if self.is_capacity() {
            OVERLOADED_BODY
        } else {
            REJECTED_BODY
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(after) = self.retry_after() {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.is_capacity() {
            headers.insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        }
        response
    }
}

/// The response for an error of the wrapped service: a [`CircuitOpen`]
/// anywhere in its source chain gives its 503, anything else a bare 500.
pub fn error_response(error: &(dyn std::error::Error + 'static)) -> Response {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(open) = err.downcast_ref::<CircuitOpen>() {
            return open.clone().into_response();
        }
        current = err.source();
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// A [`Layer`] that makes a breaker's service infallible for axum; see the
/// [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectWith503Layer {
    _priv: (),
}

impl RejectWith503Layer {
    /// The layer.
    pub fn new() -> Self {
        RejectWith503Layer { _priv: () }
    }
}

impl<S> Layer<S> for RejectWith503Layer {
    type Service = RejectWith503<S>;

    fn layer(&self, inner: S) -> RejectWith503<S> {
        RejectWith503 { inner, error: None }
    }
}

/// A service answering errors of its inner service with responses: 503
/// for a [`CircuitOpen`], 500 for anything else. Made by
/// [`RejectWith503Layer`].
pub struct RejectWith503<S> {
    inner: S,
    /// An error from the inner `poll_ready`, answered by the next call.
    error: Option<BoxError>,
}

impl<S: Clone> Clone for RejectWith503<S> {
    fn clone(&self) -> Self {
        RejectWith503 {
            inner: self.inner.clone(),
            error: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RejectWith503<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectWith503")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for RejectWith503<S>
where
    S: Service<Req>,
    S::Response: IntoResponse,
    S::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.error.is_none() {
            if let Err(e) = ready!(self.inner.poll_ready(cx)) {
                self.error = Some(e.into());
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.error.take() {
            Some(error) => ResponseFuture {
                kind: Kind::Failed {
                    response: Some(error_response(&*error)),
                },
            },
            None => ResponseFuture {
                kind: Kind::Called {
                    future: self.inner.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// The future of [`RejectWith503`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Failed { response: Option<Response> },
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<R, E>>,
    R: IntoResponse,
    E: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => Poll::Ready(Ok(match ready!(future.poll(cx)) {
                Ok(response) => response.into_response(),
                Err(error) => error_response(&*error.into()),
            })),
            KindProj::Failed { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::State;

    #[test]
    fn rejection_is_503_with_rounded_up_retry_after() {
        let open = CircuitOpen::new(
            "internal-name".into(),
            State::Open,
            Some(Duration::from_millis(2_001)),
        );
        let response = open.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let forced = CircuitOpen::new("x".into(), State::ForcedOpen, None).into_response();
        assert!(!forced.headers().contains_key(header::RETRY_AFTER));
        assert!(!forced.headers().contains_key("x-envoy-overloaded"));
    }

    #[tokio::test]
    async fn a_refusal_for_capacity_says_so() {
        use http_body_util::BodyExt;
        let full = CircuitOpen::at_capacity("x".into(), State::Closed, 4).into_response();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.headers()["x-envoy-overloaded"], "true");
        assert!(!full.headers().contains_key(header::RETRY_AFTER));
        let body = full.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], OVERLOADED_BODY.as_bytes());
    }

    #[test]
    fn other_errors_are_500_and_nested_rejections_503() {
        let other = std::io::Error::other("secret detail");
        assert_eq!(
            error_response(&other).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        #[derive(Debug)]
        struct Wrapper(CircuitOpen);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let nested = Wrapper(CircuitOpen::new("x".into(), State::Open, None));
        assert_eq!(
            error_response(&nested).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
