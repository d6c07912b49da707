//! Scripted traffic for metrics tests: an upstream whose every call says how
//! long it takes (on a manual clock) and how it ends.
#![allow(dead_code)]

use std::io;
use std::time::Duration;

use tower::{service_fn, BoxError, Service, ServiceExt};
use tower_breaker::classify::classify_error;
use tower_breaker::{CircuitOpen, ManualClock, Outcome};

/// How a scripted call ends.
#[derive(Clone, Copy, Debug)]
pub enum Call {
    /// Succeeds after this long.
    Ok(Duration),
    /// Fails (kind `error`) after this long.
    Fail(Duration),
    /// Fails with a timeout (kind `timeout`) at once.
    Timeout,
    /// Fails to connect (kind `connect`) at once.
    Connect,
    /// Fails in a way the classifier ignores, after this long.
    Ignored(Duration),
}

/// Shorthand for milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The upstream: advances `clock` by the call's duration, then answers.
pub fn upstream(
    clock: ManualClock,
) -> impl Service<Call, Response = (), Error = io::Error> + Clone {
    service_fn(move |call: Call| {
        let clock = clock.clone();
        async move {
            match call {
                Call::Ok(d) => {
                    clock.advance(d);
                    Ok(())
                }
                Call::Fail(d) => {
                    clock.advance(d);
                    Err(io::Error::other("boom"))
                }
                Call::Timeout => Err(io::Error::from(io::ErrorKind::TimedOut)),
                Call::Connect => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
                Call::Ignored(d) => {
                    clock.advance(d);
                    Err(io::Error::other("ignored"))
                }
            }
        }
    })
}

/// The error classifier for [`upstream`]: "ignored" errors are ignored, the
/// rest as the default classifier does.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> Outcome {
    if error.to_string() == "ignored" {
        Outcome::Ignored
    } else {
        classify_error(error)
    }
}

/// What became of a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// The upstream answered `Ok`.
    Ok,
    /// The upstream answered `Err`.
    Failed,
    /// The breaker refused the call.
    Rejected,
}

/// Sends one call through `svc`.
pub async fn send<S>(svc: &S, call: Call) -> Sent
where
    S: Service<Call, Error = BoxError> + Clone,
{
    match svc.clone().oneshot(call).await {
        Ok(_) => Sent::Ok,
        Err(e) if e.is::<CircuitOpen>() => Sent::Rejected,
        Err(_) => Sent::Failed,
    }
}
