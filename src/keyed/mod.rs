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
//! Keys come from requests, so their number is bounded:
//!
//! - **`max_keys`** (default 500, half the default process-wide label cap):
//!   the most keys with a breaker of their own. Past it, new keys share one
//!   breaker named `__overflow__`, which **judges nothing**: it starts
//!   [`Disabled`](crate::State::Disabled), and `force_closed()` and
//!   `reset()` on its handle return it there (`force_open()` can still force
//!   it open). An overflowed call always reaches the inner service and is
//!   counted (`requests_total`, `request_duration_seconds`, `failures_total`
//!   under `service="__overflow__"`); one key's failures can never get
//!   another key refused.
//! - **Labels**: when it is built, the layer reserves `max_keys` `service`
//!   labels from the process-wide cap ([`set_service_limit`], default
//!   1,000), or what the cap still has room for after the names of named
//!   breakers and the other keyed layers' reservations (logged as a warning;
//!   see [`label_budget`](KeyedCircuitBreakerLayer::label_budget)). Keys use
//!   only that budget, so keys made up by clients take no label from another
//!   layer or from a named breaker. A key past the budget (but within
//!   `max_keys`) is still judged by a breaker of its own, named after the key
//!   in errors, logs, hooks and its handle, but its metrics report under
//!   `service="__overflow__"`, shared with the other such keys and the
//!   overflow breaker: their counters add up, and that label's state gauge
//!   shows whichever of them wrote last. A key is sanitized like every label
//!   ([`sanitize_label`]: `[A-Za-z0-9_\-.:/]`, 64 characters); keys that
//!   sanitize alike share one breaker, and a key equal to a name in use
//!   elsewhere in the process shares that name's series.
//! - **`idle_timeout`** (default 10 minutes): a key with no call for that long
//!   is evicted by the next sweep (see below). Each key remembers when it was
//!   last used to within `idle_timeout / 64`: a sweep evicts every key idle
//!   for `idle_timeout` (and unreferenced), and never one called within the
//!   last `idle_timeout × 63/64`. Every call checks whether a sweep is due
//!   (one relaxed load against the time it read), and one is due every half
//!   `idle_timeout`, so while calls flow a key goes within 1.5 ×
//!   `idle_timeout`; with no calls at all, call
//!   [`evict_idle`](KeyedCircuitBreakerLayer::evict_idle) from a timer. A
//!   key whose breaker is still referenced (a call in flight, or a
//!   [`CircuitBreakerHandle`] you hold) is kept. A call racing the eviction
//!   of its key may still be judged by the evicted breaker.
//!
//! Where clients choose the key (a `Host` header on a server), a flood of
//! made-up keys fills the map and new genuine keys overflow until the
//! made-up ones go idle (those new keys flow, unjudged, through the overflow
//! breaker meanwhile): prefer keys you control there ([`ByPath::prefixes`],
//! a header your router sets). Keys are hashed with std's SipHash, seeded at
//! random per layer, so clients cannot aim keys at one shard.
//!
//! An evicted key's series are first **set idle**: every value of its
//! one-hot `state` gauge goes to 0 (no state at all, which no live breaker
//! reports) and its error rate, slow-call rate and trip risk to 0; counters
//! and histograms keep their totals. With the crate's recorder
//! ([`exporter::install`](crate::exporter::install), or any
//! [`BreakerRecorder`](crate::exporter::BreakerRecorder)), they then leave
//! the exposition after its
//! [`series_expiry`](crate::exporter::RecorderBuilder::series_expiry)
//! (default 5 minutes), unless the key comes back first and continues them.
//! Another recorder keeps them as its own lifecycle says (the `metrics`
//! facade cannot remove a series). A key that comes back gets a fresh
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
//! The keys live in 64 shards, each an immutable hash table behind an
//! `ArcSwap`. A key is hashed once per call (seeded SipHash, one seed per
//! layer): some bits of the hash pick the shard, the rest find the key in
//! it. A call for a known key loads its shard's snapshot (arc-swap's debt
//! protocol: a few atomic operations on a slot of the calling thread, no
//! shared cache line written), looks the key up, and marks the key used
//! with the time its call was stamped with (read from the clock if the call
//! is not timed): one relaxed load, and a store at most 64 times per
//! `idle_timeout`. No lock is taken for it. Inserting a key (and evicting
//! keys) takes a mutex, copies the key's shard with the change and swaps it
//! in: **an insert costs O(n / 64)** in the number of live keys, so a burst
//! of `n` new keys costs O(n² / 64) in total: 100,000 keys are created in
//! well under a second. Calls for keys past `max_keys` go to the overflow
//! breaker without the lock.
//!
//! Idle keys are swept while the mutex is free: by the first call that
//! finds a sweep due (every half `idle_timeout`), when a new key is
//! inserted or the map is full and one is due, and when you call
//! [`evict_idle`](KeyedCircuitBreakerLayer::evict_idle). A sweep never
//! blocks a call.
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

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::Breaker;
use crate::classify::{Classify, DefaultClassifier};
use crate::clock::duration_nanos;
use crate::error::ConfigError;
use crate::future::ResponseFuture;
use crate::metrics::sanitize_label;
use crate::{Builder, CircuitBreakerHandle};

mod extract;
mod map;

pub use self::extract::{key_fn, KeyExtractor, KeyFn};
#[cfg(feature = "http")]
pub use self::extract::{ByAuthority, ByHeader, ByPath};
use self::map::Keys;

/// The default cap on live keys: half the default process-wide label cap,
/// so two keyed layers with the defaults fit in it.
pub const DEFAULT_MAX_KEYS: usize = 500;

/// The default time without a call after which a key is evicted.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The default key of a request the extractor finds no key in.
pub const DEFAULT_FALLBACK_KEY: &str = "unknown";

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
            max_open_share: None,
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
    max_open_share: Option<f64>,
}

impl<K: fmt::Debug, C> fmt::Debug for KeyedBuilder<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("builder", &self.builder)
            .field("extractor", &self.extractor)
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .field("fallback_key", &self.fallback_key)
            .field("max_open_share", &self.max_open_share)
            .finish()
    }
}

impl<K, C> KeyedBuilder<K, C> {
    /// The most keys with a breaker of their own (default 500); past it,
    /// keys share the unjudged `__overflow__` breaker. `build` reserves as
    /// many `service` labels from the process-wide cap (or what is left).
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

    /// Caps the share of live keys that may refuse calls at once, as
    /// Envoy's `max_ejection_percent`: a trip policy may open one more key
    /// only while the keys refusing (Open, HalfOpen, ForcedOpen) would then
    /// be at most `max(1, floor(share × live keys))`. A trip held back
    /// leaves its key Closed (its calls keep flowing, still judged) and
    /// counts `trips_suppressed_total{service=key,reason}`; the policy asks
    /// again on the key's next judged call. Forcing a key open by hand is
    /// never held back. The share is exported as `open_share{service=NAME}`,
    /// NAME being the builder's [`name`](Builder::name). In `(0, 1]`; no
    /// cap by default. See [`capacity`](crate::capacity).
    pub fn max_open_share(mut self, share: f64) -> Self {
        self.max_open_share = Some(share);
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
        if let Some(share) = self.max_open_share {
            if !(share > 0.0 && share <= 1.0) {
                return Err(ConfigError::new(
                    "max_open_share",
                    format!("must be in (0, 1], got {share}"),
                ));
            }
        }
        let (mut template, classifier) = self.builder.into_template()?;
        if let Some(share) = self.max_open_share {
            let name: Arc<str> = sanitize_label(&template.name).into();
            template.fleet = Some(Arc::new(crate::capacity::FleetGuard::new(share, name)));
        }
        let idle = duration_nanos(self.idle_timeout);
        let fallback = sanitize_label(&self.fallback_key).into_boxed_str();
        Ok(KeyedCircuitBreakerLayer {
            keys: Arc::new(Keys::new(template, self.max_keys, idle, fallback)),
            extractor: self.extractor,
            classifier,
        })
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
        self.keys.handles()
    }

    /// A handle to the `__overflow__` breaker, once a key has overflowed.
    pub fn overflow_handle(&self) -> Option<CircuitBreakerHandle> {
        self.keys
            .overflow_breaker()
            .map(|b| CircuitBreakerHandle::new(b.clone()))
    }

    /// The number of live keys (never more than `max_keys`; the overflow
    /// breaker is not counted).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// How many keys may report under a `service` label of their own:
    /// `max_keys`, or fewer if the process-wide label cap had less room when
    /// the layer was built. Keys past it still get a breaker of their own
    /// (up to `max_keys`), which reports under `__overflow__`.
    pub fn label_budget(&self) -> usize {
        self.keys.label_budget()
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
        self.keys.evict_idle()
    }

    /// The approximate bytes one live key costs in this process, computed
    /// from the sizes of its parts: the map entry, the breaker with its
    /// window, the cached metric handles and the label. The recorder's own
    /// storage for the key's series is not included.
    pub fn memory_per_key(&self) -> usize {
        use std::mem::size_of;
        // Reference-counted allocations carry two counters.
        const ARC: usize = 2 * size_of::<usize>();
        // The map slot and entry (the entry shares the label's string).
        let entry = Keys::entry_bytes();
        let breaker = ARC + size_of::<Breaker>() + self.keys.template.window_bytes();
        let hooks = self.keys.template.hooks_len() * size_of::<usize>() * 2;
        // The metric handle cache: the slots live inside the breaker,
        // counted above; one recorder's handles are boxed beside it (more
        // recorders, more boxes). The handles point into the recorder.
        let handles = crate::metrics::HANDLES_BYTES;
        // The label string, and its slot in the process-wide label registry.
        let label = ARC + 64 + (size_of::<(Arc<str>, usize)>() + 1) * 16 / 7;
        entry + breaker + handles + hooks + label
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
        match self.keys.admit(self.extractor.key(&req)) {
            Err(error) => ResponseFuture::rejected(error),
            Ok(call) => {
                let future = self.inner.call(req);
                ResponseFuture::called(future, call, self.classifier.clone())
            }
        }
    }
}
