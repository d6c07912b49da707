//! `grpc-retry-pushback-ms` on any bytes: never a panic; a wait only for a
//! non-negative decimal number of milliseconds, saturating, never negative.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tower_breaker::__fuzz::grpc_retry_pushback_ms;

#[path = "common.rs"]
mod common;

fuzz_target!(|value: &[u8]| {
    let expected = common::decimal(common::trim_ows(value)).map(Duration::from_millis);
    assert_eq!(grpc_retry_pushback_ms(value), expected, "{value:?}");
});
