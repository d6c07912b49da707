//! Deciding what a call's result means to the breaker.
//!
//! A [`Classify`] turns the inner service's response or error into an
//! [`Outcome`]. It receives the call's [`InFlight`] record and must finish it,
//! either at once or later (for example at the end of a streaming body, where
//! gRPC puts its status). A record that is dropped unfinished counts as
//! [`Outcome::Ignored`] and returns its half-open permit.

use std::error::Error;
use std::fmt;

use crate::InFlight;

#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub(crate) mod parse;
#[cfg(feature = "tower-http")]
mod tower_http;

#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub use self::grpc::{GrpcClassifier, GrpcCode, StreamJudgement};
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::http::{HttpBodyClassifier, HttpClassifier};
#[cfg(feature = "tower-http")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower-http")))]
pub use self::tower_http::{FailureClassKind, TowerHttp, TowerHttpBody};

/// What a finished call means to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed, for the given reason.
    Failure(FailureKind),
    /// The call says nothing about the upstream's health (cancelled, a client
    /// error, a rejection by a nested breaker).
    Ignored,
}

impl Outcome {
    /// The `status` label of `requests_total` for this outcome.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Ignored => "ignored",
        }
    }
}

/// Why a call failed; the `kind` label of `failures_total`.
///
/// The set of kinds is bounded: the built-in constants, plus any
/// `&'static str` chosen with [`FailureKind::custom`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailureKind {
    name: &'static str,
}

impl FailureKind {
    /// An error from the inner service.
    pub const ERROR: FailureKind = FailureKind::custom("error");
    /// The call timed out.
    pub const TIMEOUT: FailureKind = FailureKind::custom("timeout");
    /// The connection could not be made.
    pub const CONNECT: FailureKind = FailureKind::custom("connect");
    /// An HTTP 5xx response.
    pub const HTTP_5XX: FailureKind = FailureKind::custom("http_5xx");
    /// An HTTP 429 (Too Many Requests) response.
    pub const HTTP_429: FailureKind = FailureKind::custom("http_429");
    /// A successful call slower than the slow-call threshold, in half-open.
    pub const SLOW: FailureKind = FailureKind::custom("slow");
    /// An HTTP 4xx response other than 429, when configured to fail.
    pub const HTTP_4XX: FailureKind = FailureKind::custom("http_4xx");

    /// gRPC status OK (only if configured to fail).
    pub const GRPC_OK: FailureKind = FailureKind::custom("grpc_ok");
    /// gRPC status CANCELLED.
    pub const GRPC_CANCELLED: FailureKind = FailureKind::custom("grpc_cancelled");
    /// gRPC status UNKNOWN.
    pub const GRPC_UNKNOWN: FailureKind = FailureKind::custom("grpc_unknown");
    /// gRPC status INVALID_ARGUMENT.
    pub const GRPC_INVALID_ARGUMENT: FailureKind = FailureKind::custom("grpc_invalid_argument");
    /// gRPC status DEADLINE_EXCEEDED.
    pub const GRPC_DEADLINE_EXCEEDED: FailureKind = FailureKind::custom("grpc_deadline_exceeded");
    /// gRPC status NOT_FOUND.
    pub const GRPC_NOT_FOUND: FailureKind = FailureKind::custom("grpc_not_found");
    /// gRPC status ALREADY_EXISTS.
    pub const GRPC_ALREADY_EXISTS: FailureKind = FailureKind::custom("grpc_already_exists");
    /// gRPC status PERMISSION_DENIED.
    pub const GRPC_PERMISSION_DENIED: FailureKind = FailureKind::custom("grpc_permission_denied");
    /// gRPC status RESOURCE_EXHAUSTED.
    pub const GRPC_RESOURCE_EXHAUSTED: FailureKind = FailureKind::custom("grpc_resource_exhausted");
    /// gRPC status FAILED_PRECONDITION.
    pub const GRPC_FAILED_PRECONDITION: FailureKind =
        FailureKind::custom("grpc_failed_precondition");
    /// gRPC status ABORTED.
    pub const GRPC_ABORTED: FailureKind = FailureKind::custom("grpc_aborted");
    /// gRPC status OUT_OF_RANGE.
    pub const GRPC_OUT_OF_RANGE: FailureKind = FailureKind::custom("grpc_out_of_range");
    /// gRPC status UNIMPLEMENTED.
    pub const GRPC_UNIMPLEMENTED: FailureKind = FailureKind::custom("grpc_unimplemented");
    /// gRPC status INTERNAL.
    pub const GRPC_INTERNAL: FailureKind = FailureKind::custom("grpc_internal");
    /// gRPC status UNAVAILABLE.
    pub const GRPC_UNAVAILABLE: FailureKind = FailureKind::custom("grpc_unavailable");
    /// gRPC status DATA_LOSS.
    pub const GRPC_DATA_LOSS: FailureKind = FailureKind::custom("grpc_data_loss");
    /// gRPC status UNAUTHENTICATED.
    pub const GRPC_UNAUTHENTICATED: FailureKind = FailureKind::custom("grpc_unauthenticated");

    /// A kind of your own. Keep the set small: it becomes a metric label.
    pub const fn custom(name: &'static str) -> Self {
        FailureKind { name }
    }

    /// The kind's label value.
    pub fn as_str(&self) -> &'static str {
        self.name
    }
}

impl fmt::Debug for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Turns an inner service's results into [`Outcome`]s.
///
/// `Response` is what the breaker's service returns: the inner response as
/// is, or wrapped (for example a body that classifies at end of stream).
pub trait Classify<Res>: Clone + Send + Sync + 'static {
    /// The response the breaker's service hands back.
    type Response;

    /// Classifies a response, finishing `call` now or handing it to the
    /// returned response to finish later.
    fn classify_response(&self, response: Res, call: InFlight) -> Self::Response;

    /// Classifies an error of the inner service.
    fn classify_error(&self, error: &(dyn Error + 'static)) -> Outcome {
        classify_error(error)
    }
}

/// The default classifier: `Ok` is a success, `Err` a failure.
///
/// Errors are sorted by [`classify_error`]: timeouts, connect errors, a
/// nested breaker's rejection (ignored), and other errors.
///
/// ```
/// use tower_breaker::{classify::{Classify, DefaultClassifier}, Outcome};
///
/// let error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert_eq!(
///     <DefaultClassifier as Classify<()>>::classify_error(&DefaultClassifier, &error),
///     Outcome::Failure(tower_breaker::FailureKind::CONNECT),
/// );
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier;

impl<Res> Classify<Res> for DefaultClassifier {
    type Response = Res;

    #[inline(always)]
    fn classify_response(&self, response: Res, call: InFlight) -> Res {
        call.finish(Outcome::Success);
        response
    }
}

/// A classifier from a closure over the response: `|res: &Res| -> Outcome`.
///
/// Build one with [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

/// Classifies responses with a closure; errors as the default classifier does.
///
/// ```
/// use tower_breaker::{classify::classify_fn, FailureKind, Outcome};
///
/// let classifier = classify_fn(|code: &u16| {
///     if *code >= 500 { Outcome::Failure(FailureKind::HTTP_5XX) } else { Outcome::Success }
/// });
/// # let _ = classifier;
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn { f }
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

impl<Res, F> Classify<Res> for ClassifyFn<F>
where
    F: Fn(&Res) -> Outcome + Clone + Send + Sync + 'static,
{
    type Response = Res;

    fn classify_response(&self, response: Res, call: InFlight) -> Res {
        call.finish((self.f)(&response));
        response
    }
}

/// Wraps a classifier so a closure decides about errors: `|err| -> Outcome`.
///
/// Built by [`crate::Builder::classify_errors_with`].
#[derive(Clone, Copy)]
pub struct ClassifyErrorsWith<C, F> {
    inner: C,
    f: F,
}

impl<C, F> ClassifyErrorsWith<C, F> {
    pub(crate) fn new(inner: C, f: F) -> Self {
        ClassifyErrorsWith { inner, f }
    }
}

impl<C: fmt::Debug, F> fmt::Debug for ClassifyErrorsWith<C, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyErrorsWith")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<Res, C, F> Classify<Res> for ClassifyErrorsWith<C, F>
where
    C: Classify<Res>,
    F: Fn(&(dyn Error + 'static)) -> Outcome + Clone + Send + Sync + 'static,
{
    type Response = C::Response;

    fn classify_response(&self, response: Res, call: InFlight) -> C::Response {
        self.inner.classify_response(response, call)
    }

    fn classify_error(&self, error: &(dyn Error + 'static)) -> Outcome {
        (self.f)(error)
    }
}

/// Sorts an error by walking its `source()` chain.
///
/// - a [`CircuitOpen`](crate::CircuitOpen) from a nested breaker: ignored,
///   so one open breaker does not trip the next;
/// - tower's and tokio's `Elapsed`, or an `io::Error` of kind `TimedOut`:
///   [`FailureKind::TIMEOUT`];
/// - with feature `tonic`, tonic's `TimeoutExpired` (a client deadline:
///   `Endpoint::timeout` or `grpc-timeout`): [`FailureKind::TIMEOUT`];
/// - an `io::Error` of kind `ConnectionRefused`, `ConnectionReset`,
///   `ConnectionAborted`, `NotConnected` or `AddrNotAvailable` (hyper-util's
///   connect errors carry one as their source): [`FailureKind::CONNECT`];
/// - with feature `tonic`, tonic's `ConnectError` (the channel could not
///   connect: refused, unreachable, or a name that does not resolve):
///   [`FailureKind::CONNECT`];
/// - with feature `hyper-util`, a hyper-util legacy `Client` error whose
///   `is_connect()` is true (a DNS failure among them):
///   [`FailureKind::CONNECT`];
/// - anything else: [`FailureKind::ERROR`].
///
/// The first error in the chain that is recognised decides: a connect
/// error caused by a connect timeout is `connect`.
///
/// The walk looks inside an `io::Error` that wraps another error
/// (`io::Error::other(e)`), whose `source()` would skip it.
pub fn classify_error(error: &(dyn Error + 'static)) -> Outcome {
    let mut current: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(err) = current {
        if err.is::<crate::CircuitOpen>() {
            return Outcome::Ignored;
        }
        if err.is::<tower::timeout::error::Elapsed>() || err.is::<tokio::time::error::Elapsed>() {
            return Outcome::Failure(FailureKind::TIMEOUT);
        }
        #[cfg(feature = "tonic")]
        if err.is::<::tonic::TimeoutExpired>() {
            return Outcome::Failure(FailureKind::TIMEOUT);
        }
        #[cfg(feature = "tonic")]
        if err.is::<::tonic::ConnectError>() {
            return Outcome::Failure(FailureKind::CONNECT);
        }
        #[cfg(feature = "hyper-util")]
        if is_hyper_util_connect(err) {
            return Outcome::Failure(FailureKind::CONNECT);
        }
        let mut next = err.source();
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                TimedOut => return Outcome::Failure(FailureKind::TIMEOUT),
                ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
                | AddrNotAvailable => return Outcome::Failure(FailureKind::CONNECT),
                _ => {}
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn Error + 'static));
            }
        }
        current = next;
    }
    Outcome::Failure(FailureKind::ERROR)
}

/// A hyper-util legacy client's error from connecting.
#[cfg(feature = "hyper-util")]
fn is_hyper_util_connect(err: &(dyn Error + 'static)) -> bool {
    err.downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(Box<dyn Error + Send + Sync>);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapper")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn errors_are_sorted_through_the_source_chain() {
        let timeout = Wrapper(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(
            classify_error(&timeout),
            Outcome::Failure(FailureKind::TIMEOUT)
        );
        let refused = Wrapper(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(
            classify_error(&refused),
            Outcome::Failure(FailureKind::CONNECT)
        );
        let other = std::io::Error::other("boom");
        assert_eq!(classify_error(&other), Outcome::Failure(FailureKind::ERROR));
        // io::Error::other(e) hides `e` from source(): looked at all the same.
        let wrapped = std::io::Error::other(tower::timeout::error::Elapsed::new());
        assert_eq!(
            classify_error(&wrapped),
            Outcome::Failure(FailureKind::TIMEOUT)
        );
        let nested = std::io::Error::other(crate::CircuitOpen::new(
            "inner".into(),
            crate::State::Open,
            None,
        ));
        assert_eq!(classify_error(&nested), Outcome::Ignored);
    }
}
