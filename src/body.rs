//! Response bodies that finish their call at the end of the stream.
//!
//! [`GrpcBody`] (feature `grpc`) is judged by the gRPC status in its
//! trailers; [`HttpBody`] by the response's HTTP status once the body has
//! been read to its end without breaking.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

#[cfg(feature = "grpc")]
use crate::classify::GrpcClassifier;
use crate::classify::{FailureKind, Outcome};
use crate::InFlight;

#[cfg(feature = "grpc")]
pin_project! {
    /// A gRPC response body that finishes its call when the status arrives.
    ///
    /// Made by [`GrpcClassifier`]. The call is finished by the trailers
    /// frame, by the end of the stream (no trailers: UNKNOWN), or by an
    /// error frame (a failure of kind `error`). Once the response streams
    /// (after its first message, nothing more is ready, or a second message
    /// comes), its timing stops and a half-open probe is judged a success,
    /// keeping its slot of a concurrency limit until the stream ends, unless
    /// the classifier says
    /// [`StreamJudgement::WholeStream`](crate::classify::StreamJudgement).
    /// Dropped before any of those,
    /// the call counts as ignored and gives back its half-open permit.
    ///
    /// Frames pass through unchanged.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_breaker::{classify::GrpcClassifier, CircuitBreakerLayer, State};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder()
    ///     .name("doc-grpc-body")
    ///     .consecutive_failures(1)
    ///     .classifier(GrpcClassifier::new())
    ///     .build()
    ///     .unwrap();
    /// let svc = layer.layer(service_fn(|_: ()| async {
    ///     // A stream that ends without trailers: no status, so UNKNOWN.
    ///     let body = Full::new(Bytes::from_static(b"\0\0\0\0\0"));
    ///     let res = http::Response::builder().header("content-type", "application/grpc");
    ///     Ok::<_, std::convert::Infallible>(res.body(body).unwrap())
    /// }));
    /// let body = svc.oneshot(()).await.unwrap().into_body();
    /// assert_eq!(layer.handle().state(), State::Closed); // not judged yet
    /// let _ = body.collect().await;
    /// assert_eq!(layer.handle().state(), State::Open);
    /// # }
    /// ```
    pub struct GrpcBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        call: Option<InFlight>,
        classifier: GrpcClassifier,
        // Messages seen, up to 2; 2 also once the response streams.
        messages: u8,
        // A frame read ahead of the reader, after the first message, to see
        // whether more was ready (a unary answer's status) or not (a stream).
        next: Option<Option<Result<Frame<B::Data>, B::Error>>>,
    }
}

#[cfg(feature = "grpc")]
impl<B: Body> GrpcBody<B> {
    pub(crate) fn new(inner: B, call: InFlight, classifier: GrpcClassifier) -> Self {
        GrpcBody {
            inner,
            call: Some(call),
            classifier,
            messages: 0,
            next: None,
        }
    }

    /// A body whose call was already finished from the headers.
    pub(crate) fn finished(inner: B) -> Self {
        GrpcBody {
            inner,
            call: None,
            classifier: GrpcClassifier::new(),
            messages: 0,
            next: None,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body; the call, if still open, counts as ignored.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

#[cfg(feature = "grpc")]
impl<B> Body for GrpcBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let streams = this.classifier.settles_at_first_message();
        let frame = match this.next.take() {
            Some(frame) => frame,
            None => match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    // After its first message, nothing more is ready: the
                    // response streams (see `StreamJudgement`).
                    if streams && *this.messages == 1 {
                        *this.messages = 2;
                        *this.call = this.call.take().map(InFlight::streaming);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(frame) => frame,
            },
        };
        let call = match &frame {
            Some(Ok(data)) if !data.is_trailers() => {
                if *this.messages < 2 {
                    *this.messages += 1;
                    if streams && *this.messages == 1 && this.call.is_some() {
                        // The first message: read ahead once, now, so that
                        // whether the response streams does not wait for
                        // the reader to ask for more.
                        match this.inner.as_mut().poll_frame(cx) {
                            Poll::Pending => {
                                *this.messages = 2;
                                *this.call = this.call.take().map(InFlight::streaming);
                            }
                            Poll::Ready(next) => *this.next = Some(next),
                        }
                    } else if streams && *this.messages == 2 {
                        // A second message: the response streams.
                        *this.call = this.call.take().map(InFlight::streaming);
                    }
                }
                None
            }
            _ => this.call.take(),
        };
        match call {
            // A streaming probe, judged already: its slot goes back now.
            Some(call) if call.is_judged() => drop(call),
            Some(call) => match &frame {
                Some(Ok(trailers)) => this.classifier.finish_with(trailers.trailers_ref(), call),
                Some(Err(_)) => call.finish(Outcome::Failure(FailureKind::ERROR)),
                None => this.classifier.finish_with(None, call),
            },
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Until the call is finished (and what was read ahead handed on),
        // ask to be polled once more so the end of the stream is seen and
        // judged, not dropped as ignored.
        self.call.is_none() && self.next.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(feature = "grpc")]
impl<B: Body> fmt::Debug for GrpcBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcBody")
            .field("finished", &self.call.is_none())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// An HTTP response body that finishes its call when the body ends.
    ///
    /// Made by [`HttpBodyClassifier`](crate::classify::HttpBodyClassifier)
    /// for a response whose status does not fail (a failing status is judged
    /// at the headers). The call is finished with the status's outcome by
    /// the end of the stream or a trailers frame, or as a failure of kind
    /// `error` by an error frame (an HTTP/1.1 body cut short, an HTTP/2
    /// `RST_STREAM`). Dropped before any of those, the call counts as
    /// ignored and gives back its half-open permit.
    ///
    /// Frames pass through unchanged.
    pub struct HttpBody<B> {
        #[pin]
        inner: B,
        call: Option<InFlight>,
        outcome: Outcome,
    }
}

impl<B> HttpBody<B> {
    pub(crate) fn new(inner: B, call: InFlight, outcome: Outcome) -> Self {
        HttpBody {
            inner,
            call: Some(call),
            outcome,
        }
    }

    /// A body whose call was already finished from the headers.
    pub(crate) fn finished(inner: B) -> Self {
        HttpBody {
            inner,
            call: None,
            outcome: Outcome::Ignored,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The wrapped body; the call, if still open, counts as ignored.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for HttpBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let outcome = match &frame {
            Some(Ok(data)) if !data.is_trailers() => None,
            Some(Ok(_)) | None => Some(*this.outcome),
            Some(Err(_)) => Some(Outcome::Failure(FailureKind::ERROR)),
        };
        if let Some(outcome) = outcome {
            if let Some(call) = this.call.take() {
                call.finish(outcome);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Until the call is finished, ask to be polled once more so the end
        // of the stream is seen and judged, not dropped as ignored.
        self.call.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for HttpBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpBody")
            .field("finished", &self.call.is_none())
            .finish_non_exhaustive()
    }
}
