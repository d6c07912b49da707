//! The breaker's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

use crate::breaker::InFlight;
use crate::classify::Classify;
use crate::error::CircuitOpen;

pin_project! {
    /// The future of [`CircuitBreaker`](crate::CircuitBreaker): the inner
    /// call being judged, or a rejection.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            call: Option<InFlight>,
            classifier: C,
        },
        Rejected {
            // Boxed when the call is refused: the error it is returned as.
            error: Option<BoxError>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(future: F, call: InFlight, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                future,
                call: Some(call),
                classifier,
            },
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        Self::refused(Box::new(error))
    }

    /// A refusal already boxed as the error it travels as.
    #[inline]
    pub(crate) fn refused(error: BoxError) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Classify<Res>,
{
    type Output = Result<C::Response, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                call,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                // Taken in each arm: the failure path gets the slot, so the
                // record of a success never has its address taken and its
                // fields stay in registers.
                Poll::Ready(match result {
                    Ok(response) => Ok(classifier.classify_response(response, taken(call))),
                    Err(error) => Err(failed::<Res, _, _>(error, call, classifier)),
                })
            }
            KindProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

/// A call that failed, judged, with its error boxed: out of line, so the
/// success path stays small enough to inline.
#[inline(never)]
fn failed<Res, E: Into<BoxError>, C: Classify<Res>>(
    error: E,
    call: &mut Option<InFlight>,
    classifier: &C,
) -> BoxError {
    let error: BoxError = error.into();
    let outcome = classifier.classify_error(&*error);
    // Taken just before it is finished: nothing that may unwind runs in
    // between, so the record stays in registers. (Should the conversion or
    // the classifier panic, the record stays in the future, whose drop
    // counts the call as ignored, as before.)
    taken(call).finish(outcome);
    error
}

/// The call's record, taken once its outcome is known.
#[inline(always)]
fn taken(call: &mut Option<InFlight>) -> InFlight {
    call.take().expect("ResponseFuture polled after completion")
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_tuple("ResponseFuture").field(&kind).finish()
    }
}
