//! Per-key breakers: one breaker per upstream (authority, route, header
//! value, or a key of your own) behind a single layer.
//!
//! A mesh client talks to many upstreams through one stack. With one
//! breaker for all of them, one failing upstream trips calls to the healthy
//! ones; with [`KeyedCircuitBreakerLayer`] each key gets its own breaker,
//! built from one [`Builder`] configuration, with the key as its `service`
//! label.
//!
//! # Bounds
//!
//! Keys come from requests, so their number is bounded three ways:
//!
//! - **`max_keys`** (default 500, half the process-wide label cap): the
//!   layer reserves that many `service` labels from the process-wide cap
//!   ([`set_service_limit`], default 1,000) when it is built, or fewer if
//!   the cap has less room left (logged as a warning; see
//!   [`label_budget`](KeyedCircuitBreakerLayer::label_budget)). Its keys
//!   use only that budget: keys made up by clients can take no label from
//!   another layer or from a named breaker.
//! - **Overflow**: past the budget, new keys share one breaker labelled
//!   `__overflow__`, which **judges nothing**: it starts (and stays)
//!   [`Disabled`](crate::State::Disabled), so an overflowed call always
//!   reaches the inner service and is counted (`requests_total`,
//!   `request_duration_seconds`, `failures_total` under
//!   `service="__overflow__"`), and one key's failures can never get another
//!   key refused. The overflow breaker's handle can still force it open.
//! - **`idle_timeout`** (default 10 minutes): a key with no call for that long
//!   is evicted by the next sweep (see below). Each key remembers when it was
//!   last used to within `idle_timeout / 64`: a sweep evicts every key idle
//!   for `idle_timeout` (and unreferenced), and never one called within the
//!   last `idle_timeout × 63/64`. With the sweeps calls trigger on their own,
//!   a key goes within 1.5 × `idle_timeout`; call
//!   [`evict_idle`](KeyedCircuitBreakerLayer::evict_idle) from a timer for a
//!   tighter bound. A key whose breaker is still referenced (a call in
//!   flight, or a [`CircuitBreakerHandle`] you hold) is kept. A call racing
//!   the eviction of its key may still be judged by the evicted breaker.
//! - **Labels**: a key is sanitized like every label
//!   ([`sanitize_label`]: `[A-Za-z0-9_\-.:/]`, 64 characters). Keys that
//!   sanitize alike share one breaker, so one series is always one breaker.
//!
//! Where clients choose the key (a `Host` header on a server), a flood of
//! made-up keys fills the map and new genuine keys overflow until the
//! made-up ones go idle (those new keys flow, unjudged, through the overflow
//! breaker meanwhile): prefer keys you control there ([`ByPath::prefixes`],
//! a header your router sets). Both the shard choice and the maps hash with
//! std's randomly seeded SipHash, so clients cannot aim keys at one shard.
//!
//! An evicted key's series are **set idle, not removed**: the `metrics`
//! facade cannot remove a series, so eviction sets every value of its
//! one-hot `state` gauge to 0 (no state at all, which no live breaker
//! reports) and its error rate, slow-call rate and trip risk to 0. Counters
//! and histograms keep their totals. To have the series dropped, give the
//! recorder an idle timeout longer than the breaker's (for Prometheus,
//! `PrometheusBuilder::idle_timeout`). A key that comes back gets a fresh
//! Closed breaker.
//!
//! # Memory
//!
//! Each live key costs one entry in the map, its breaker (state machine and
//! window) and its cached metric handles:
//! [`memory_per_key`](KeyedCircuitBreakerLayer::memory_per_key) computes the
//! figure for a configuration. With the default count window of 100 it is
//! about 3.2 KiB on 64-bit targets (documented bound: 4 KiB): the state
//! machine, its window and early-warning state, the metric handles of one
//! recorder (boxed, about 1.7 KiB; a breaker that sees more recorders holds
//! one box each) and the map entry and label. A 10,000-key layer stays
//! under 40 MiB, and `max_keys` bounds the total. A count window adds one byte
//! per call it holds, a time window 32 bytes per bucket. The recorder's own
//! storage per series comes on top.
//!
//! # Concurrency
//!
//! The keys live in 64 shards, each an immutable map behind an
//! [`ArcSwap`]; a key's shard is chosen by a randomly seeded SipHash of it
//! (one per layer). A call for a known key loads its shard's snapshot
//! (arc-swap's debt protocol: a few atomic operations on a slot of the
//! calling thread, no shared cache line written), looks the key up, reads
//! the clock, and marks the key used with one relaxed load (a store at most
//! 64 times per `idle_timeout`). No lock is taken for it. Inserting a key (and evicting keys) takes a mutex,
//! copies the key's shard with the change and swaps it in: **an insert costs
//! O(n / 64)** in the number of live keys, so a burst of `n` new keys costs
//! O(n² / 64) in total: 100,000 keys are created in well under a second.
//! Calls for keys past the cap go to the overflow breaker without the lock.
//!
//! Idle keys are swept while the mutex is free: when a new key is inserted,
//! when the map is full, every 256 calls of a service, and when you call
//! [`evict_idle`](KeyedCircuitBreakerLayer::evict_idle) (from a timer, if
//! your traffic is too thin for the rest). A sweep runs at most once every
//! half `idle_timeout` unless forced, and never blocks a call.
//!
//! # Readiness
//!
//! The key is only known when the request is, at `call`, so the keyed
//! service cannot decide admission in `poll_ready` as [`CircuitBreaker`]
//! does: its `poll_ready` polls the inner service only, and `call` asks the
//! key's breaker. A refused call returns a future that fails with
//! [`CircuitOpen`] at once, without calling the inner service; the readiness
//! the inner service granted is kept for the next call.
//!
//! [`CircuitBreaker`]: crate::CircuitBreaker
//! [`CircuitOpen`]: crate::CircuitOpen
//! [`set_service_limit`]: crate::metrics::set_service_limit
//! [`sanitize_label`]: crate::metrics::sanitize_label

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::Breaker;
use crate::classify::{Classify, DefaultClassifier};
use crate::clock::duration_nanos;
use crate::error::ConfigError;
use crate::future::ResponseFuture;
use crate::layer::Template;
use crate::metrics::{sanitize_label, LabelBudget, ServiceLabel, OVERFLOW_LABEL};
use crate::{Builder, CircuitBreakerHandle};

/// The default cap on live keys: half the default process-wide label cap,
/// so two keyed layers with the defaults fit in it.
pub const DEFAULT_MAX_KEYS: usize = 500;

/// The default time without a call after which a key is evicted.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The default key of a request the extractor finds no key in.
pub const DEFAULT_FALLBACK_KEY: &str = "unknown";

/// How often (in calls, per service) a service checks whether a sweep is due.
const SWEEP_CHECK_EVERY: u32 = 256;

/// Finds the key of a request: the upstream its breaker stands for.
///
/// The key may borrow from the request or from the extractor, so the built-in
/// extractors allocate nothing for a key that is already a clean label.
/// `None` sends the request to the fallback key
/// ([`KeyedBuilder::fallback_key`]).
///
/// ```
/// use std::borrow::Cow;
/// use tower_breaker::KeyExtractor;
///
/// /// Keys `"shard-N"` requests by their shard.
/// struct ByShard;
///
/// impl KeyExtractor<(u8, String)> for ByShard {
///     fn key<'a>(&'a self, req: &'a (u8, String)) -> Option<Cow<'a, str>> {
///         Some(Cow::Owned(format!("shard-{}", req.0)))
///     }
/// }
/// assert_eq!(ByShard.key(&(3, "get".into())).as_deref(), Some("shard-3"));
/// ```
pub trait KeyExtractor<Req> {
    /// The key of `req`, or `None` for the fallback key.
    fn key<'a>(&'a self, req: &'a Req) -> Option<Cow<'a, str>>;
}

/// Keys HTTP requests by authority: the URI's (client side, absolute URIs),
/// else the `Host` header (server side). The default for a mesh.
///
/// The key is lowercased and any `user:password@` part is dropped, so
/// credentials never reach a label; the port is kept.
///
/// ```
/// use tower_breaker::{keyed::ByAuthority, KeyExtractor};
///
/// let req = http::Request::get("http://user:pw@Orders.svc:8080/list").body(()).unwrap();
/// assert_eq!(ByAuthority.key(&req).as_deref(), Some("orders.svc:8080"));
/// let req = http::Request::get("/list").header("host", "billing.svc").body(()).unwrap();
/// assert_eq!(ByAuthority.key(&req).as_deref(), Some("billing.svc"));
/// ```
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, Default)]
pub struct ByAuthority;

#[cfg(feature = "http")]
impl<B> KeyExtractor<http::Request<B>> for ByAuthority {
    fn key<'a>(&'a self, req: &'a http::Request<B>) -> Option<Cow<'a, str>> {
        let raw = match req.uri().authority() {
            Some(authority) => authority.as_str(),
            None => req.headers().get(http::header::HOST)?.to_str().ok()?,
        };
        let host = raw.rsplit_once('@').map_or(raw, |(_, host)| host).trim();
        if host.is_empty() {
            None
        } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Some(Cow::Owned(host.to_ascii_lowercase()))
        } else {
            Some(Cow::Borrowed(host))
        }
    }
}

/// Keys HTTP requests by the value of a header (for example one a router
/// sets to name the upstream). A missing, empty or non-ASCII value gives no
/// key.
///
/// ```
/// use http::HeaderName;
/// use tower_breaker::{keyed::ByHeader, KeyExtractor};
///
/// let by = ByHeader::new(HeaderName::from_static("x-upstream"));
/// let req = http::Request::get("/").header("x-upstream", "ledger").body(()).unwrap();
/// assert_eq!(by.key(&req).as_deref(), Some("ledger"));
/// ```
#[cfg(feature = "http")]
#[derive(Clone, Debug)]
pub struct ByHeader {
    name: http::HeaderName,
}

#[cfg(feature = "http")]
impl ByHeader {
    /// Keys by the value of header `name`.
    pub fn new(name: http::HeaderName) -> Self {
        ByHeader { name }
    }
}

#[cfg(feature = "http")]
impl<B> KeyExtractor<http::Request<B>> for ByHeader {
    fn key<'a>(&'a self, req: &'a http::Request<B>) -> Option<Cow<'a, str>> {
        let value = req.headers().get(&self.name)?.to_str().ok()?.trim();
        (!value.is_empty()).then_some(Cow::Borrowed(value))
    }
}

/// Keys HTTP requests by a prefix of their path: the first `n` segments, or
/// the longest of a list of known prefixes.
///
/// For gRPC, `ByPath::segments(1)` keys by service (`/pkg.Service`).
/// Segments of a path are chosen by the client: prefer a list of prefixes
/// when paths carry ids, or rely on `max_keys`.
///
/// ```
/// use tower_breaker::{keyed::ByPath, KeyExtractor};
///
/// let req = http::Request::get("/api/users/42?x=1").body(()).unwrap();
/// assert_eq!(ByPath::segments(2).key(&req).as_deref(), Some("/api/users"));
/// let routes = ByPath::prefixes(["/api", "/api/users", "/static"]);
/// assert_eq!(routes.key(&req).as_deref(), Some("/api/users"));
/// let other = http::Request::get("/apis").body(()).unwrap();
/// assert_eq!(routes.key(&other), None); // no prefix matches on a segment boundary
/// ```
#[cfg(feature = "http")]
#[derive(Clone, Debug)]
pub struct ByPath {
    rule: PathRule,
}

#[cfg(feature = "http")]
#[derive(Clone, Debug)]
enum PathRule {
    Segments(usize),
    /// Longest first.
    Prefixes(Arc<[Box<str>]>),
}

#[cfg(feature = "http")]
impl ByPath {
    /// Keys by the first `n` path segments (at least 1): with 2,
    /// `/api/users/42` is keyed `/api/users`.
    pub fn segments(n: usize) -> Self {
        ByPath {
            rule: PathRule::Segments(n.max(1)),
        }
    }

    /// Keys by the longest of `prefixes` the path starts with, on a segment
    /// boundary (`/api` matches `/api` and `/api/x`, not `/apis`). A path
    /// matching none gives no key.
    pub fn prefixes<I>(prefixes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut list: Vec<Box<str>> = prefixes
            .into_iter()
            .map(|p| p.into().into_boxed_str())
            .filter(|p| !p.is_empty())
            .collect();
        list.sort_by_key(|p| std::cmp::Reverse(p.len()));
        ByPath {
            rule: PathRule::Prefixes(list.into()),
        }
    }
}

#[cfg(feature = "http")]
impl<B> KeyExtractor<http::Request<B>> for ByPath {
    fn key<'a>(&'a self, req: &'a http::Request<B>) -> Option<Cow<'a, str>> {
        let path = req.uri().path();
        match &self.rule {
            PathRule::Segments(n) => {
                let end = path
                    .match_indices('/')
                    .map(|(i, _)| i)
                    .filter(|&i| i > 0)
                    .nth(n - 1)
                    .unwrap_or(path.len());
                Some(Cow::Borrowed(&path[..end]))
            }
            PathRule::Prefixes(list) => list
                .iter()
                .find(|p| {
                    path.strip_prefix(&***p).is_some_and(|rest| {
                        rest.is_empty() || rest.starts_with('/') || p.ends_with('/')
                    })
                })
                .map(|p| Cow::Borrowed(&**p)),
        }
    }
}

/// Keys requests with a closure returning `Option<T>`, where `T` is a
/// `String` or a `&'static str`. Made by [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F> {
    f: F,
}

/// Keys requests with a closure: `Some(key)`, or `None` for the fallback key.
/// A closure returning a `String` allocates it on every call; return
/// `&'static str` from a fixed set where you can.
///
/// ```
/// use tower_breaker::{keyed::key_fn, KeyExtractor};
///
/// let by_tenant = key_fn(|req: &(u32, &str)| Some(if req.0 < 100 { "small" } else { "large" }));
/// assert_eq!(by_tenant.key(&(7, "get")).as_deref(), Some("small"));
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn { f }
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn").finish_non_exhaustive()
    }
}

impl<Req, F, T> KeyExtractor<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<T>,
    T: Into<Cow<'static, str>>,
{
    fn key<'a>(&'a self, req: &'a Req) -> Option<Cow<'a, str>> {
        (self.f)(req).map(Into::into)
    }
}

impl<C> Builder<C> {
    /// Turns this configuration into a template for per-key breakers, keyed
    /// by `extractor`. Each key's breaker is named after its key; the
    /// builder's own [`name`](Builder::name) is not used. Hooks
    /// ([`on_state_change`](Builder::on_state_change)) are shared by all
    /// keys: tell them apart by [`StateChange::service`](crate::StateChange).
    /// Each key's breaker has its own early-warning predictor, if
    /// configured, and its own `caller -> key` edge in the
    /// [`dependency`](crate::dependency) graph, gone when the key is evicted.
    pub fn keyed<K>(self, extractor: K) -> KeyedBuilder<K, C> {
        KeyedBuilder {
            builder: self,
            extractor,
            max_keys: DEFAULT_MAX_KEYS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            fallback_key: DEFAULT_FALLBACK_KEY.to_owned(),
        }
    }
}

/// Configures a [`KeyedCircuitBreakerLayer`]; made by [`Builder::keyed`].
pub struct KeyedBuilder<K, C = DefaultClassifier> {
    builder: Builder<C>,
    extractor: K,
    max_keys: usize,
    idle_timeout: Duration,
    fallback_key: String,
}

impl<K: fmt::Debug, C> fmt::Debug for KeyedBuilder<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("builder", &self.builder)
            .field("extractor", &self.extractor)
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .field("fallback_key", &self.fallback_key)
            .finish()
    }
}

impl<K, C> KeyedBuilder<K, C> {
    /// The most keys with a breaker of their own (default 500), reserved
    /// from the process-wide label cap at `build`; past it, keys share the
    /// unjudged `__overflow__` breaker.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Evicts a key after this long without a call (default 10 minutes).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The key of requests the extractor finds no key in (default
    /// `unknown`).
    pub fn fallback_key(mut self, key: impl Into<String>) -> Self {
        self.fallback_key = key.into();
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<KeyedCircuitBreakerLayer<K, C>, ConfigError> {
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be at least 1"));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "idle_timeout",
                "must be greater than zero",
            ));
        }
        if self.fallback_key.trim().is_empty() {
            return Err(ConfigError::new("fallback_key", "must not be empty"));
        }
        let (template, classifier) = self.builder.into_template()?;
        let idle = duration_nanos(self.idle_timeout);
        let now = template.clock.now();
        let fallback = sanitize_label(&self.fallback_key).into_boxed_str();
        let budget = LabelBudget::reserve(self.max_keys);
        #[cfg(feature = "tracing")]
        if budget.granted() < self.max_keys {
            tracing::warn!(
                max_keys = self.max_keys,
                granted = budget.granted(),
                "keyed circuit breaker: the process-wide service label cap has room for fewer \
                 keys than max_keys; keys past the budget share the unjudged __overflow__ breaker"
            );
        }
        Ok(KeyedCircuitBreakerLayer {
            keys: Arc::new(Keys {
                max_keys: self.max_keys,
                budget,
                hasher: RandomState::new(),
                idle,
                touch_every: (idle / 64).max(1),
                sweep_every: (idle / 2).max(1),
                next_sweep: AtomicU64::new(now.saturating_add((idle / 2).max(1))),
                fallback,
                shards: (0..SHARDS)
                    .map(|_| ArcSwap::from_pointee(HashMap::new()))
                    .collect(),
                count: AtomicUsize::new(0),
                writer: Mutex::new(()),
                overflow: OnceLock::new(),
                template,
            }),
            extractor: self.extractor,
            classifier,
        })
    }
}

/// One live key.
struct Entry {
    breaker: Arc<Breaker>,
    /// When the key was last called (clock nanoseconds), to within
    /// `touch_every`: written only when it is that much behind, so a busy
    /// key's entry stays read-mostly.
    used: AtomicU64,
}

impl Entry {
    #[inline]
    fn touch(&self, now: u64, every: u64) {
        if now.saturating_sub(self.used.load(Ordering::Relaxed)) >= every {
            self.used.store(now, Ordering::Relaxed);
        }
    }
}

type Map = HashMap<Arc<str>, Arc<Entry>>;

/// Shards of the key map: an insert copies one shard.
const SHARDS: usize = 64;

/// The keys of one layer, shared by its services.
struct Keys {
    template: Template,
    max_keys: usize,
    /// The labels reserved for this layer's keys: `max_keys`, or fewer if
    /// the process-wide cap had less room.
    budget: LabelBudget,
    /// Picks a key's shard; seeded at random per layer.
    hasher: RandomState,
    idle: u64,
    /// How far behind a key's last-use time may lag (`idle / 64`).
    touch_every: u64,
    sweep_every: u64,
    next_sweep: AtomicU64,
    fallback: Box<str>,
    /// Read without a lock; each shard replaced whole, under `writer`.
    shards: Box<[ArcSwap<Map>]>,
    /// Live keys over all shards; changed under `writer`.
    count: AtomicUsize,
    /// Serializes inserts and sweeps. Calls for known keys never take it.
    writer: Mutex<()>,
    overflow: OnceLock<Arc<Breaker>>,
}

/// Whether `key` is its own label already: [`sanitize_label`] would return
/// it unchanged.
fn is_clean(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

impl Keys {
    /// Runs `f` with the breaker of `key`, creating it if need be.
    #[inline]
    fn with_breaker<R>(&self, key: Option<Cow<'_, str>>, f: impl FnOnce(&Arc<Breaker>) -> R) -> R {
        let key = key.unwrap_or(Cow::Borrowed(&self.fallback));
        let key = if is_clean(&key) {
            key
        } else {
            Cow::Owned(sanitize_label(&key))
        };
        let map = self.shard(&key).load();
        if let Some(entry) = map.get(&*key) {
            entry.touch(self.template.clock.now(), self.touch_every);
            return f(&entry.breaker);
        }
        drop(map);
        f(&self.miss(&key))
    }

    /// The shard of `key`: a seeded hash, so keys a client chooses land
    /// wherever the seed puts them, not all in one shard (which would make
    /// every insert copy one ever-growing map).
    #[inline]
    fn shard(&self, key: &str) -> &ArcSwap<Map> {
        let hash = self.hasher.hash_one(key);
        &self.shards[(hash % SHARDS as u64) as usize]
    }

    /// A key not in the snapshot: insert it, or overflow.
    #[cold]
    fn miss(&self, key: &str) -> Arc<Breaker> {
        let now = self.template.clock.now();
        if key == OVERFLOW_LABEL {
            return self.overflow();
        }
        if self.full() {
            // Stay off the lock while full: sweep only if one is due and the
            // lock is free.
            self.maybe_sweep(now);
            if self.full() {
                return self.overflow();
            }
        }
        let guard = self.lock();
        let shard = self.shard(key);
        if let Some(entry) = shard.load().get(key) {
            entry.touch(now, self.touch_every);
            return entry.breaker.clone();
        }
        if self.full() && now >= self.next_sweep.load(Ordering::Relaxed) {
            self.sweep(now, &guard);
        }
        if self.full() {
            return self.overflow();
        }
        let breaker = self.template.breaker(ServiceLabel::keyed(key));
        let entry = Arc::new(Entry {
            breaker: breaker.clone(),
            used: AtomicU64::new(now),
        });
        let map = shard.load_full();
        let mut next = Map::with_capacity(map.len() + 1);
        next.extend(map.iter().map(|(k, e)| (k.clone(), e.clone())));
        next.insert(breaker.service().clone(), entry);
        shard.store(Arc::new(next));
        self.count.fetch_add(1, Ordering::Relaxed);
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            self.sweep(now, &guard);
        }
        breaker
    }

    fn handle(&self, key: &str) -> Option<CircuitBreakerHandle> {
        let key: Cow<'_, str> = if is_clean(key) {
            Cow::Borrowed(key)
        } else {
            Cow::Owned(sanitize_label(key))
        };
        let map = self.shard(&key).load();
        map.get(&*key)
            .map(|e| CircuitBreakerHandle::new(e.breaker.clone()))
    }

    fn full(&self) -> bool {
        self.count.load(Ordering::Relaxed) >= self.budget.granted()
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn overflow(&self) -> Arc<Breaker> {
        self.overflow
            .get_or_init(|| self.template.unjudged_breaker(ServiceLabel::overflow()))
            .clone()
    }

    /// Sweeps if one is due and no insert or sweep is under way.
    fn maybe_sweep(&self, now: u64) {
        if now < self.next_sweep.load(Ordering::Relaxed) {
            return;
        }
        let guard = match self.writer.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        self.sweep(now, &guard);
    }

    /// Evicts idle, unreferenced keys. Returns how many.
    fn sweep(&self, now: u64, _writer: &MutexGuard<'_, ()>) -> usize {
        self.next_sweep
            .store(now.saturating_add(self.sweep_every), Ordering::Relaxed);
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let map = shard.load_full();
            let mut idle = Vec::new();
            for (key, entry) in map.iter() {
                if now.saturating_sub(entry.used.load(Ordering::Relaxed)) >= self.idle
                    // Only the map holds it: no call in flight, no handle out.
                    && Arc::strong_count(&entry.breaker) == 1
                {
                    idle.push(key.clone());
                }
            }
            if idle.is_empty() {
                continue;
            }
            let mut next = Map::clone(&map);
            for key in &idle {
                next.remove(key);
            }
            shard.store(Arc::new(next));
            self.count.fetch_sub(idle.len(), Ordering::Relaxed);
            for key in &idle {
                map[key].breaker.retire();
            }
            evicted += idle.len();
        }
        evicted
    }
}

/// A [`Layer`] with one circuit breaker per key: per upstream authority,
/// route, header value, or a key of your own. Made by [`Builder::keyed`].
///
/// See the [`keyed`](crate::keyed) module for the bounds (`max_keys`,
/// `idle_timeout`, the `__overflow__` breaker), the memory per key, and the
/// lock-free read path. All services made by one layer share its keys.
///
#[cfg_attr(feature = "http", doc = "```")]
#[cfg_attr(not(feature = "http"), doc = "```ignore")]
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_breaker::{keyed::ByAuthority, CircuitBreakerLayer, CircuitOpen};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let layer = CircuitBreakerLayer::builder()
///     .consecutive_failures(1)
///     .keyed(ByAuthority)
///     .max_keys(512)
///     .idle_timeout(Duration::from_secs(300))
///     .build()?;
/// let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
///     match req.uri().host() {
///         Some("down.svc") => Err(std::io::Error::other("connection reset")),
///         _ => Ok("ok"),
///     }
/// }));
///
/// let get = |uri: &str| http::Request::get(uri).body(()).unwrap();
/// assert!(svc.clone().oneshot(get("http://down.svc/")).await.is_err()); // trips down.svc
/// let err = svc.clone().oneshot(get("http://down.svc/")).await.unwrap_err();
/// assert!(err.is::<CircuitOpen>());
/// assert_eq!(svc.clone().oneshot(get("http://up.svc/")).await?, "ok"); // up.svc still flows
/// assert_eq!(layer.len(), 2);
/// assert_eq!(layer.handle("down.svc").unwrap().state(), tower_breaker::State::Open);
/// # Ok(())
/// # }
/// ```
pub struct KeyedCircuitBreakerLayer<K, C = DefaultClassifier> {
    keys: Arc<Keys>,
    extractor: K,
    classifier: C,
}

impl<K, C> KeyedCircuitBreakerLayer<K, C> {
    /// A handle to the breaker of `key` (sanitized as labels are), if the
    /// key is live. Holding it keeps the key from being evicted.
    pub fn handle(&self, key: &str) -> Option<CircuitBreakerHandle> {
        self.keys.handle(key)
    }

    /// Handles to the breakers of every live key, in no particular order.
    /// Holding them keeps those keys from being evicted.
    pub fn handles(&self) -> Vec<CircuitBreakerHandle> {
        self.keys
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .load()
                    .values()
                    .map(|e| CircuitBreakerHandle::new(e.breaker.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A handle to the `__overflow__` breaker, once a key has overflowed.
    pub fn overflow_handle(&self) -> Option<CircuitBreakerHandle> {
        self.keys
            .overflow
            .get()
            .map(|b| CircuitBreakerHandle::new(b.clone()))
    }

    /// The number of live keys (never more than the
    /// [`label_budget`](Self::label_budget); the overflow breaker is not
    /// counted).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// How many keys may have a breaker of their own: `max_keys`, or fewer
    /// if the process-wide label cap had less room when the layer was built.
    pub fn label_budget(&self) -> usize {
        self.keys.budget.granted()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evicts now every key idle for `idle_timeout` and unreferenced; returns
    /// how many. A key called within the last `idle_timeout × 63/64` is
    /// never evicted. Sweeps also happen on their own (see the module docs):
    /// call this from a timer if calls are too rare to trigger them.
    pub fn evict_idle(&self) -> usize {
        let now = self.keys.template.clock.now();
        let guard = self.keys.lock();
        self.keys.sweep(now, &guard)
    }

    /// The approximate bytes one live key costs in this process, computed
    /// from the sizes of its parts: the map entry, the breaker with its
    /// window, the cached metric handles and the label. The recorder's own
    /// storage for the key's series is not included.
    pub fn memory_per_key(&self) -> usize {
        use std::mem::size_of;
        // Reference-counted allocations carry two counters.
        const ARC: usize = 2 * size_of::<usize>();
        // The map slot (key and value pointers, one control byte) at the
        // worst load factor of the table (7/8 full, then doubled: 7/16).
        let slot = (size_of::<(Arc<str>, Arc<Entry>)>() + 1) * 16 / 7;
        let entry = ARC + size_of::<Entry>();
        let breaker = ARC + size_of::<Breaker>() + self.keys.template.window_bytes();
        let hooks = self.keys.template.hooks_len() * size_of::<usize>() * 2;
        // The metric handle cache: the slots live inside the breaker,
        // counted above; one recorder's handles are boxed beside it (more
        // recorders, more boxes). The handles point into the recorder.
        let handles = crate::metrics::HANDLES_BYTES;
        // The label string, and its slot in the process-wide label registry.
        let label = ARC + 64 + (size_of::<(Arc<str>, usize)>() + 1) * 16 / 7;
        slot + entry + breaker + handles + hooks + label
    }
}

impl<K: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<K, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            keys: self.keys.clone(),
            extractor: self.extractor.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K: fmt::Debug, C> fmt::Debug for KeyedCircuitBreakerLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("extractor", &self.extractor)
            .field("keys", &self.len())
            .field("max_keys", &self.keys.max_keys)
            .finish_non_exhaustive()
    }
}

impl<S, K: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, C> {
    type Service = KeyedCircuitBreaker<S, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            keys: self.keys.clone(),
            extractor: self.extractor.clone(),
            classifier: self.classifier.clone(),
            calls: 0,
        }
    }
}

/// A service with one circuit breaker per key. Made by
/// [`KeyedCircuitBreakerLayer`].
///
/// `poll_ready` polls the inner service only; `call` finds the request's key
/// and asks that key's breaker. A refused call fails with
/// [`CircuitOpen`](crate::CircuitOpen) without calling the inner service.
/// Clones share the keys.
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_breaker::{keyed::key_fn, CircuitBreakerLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let layer = CircuitBreakerLayer::builder()
///     .keyed(key_fn(|req: &(&'static str, u32)| Some(req.0)))
///     .build()?;
/// let svc = layer.layer(service_fn(|req: (&str, u32)| async move { Ok::<_, std::io::Error>(req.1) }));
/// assert_eq!(svc.oneshot(("ledger", 7)).await?, 7);
/// assert!(layer.handle("ledger").is_some());
/// # Ok(())
/// # }
/// ```
pub struct KeyedCircuitBreaker<S, K, C = DefaultClassifier> {
    inner: S,
    keys: Arc<Keys>,
    extractor: K,
    classifier: C,
    /// Calls through this instance, to check for a due sweep now and then.
    calls: u32,
}

impl<S, K, C> KeyedCircuitBreaker<S, K, C> {
    /// A handle to the breaker of `key`, if the key is live.
    pub fn handle(&self, key: &str) -> Option<CircuitBreakerHandle> {
        self.keys.handle(key)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K: Clone, C: Clone> Clone for KeyedCircuitBreaker<S, K, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            keys: self.keys.clone(),
            extractor: self.extractor.clone(),
            classifier: self.classifier.clone(),
            calls: 0,
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug, C> fmt::Debug for KeyedCircuitBreaker<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("extractor", &self.extractor)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<S, K, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: KeyExtractor<Req>,
    C: Classify<S::Response>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.calls = self.calls.wrapping_add(1);
        if self.calls % SWEEP_CHECK_EVERY == 0 {
            self.keys.maybe_sweep(self.keys.template.clock.now());
        }
        let pending = self
            .keys
            .with_breaker(self.extractor.key(&req), |breaker| breaker.admit());
        match pending {
            Err(error) => ResponseFuture::rejected(error),
            Ok(call) => {
                let future = self.inner.call(req);
                ResponseFuture::called(future, call, self.classifier.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a, the unkeyed hash shards used to be chosen by.
    fn fnv1a(key: &str) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }

    /// Keys a client chose to land in one FNV-1a shard spread over the
    /// shards: the hash is seeded at random per layer. (With FNV-1a every
    /// one of them went to shard 0, and each insert copied that one growing
    /// map: 8,000 such inserts took 19 s instead of half a second.)
    #[test]
    fn keys_aimed_at_one_shard_spread_out() {
        let aimed: Vec<String> = (0u64..)
            .map(|i| format!("k{i}"))
            .filter(|k| fnv1a(k) % SHARDS as u64 == 0)
            .take(640)
            .collect();
        let layer = crate::CircuitBreakerLayer::builder()
            .keyed(key_fn(|req: &String| Some(req.clone())))
            .max_keys(640)
            .build()
            .unwrap();
        for key in &aimed {
            layer.keys.with_breaker(Some(Cow::Borrowed(key)), |_| ());
        }
        // Other tests of this binary may hold labels of the process-wide cap.
        assert!(layer.len() >= 320, "{} keys", layer.len());
        let largest = layer
            .keys
            .shards
            .iter()
            .map(|shard| shard.load().len())
            .max()
            .unwrap();
        // About 10 a shard; a fair hash stays far below 4x that.
        assert!(
            largest < 4 * layer.len() / SHARDS + 8,
            "a shard holds {largest} of {} keys",
            layer.len()
        );
    }

    #[test]
    fn clean_keys_are_their_own_label() {
        for key in [
            "a",
            "orders.svc:8080",
            "/api/users",
            "A-b_c",
            &"x".repeat(64),
        ] {
            assert!(is_clean(key), "{key}");
            assert_eq!(sanitize_label(key), key);
        }
        for key in ["", "a b", "é", "a\"b", &"x".repeat(65)] {
            assert!(!is_clean(key), "{key}");
        }
    }
}
