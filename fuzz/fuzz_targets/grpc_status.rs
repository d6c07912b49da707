//! `grpc-status` on any bytes: never a panic; a code only for a decimal
//! number from 0 to 16 (whitespace around allowed), and then that number.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_breaker::__fuzz::grpc_status;

#[path = "common.rs"]
mod common;

fuzz_target!(|value: &[u8]| {
    let expected = common::decimal(common::trim_ows(value))
        .filter(|n| *n <= 16)
        .map(|n| n as u8);
    assert_eq!(grpc_status(value), expected, "{value:?}");
});
