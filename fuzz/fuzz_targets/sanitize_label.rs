//! `sanitize_label` on any string: the result is never empty, at most 64
//! characters of `[A-Za-z0-9_.:/-]`, a fixed point, and keeps the allowed
//! characters of the input's first 64 in place.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_breaker::metrics::sanitize_label;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')
}

fuzz_target!(|input: &str| {
    let out = sanitize_label(input);
    assert!(!out.is_empty(), "empty label for {input:?}");
    assert!(out.len() <= 64, "{} bytes for {input:?}", out.len());
    assert!(out.chars().all(allowed), "{out:?} for {input:?}");
    assert_eq!(sanitize_label(&out), out, "not a fixed point");
    if !input.is_empty() {
        assert_eq!(out.chars().count(), input.chars().count().min(64));
        for (a, b) in input.chars().zip(out.chars()) {
            assert_eq!(b, if allowed(a) { a } else { '_' });
        }
    }
});
