//! tower-http's classifiers as the breaker's classifier.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_http::classify::{
    ClassifiedResponse, ClassifyEos, ClassifyResponse, GrpcFailureClass, ServerErrorsFailureClass,
    StatusInRangeFailureClass,
};

use crate::classify::http::status_kind;
use crate::classify::{Classify, FailureKind, GrpcCode, Outcome};
use crate::InFlight;

/// A [tower-http](https://docs.rs/tower-http/0.6) classifier
/// (`ServerErrorsAsFailures`, `StatusInRangeAsFailures`,
/// `GrpcErrorsAsFailures`, or your own `ClassifyResponse`) used as the
/// breaker's [`Classify`], so one classification serves the breaker and
/// `TraceLayer` alike. tower-http 0.6, the version axum 0.8 uses.
///
/// What tower-http calls a failure is a failure, of the kind
/// [`FailureClassKind`] gives its class: a status as
/// [`HttpClassifier`](crate::classify::HttpClassifier) names it (`http_5xx`,
/// `http_429`, `http_4xx`, and `http_1xx` to `http_3xx` for a range of your
/// own), a gRPC code as `grpc_<code>` (UNKNOWN outside 0..=16), an error
/// class as `error`; the rest is a success. A response that
/// tower-http can only judge at the end of its stream (gRPC without
/// `grpc-status` in the headers) is judged then: its body is a
/// [`TowerHttpBody`]. Errors of the inner service are sorted as the default
/// classifier sorts them ([`classify_error`](crate::classify::classify_error):
/// timeouts, connect errors, a nested breaker's refusal). Unlike
/// [`HttpClassifier`](crate::classify::HttpClassifier), it reads no
/// `Retry-After`.
///
/// ```
/// use tower_breaker::{classify::TowerHttp, CircuitBreakerLayer};
/// use tower_http::classify::ServerErrorsAsFailures;
///
/// let breaker = CircuitBreakerLayer::builder()
///     .name("inventory")
///     .classifier(TowerHttp::new(ServerErrorsAsFailures::new()))
///     .build()?;
/// # let _ = breaker;
/// # Ok::<(), tower_breaker::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TowerHttp<C> {
    classifier: C,
}

impl<C> TowerHttp<C> {
    /// Wraps a tower-http classifier.
    pub fn new(classifier: C) -> Self {
        TowerHttp { classifier }
    }
}

/// The failure kind of a tower-http failure class: the `kind` label of
/// `failures_total`. Implemented for tower-http's own classes; implement
/// it for the class of a classifier of your own.
pub trait FailureClassKind {
    /// The kind this failure counts as.
    fn failure_kind(&self) -> FailureKind;
}

impl FailureClassKind for ServerErrorsFailureClass {
    fn failure_kind(&self) -> FailureKind {
        match self {
            ServerErrorsFailureClass::StatusCode(status) => status_kind(status.as_u16()),
            ServerErrorsFailureClass::Error(_) => FailureKind::ERROR,
        }
    }
}

impl FailureClassKind for StatusInRangeFailureClass {
    fn failure_kind(&self) -> FailureKind {
        match self {
            StatusInRangeFailureClass::StatusCode(status) => status_kind(status.as_u16()),
            StatusInRangeFailureClass::Error(_) => FailureKind::ERROR,
        }
    }
}

impl FailureClassKind for GrpcFailureClass {
    fn failure_kind(&self) -> FailureKind {
        match self {
            GrpcFailureClass::Code(code) => grpc_kind(code.get()),
            GrpcFailureClass::Error(_) => FailureKind::ERROR,
        }
    }
}

/// The kind of a gRPC status code (`grpc_<code>`); codes outside the
/// spec's 0..=16 count as UNKNOWN, as the spec says a client must.
fn grpc_kind(code: i32) -> FailureKind {
    GrpcCode::from_i32(code).map_or(FailureKind::GRPC_UNKNOWN, GrpcCode::failure_kind)
}

fn outcome<F: FailureClassKind>(result: Result<(), F>) -> Outcome {
    match result {
        Ok(()) => Outcome::Success,
        Err(class) => Outcome::Failure(class.failure_kind()),
    }
}

impl<C, B> Classify<Response<B>> for TowerHttp<C>
where
    C: ClassifyResponse + Clone + Send + Sync + 'static,
    C::FailureClass: FailureClassKind,
    C::ClassifyEos: Send + 'static,
    B: Body,
{
    type Response = Response<TowerHttpBody<B, C::ClassifyEos>>;

    fn classify_response(&self, response: Response<B>, call: InFlight) -> Self::Response {
        let state = match self.classifier.clone().classify_response(&response) {
            ClassifiedResponse::Ready(result) => {
                call.finish(outcome(result));
                None
            }
            // A body already at its end has no trailers to wait for (a
            // server may never poll it): judged now, as its end.
            ClassifiedResponse::RequiresEos(eos) if response.body().is_end_stream() => {
                call.finish(outcome(eos.classify_eos(None)));
                None
            }
            ClassifiedResponse::RequiresEos(eos) => Some((eos, call)),
        };
        response.map(|inner| TowerHttpBody { inner, state })
    }
}

pin_project! {
    /// A response body judged at the end of its stream by a tower-http
    /// [`ClassifyEos`], made by [`TowerHttp`] when the headers could not
    /// decide. The trailers (or the end of the stream without them) decide;
    /// an error frame is a failure of kind `error`; dropped before either,
    /// the call counts as ignored. Frames pass through unchanged.
    pub struct TowerHttpBody<B, E> {
        #[pin]
        inner: B,
        state: Option<(E, InFlight)>,
    }
}

impl<B, E> TowerHttpBody<B, E> {
    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

fn judge<E>(state: &mut Option<(E, InFlight)>, trailers: Option<&HeaderMap>)
where
    E: ClassifyEos,
    E::FailureClass: FailureClassKind,
{
    if let Some((eos, call)) = state.take() {
        call.finish(outcome(eos.classify_eos(trailers)));
    }
}

impl<B, E> Body for TowerHttpBody<B, E>
where
    B: Body,
    E: ClassifyEos,
    E::FailureClass: FailureClassKind,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    judge(this.state, Some(trailers));
                }
            }
            Some(Err(_)) => {
                if let Some((_, call)) = this.state.take() {
                    call.finish(Outcome::Failure(FailureKind::ERROR));
                }
            }
            None => judge(this.state, None),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Until the call is judged, ask to be polled once more so the end of
        // the stream is seen and judged, not dropped as ignored.
        self.state.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug, E> fmt::Debug for TowerHttpBody<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerHttpBody")
            .field("inner", &self.inner)
            .field("judged", &self.state.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn grpc_codes_map_to_their_kinds() {
        assert_eq!(grpc_kind(14), FailureKind::GRPC_UNAVAILABLE);
        assert_eq!(grpc_kind(16), FailureKind::GRPC_UNAUTHENTICATED);
        assert_eq!(grpc_kind(17), FailureKind::GRPC_UNKNOWN);
        assert_eq!(grpc_kind(-1), FailureKind::GRPC_UNKNOWN);
        let kind = |status| ServerErrorsFailureClass::StatusCode(status).failure_kind();
        assert_eq!(kind(StatusCode::TOO_MANY_REQUESTS), FailureKind::HTTP_429);
        assert_eq!(kind(StatusCode::BAD_GATEWAY), FailureKind::HTTP_5XX);
        assert_eq!(kind(StatusCode::NOT_FOUND), FailureKind::HTTP_4XX);
        // Other statuses a classifier of your own fails are named as
        // `HttpClassifier` names them.
        let redirect = StatusInRangeFailureClass::StatusCode(StatusCode::FOUND);
        assert_eq!(redirect.failure_kind().as_str(), "http_3xx");
    }
}
