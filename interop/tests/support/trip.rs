//! One breaker taken through a trip and a recovery on a manual clock, for
//! the tests of other recorders (`recorder_*.rs`), which then check what
//! arrived at the far end.
#![allow(dead_code)]

use std::time::Duration;

use tower::util::BoxService;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock, ManualClock};

/// How long the breaker stays open.
pub const OPEN_FOR: Duration = Duration::from_secs(5);

/// A breaker in front of an upstream that fails when asked to.
pub struct Tripped {
    pub layer: CircuitBreakerLayer,
    svc: BoxService<bool, &'static str, BoxError>,
    time: ManualClock,
}

impl Tripped {
    /// A breaker named `name`: three consecutive failures open it for
    /// [`OPEN_FOR`], and one successful probe closes it again.
    pub fn new(name: &str) -> Self {
        let (clock, time) = Clock::manual();
        let layer = CircuitBreakerLayer::builder()
            .name(name)
            .clock(clock)
            .consecutive_failures(3)
            .half_open_permits(1)
            .open_duration(Backoff::fixed(OPEN_FOR))
            .build()
            .expect("a valid configuration");
        let svc = BoxService::new(layer.layer(service_fn(|fail: bool| async move {
            if fail {
                Err(std::io::Error::other("upstream down"))
            } else {
                Ok("ok")
            }
        })));
        Tripped { layer, svc, time }
    }

    async fn call(&mut self, fail: bool) -> Result<&'static str, BoxError> {
        self.svc.ready().await?.call(fail).await
    }

    /// Two successes, three failures (the third trips the breaker), then
    /// one call refused while open: requests success 2, failure 3,
    /// rejected 1; one transition closed -> open (consecutive_failures).
    pub async fn trip(&mut self) {
        for fail in [false, false, true, true, true] {
            assert_eq!(self.call(fail).await.is_ok(), !fail);
        }
        let refused = self.call(false).await.expect_err("open refuses");
        assert!(refused.is::<tower_breaker::CircuitOpen>(), "{refused}");
    }

    /// After [`OPEN_FOR`], one successful probe: open -> half_open
    /// (timeout_elapsed), half_open -> closed (probe_succeeded); requests
    /// success 3 in all.
    pub async fn recover(&mut self) {
        self.time.advance(OPEN_FOR);
        self.call(false).await.expect("the probe goes through");
        assert_eq!(self.layer.handle().state(), tower_breaker::State::Closed);
    }
}
