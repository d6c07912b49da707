//! Classifying HTTP responses by status code, with `Retry-After`.
//!
//! Our own small classifier rather than an adapter of tower-http's
//! `ServerErrorsAsFailures` / `StatusInRangeAsFailures`: those know one range
//! and no 429, have no "ignored" outcome and no `Retry-After`, and would add
//! a dependency to save a dozen lines of bit sets.

use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::time::SystemTime;

use http::{HeaderMap, Response, StatusCode};

use crate::body::HttpBody;
use crate::classify::{parse, Classify, FailureKind, Outcome};
use crate::InFlight;

/// The lowest and highest status a classifier can be told about.
const FIRST: u16 = 100;
const LAST: u16 = 599;

/// A set of status codes from 100 to 599, one bit each.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct StatusSet([u64; 8]);

impl StatusSet {
    fn contains(&self, code: u16) -> bool {
        if !(FIRST..=LAST).contains(&code) {
            return false;
        }
        let i = usize::from(code - FIRST);
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, (start, end): (u16, u16), on: bool) {
        for code in start..=end {
            let i = usize::from(code - FIRST);
            if on {
                self.0[i / 64] |= 1 << (i % 64);
            } else {
                self.0[i / 64] &= !(1 << (i % 64));
            }
        }
    }

    /// The set as inclusive ranges, for `Debug`.
    fn ranges(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        let mut code = FIRST;
        std::iter::from_fn(move || {
            while code <= LAST && !self.contains(code) {
                code += 1;
            }
            if code > LAST {
                return None;
            }
            let start = code;
            while code <= LAST && self.contains(code) {
                code += 1;
            }
            Some((start, code - 1))
        })
    }
}

/// Clamps a range of status codes into 100..=599; `None` if nothing is left.
fn clamp(range: impl RangeBounds<u16>) -> Option<(u16, u16)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => FIRST,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e,
        Bound::Excluded(&e) => e.checked_sub(1)?,
        Bound::Unbounded => LAST,
    };
    let (start, end) = (start.max(FIRST), end.min(LAST));
    (start <= end).then_some((start, end))
}

/// The failure kind of a status code: `http_429`, `http_5xx`, `http_4xx`,
/// or `http_1xx` to `http_3xx` for the odd classifier that fails those.
pub(crate) fn status_kind(code: u16) -> FailureKind {
    match code {
        429 => FailureKind::HTTP_429,
        500..=599 => FailureKind::HTTP_5XX,
        400..=499 => FailureKind::HTTP_4XX,
        300..=399 => FailureKind::custom("http_3xx"),
        200..=299 => FailureKind::custom("http_2xx"),
        _ => FailureKind::custom("http_1xx"),
    }
}

/// Reads the `Retry-After` of a response, if it has a usable one.
pub(crate) fn retry_after_header(headers: &HeaderMap) -> Option<std::time::Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?;
    parse::retry_after(value.as_bytes(), SystemTime::now()).filter(|d| !d.is_zero())
}

/// Classifies HTTP responses by status code, at the response headers.
///
/// It judges when the headers arrive: a 200 whose body then breaks (an
/// HTTP/1.1 chunked body cut short, an HTTP/2 `RST_STREAM`) has already
/// counted as a success. [`at_end_of_body`](HttpClassifier::at_end_of_body)
/// gives a classifier that waits for the end of the body instead.
///
/// By default 5xx is a failure of kind `http_5xx`, 429 a failure of kind
/// `http_429`, and everything else (4xx included: the client's fault, not
/// the upstream's) a success. Change the rules by range; later calls win.
/// Codes outside 100..=599 are always successes.
///
/// A failing response's `Retry-After` (delta-seconds or HTTP-date) is handed
/// to the breaker: if the response trips it, or fails a probe, the breaker
/// stays open at least that long, up to
/// [`retry_after_cap`](crate::Builder::retry_after_cap).
///
/// Errors of the inner service are sorted by
/// [`classify_error`](crate::classify::classify_error).
///
/// ```
/// use tower_breaker::classify::HttpClassifier;
/// use tower_breaker::{CircuitBreakerLayer, FailureKind, Outcome};
/// use http::StatusCode;
///
/// let classifier = HttpClassifier::new()
///     .failure_statuses(408..=408)   // Request Timeout counts too
///     .success_statuses(501..=501)   // Not Implemented is an answer
///     .ignored_statuses(499..=499);  // client closed the request
/// assert_eq!(classifier.classify_status(StatusCode::BAD_GATEWAY), Outcome::Failure(FailureKind::HTTP_5XX));
/// assert_eq!(classifier.classify_status(StatusCode::REQUEST_TIMEOUT), Outcome::Failure(FailureKind::HTTP_4XX));
/// assert_eq!(classifier.classify_status(StatusCode::NOT_IMPLEMENTED), Outcome::Success);
/// assert_eq!(classifier.classify_status(StatusCode::NOT_FOUND), Outcome::Success);
///
/// let layer = CircuitBreakerLayer::builder()
///     .name("doc-http")
///     .classifier(classifier)
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HttpClassifier {
    failing: StatusSet,
    ignored: StatusSet,
    retry_after: bool,
}

impl HttpClassifier {
    /// 5xx and 429 fail; everything else succeeds; `Retry-After` honoured.
    pub fn new() -> Self {
        let mut failing = StatusSet::default();
        failing.set((500, 599), true);
        failing.set((429, 429), true);
        HttpClassifier {
            failing,
            ignored: StatusSet::default(),
            retry_after: true,
        }
    }

    /// Responses with a status in `range` are failures.
    pub fn failure_statuses(mut self, range: impl RangeBounds<u16>) -> Self {
        if let Some(range) = clamp(range) {
            self.failing.set(range, true);
            self.ignored.set(range, false);
        }
        self
    }

    /// Responses with a status in `range` are successes.
    pub fn success_statuses(mut self, range: impl RangeBounds<u16>) -> Self {
        if let Some(range) = clamp(range) {
            self.failing.set(range, false);
            self.ignored.set(range, false);
        }
        self
    }

    /// Responses with a status in `range` say nothing about the upstream:
    /// they count as neither success nor failure.
    pub fn ignored_statuses(mut self, range: impl RangeBounds<u16>) -> Self {
        if let Some(range) = clamp(range) {
            self.failing.set(range, false);
            self.ignored.set(range, true);
        }
        self
    }

    /// Whether a failing response's `Retry-After` may lengthen the open
    /// period (default `true`).
    pub fn honor_retry_after(mut self, honor: bool) -> Self {
        self.retry_after = honor;
        self
    }

    /// The same rules, judged at the end of the body: see
    /// [`HttpBodyClassifier`].
    pub fn at_end_of_body(self) -> HttpBodyClassifier {
        HttpBodyClassifier { status: self }
    }

    /// Hands a failing response's `Retry-After` to `call`, and finishes it.
    fn finish(&self, headers: &HeaderMap, outcome: Outcome, call: InFlight) {
        if self.retry_after && matches!(outcome, Outcome::Failure(_)) {
            if let Some(wait) = retry_after_header(headers) {
                call.retry_after(wait);
            }
        }
        call.finish(outcome);
    }

    /// The outcome of a response with this status.
    pub fn classify_status(&self, status: StatusCode) -> Outcome {
        let code = status.as_u16();
        if self.failing.contains(code) {
            Outcome::Failure(status_kind(code))
        } else if self.ignored.contains(code) {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }
}

impl Default for HttpClassifier {
    fn default() -> Self {
        HttpClassifier::new()
    }
}

impl fmt::Debug for HttpClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Ranges<'a>(&'a StatusSet);
        impl fmt::Debug for Ranges<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.ranges().map(|(s, e)| s..=e))
                    .finish()
            }
        }
        f.debug_struct("HttpClassifier")
            .field("failing", &Ranges(&self.failing))
            .field("ignored", &Ranges(&self.ignored))
            .field("honor_retry_after", &self.retry_after)
            .finish()
    }
}

impl<B> Classify<Response<B>> for HttpClassifier {
    type Response = Response<B>;

    fn classify_response(&self, response: Response<B>, call: InFlight) -> Response<B> {
        let outcome = self.classify_status(response.status());
        self.finish(response.headers(), outcome, call);
        response
    }
}

/// Classifies HTTP responses as [`HttpClassifier`] does, judged at the end of
/// the body, as [`GrpcClassifier`](crate::classify::GrpcClassifier) is.
///
/// Made by [`HttpClassifier::at_end_of_body`]. When it judges:
/// - a failing status (5xx, 429 by default): at the headers, with its
///   `Retry-After`; the body is not waited for;
/// - a body that is already at its end (`is_end_stream`, e.g. an empty
///   body with `Content-Length: 0`): at the headers;
/// - otherwise when the body ends: the status's outcome if the body was
///   read to its end (or its trailers), a failure of kind `error` if it
///   broke (an HTTP/1.1 body cut short, an HTTP/2 `RST_STREAM`), ignored if
///   it was dropped unread, which gives back the half-open permit.
///
/// The response body is wrapped in an [`HttpBody`]. Errors of the inner
/// service are sorted by [`classify_error`](crate::classify::classify_error).
///
/// ```
/// use tower_breaker::classify::HttpClassifier;
/// use tower_breaker::CircuitBreakerLayer;
///
/// let layer = CircuitBreakerLayer::builder()
///     .name("doc-http-body")
///     .classifier(HttpClassifier::new().at_end_of_body())
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpBodyClassifier {
    status: HttpClassifier,
}

impl<B: http_body::Body> Classify<Response<B>> for HttpBodyClassifier {
    type Response = Response<HttpBody<B>>;

    fn classify_response(&self, response: Response<B>, call: InFlight) -> Self::Response {
        let (parts, body) = response.into_parts();
        let outcome = self.status.classify_status(parts.status);
        let body = if matches!(outcome, Outcome::Failure(_)) || body.is_end_stream() {
            self.status.finish(&parts.headers, outcome, call);
            HttpBody::finished(body)
        } else {
            HttpBody::new(body, call, outcome)
        };
        Response::from_parts(parts, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_clamp_and_round_trip() {
        assert_eq!(clamp(..), Some((100, 599)));
        assert_eq!(clamp(400..500), Some((400, 499)));
        assert_eq!(clamp(0..=99), None);
        assert_eq!(clamp(600..), None);
        assert_eq!(clamp(500..500), None);
        assert_eq!(clamp(..0), None);
        assert_eq!(clamp((Bound::Excluded(u16::MAX), Bound::Unbounded)), None);
        let c = HttpClassifier::new().ignored_statuses(503..=504);
        let failing: Vec<_> = c.failing.ranges().collect();
        assert_eq!(failing, [(429, 429), (500, 502), (505, 599)]);
        assert_eq!(
            format!("{c:?}"),
            "HttpClassifier { failing: [429..=429, 500..=502, 505..=599], \
             ignored: [503..=504], honor_retry_after: true }"
        );
    }

    #[test]
    fn codes_outside_the_table_succeed() {
        let c = HttpClassifier::new().failure_statuses(..);
        assert_eq!(
            c.classify_status(StatusCode::from_u16(999).unwrap()),
            Outcome::Success
        );
        assert_eq!(
            c.classify_status(StatusCode::CONTINUE),
            Outcome::Failure(FailureKind::custom("http_1xx"))
        );
    }
}
