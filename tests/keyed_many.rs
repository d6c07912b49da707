//! Many live keys at once: tens of thousands of breakers, each its own
//! series. Its own binary: it raises the process-wide label cap.

use std::borrow::Cow;
use std::collections::HashSet;
use std::task::{Context, Poll};

use futures::FutureExt;
use tower::{service_fn, Layer, Service};
use tower_breaker::{CircuitBreakerLayer, KeyExtractor, State};

#[derive(Clone)]
struct Whole;

impl KeyExtractor<String> for Whole {
    fn key<'a>(&'a self, req: &'a String) -> Option<Cow<'a, str>> {
        Some(Cow::Borrowed(req))
    }
}

#[test]
fn twenty_thousand_live_keys_each_get_their_own_breaker() {
    const KEYS: usize = 20_000;
    tower_breaker::metrics::set_service_limit(KEYS + 10);
    let layer = CircuitBreakerLayer::builder()
        .metrics_prefix("many")
        .consecutive_failures(1)
        .keyed(Whole)
        .max_keys(KEYS)
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|key: String| {
        std::future::ready(if key.ends_with('7') {
            Err(std::io::Error::other("down"))
        } else {
            Ok(())
        })
    }));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    for i in 0..KEYS {
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let _ = svc.call(format!("k-{i}")).now_or_never().unwrap();
    }
    assert_eq!(layer.len(), KEYS);
    assert!(layer.overflow_handle().is_none(), "nothing overflowed");
    let names: HashSet<String> = layer
        .handles()
        .iter()
        .map(|h| h.name().to_owned())
        .collect();
    assert_eq!(names.len(), KEYS, "one breaker per key");
    // Only the keys ending in 7 tripped, each on its own.
    assert_eq!(layer.handle("k-7").unwrap().state(), State::Open);
    assert_eq!(layer.handle("k-19997").unwrap().state(), State::Open);
    assert_eq!(layer.handle("k-19998").unwrap().state(), State::Closed);
    let open = layer
        .handles()
        .iter()
        .filter(|h| h.state() == State::Open)
        .count();
    assert_eq!(open, KEYS / 10);
}
