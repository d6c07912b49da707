//! The layer and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::breaker::{Breaker, StateHook};
use crate::capacity::{FleetGuard, FleetMember};
use crate::classify::{ClassifyErrorsWith, DefaultClassifier};
use crate::clock::{duration_nanos, Clock};
use crate::error::ConfigError;
use crate::metrics::{BreakerMetrics, MetricsLevel, MetricsNaming, Names, ServiceLabel};
use crate::policy::Policy;
use crate::predict::EarlyWarning;
use crate::state::{HalfOpen, Machine, MachineConfig, StateChange, MAX_PERMITS};
use crate::window::{CountWindow, TimeWindow, Window};
use crate::{Backoff, CircuitBreaker, CircuitBreakerHandle, State};

/// The largest count window.
pub const MAX_WINDOW_SIZE: usize = 1_000_000;

/// The failure-rate threshold unless set otherwise (resilience4j's default).
const DEFAULT_FAILURE_RATE: f64 = 0.5;

/// A [`Layer`] that puts a circuit breaker in front of a service.
///
/// Every service this layer wraps shares one breaker: build one layer per
/// upstream you want judged on its own (or use per-key breakers).
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_breaker::{Backoff, CircuitBreakerLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower::BoxError> {
/// let layer = CircuitBreakerLayer::builder()
///     .name("payments")
///     .failure_rate(0.5)
///     .minimum_calls(10)
///     .count_window(50)
///     .open_duration(Backoff::fixed(Duration::from_secs(10)))
///     .build()?;
/// let handle = layer.handle();
///
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service(service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) }));
/// assert_eq!(svc.oneshot(21).await?, 42);
/// assert_eq!(handle.state(), tower_breaker::State::Closed);
/// # Ok(())
/// # }
/// ```
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: Arc<Breaker>,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A builder with the defaults: failure rate 50% over the last 100
    /// calls, from 20 calls on; open for 30 s; 3 half-open probes.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A handle to watch and steer the breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.breaker.clone())
    }
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.breaker.clone(), self.classifier.clone())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum WindowConfig {
    Count(usize),
    Time { span: Duration, buckets: usize },
}

impl WindowConfig {
    /// A time window's span (the early warning bends its projection over it).
    fn span(&self) -> Option<Duration> {
        match self {
            WindowConfig::Time { span, .. } => Some(*span),
            WindowConfig::Count(_) => None,
        }
    }
}

/// Configures a [`CircuitBreakerLayer`]. Setters take and return the builder;
/// [`build`](Builder::build) checks everything and names the field at fault.
///
/// The failure-rate policy is always on, at 50% unless
/// [`failure_rate`](Builder::failure_rate) says otherwise (as in
/// resilience4j), until [`without_failure_rate`](Builder::without_failure_rate)
/// turns it off. [`consecutive_failures`](Builder::consecutive_failures) and
/// [`slow_call_rate`](Builder::slow_call_rate) add policies beside it; the
/// first policy to fire trips the breaker.
///
/// A builder is `Clone`: configure once, then name each copy.
///
/// ```
/// use tower_breaker::CircuitBreakerLayer;
///
/// let base = CircuitBreakerLayer::builder().failure_rate(0.3).minimum_calls(50);
/// let orders = base.clone().name("orders").build()?;
/// let payments = base.name("payments").build()?;
/// assert_ne!(orders.handle().name(), payments.handle().name());
/// # Ok::<(), tower_breaker::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Builder<C = DefaultClassifier> {
    name: String,
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    /// Turned off by hand: no failure-rate policy at all.
    failure_rate_off: bool,
    slow_call_rate: Option<f64>,
    slow_call_duration: Option<Duration>,
    window: WindowConfig,
    minimum_calls: u64,
    half_open_permits: u32,
    half_open_successes: Option<u32>,
    max_half_open_wait: Option<Duration>,
    backoff: Backoff,
    retry_after_cap: Duration,
    classifier: C,
    clock: Clock,
    /// Set by `metrics_prefix`; else the naming's default.
    prefix: Option<String>,
    naming: MetricsNaming,
    level: MetricsLevel,
    hooks: Vec<StateHook>,
    caller: Option<String>,
    early_warning: Option<EarlyWarning>,
    max_concurrent_calls: Option<u32>,
}

impl Builder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Builder {
            name: "default".to_owned(),
            consecutive_failures: None,
            failure_rate: None,
            failure_rate_off: false,
            slow_call_rate: None,
            slow_call_duration: None,
            window: WindowConfig::Count(100),
            minimum_calls: 20,
            half_open_permits: 3,
            half_open_successes: None,
            max_half_open_wait: None,
            backoff: Backoff::default(),
            retry_after_cap: Duration::from_secs(300),
            classifier: DefaultClassifier,
            clock: Clock::system(),
            prefix: None,
            naming: MetricsNaming::Native,
            level: MetricsLevel::Full,
            hooks: Vec::new(),
            caller: None,
            early_warning: None,
            max_concurrent_calls: None,
        }
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl<C> fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("failure_rate", &self.failure_rate)
            .field("failure_rate_off", &self.failure_rate_off)
            .field("slow_call_rate", &self.slow_call_rate)
            .field("slow_call_duration", &self.slow_call_duration)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("half_open_permits", &self.half_open_permits)
            .field("half_open_successes", &self.half_open_successes)
            .field("max_half_open_wait", &self.max_half_open_wait)
            .field("backoff", &self.backoff)
            .field("clock", &self.clock)
            .field("prefix", &self.prefix())
            .field("naming", &self.naming)
            .field("level", &self.level)
            .field("caller", &self.caller)
            .field("early_warning", &self.early_warning)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .finish_non_exhaustive()
    }
}

impl<C> Builder<C> {
    /// The breaker's name: the `service` label of its metrics and the name
    /// in its logs and errors (sanitized, see
    /// [`sanitize_label`](crate::metrics::sanitize_label)). Default
    /// `default`. Give each breaker its own: two live breakers with the same
    /// name (two unnamed ones, say) report into the same series, and the
    /// second one built logs a warning saying so.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Trip after `n` failures in a row.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Trip when the failure rate over the window reaches `threshold`, in
    /// `(0, 1]` (default 0.5: the policy is on unless turned off).
    pub fn failure_rate(mut self, threshold: f64) -> Self {
        self.failure_rate = Some(threshold);
        self.failure_rate_off = false;
        self
    }

    /// Turns the failure-rate policy off, for a breaker judged only by
    /// consecutive failures or the slow-call rate. At least one other policy
    /// must then be set.
    ///
    /// ```
    /// use tower_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .name("streaming")
    ///     .consecutive_failures(5)
    ///     .without_failure_rate()
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// assert!(CircuitBreakerLayer::builder().without_failure_rate().build().is_err());
    /// ```
    pub fn without_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self.failure_rate_off = true;
        self
    }

    /// Trip when the share of calls taking at least `duration` reaches
    /// `threshold`, in `(0, 1]`.
    pub fn slow_call_rate(mut self, threshold: f64, duration: Duration) -> Self {
        self.slow_call_rate = Some(threshold);
        self.slow_call_duration = Some(duration);
        self
    }

    /// Judge rates over the last `size` calls (the default, 100).
    pub fn count_window(mut self, size: usize) -> Self {
        self.window = WindowConfig::Count(size);
        self
    }

    /// Judge rates over the last `span` of time, kept in `buckets` buckets.
    pub fn time_window(mut self, span: Duration, buckets: usize) -> Self {
        self.window = WindowConfig::Time { span, buckets };
        self
    }

    /// Rates are judged only once the window holds this many calls.
    pub fn minimum_calls(mut self, n: u64) -> Self {
        self.minimum_calls = n;
        self
    }

    /// How many probe calls half-open lets through (default 3, at most
    /// 2,047). A permit is taken when a probe is called, not when its
    /// service is made ready.
    pub fn half_open_permits(mut self, n: u32) -> Self {
        self.half_open_permits = n;
        self
    }

    /// How many probes must succeed to close (default: all permits).
    pub fn half_open_successes(mut self, n: u32) -> Self {
        self.half_open_successes = Some(n);
        self
    }

    /// Reopen if the probes have not settled the matter within this time.
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.max_half_open_wait = Some(wait);
        self
    }

    /// How long to stay open.
    pub fn open_duration(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest an upstream's `Retry-After` may keep the breaker open
    /// (default 5 minutes).
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Where the breaker reads the time (default: [`Clock::system`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The metric name prefix (default `circuit_breaker`, or
    /// `resilience4j_circuitbreaker` with
    /// [`MetricsNaming::Resilience4j`]).
    pub fn metrics_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How metrics are named (default [`MetricsNaming::Native`], this
    /// crate's contract). [`MetricsNaming::Resilience4j`] reports the series
    /// resilience4j's Micrometer binder shows in Prometheus
    /// (`resilience4j_circuitbreaker_state{name,state}`,
    /// `_calls_seconds{name,kind}`, `_not_permitted_calls_total`,
    /// `_failure_rate` in percent, ...), so JVM and Rust services share a
    /// dashboard: see [`metrics::resilience4j`](crate::metrics::resilience4j).
    ///
    /// ```
    /// use tower_breaker::{CircuitBreakerLayer, MetricsNaming};
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .name("backendA")
    ///     .metrics_naming(MetricsNaming::Resilience4j)
    ///     .build()
    ///     .unwrap();
    /// # drop(layer);
    /// ```
    pub fn metrics_naming(mut self, naming: MetricsNaming) -> Self {
        self.naming = naming;
        self
    }

    /// The prefix in effect: the one set, or the naming's default.
    fn prefix(&self) -> &str {
        self.prefix
            .as_deref()
            .unwrap_or(self.naming.default_prefix())
    }

    /// How much to report (default [`MetricsLevel::Full`]).
    pub fn metrics_level(mut self, level: MetricsLevel) -> Self {
        self.level = level;
        self
    }

    /// Runs `hook` after every transition, with the state before the counts
    /// were reset. It runs on the thread that made the transition, after the
    /// transition lock is released: keep it short, and expect the hooks of
    /// two transitions made at the same moment on two threads to run in
    /// either order (each [`StateChange`] says its `from` and `to`).
    pub fn on_state_change(mut self, hook: impl Fn(&StateChange) + Send + Sync + 'static) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// The service making the calls: records the dependency edge
    /// `caller -> name` (see [`dependency`](crate::dependency)). Defaults to
    /// the process-wide [`set_local_service`](crate::dependency::set_local_service)
    /// name, if set.
    pub fn caller(mut self, caller: impl Into<String>) -> Self {
        self.caller = Some(caller.into());
        self
    }

    /// Caps the calls in flight through this breaker (per key, for keyed
    /// breakers), as Envoy's `max_requests`: a call beyond `n` is refused at
    /// once with a [`CircuitOpen`](crate::CircuitOpen) whose
    /// [`is_capacity`](crate::CircuitOpen::is_capacity) is true, never
    /// queued. The slot is given back when the call's outcome is recorded
    /// or its future or body is dropped. Adds the `in_flight` and
    /// `capacity_utilization` gauges and `rejections_total{state="capacity"}`.
    /// Disabled and MetricsOnly still pass every call. No limit by default;
    /// `0` is an error from `build()`. See [`capacity`](crate::capacity).
    pub fn max_concurrent_calls(mut self, n: u32) -> Self {
        self.max_concurrent_calls = Some(n);
        self
    }

    /// Follows the trend of the rate policies and warns before they trip
    /// (see [`predict`](crate::predict)). Hooks added with
    /// [`on_early_warning`](Self::on_early_warning) are kept.
    pub fn early_warning(mut self, mut warning: EarlyWarning) -> Self {
        if let Some(mut old) = self.early_warning.take() {
            for hook in old.take_hooks() {
                warning.push_hook(hook);
            }
        }
        self.early_warning = Some(warning);
        self
    }

    /// Runs `hook` when the early warning fires: once each time the
    /// projected trip risk reaches the level, again only after it fell back
    /// below the re-arm level or the breaker changed state. Turns early
    /// warning on with the defaults if it is not configured. It runs on the
    /// thread of the call whose outcome raised the risk: keep it short.
    pub fn on_early_warning(
        mut self,
        hook: impl Fn(&crate::Prediction) + Send + Sync + 'static,
    ) -> Self {
        self.early_warning
            .get_or_insert_with(EarlyWarning::new)
            .push_hook(Arc::new(hook));
        self
    }

    /// Decides outcomes with `classifier` instead.
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2> {
        self.map_classifier(|_| classifier)
    }

    /// Decides about the inner service's errors with a closure, keeping the
    /// response classifier.
    pub fn classify_errors_with<F>(self, f: F) -> Builder<ClassifyErrorsWith<C, F>>
    where
        F: Fn(&(dyn std::error::Error + 'static)) -> crate::Outcome + Clone + Send + Sync + 'static,
    {
        self.map_classifier(|inner| ClassifyErrorsWith::new(inner, f))
    }

    fn map_classifier<C2>(self, f: impl FnOnce(C) -> C2) -> Builder<C2> {
        Builder {
            name: self.name,
            consecutive_failures: self.consecutive_failures,
            failure_rate: self.failure_rate,
            failure_rate_off: self.failure_rate_off,
            slow_call_rate: self.slow_call_rate,
            slow_call_duration: self.slow_call_duration,
            window: self.window,
            minimum_calls: self.minimum_calls,
            half_open_permits: self.half_open_permits,
            half_open_successes: self.half_open_successes,
            max_half_open_wait: self.max_half_open_wait,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            classifier: f(self.classifier),
            clock: self.clock,
            prefix: self.prefix,
            naming: self.naming,
            level: self.level,
            hooks: self.hooks,
            caller: self.caller,
            early_warning: self.early_warning,
            max_concurrent_calls: self.max_concurrent_calls,
        }
    }

    fn validate(&self) -> Result<(Policy, HalfOpen), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        let rate = |field: &'static str, v: Option<f64>| match v {
            Some(v) if !(v > 0.0 && v <= 1.0) => Err(ConfigError::new(
                field,
                format!("must be in (0, 1], got {v}"),
            )),
            _ => Ok(()),
        };
        rate("failure_rate", self.failure_rate)?;
        rate("slow_call_rate", self.slow_call_rate)?;
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.slow_call_duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "slow_call_duration",
                "must be greater than zero",
            ));
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        match self.window {
            WindowConfig::Count(0) => {
                return Err(ConfigError::new("count_window", "size must be at least 1"))
            }
            WindowConfig::Count(n) if n > MAX_WINDOW_SIZE => {
                return Err(ConfigError::new(
                    "count_window",
                    format!("size must be at most {MAX_WINDOW_SIZE}, got {n}"),
                ))
            }
            WindowConfig::Count(n) => {
                if self.minimum_calls > n as u64 {
                    return Err(ConfigError::new(
                        "minimum_calls",
                        format!(
                            "must not exceed the window size ({n}), got {}",
                            self.minimum_calls
                        ),
                    ));
                }
            }
            WindowConfig::Time { span, buckets } => {
                if buckets == 0 || buckets > 10_000 {
                    return Err(ConfigError::new(
                        "time_window",
                        format!("buckets must be in 1..=10000, got {buckets}"),
                    ));
                }
                if duration_nanos(span) < buckets as u64 * 1_000_000 {
                    return Err(ConfigError::new(
                        "time_window",
                        "span must give each bucket at least 1 ms",
                    ));
                }
            }
        }
        if self.half_open_permits == 0 || self.half_open_permits > MAX_PERMITS {
            return Err(ConfigError::new(
                "half_open_permits",
                format!(
                    "must be in 1..={MAX_PERMITS}, got {}",
                    self.half_open_permits
                ),
            ));
        }
        let successes = self.half_open_successes.unwrap_or(self.half_open_permits);
        if successes == 0 || successes > self.half_open_permits {
            return Err(ConfigError::new(
                "half_open_successes",
                format!(
                    "must be in 1..=half_open_permits ({}), got {successes}",
                    self.half_open_permits
                ),
            ));
        }
        if self.max_half_open_wait.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "max_half_open_wait",
                "must be greater than zero",
            ));
        }
        self.backoff.validate()?;
        if self.retry_after_cap.is_zero() {
            return Err(ConfigError::new(
                "retry_after_cap",
                "must be greater than zero",
            ));
        }
        if !valid_metric_prefix(self.prefix()) {
            return Err(ConfigError::new(
                "metrics_prefix",
                format!(
                    "must match [a-zA-Z_:][a-zA-Z0-9_:]*, got {:?}",
                    self.prefix()
                ),
            ));
        }
        let failure_rate = match self.failure_rate_off {
            true => None,
            false => Some(self.failure_rate.unwrap_or(DEFAULT_FAILURE_RATE)),
        };
        if failure_rate.is_none()
            && self.consecutive_failures.is_none()
            && self.slow_call_rate.is_none()
        {
            return Err(ConfigError::new(
                "failure_rate",
                "is turned off and no other trip policy is set: the breaker could never open",
            ));
        }
        let policy = Policy {
            consecutive_failures: self.consecutive_failures,
            failure_rate,
            slow_call_rate: self.slow_call_rate,
            slow_call_duration: self.slow_call_duration.map(duration_nanos),
            minimum_calls: self.minimum_calls,
        };
        let half_open = HalfOpen {
            permits: self.half_open_permits,
            successes,
            max_wait: self.max_half_open_wait.map(duration_nanos),
        };
        if self.caller.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(ConfigError::new("caller", "must not be empty"));
        }
        if let Some(warning) = &self.early_warning {
            warning.validate(&policy)?;
        }
        if self.max_concurrent_calls == Some(0) {
            return Err(ConfigError::new(
                "max_concurrent_calls",
                "must be at least 1",
            ));
        }
        Ok((policy, half_open))
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let (template, classifier) = self.into_template()?;
        let label = ServiceLabel::named(&template.name);
        Ok(CircuitBreakerLayer {
            breaker: template.breaker(label),
            classifier,
        })
    }

    /// Checks the settings and keeps them as a [`Template`] that can build
    /// any number of breakers (one per key for keyed breakers).
    pub(crate) fn into_template(self) -> Result<(Template, C), ConfigError> {
        let (policy, half_open) = self.validate()?;
        let timed = policy.slow_call_duration.is_some();
        let names = Arc::new(Names::new(self.prefix(), self.naming));
        let template = Template {
            name: self.name,
            machine: MachineConfig {
                policy,
                half_open,
                backoff: self.backoff,
                retry_after_cap: self.retry_after_cap,
            },
            window: self.window,
            timed,
            clock: self.clock,
            names,
            level: self.level,
            hooks: self.hooks,
            caller: self.caller,
            early_warning: self.early_warning,
            capacity: self.max_concurrent_calls,
            fleet: None,
        };
        Ok((template, self.classifier))
    }
}

/// A validated configuration: builds breakers that share the settings, the
/// clock, the metric names, the hooks and the caller, each with its own
/// machine, window, predictor, `service` label and dependency edge.
pub(crate) struct Template {
    /// The builder's name: the label of the breaker a plain layer builds.
    pub(crate) name: String,
    machine: MachineConfig,
    window: WindowConfig,
    /// Whether calls must be timed, whatever the window.
    timed: bool,
    pub(crate) clock: Clock,
    names: Arc<Names>,
    level: MetricsLevel,
    hooks: Vec<StateHook>,
    caller: Option<String>,
    early_warning: Option<EarlyWarning>,
    /// The concurrency limit of each breaker.
    capacity: Option<u32>,
    /// The open-share guard of a keyed layer's breakers.
    pub(crate) fleet: Option<Arc<FleetGuard>>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("machine", &self.machine)
            .field("window", &self.window)
            .field("clock", &self.clock)
            .field("level", &self.level)
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

impl Template {
    /// A fresh Closed breaker reporting under `label`, on the dependency
    /// graph as `caller -> label`.
    pub(crate) fn breaker(&self, label: ServiceLabel) -> Arc<Breaker> {
        let name = label.value().clone();
        self.build_breaker(name, label, true)
    }

    /// A breaker named `name` that reports under another label (a key past
    /// its layer's label budget, under `__overflow__`).
    pub(crate) fn breaker_named(&self, name: Arc<str>, label: ServiceLabel) -> Arc<Breaker> {
        self.build_breaker(name, label, true)
    }

    /// A breaker that lets every call through unjudged and counts it (it
    /// starts Disabled): the keyed layer's overflow breaker, so that junk
    /// keys can never get a genuine key refused.
    pub(crate) fn unjudged_breaker(&self, label: ServiceLabel) -> Arc<Breaker> {
        let name = label.value().clone();
        self.build_breaker(name, label, false)
    }

    fn build_breaker(&self, name: Arc<str>, label: ServiceLabel, judged: bool) -> Arc<Breaker> {
        let window = match self.window {
            WindowConfig::Count(n) => Window::Count(CountWindow::new(n)),
            WindowConfig::Time { span, buckets } => {
                Window::Time(TimeWindow::new(duration_nanos(span), buckets))
            }
        };
        // Breakers built together must not draw the same jitter.
        let seed = self.clock.now()
            ^ (label.value().as_ptr() as u64).rotate_left(32)
            ^ (&window as *const Window as u64);
        let timed = self.timed || window.needs_time();
        let predictor = self
            .early_warning
            .as_ref()
            .map(|w| w.predictor(&self.machine.policy, self.window.span()));
        let (machine, state) = match judged {
            true => (
                Machine::new(self.machine.clone(), window, seed),
                State::Closed,
            ),
            false => (
                Machine::unjudged(self.machine.clone(), window, seed),
                State::Disabled,
            ),
        };
        let capacity = self.capacity.is_some();
        let metrics =
            BreakerMetrics::new(self.names.clone(), label, self.level, capacity, move |h| {
                h.set_state(state);
                h.reset_rates();
            });
        let breaker = Breaker::new(
            name,
            machine,
            metrics,
            self.clock.clone(),
            timed,
            self.hooks.clone(),
        )
        .with_predictor(predictor)
        .with_capacity(self.capacity)
        .with_fleet(
            self.fleet
                .as_ref()
                .filter(|_| judged)
                .map(|guard| FleetMember::new(guard.clone())),
        );
        let breaker = Arc::new(breaker);
        crate::dependency::track(&breaker, self.caller.as_deref());
        crate::live::register(&breaker);
        breaker.fleet_changed();
        breaker
    }

    /// The heap bytes of one breaker's window.
    pub(crate) fn window_bytes(&self) -> usize {
        match self.window {
            WindowConfig::Count(n) => n,
            WindowConfig::Time { buckets, .. } => buckets * 4 * std::mem::size_of::<u64>(),
        }
    }

    /// How many state-change hooks every breaker shares.
    pub(crate) fn hooks_len(&self) -> usize {
        self.hooks.len()
    }
}

fn valid_metric_prefix(prefix: &str) -> bool {
    let mut chars = prefix.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}
