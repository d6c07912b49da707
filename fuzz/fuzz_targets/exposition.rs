//! The Prometheus text parser and the scope views on any input: no panic;
//! whatever parses renders in the full, aggregate and redacted views of a
//! scope, and each view's output parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_breaker::__fuzz::{exposition_parses, exposition_views};

fuzz_target!(|input: &str| {
    let Some(views) = exposition_views(input, &["a*", "svc", "*-eu"]) else {
        return;
    };
    for view in views {
        assert!(exposition_parses(&view), "a view does not parse: {view:?}");
    }
});
