//! Parsers for the header values the classifiers read.
//!
//! Each is a small pure function over raw bytes, total on every input: a
//! value it does not understand gives `None`, never a panic. They are
//! re-exported, hidden, as `tower_breaker::__fuzz` for the fuzz targets.

use std::time::{Duration, SystemTime};

/// Optional whitespace around a header value (RFC 9110 `OWS`).
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// A non-empty run of ASCII digits as a number, saturating at `u64::MAX`.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// A `grpc-status` value: the code if it is a decimal number from 0 to 16.
///
/// Anything else (empty, signed, not a number, out of range) gives `None`;
/// the gRPC spec has clients treat such a status as UNKNOWN.
pub fn grpc_status(value: &[u8]) -> Option<u8> {
    match digits(trim_ows(value))? {
        code @ 0..=16 => Some(code as u8),
        _ => None,
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delta-seconds or an HTTP-date,
/// as a wait from `now`.
///
/// Delta-seconds saturate rather than overflow; a date in the past gives
/// zero; anything else gives `None`.
pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = trim_ows(value);
    if let Some(seconds) = digits(value) {
        return Some(Duration::from_secs(seconds));
    }
    let text = std::str::from_utf8(value).ok()?;
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A `grpc-retry-pushback-ms` value (gRPC proposal A6): a non-negative
/// number of milliseconds, saturating rather than overflowing.
///
/// A negative or malformed value means "do not retry" to a retrying
/// client; it carries no wait, so it gives `None`.
pub fn grpc_retry_pushback_ms(value: &[u8]) -> Option<Duration> {
    digits(trim_ows(value)).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_accepts_only_known_codes() {
        for code in 0..=16u8 {
            assert_eq!(grpc_status(code.to_string().as_bytes()), Some(code));
        }
        assert_eq!(grpc_status(b" 14 "), Some(14));
        assert_eq!(grpc_status(b"014"), Some(14));
        for bad in [
            &b""[..],
            b" ",
            b"17",
            b"-1",
            b"+1",
            b"1.0",
            b"abc",
            b"1 4",
            b"99999999999999999999999999",
            b"\xff",
        ] {
            assert_eq!(grpc_status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(retry_after(b"120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(b" 0\t", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after(b"99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            retry_after(b"Wed, 21 Oct 2015 07:30:30 GMT", now),
            Some(Duration::from_secs(150))
        );
        // The obsolete formats HTTP still asks recipients to accept.
        assert_eq!(
            retry_after(b"Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after(b"Wed Oct 21 07:28:10 2015", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after(b"Tue, 20 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            &b""[..],
            b"-5",
            b"+5",
            b"1.5",
            b"soon",
            b"Wed, 21 Oct 2015 07:30:30",
            b"Wed, 32 Oct 2015 07:30:30 GMT",
            b"\xff\xfe",
        ] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn pushback_is_non_negative_milliseconds() {
        assert_eq!(
            grpc_retry_pushback_ms(b"1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(grpc_retry_pushback_ms(b"0"), Some(Duration::ZERO));
        assert_eq!(
            grpc_retry_pushback_ms(b"184467440737095516150"),
            Some(Duration::from_millis(u64::MAX))
        );
        for bad in [&b""[..], b"-1", b"1e3", b"ms", b"\x00"] {
            assert_eq!(grpc_retry_pushback_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_short_input_parses_without_panicking() {
        let now = SystemTime::UNIX_EPOCH;
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for input in [&[a][..], &[a, b], &[b' ', a, b, b'\t']] {
                    let _ = grpc_status(input);
                    let _ = retry_after(input, now);
                    let _ = grpc_retry_pushback_ms(input);
                }
            }
        }
        // Far-future dates and the largest delays stay representable.
        assert!(retry_after(b"Fri, 31 Dec 9999 23:59:59 GMT", now).is_some());
        assert!(retry_after(
            b"1",
            SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX as u64)
        )
        .is_some());
    }

    #[test]
    fn trimming_handles_blank_and_edge_inputs() {
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b" a b "), b"a b");
    }
}
