//! Classifying gRPC responses by `grpc-status`, in headers or trailers.
//!
//! Our own small classifier rather than an adapter of tower-http's
//! `GrpcErrorsAsFailures`: that one counts a missing or malformed
//! `grpc-status`, and a stream that ends without trailers, as a success, has
//! no "ignored" outcome and no pushback, and keeps its code set private.

use std::fmt;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, Response, StatusCode};

use crate::body::GrpcBody;
use crate::classify::{parse, Classify, FailureKind, Outcome};
use crate::InFlight;

macro_rules! grpc_codes {
    ($($variant:ident = $value:literal, $name:literal, $kind:ident, $doc:literal;)*) => {
        /// A gRPC status code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum GrpcCode {
            $(#[doc = $doc] $variant = $value,)*
        }

        impl GrpcCode {
            /// All 17 codes, in numeric order.
            pub const ALL: [GrpcCode; 17] = [$(GrpcCode::$variant),*];

            /// The code for a number from 0 to 16.
            pub fn from_i32(code: i32) -> Option<GrpcCode> {
                match code {
                    $($value => Some(GrpcCode::$variant),)*
                    _ => None,
                }
            }

            /// The code's name, as in the gRPC spec: `"UNAVAILABLE"`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(GrpcCode::$variant => $name,)*
                }
            }

            /// The failure kind of this code: `grpc_unavailable` and so on.
            pub fn failure_kind(self) -> FailureKind {
                match self {
                    $(GrpcCode::$variant => FailureKind::$kind,)*
                }
            }
        }
    };
}

grpc_codes! {
    Ok = 0, "OK", GRPC_OK, "Not an error.";
    Cancelled = 1, "CANCELLED", GRPC_CANCELLED, "The operation was cancelled, typically by the caller.";
    Unknown = 2, "UNKNOWN", GRPC_UNKNOWN, "Unknown error.";
    InvalidArgument = 3, "INVALID_ARGUMENT", GRPC_INVALID_ARGUMENT, "The client specified an invalid argument.";
    DeadlineExceeded = 4, "DEADLINE_EXCEEDED", GRPC_DEADLINE_EXCEEDED, "The deadline expired before the operation could complete.";
    NotFound = 5, "NOT_FOUND", GRPC_NOT_FOUND, "Some requested entity was not found.";
    AlreadyExists = 6, "ALREADY_EXISTS", GRPC_ALREADY_EXISTS, "The entity a client tried to create already exists.";
    PermissionDenied = 7, "PERMISSION_DENIED", GRPC_PERMISSION_DENIED, "The caller may not run this operation.";
    ResourceExhausted = 8, "RESOURCE_EXHAUSTED", GRPC_RESOURCE_EXHAUSTED, "Some resource has been exhausted.";
    FailedPrecondition = 9, "FAILED_PRECONDITION", GRPC_FAILED_PRECONDITION, "The system is not in a state the operation requires.";
    Aborted = 10, "ABORTED", GRPC_ABORTED, "The operation was aborted.";
    OutOfRange = 11, "OUT_OF_RANGE", GRPC_OUT_OF_RANGE, "The operation went past the valid range.";
    Unimplemented = 12, "UNIMPLEMENTED", GRPC_UNIMPLEMENTED, "The operation is not implemented or supported.";
    Internal = 13, "INTERNAL", GRPC_INTERNAL, "Internal error.";
    Unavailable = 14, "UNAVAILABLE", GRPC_UNAVAILABLE, "The service is currently unavailable.";
    DataLoss = 15, "DATA_LOSS", GRPC_DATA_LOSS, "Unrecoverable data loss or corruption.";
    Unauthenticated = 16, "UNAUTHENTICATED", GRPC_UNAUTHENTICATED, "The request lacks valid credentials.";
}

impl GrpcCode {
    /// The code's number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The code a client must assume when a response carries no
    /// `grpc-status`, from its HTTP status (gRPC's
    /// `http-grpc-status-mapping.md`).
    pub fn from_http_status(status: StatusCode) -> GrpcCode {
        match status.as_u16() {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502 | 503 | 504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// Classifies gRPC responses by their `grpc-status`.
///
/// The status is read from the response headers when the server sent a
/// trailers-only response (the usual shape of an immediate error), and
/// otherwise from the trailers at the end of the body: the response body is
/// wrapped in a [`GrpcBody`] that finishes the call there. A body dropped
/// before its end counts as [`Outcome::Ignored`] and gives back its
/// half-open permit.
///
/// By default UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED,
/// UNKNOWN and CANCELLED are failures (kind `grpc_<code>`, e.g.
/// `grpc_unavailable`), and every other code is a success: NOT_FOUND or
/// INVALID_ARGUMENT are answers from a healthy server.
///
/// CANCELLED fails because a status the client *received* was sent by the
/// server or a proxy: a tonic server answers its own `Server::timeout`
/// with CANCELLED, for one. A client that gives up drops the call's future
/// or body instead, and that is [`Outcome::Ignored`] whatever the
/// classifier says; tonic's own client deadline (`Endpoint::timeout`,
/// `grpc-timeout`) is an error of the channel, recognised as `timeout` by
/// [`classify_error`](crate::classify::classify_error). To count received
/// CANCELLED as nothing, as before, use `.ignore(GrpcCode::Cancelled)`.
///
/// When it judges: at the response headers for a trailers-only response
/// and for a non-gRPC answer; otherwise at the trailers, when the body is
/// read to its end. A stream's duration, and a streaming half-open probe,
/// are settled at its first message (see [`StreamJudgement`]).
///
/// What counts as which status:
/// - `grpc-status` in the headers (trailers-only) decides, whatever the
///   HTTP status and content type;
/// - otherwise a response whose HTTP status is not 200, or whose
///   `content-type` does not start with `application/grpc` (an HTML error
///   page from a proxy, a missing content type), is not a gRPC answer: it is
///   judged at the headers with the code the gRPC spec has a client
///   synthesize (`http-grpc-status-mapping.md`): UNKNOWN for a 200, and
///   the mapped code otherwise, so a 503 from a proxy is UNAVAILABLE;
/// - no `grpc-status` in the trailers, a stream that ends without
///   trailers, or a value that is not a code from 0 to 16: UNKNOWN, the
///   code gRPC's status-code table gives "error parsing returned status"
///   (some clients report INTERNAL for a missing status; both fail by
///   default, and either way the upstream did not answer properly);
/// - an error frame from the body (the stream was reset or broke): a
///   failure of kind `error`.
///
/// A failing status's `grpc-retry-pushback-ms` (or, on a proxy's non-gRPC
/// answer, `Retry-After`) is handed to the breaker like `Retry-After` for
/// HTTP.
///
/// ```
/// use tower_breaker::classify::{GrpcClassifier, GrpcCode};
/// use tower_breaker::{CircuitBreakerLayer, FailureKind, Outcome};
///
/// let classifier = GrpcClassifier::new()
///     .failure(GrpcCode::Aborted)
///     .success(GrpcCode::ResourceExhausted);
/// assert_eq!(classifier.classify_code(GrpcCode::Unavailable), Outcome::Failure(FailureKind::GRPC_UNAVAILABLE));
/// assert_eq!(classifier.classify_code(GrpcCode::Aborted), Outcome::Failure(FailureKind::GRPC_ABORTED));
/// assert_eq!(classifier.classify_code(GrpcCode::ResourceExhausted), Outcome::Success);
/// assert_eq!(classifier.classify_code(GrpcCode::Cancelled), Outcome::Failure(FailureKind::GRPC_CANCELLED));
/// assert_eq!(classifier.ignore(GrpcCode::Cancelled).classify_code(GrpcCode::Cancelled), Outcome::Ignored);
///
/// let layer = CircuitBreakerLayer::builder()
///     .name("doc-grpc")
///     .classifier(classifier)
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GrpcClassifier {
    failing: u32,
    ignored: u32,
    streams: StreamJudgement,
}

/// When a gRPC response that streams stops being timed, and when a
/// half-open probe that streams is judged. Set with
/// [`GrpcClassifier::stream_judgement`].
///
/// A response streams once, after its first message, its body has nothing
/// more ready (read ahead at once, whether or not the reader asks for more)
/// or delivers a second message. A unary
/// answer whose status follows its message at once (as servers send it) is
/// judged by that status under either setting; one whose status comes
/// later than its message counts as a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamJudgement {
    /// When it starts streaming (the default). The call's duration, for
    /// the slow-call policy and the duration histogram, stops there, so a
    /// healthy hour-long Watch is not a slow call; a half-open probe that
    /// streams counts as a success then and gives its permit back (it
    /// keeps a slot of a concurrency limit until the stream ends), so a
    /// long-lived stream never holds the breaker half-open. The status at
    /// the end still judges every call that is not a probe.
    #[default]
    FirstMessage,
    /// At the end of the stream: the whole stream is timed, and a probe
    /// holds its permit until its status arrives (a long-lived stream keeps
    /// the breaker half-open, refusing other calls, for as long as it
    /// lives). For services whose streams are short and whose length is
    /// their health.
    WholeStream,
}

impl GrpcClassifier {
    /// The default failing and ignored codes, as described above.
    pub fn new() -> Self {
        let failing = [
            GrpcCode::Unavailable,
            GrpcCode::DeadlineExceeded,
            GrpcCode::Internal,
            GrpcCode::ResourceExhausted,
            GrpcCode::Unknown,
            GrpcCode::Cancelled,
        ];
        GrpcClassifier {
            failing: failing.iter().fold(0, |set, c| set | c.bit()),
            ignored: 0,
            streams: StreamJudgement::FirstMessage,
        }
    }

    /// Exactly these codes are failures; the ignored codes stay ignored
    /// unless listed here.
    pub fn failing_codes(mut self, codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        self.failing = 0;
        for code in codes {
            self = self.failure(code);
        }
        self
    }

    /// `code` is a failure.
    pub fn failure(mut self, code: GrpcCode) -> Self {
        self.failing |= code.bit();
        self.ignored &= !code.bit();
        self
    }

    /// `code` is a success.
    pub fn success(mut self, code: GrpcCode) -> Self {
        self.failing &= !code.bit();
        self.ignored &= !code.bit();
        self
    }

    /// `code` counts as neither success nor failure.
    pub fn ignore(mut self, code: GrpcCode) -> Self {
        self.failing &= !code.bit();
        self.ignored |= code.bit();
        self
    }

    /// When a streaming response stops being timed and a streaming probe
    /// is settled (default [`StreamJudgement::FirstMessage`]).
    pub fn stream_judgement(mut self, judgement: StreamJudgement) -> Self {
        self.streams = judgement;
        self
    }

    /// Whether a call's first message settles its timing and its probe.
    pub(crate) fn settles_at_first_message(&self) -> bool {
        self.streams == StreamJudgement::FirstMessage
    }

    /// The outcome of a call that ended with `code`.
    pub fn classify_code(&self, code: GrpcCode) -> Outcome {
        if self.failing & code.bit() != 0 {
            Outcome::Failure(code.failure_kind())
        } else if self.ignored & code.bit() != 0 {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }

    /// Finishes `call` from metadata holding `grpc-status`, or from
    /// trailers; `None` (end of stream without trailers) is UNKNOWN.
    pub(crate) fn finish_with(&self, metadata: Option<&HeaderMap>, call: InFlight) {
        let code = metadata
            .and_then(|m| m.get(GRPC_STATUS))
            .and_then(|v| parse::grpc_status(v.as_bytes()))
            .and_then(|c| GrpcCode::from_i32(i32::from(c)))
            .unwrap_or(GrpcCode::Unknown);
        let outcome = self.classify_code(code);
        if let (Outcome::Failure(_), Some(metadata)) = (outcome, metadata) {
            if let Some(wait) = pushback(metadata) {
                call.retry_after(wait);
            }
        }
        call.finish(outcome);
    }
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        GrpcClassifier::new()
    }
}

impl fmt::Debug for GrpcClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Codes(u32);
        impl fmt::Debug for Codes {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_set()
                    .entries(GrpcCode::ALL.iter().filter(|c| self.0 & c.bit() != 0))
                    .finish()
            }
        }
        f.debug_struct("GrpcClassifier")
            .field("failing", &Codes(self.failing))
            .field("ignored", &Codes(self.ignored))
            .field("streams", &self.streams)
            .finish()
    }
}

/// Whether the response's `content-type` is gRPC's: `application/grpc`,
/// alone or followed by `+proto`, `+json`, `;...` (ASCII case-insensitive).
fn is_grpc(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// A positive `grpc-retry-pushback-ms`.
fn pushback(metadata: &HeaderMap) -> Option<Duration> {
    let value = metadata.get(GRPC_RETRY_PUSHBACK_MS)?;
    parse::grpc_retry_pushback_ms(value.as_bytes()).filter(|d| !d.is_zero())
}

impl<B: http_body::Body> Classify<Response<B>> for GrpcClassifier {
    type Response = Response<GrpcBody<B>>;

    fn classify_response(&self, response: Response<B>, call: InFlight) -> Self::Response {
        let (parts, body) = response.into_parts();
        let body = if parts.headers.contains_key(GRPC_STATUS) {
            // Trailers-only: the status is final, the body carries nothing.
            self.finish_with(Some(&parts.headers), call);
            GrpcBody::finished(body)
        } else if parts.status != StatusCode::OK || !is_grpc(&parts.headers) {
            // Not a gRPC answer: a proxy or load balancer spoke. Judged as
            // the spec has a client synthesize it: UNKNOWN for a 200.
            let outcome = self.classify_code(GrpcCode::from_http_status(parts.status));
            if matches!(outcome, Outcome::Failure(_)) {
                if let Some(wait) = pushback(&parts.headers)
                    .or_else(|| super::http::retry_after_header(&parts.headers))
                {
                    call.retry_after(wait);
                }
            }
            call.finish(outcome);
            GrpcBody::finished(body)
        } else {
            GrpcBody::new(body, call, *self)
        };
        Response::from_parts(parts, body)
    }

    #[cfg(feature = "tonic")]
    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Outcome {
        // A service that fails with a `tonic::Status` (a generated client
        // behind a tower adapter, say) is judged by its code, unless the
        // chain holds a nested breaker's refusal or a client-side timeout.
        let mut current = Some(error);
        while let Some(err) = current {
            if err.is::<crate::CircuitOpen>() {
                return Outcome::Ignored;
            }
            if err.is::<::tonic::TimeoutExpired>() {
                return Outcome::Failure(FailureKind::TIMEOUT);
            }
            if let Some(status) = err.downcast_ref::<::tonic::Status>() {
                let code = GrpcCode::from_i32(status.code() as i32).unwrap_or(GrpcCode::Unknown);
                return self.classify_code(code);
            }
            current = err.source();
        }
        crate::classify::classify_error(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_name_their_kinds() {
        for (i, code) in GrpcCode::ALL.iter().enumerate() {
            assert_eq!(code.code(), i as i32);
            assert_eq!(GrpcCode::from_i32(i as i32), Some(*code));
            assert_eq!(
                code.failure_kind().as_str(),
                format!("grpc_{}", code.as_str().to_ascii_lowercase())
            );
        }
        assert_eq!(GrpcCode::from_i32(17), None);
        assert_eq!(GrpcCode::from_i32(-1), None);
    }

    #[test]
    fn setters_move_codes_between_sets() {
        let c = GrpcClassifier::new()
            .failing_codes([GrpcCode::Aborted, GrpcCode::Cancelled])
            .ignore(GrpcCode::NotFound);
        assert_eq!(
            format!("{c:?}"),
            "GrpcClassifier { failing: {Cancelled, Aborted}, ignored: {NotFound}, streams: FirstMessage }"
        );
        assert_eq!(c.classify_code(GrpcCode::Unavailable), Outcome::Success);
    }
}
