//! Per-key breakers: isolation, extractors, overflow, eviction, bounds,
//! concurrency.

#![cfg(feature = "http")]

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use http::{HeaderName, Request};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_breaker::keyed::{key_fn, ByAuthority, ByHeader, ByPath};
use tower_breaker::{
    CircuitBreakerLayer, CircuitOpen, Clock, KeyExtractor, KeyedCircuitBreakerLayer, State,
};

type Req = Request<()>;

fn get(uri: &str) -> Req {
    Request::get(uri).body(()).unwrap()
}

/// Polls ready, calls, and resolves a future that is ready at once.
fn call<S, R>(svc: &mut S, req: R) -> Result<S::Response, BoxError>
where
    S: Service<R, Error = BoxError>,
{
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("service not ready: {:?}", other.map(|r| r.is_ok())),
    }
    svc.call(req).now_or_never().expect("future not ready")
}

fn rejected_by(result: Result<impl Sized, BoxError>) -> Option<String> {
    match result {
        Err(e) => e
            .downcast_ref::<CircuitOpen>()
            .map(|o| o.service().to_owned()),
        Ok(_) => None,
    }
}

/// An inner service that fails for the hosts in `down`, counting calls per
/// host.
#[derive(Clone, Default)]
struct Upstreams {
    down: Arc<Mutex<Vec<String>>>,
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl Upstreams {
    fn down(hosts: &[&str]) -> Self {
        let u = Upstreams::default();
        *u.down.lock().unwrap() = hosts.iter().map(|h| h.to_string()).collect();
        u
    }

    fn calls(&self, host: &str) -> usize {
        self.calls.lock().unwrap().get(host).copied().unwrap_or(0)
    }

    fn service(
        &self,
        key: impl Fn(&Req) -> String + Clone + Send + 'static,
    ) -> impl Service<Req, Response = &'static str, Error = std::io::Error> + Clone {
        let this = self.clone();
        service_fn(move |req: Req| {
            let host = key(&req);
            *this.calls.lock().unwrap().entry(host.clone()).or_default() += 1;
            let down = this.down.lock().unwrap().contains(&host);
            async move {
                if down {
                    Err(std::io::Error::other("upstream down"))
                } else {
                    Ok("ok")
                }
            }
        })
    }
}

fn host_of(req: &Req) -> String {
    ByAuthority.key(req).unwrap().into_owned()
}

#[test]
fn a_failing_authority_trips_alone() {
    let (clock, _manual) = Clock::manual();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = changes.clone();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .clock(clock)
        .on_state_change(move |c| seen.lock().unwrap().push((c.service.to_string(), c.to)))
        .keyed(ByAuthority)
        .build()
        .unwrap();
    let upstreams = Upstreams::down(&["a.mesh.test"]);
    let mut svc = layer.layer(upstreams.service(host_of));

    for _ in 0..3 {
        let err = call(&mut svc, get("http://a.mesh.test/x")).unwrap_err();
        assert!(!err.is::<CircuitOpen>());
    }
    for _ in 0..5 {
        assert_eq!(
            rejected_by(call(&mut svc, get("http://a.mesh.test/x"))).as_deref(),
            Some("a.mesh.test")
        );
    }
    assert_eq!(
        upstreams.calls("a.mesh.test"),
        3,
        "refused calls never reach the inner service"
    );

    // b keeps flowing, by URI authority and by Host header (any case).
    for _ in 0..10 {
        assert_eq!(call(&mut svc, get("http://b.mesh.test/x")).unwrap(), "ok");
    }
    let by_host = Request::get("/x")
        .header("host", "B.Mesh.Test")
        .body(())
        .unwrap();
    assert_eq!(call(&mut svc, by_host).unwrap(), "ok");
    assert_eq!(upstreams.calls("b.mesh.test"), 11);

    assert_eq!(layer.len(), 2);
    assert_eq!(layer.handle("a.mesh.test").unwrap().state(), State::Open);
    let b = layer.handle("b.mesh.test").unwrap();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().calls, 11);
    // The hooks are shared; the change names its key.
    assert_eq!(
        *changes.lock().unwrap(),
        vec![("a.mesh.test".to_owned(), State::Open)]
    );
}

#[test]
fn userinfo_never_reaches_a_key() {
    let layer = CircuitBreakerLayer::builder()
        .keyed(ByAuthority)
        .build()
        .unwrap();
    let mut svc = layer.layer(Upstreams::default().service(host_of));
    call(&mut svc, get("http://admin:secret@c.mesh.test:8443/")).unwrap();
    let names: Vec<String> = layer
        .handles()
        .iter()
        .map(|h| h.name().to_owned())
        .collect();
    assert_eq!(names, ["c.mesh.test:8443"]);
}

#[test]
fn header_extractor_keys_by_value_and_falls_back() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .keyed(ByHeader::new(HeaderName::from_static("x-upstream")))
        .build()
        .unwrap();
    let upstream = |req: &Req| {
        req.headers()
            .get("x-upstream")
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned())
    };
    let upstreams = Upstreams::down(&["ledger"]);
    let mut svc = layer.layer(upstreams.service(upstream));
    let to = |name: &str| {
        Request::get("/")
            .header("x-upstream", name)
            .body(())
            .unwrap()
    };

    assert!(call(&mut svc, to("ledger")).is_err());
    assert!(call(&mut svc, to("ledger")).is_err());
    assert_eq!(
        rejected_by(call(&mut svc, to("ledger"))).as_deref(),
        Some("ledger")
    );
    assert_eq!(call(&mut svc, to("billing")).unwrap(), "ok");
    // No header: the fallback key.
    assert_eq!(call(&mut svc, get("/")).unwrap(), "ok");

    let mut names: Vec<String> = layer
        .handles()
        .iter()
        .map(|h| h.name().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["billing", "ledger", "unknown"]);
}

#[test]
fn route_extractor_keys_by_prefix() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .keyed(ByPath::prefixes(["/api/orders", "/api/users"]))
        .fallback_key("other routes")
        .build()
        .unwrap();
    let route = |req: &Req| req.uri().path().split('/').nth(2).unwrap_or("").to_owned();
    let upstreams = Upstreams::down(&["orders"]);
    let mut svc = layer.layer(upstreams.service(route));

    assert!(call(&mut svc, get("/api/orders/17")).is_err());
    assert_eq!(
        rejected_by(call(&mut svc, get("/api/orders"))).as_deref(),
        Some("/api/orders")
    );
    assert_eq!(call(&mut svc, get("/api/users/9")).unwrap(), "ok");
    assert_eq!(call(&mut svc, get("/api/ordersx")).unwrap(), "ok");
    // The fallback key is sanitized like any label.
    assert!(layer.handle("other routes").is_some());
    assert_eq!(layer.handle("other_routes").unwrap().name(), "other_routes");
    assert_eq!(layer.len(), 3);
}

#[test]
fn path_segments_key_grpc_services() {
    let layer = CircuitBreakerLayer::builder()
        .keyed(ByPath::segments(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(Upstreams::default().service(|_| String::new()));
    call(&mut svc, get("/shop.Cart/Add")).unwrap();
    call(&mut svc, get("/shop.Cart/Remove")).unwrap();
    call(&mut svc, get("/shop.Pay/Charge")).unwrap();
    assert_eq!(layer.handle("/shop.Cart").unwrap().snapshot().calls, 2);
    assert_eq!(layer.handle("/shop.Pay").unwrap().snapshot().calls, 1);
}

/// Keys past `max_keys` share the `__overflow__` breaker, which judges
/// nothing: junk keys failing cannot get a genuine new key refused. (It
/// used to judge them: three failures of k3 opened it and k4, a healthy
/// upstream, was refused with "circuit breaker `__overflow__` is open".)
#[test]
fn keys_past_max_keys_share_the_overflow_breaker() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(3)
        .keyed(key_fn(|req: &Req| req.uri().host().map(str::to_owned)))
        .max_keys(2)
        .build()
        .unwrap();
    let upstreams = Upstreams::down(&["k3"]);
    let mut svc = layer.layer(upstreams.service(|r: &Req| r.uri().host().unwrap().to_owned()));

    call(&mut svc, get("http://k1/")).unwrap();
    call(&mut svc, get("http://k2/")).unwrap();
    assert!(layer.overflow_handle().is_none());
    for _ in 0..10 {
        let err = call(&mut svc, get("http://k3/")).unwrap_err();
        assert!(
            !err.is::<CircuitOpen>(),
            "overflowed calls reach the upstream"
        );
    }
    assert_eq!(upstreams.calls("k3"), 10);
    // k4 shares the overflow breaker, and flows.
    assert_eq!(call(&mut svc, get("http://k4/")).unwrap(), "ok");
    assert_eq!(upstreams.calls("k4"), 1);
    assert_eq!(call(&mut svc, get("http://k1/")).unwrap(), "ok");
    assert_eq!(layer.len(), 2);
    assert!(layer.handle("k3").is_none());
    let overflow = layer.overflow_handle().unwrap();
    assert_eq!(overflow.state(), State::Disabled);
    assert_eq!(overflow.name(), "__overflow__");
    // Its handle can force it open; closing or resetting it returns it to
    // judging nothing (not to a Closed breaker that junk keys could trip).
    overflow.force_open();
    assert!(rejected_by(call(&mut svc, get("http://k4/"))).is_some());
    overflow.force_closed();
    assert_eq!(overflow.state(), State::Disabled);
    overflow.force_open();
    overflow.reset();
    assert_eq!(overflow.state(), State::Disabled);
    for _ in 0..10 {
        call(&mut svc, get("http://k3/")).unwrap_err();
    }
    assert_eq!(call(&mut svc, get("http://k4/")).unwrap(), "ok");
}

fn gauge(
    snapshot: &[(metrics_util::CompositeKey, DebugValue)],
    name: &str,
    service: &str,
    state: &str,
) -> Option<f64> {
    snapshot.iter().find_map(|(key, value)| {
        let key = key.key();
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let hit = key.name() == name
            && labels.contains(&("service", service))
            && labels.contains(&("state", state));
        match value {
            DebugValue::Gauge(v) if hit => Some(v.into_inner()),
            _ => None,
        }
    })
}

#[test]
fn idle_keys_are_evicted_and_their_state_gauge_zeroed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (clock, manual) = Clock::manual();
        let layer = CircuitBreakerLayer::builder()
            .clock(clock)
            .metrics_prefix("evict")
            .keyed(ByAuthority)
            .idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut svc = layer.layer(Upstreams::default().service(host_of));

        call(&mut svc, get("http://idle.evict.test/")).unwrap();
        call(&mut svc, get("http://busy.evict.test/")).unwrap();
        manual.advance(Duration::from_secs(59));
        call(&mut svc, get("http://busy.evict.test/")).unwrap();
        assert_eq!(layer.evict_idle(), 0, "nothing is idle for 60 s yet");
        manual.advance(Duration::from_secs(1));
        assert_eq!(layer.evict_idle(), 1);
        assert!(layer.handle("idle.evict.test").is_none());
        assert_eq!(layer.len(), 1);

        // A held handle (like a call in flight) keeps its key.
        let pinned = layer.handle("busy.evict.test").unwrap();
        manual.advance(Duration::from_secs(600));
        assert_eq!(layer.evict_idle(), 0);
        drop(pinned);
        assert_eq!(layer.evict_idle(), 1);
        assert!(layer.is_empty());

        call(&mut svc, get("http://live.evict.test/")).unwrap();
        let snapshot: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (k, v))
            .collect();
        for evicted in ["idle.evict.test", "busy.evict.test"] {
            for state in State::ALL {
                let value = gauge(&snapshot, "evict_state", evicted, state.as_str());
                assert_eq!(value, Some(0.0), "{evicted} {state:?}");
            }
        }
        assert_eq!(
            gauge(&snapshot, "evict_state", "live.evict.test", "closed"),
            Some(1.0)
        );

        // A key that comes back gets a fresh breaker and a live gauge.
        call(&mut svc, get("http://idle.evict.test/")).unwrap();
        let snapshot: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (k, v))
            .collect();
        assert_eq!(
            gauge(&snapshot, "evict_state", "idle.evict.test", "closed"),
            Some(1.0)
        );
        assert_eq!(layer.handle("idle.evict.test").unwrap().snapshot().calls, 1);
    });
}

/// `evict_idle()` evicts every key idle for `idle_timeout`, however the
/// calls fell between sweeps. (A key called twice, then idle for 121 s with
/// a 60 s timeout, used to survive the sweep: it only noted the key as
/// touched, and a second sweep 60 s later removed it.)
#[test]
fn evict_idle_evicts_every_key_idle_for_the_timeout() {
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .clock(clock)
        .keyed(ByAuthority)
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut svc = layer.layer(Upstreams::default().service(|_| String::new()));
    call(&mut svc, get("http://once.idle.test/")).unwrap();
    call(&mut svc, get("http://twice.idle.test/")).unwrap();
    manual.advance(Duration::from_secs(1));
    call(&mut svc, get("http://twice.idle.test/")).unwrap();
    manual.advance(Duration::from_secs(121));
    assert_eq!(layer.evict_idle(), 2);
    assert_eq!(layer.len(), 0);

    // Never before the timeout (to within 1/64 of it): a key called 59 s
    // ago stays, one called 60 s ago goes.
    call(&mut svc, get("http://old.idle.test/")).unwrap();
    manual.advance(Duration::from_secs(1));
    call(&mut svc, get("http://recent.idle.test/")).unwrap();
    manual.advance(Duration::from_secs(59));
    assert_eq!(layer.evict_idle(), 1);
    assert!(layer.handle("old.idle.test").is_none());
    assert!(layer.handle("recent.idle.test").is_some());
}

#[tokio::test(start_paused = true)]
async fn sweeps_run_on_their_own_from_calls_and_inserts() {
    let layer = CircuitBreakerLayer::builder()
        .clock(Clock::tokio())
        .keyed(ByAuthority)
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(Upstreams::default().service(host_of));
    svc.ready()
        .await
        .unwrap()
        .call(get("http://gone.sweep.test/"))
        .await
        .unwrap();
    svc.ready()
        .await
        .unwrap()
        .call(get("http://stay.sweep.test/"))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(25)).await;
    assert_eq!(layer.len(), 2);

    // A call for a known key finds a sweep due (every 5 s), through a fresh
    // clone of the service, as a service cloned per request is. (Sweeps used
    // to be checked every 256 calls of one clone, so with a clone per
    // request they never ran from calls.)
    svc.clone()
        .oneshot(get("http://stay.sweep.test/"))
        .await
        .unwrap();
    assert!(layer.handle("gone.sweep.test").is_none());
    assert!(layer.handle("stay.sweep.test").is_some());

    // Inserting a new key sweeps when one is due: `stay` has been idle for
    // 25 s, past the 10 s timeout, and goes.
    tokio::time::advance(Duration::from_secs(5)).await;
    svc.ready()
        .await
        .unwrap()
        .call(get("http://stay.sweep.test/"))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    svc.ready()
        .await
        .unwrap()
        .call(get("http://new.sweep.test/"))
        .await
        .unwrap();
    assert!(layer.handle("stay.sweep.test").is_none(), "idle for 20 s");
    assert!(layer.handle("new.sweep.test").is_some());
    tokio::time::advance(Duration::from_secs(25)).await;
    svc.ready()
        .await
        .unwrap()
        .call(get("http://newer.sweep.test/"))
        .await
        .unwrap();
    // `new` has been idle 25 s.
    let names: Vec<String> = layer
        .handles()
        .iter()
        .map(|h| h.name().to_owned())
        .collect();
    assert_eq!(names, ["newer.sweep.test"]);
}

/// Keys a request by the whole string, borrowed: no allocation per call.
#[derive(Clone, Copy, Debug)]
struct Whole;

impl KeyExtractor<String> for Whole {
    fn key<'a>(&'a self, req: &'a String) -> Option<Cow<'a, str>> {
        Some(Cow::Borrowed(req))
    }
}

/// A million distinct keys, in ten waves with eviction between them: the
/// live keys never exceed the cap, the rest share the overflow breaker.
/// Keys are used once each, so after the first 256 of a wave every call
/// takes the overflow path (a map load and a length check, no lock); the
/// clock is manual, so nothing sleeps.
#[test]
fn a_million_distinct_keys_stay_bounded() {
    const CAP: usize = 256;
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .clock(clock)
        .metrics_prefix("million")
        .keyed(Whole)
        .max_keys(CAP)
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let inner_calls = Arc::new(AtomicUsize::new(0));
    let counted = inner_calls.clone();
    let mut svc = layer.layer(service_fn(move |_: String| {
        counted.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok::<_, std::io::Error>(()))
    }));

    let mut key = String::with_capacity(16);
    let mut most = 0;
    for i in 0..1_000_000u32 {
        if i % 100_000 == 0 && i > 0 {
            manual.advance(Duration::from_secs(11));
        }
        key.clear();
        key.push_str("key-");
        key.push_str(&i.to_string());
        call(&mut svc, key.clone()).unwrap();
        let live = layer.len();
        assert!(live <= CAP, "{live} live keys after {i} calls");
        most = most.max(live);
    }
    assert_eq!(most, CAP);
    assert_eq!(inner_calls.load(Ordering::Relaxed), 1_000_000);
    // The last wave's first keys are live; the rest of it overflowed.
    assert!(layer.handle("key-900000").is_some());
    assert!(layer.handle("key-999999").is_none());
    assert!(layer.overflow_handle().is_some());
}

#[test]
fn concurrent_first_calls_create_one_breaker() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 20;
    let layer = CircuitBreakerLayer::builder().keyed(Whole).build().unwrap();
    let svc = layer.layer(service_fn(|_: String| {
        std::future::ready(Ok::<_, std::io::Error>(()))
    }));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let mut svc = svc.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    barrier.wait();
                    call(&mut svc, format!("race-{round}")).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(layer.len(), ROUNDS);
    for round in 0..ROUNDS {
        // Every call of the round was judged by the one breaker in the map.
        let handle = layer.handle(&format!("race-{round}")).unwrap();
        assert_eq!(handle.snapshot().calls, THREADS as u64, "round {round}");
    }
}

#[test]
fn poll_ready_polls_only_the_inner_service() {
    let layer = CircuitBreakerLayer::builder().keyed(Whole).build().unwrap();
    let (mock, mut handle) = tower_test::mock::pair::<String, ()>();
    let mut svc = layer.layer(mock);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    handle.allow(0);
    assert!(svc.poll_ready(&mut cx).is_pending());
    handle.allow(1);
    assert!(svc.poll_ready(&mut cx).is_ready());
    // No key was looked up: the key is only known at `call`.
    assert!(layer.is_empty());
}

#[test]
fn memory_per_key_is_bounded() {
    let layer = |window: usize| {
        CircuitBreakerLayer::builder()
            .count_window(window)
            .keyed(ByAuthority)
            .build()
            .unwrap()
    };
    let per_key = layer(100).memory_per_key();
    // The documented bound (see the `keyed` module): under 4 KiB a key
    // with the default window, so 10,000 keys stay under 40 MiB.
    assert!(per_key < 4 << 10, "{per_key} bytes per key");
    assert!(10_000 * per_key < 40 << 20);
    // It counts at least the parts whose sizes are known from outside: a
    // 100-byte window and a 64-byte label.
    assert!(per_key > 164);
    // The count window costs one byte a call.
    assert_eq!(layer(1100).memory_per_key() - per_key, 1000);
}

#[test]
fn invalid_settings_name_the_field() {
    let field = |f: fn(
        tower_breaker::KeyedBuilder<ByAuthority>,
    ) -> tower_breaker::KeyedBuilder<ByAuthority>| {
        f(CircuitBreakerLayer::builder().keyed(ByAuthority))
            .build()
            .unwrap_err()
            .field()
    };
    assert_eq!(field(|b| b.max_keys(0)), "max_keys");
    assert_eq!(field(|b| b.idle_timeout(Duration::ZERO)), "idle_timeout");
    assert_eq!(field(|b| b.fallback_key(" ")), "fallback_key");
    let err = CircuitBreakerLayer::builder()
        .failure_rate(2.0)
        .keyed(ByAuthority)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "failure_rate");
}

#[allow(dead_code)]
fn layers_are_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<KeyedCircuitBreakerLayer<ByAuthority>>();
    check::<KeyedCircuitBreakerLayer<ByHeader>>();
    check::<KeyedCircuitBreakerLayer<ByPath>>();
}

#[test]
fn state_changes_name_their_breaker() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook = seen.clone();
    let layer = CircuitBreakerLayer::builder()
        .name("plain-hooks")
        .on_state_change(move |c| hook.lock().unwrap().push(c.service.to_string()))
        .build()
        .unwrap();
    layer.handle().force_open();
    assert_eq!(*seen.lock().unwrap(), ["plain-hooks"]);
}

#[test]
fn keyed_breakers_take_the_http_classifier() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .classifier(tower_breaker::classify::HttpClassifier::new())
        .keyed(ByAuthority)
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|req: Req| {
        let status = if req.uri().host() == Some("flaky.mesh.test") {
            503
        } else {
            200
        };
        std::future::ready(Ok::<_, std::io::Error>(
            http::Response::builder().status(status).body(()).unwrap(),
        ))
    }));
    for _ in 0..2 {
        let res = call(&mut svc, get("http://flaky.mesh.test/")).unwrap();
        assert_eq!(res.status(), 503);
    }
    assert_eq!(
        rejected_by(call(&mut svc, get("http://flaky.mesh.test/"))).as_deref(),
        Some("flaky.mesh.test")
    );
    let res = call(&mut svc, get("http://steady.mesh.test/")).unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        layer.handle("steady.mesh.test").unwrap().state(),
        State::Closed
    );
}

#[test]
fn each_key_is_an_edge_of_the_dependency_graph_until_evicted() {
    use tower_breaker::dependency::DependencyGraph;
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .clock(clock)
        .caller("edge-gateway")
        .keyed(ByAuthority)
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut svc = layer.layer(Upstreams::default().service(host_of));
    call(&mut svc, get("http://cart.graph.test/")).unwrap();
    call(&mut svc, get("http://pay.graph.test/")).unwrap();
    let graph = DependencyGraph::snapshot();
    assert!(graph.edge("edge-gateway", "cart.graph.test").is_some());
    assert!(graph.edge("edge-gateway", "pay.graph.test").is_some());

    manual.advance(Duration::from_secs(30));
    call(&mut svc, get("http://pay.graph.test/")).unwrap();
    manual.advance(Duration::from_secs(30));
    assert_eq!(layer.evict_idle(), 1);
    let graph = DependencyGraph::snapshot();
    assert!(graph.edge("edge-gateway", "cart.graph.test").is_none());
    assert!(graph.edge("edge-gateway", "pay.graph.test").is_some());
}
