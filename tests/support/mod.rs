//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{BoxError, Service, ServiceExt};
use tower_breaker::{CircuitOpen, State, StateChange};

/// What the scripted upstream should do with a call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Call {
    Ok,
    Fail,
    /// Succeed after this long (tokio time).
    SlowOk(Duration),
}

/// An upstream that does what each request says, counting calls.
#[derive(Clone, Default)]
pub struct Upstream {
    pub calls: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn service(
        &self,
    ) -> impl Service<
        Call,
        Response = &'static str,
        Error = io::Error,
        Future = impl Future<Output = Result<&'static str, io::Error>> + Send,
    > + Clone
           + Send {
        let calls = self.calls.clone();
        tower::service_fn(move |call: Call| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match call {
                    Call::Ok => Ok("ok"),
                    Call::Fail => Err(io::Error::other("upstream failed")),
                    Call::SlowOk(d) => {
                        tokio::time::sleep(d).await;
                        Ok("slow")
                    }
                }
            }
        })
    }

    pub fn count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The result of one call through the breaker, reduced to what tests compare.
#[derive(Debug, PartialEq)]
pub enum Seen {
    Ok,
    Failed,
    Rejected(State),
}

pub async fn send<S>(svc: &mut S, call: Call) -> Seen
where
    S: Service<Call, Error = BoxError>,
{
    let result = match svc.ready().await {
        Ok(svc) => svc.call(call).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Seen::Ok,
        Err(e) => match e.downcast_ref::<CircuitOpen>() {
            Some(open) => Seen::Rejected(open.state()),
            None => Seen::Failed,
        },
    }
}

/// Records every transition a hook sees.
#[derive(Clone, Default)]
pub struct Transitions {
    pub seen: Arc<Mutex<Vec<StateChange>>>,
}

impl Transitions {
    pub fn hook(&self) -> impl Fn(&StateChange) + Send + Sync + 'static {
        let seen = self.seen.clone();
        move |change: &StateChange| seen.lock().unwrap().push(change.clone())
    }

    /// `(from, to, reason)` label triples, in order.
    pub fn path(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.from.as_str(), c.to.as_str(), c.reason.as_str()))
            .collect()
    }

    pub fn last(&self) -> StateChange {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a transition")
    }
}

/// One call on a service that is ready and answers at once, with no
/// runtime: `poll_ready`, then `call`, each polled once.
pub fn call_at_once<S, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    use futures::FutureExt;
    svc.ready()
        .now_or_never()
        .expect("ready at once")
        .expect("ready")
        .call(req)
        .now_or_never()
        .expect("answered at once")
}

/// A breaker that trips on one failure, stays open `open_for`, then lets
/// one probe through, timed by `clock`.
pub fn trips_at_once(
    name: &str,
    open_for: Duration,
    clock: tower_breaker::Clock,
) -> tower_breaker::Builder {
    tower_breaker::CircuitBreakerLayer::builder()
        .name(name)
        .consecutive_failures(1)
        .half_open_permits(1)
        .open_duration(tower_breaker::Backoff::fixed(open_for))
        .clock(clock)
}

/// An upstream that answers at once: fails when the request says so
/// (`true`), succeeds otherwise.
pub fn fails_when_asked() -> impl Service<
    bool,
    Response = (),
    Error = io::Error,
    Future = std::future::Ready<Result<(), io::Error>>,
> + Clone {
    tower::service_fn(|fail: bool| {
        std::future::ready(if fail {
            Err(io::Error::other("down"))
        } else {
            Ok(())
        })
    })
}
