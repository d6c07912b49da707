//! The breaker's service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::BoxError;
use tower_service::Service;

use crate::breaker::Breaker;
use crate::classify::{Classify, DefaultClassifier};
use crate::future::ResponseFuture;
use crate::state::{Refusal, Ticket};
use crate::CircuitBreakerHandle;

/// A service behind a circuit breaker. Made by [`CircuitBreakerLayer`].
///
/// The decision to let a call through is taken in `poll_ready`: while the
/// breaker refuses, `poll_ready` is ready at once without polling the inner
/// service, and the next `call` fails with [`CircuitOpen`] without calling
/// it. Clones share the breaker; each clone holds its own readiness.
///
/// The decision is re-checked, cheaply, before it is used:
///
/// - `call` re-checks a ticket taken in `poll_ready`: if the breaker moved
///   since (a trip, `force_open()`, a reset), the call is decided again, so
///   callers that waited for the inner service's readiness (behind
///   `Buffer`, `ConcurrencyLimit`, a tonic `Channel` under backpressure) are
///   refused after a trip instead of going through.
/// - A half-open probe permit is taken by `call`, not by `poll_ready`: a
///   service made ready and kept, or dropped, without a call holds no
///   permit, so it can never wedge the breaker half-open.
/// - Each `poll_ready` decides a refusal afresh: a service made ready while
///   the breaker refused lets the call through once the breaker has
///   recovered and it is polled again (as balancers and `Buffer` do). A
///   refusal taken by `poll_ready` and followed by `call` is delivered by
///   that `call`, because the inner service was not polled.
/// - Refusals are counted when `call` delivers them, not when `poll_ready`
///   decides them.
///
/// [`CircuitBreakerLayer`]: crate::CircuitBreakerLayer
/// [`CircuitOpen`]: crate::CircuitOpen
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_breaker::{CircuitBreakerLayer, CircuitOpen};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CircuitBreakerLayer::builder().name("doc-service").build().unwrap();
/// let svc = layer.layer(service_fn(|_: ()| async { Ok::<_, std::io::Error>("pong") }));
/// svc.handle().force_open();
/// let err = svc.oneshot(()).await.unwrap_err();
/// assert!(err.is::<CircuitOpen>());
/// # }
/// ```
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    breaker: Arc<Breaker>,
    classifier: C,
    /// The admission `poll_ready` decided for `call`: one word.
    ticket: Option<Ticket>,
    /// Or the refusal it decided.
    refusal: Option<Refusal>,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn from_parts(inner: S, breaker: Arc<Breaker>, classifier: C) -> Self {
        CircuitBreaker {
            inner,
            breaker,
            classifier,
            ticket: None,
            refusal: None,
        }
    }

    /// A handle to watch and steer the breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.breaker.clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        // Readiness belongs to one instance: a clone starts unready.
        CircuitBreaker {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
            ticket: None,
            refusal: None,
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // A ticket stands while the breaker has not moved; a refusal is
        // decided afresh.
        if !self.ticket.is_some_and(|t| self.breaker.still_ready(t)) {
            match self.breaker.check() {
                Ok(ticket) => {
                    self.ticket = Some(ticket);
                    self.refusal = None;
                }
                Err(refusal) => {
                    self.ticket = None;
                    self.refusal = Some(refusal);
                    return Poll::Ready(Ok(()));
                }
            }
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                self.ticket = None;
                Poll::Ready(Err(e.into()))
            }
            other => other.map_err(Into::into),
        }
    }

    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        // Called without poll_ready: decide now, and leave the inner
        // service's readiness contract to the inner service.
        let started = match self.ticket.take() {
            Some(ticket) => self.breaker.start(ticket),
            None => self.breaker.start_unready(self.refusal.take()),
        };
        match started {
            Ok(call) => {
                let future = self.inner.call(req);
                ResponseFuture::called(future, call, self.classifier.clone())
            }
            Err(error) => ResponseFuture::refused(error),
        }
    }
}
