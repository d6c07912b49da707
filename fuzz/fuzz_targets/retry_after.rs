//! `Retry-After` on any bytes and any "now": never a panic; delta-seconds
//! give that many seconds (saturating), an HTTP-date the time left until it
//! (zero once past), anything else nothing.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tower_breaker::__fuzz::retry_after;

#[path = "common.rs"]
mod common;

fuzz_target!(|input: (u32, &[u8])| {
    let (now_secs, value) = input;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(now_secs) * 2);
    let trimmed = common::trim_ows(value);
    let expected = match common::decimal(trimmed) {
        Some(seconds) => Some(Duration::from_secs(seconds)),
        None => std::str::from_utf8(trimmed)
            .ok()
            .and_then(|text| httpdate::parse_http_date(text).ok())
            .map(|date| date.duration_since(now).unwrap_or(Duration::ZERO)),
    };
    assert_eq!(retry_after(value, now), expected, "{value:?} at {now:?}");
});
