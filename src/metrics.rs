//! Metric names, descriptions, labels, and cached handles.
//!
//! Every signal goes through the [`metrics`] facade, so whichever recorder is
//! installed collects it: the Prometheus recorder of
//! [`exporter`](crate::exporter), a StatsD or OpenTelemetry exporter, or
//! `metrics_util::debugging::DebuggingRecorder` in tests. The breaker never
//! installs one itself.
//!
//! # Swapping the recorder
//!
//! Any [`metrics::Recorder`] works. Install it globally before building the
//! layers (`metrics::set_global_recorder`, or an exporter's own `install`),
//! or scope it to a thread with [`metrics::with_local_recorder`] /
//! [`metrics::set_default_local_recorder`]. A local recorder covers its own
//! thread only: traffic on a multi-threaded runtime's other threads reports
//! into the global one. The `dogstatsd` and `opentelemetry` examples install
//! those exporters globally; here a local recorder sees a layer built on
//! this thread:
//!
//! ```
//! use metrics_util::debugging::DebuggingRecorder;
//! use tower_breaker::CircuitBreakerLayer;
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! metrics::with_local_recorder(&recorder, || {
//!     let _layer = CircuitBreakerLayer::builder().name("doc-recorder").build().unwrap();
//! });
//! // The state gauge exists from construction: six series, one of them at 1.
//! let states = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .filter(|(key, ..)| key.key().name() == "circuit_breaker_state")
//!     .count();
//! assert_eq!(states, 6);
//! ```
//!
//! # The contract
//!
//! Names start with the prefix set by
//! [`Builder::metrics_prefix`](crate::Builder::metrics_prefix)
//! (default `circuit_breaker`). Every metric carries `service`, the
//! breaker's [name](crate::Builder::name); the other labels take values from
//! fixed sets. With [`MetricsNaming::Resilience4j`] the breaker reports the
//! series of resilience4j's Micrometer binder instead, labelled `name`:
//! see [`resilience4j`].
//!
//! | metric | type | labels | level |
//! |---|---|---|---|
//! | `_state` | gauge, one-hot | `state`: `closed`, `open`, `half_open`, `disabled`, `forced_open`, `metrics_only` | Minimal |
//! | `_transitions_total` | counter | `from`, `to` (states), `reason`: see [`Reason`] | Minimal |
//! | `_requests_total` | counter | `status`: `success`, `failure`, `ignored`, `rejected` | Minimal |
//! | `_rejections_total` | counter | `state`: `open`, `half_open`, `forced_open`, `metrics_only` (shadow: would have refused) | Standard |
//! | `_failures_total` | counter | `kind`: [`FailureKind`] (`error`, `timeout`, `connect`, `http_5xx`, ...) | Standard |
//! | `_error_rate` | gauge | | Standard |
//! | `_slow_call_rate` | gauge | | Standard |
//! | `_recovery_duration_seconds` | histogram | | Standard |
//! | `_trip_risk` | gauge | | Standard |
//! | `_request_duration_seconds` | histogram | `status`: `success`, `failure`, `ignored` | Full |
//! | `_in_flight` | gauge | | Standard, with [`max_concurrent_calls`](crate::Builder::max_concurrent_calls) |
//! | `_capacity_utilization` | gauge (0..1): in flight over the limit | | Standard, with `max_concurrent_calls` |
//! | `_trips_suppressed_total` | counter | `reason`: the trip policy | Standard, keyed with [`max_open_share`](crate::keyed::KeyedBuilder::max_open_share) |
//! | `_open_share` | gauge (0..1), `service` is the keyed layer's name | | Minimal, keyed with `max_open_share` |
//!
//! With a concurrency limit, `_rejections_total` also has `state="capacity"`:
//! calls refused because the limit was reached, whatever the state (also
//! counted in `_requests_total{status="rejected"}`).
//!
//! The state gauge is set from construction. The transitions that alerts
//! count with `increase()` are created at zero with the handles: Closed to
//! Open for each enabled trip policy, Open to HalfOpen (`timeout_elapsed`),
//! HalfOpen to Open (`probe_failed`) and HalfOpen to Closed
//! (`probe_succeeded`). Failure kinds are open-ended and appear on first use;
//! a half-open probe that succeeds too slowly fails the probe and counts as a
//! failure of kind `slow`.
//! In MetricsOnly (shadow) mode the transitions of the shadow machine are
//! counted like real ones, while the state gauge shows `metrics_only`.
//!
//! # Levels
//!
//! [`MetricsLevel`] trades detail for series: Minimal is the state, the
//! transitions and the requests (about a dozen series per service),
//! Standard adds rejections, failures, the rates, recovery time and trip risk,
//! and Full (the default) adds the request-duration histogram.
//!
//! # Cardinality
//!
//! `service` values are sanitized (see [`sanitize_label`]) and counted
//! against a process-wide cap ([`set_service_limit`], default
//! [`DEFAULT_SERVICE_LIMIT`]), in two ways:
//!
//! - **Named breakers** ([`Builder::name`](crate::Builder::name)) keep their
//!   name whatever keyed layers do. Only when the distinct names of named
//!   breakers alone reach the cap do new names share the value
//!   [`OVERFLOW_LABEL`] (`__overflow__`): a guard against names made from
//!   request data.
//! - **Each keyed layer** reserves a budget of labels when it is built: its
//!   `max_keys`, or what the cap still has room for after the names in use
//!   and the budgets of other keyed layers (a smaller budget is logged as a
//!   warning). Its keys use only its own budget, so a flood of made-up keys
//!   on one layer can take no label from another layer or from a named
//!   breaker. The budget is returned when the layer is dropped. Keys past
//!   the budget are still judged, each by a breaker of its own, but report
//!   under `__overflow__` (see [`keyed`](crate::keyed)).
//!
//! So the names of named breakers never exceed the cap, and the keyed
//! budgets never exceed what the cap had left when each layer was built.
//! Named breakers built after keyed layers reserved their budgets keep
//! their names all the same, so the process can hold more distinct values
//! than the cap, at most twice it. A key equal to a name in use shares that
//! name's series.
//!
//! A name is released when the last breaker using it is dropped. Its series
//! then go idle and, with the crate's recorder
//! ([`exporter::BreakerRecorder`](crate::exporter::BreakerRecorder)), leave
//! the exposition after its series expiry (default 5 minutes).
//!
//! # Cached handles and late recorders
//!
//! Looking a metric up through the macros on every call costs a hash and a
//! map probe per metric. The breaker resolves its handles once per recorder
//! instead: on every call it asks the facade which recorder is current (a
//! thread-local read and an atomic load) and finds the handles resolved
//! against that recorder in a few write-once slots (plain loads, no
//! reference counting). A recorder installed after the layer was built, or a
//! `metrics::with_local_recorder` scope, fills a new slot on the first call
//! it sees, with the one-hot state gauge, the counters and the expected
//! transitions at zero (before that call, the breaker cannot know it
//! exists). Each family is described again at every registration of one of
//! its series, for recorders that keep a description for one registration
//! only (metrics-exporter-opentelemetry 0.2).
//! A breaker that sees more recorders than it has slots (four) resolves the
//! extra recorders' handles on every call: correct, only slower.
//!
//! Recorders are told apart by address: keep a local recorder alive while
//! breakers report into it, and do not reuse one breaker across recorders
//! that live at the same address one after the other (a new recorder on the
//! stack slot of a dropped one). One breaker used from threads with
//! different recorders works, but re-resolves its handles at every switch.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};

use crate::classify::{FailureKind, Outcome};
use crate::state::{Reason, State, StateChange};
use crate::window::Counts;

/// The default metric name prefix.
pub const DEFAULT_PREFIX: &str = "circuit_breaker";

/// The `service` label value shared by names past the cap.
pub const OVERFLOW_LABEL: &str = "__overflow__";

/// The default cap on distinct `service` label values.
pub const DEFAULT_SERVICE_LIMIT: usize = 1_000;

/// How much a breaker reports.
///
/// | level | metrics |
/// |---|---|
/// | `Minimal` | state, transitions, requests |
/// | `Standard` | and rejections, failures by kind, error and slow-call rates, recovery time, trip risk |
/// | `Full` (default) | and the request-duration histogram |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetricsLevel {
    /// State, transitions and requests: a handful of series per service.
    Minimal,
    /// Everything but the request-duration histogram.
    Standard,
    /// Everything.
    #[default]
    Full,
}

pub mod resilience4j;

/// How the breaker's metrics are named: this crate's contract, or the
/// series resilience4j's Micrometer binder shows in Prometheus.
///
/// Set with [`Builder::metrics_naming`](crate::Builder::metrics_naming);
/// keyed layers take it from their builder like every other setting.
///
/// | naming | prefix (unless [`metrics_prefix`](crate::Builder::metrics_prefix) is set) | breaker label | families |
/// |---|---|---|---|
/// | `Native` (default) | `circuit_breaker` | `service` | the [contract](self#the-contract) |
/// | `Resilience4j` | `resilience4j_circuitbreaker` | `name` | see [`resilience4j`] |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum MetricsNaming {
    /// `circuit_breaker_*`, labelled `service`.
    #[default]
    Native,
    /// `resilience4j_circuitbreaker_*`, labelled `name`, with the binder's
    /// families and value conventions (see [`resilience4j`]).
    Resilience4j,
}

impl MetricsNaming {
    /// The prefix metric names start with when none is set.
    pub fn default_prefix(self) -> &'static str {
        match self {
            MetricsNaming::Native => DEFAULT_PREFIX,
            MetricsNaming::Resilience4j => resilience4j::DEFAULT_PREFIX,
        }
    }

    /// The label that carries the breaker's name: `service`, or `name`.
    pub fn breaker_label(self) -> &'static str {
        match self {
            MetricsNaming::Native => "service",
            MetricsNaming::Resilience4j => "name",
        }
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Registers a series of one of the breaker's families in `r`, after
/// describing the family again (`naming` picks the help of the families
/// whose help differs between namings; the others may pass `Native`).
///
/// A recorder may keep a description for one registration only:
/// metrics-exporter-opentelemetry 0.2 takes it with the first series of a
/// name and builds the later ones as another instrument, undescribed, which
/// the OpenTelemetry SDK exports as a second metric of the same name (a
/// trip counted in one, its zero in the other). Described at every
/// registration, the series of a family are one instrument everywhere. The
/// pair is made under one process-wide lock, so two breakers registering
/// at once on two threads cannot take each other's description. Cold: a
/// breaker registers a series once per recorder, a transition's counter at
/// each transition, never on a call's success path.
pub(crate) fn register_counter(r: &dyn Recorder, key: &Key, naming: MetricsNaming) -> Counter {
    let _described = registering();
    describe(r, key, naming);
    r.register_counter(key, &METADATA)
}

/// See [`register_counter`].
pub(crate) fn register_gauge(r: &dyn Recorder, key: &Key, naming: MetricsNaming) -> Gauge {
    let _described = registering();
    describe(r, key, naming);
    r.register_gauge(key, &METADATA)
}

/// See [`register_counter`].
pub(crate) fn register_histogram(r: &dyn Recorder, key: &Key, naming: MetricsNaming) -> Histogram {
    let _described = registering();
    describe(r, key, naming);
    r.register_histogram(key, &METADATA)
}

/// The lock a description and its registration are made under.
fn registering() -> std::sync::MutexGuard<'static, ()> {
    static REGISTERING: Mutex<()> = Mutex::new(());
    REGISTERING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Describes the family of `key` to `r`, by the suffix of its name (the
/// preset's own families first, under [`MetricsNaming::Resilience4j`]).
fn describe(r: &dyn Recorder, key: &Key, naming: MetricsNaming) {
    let name = key.name();
    let of = |suffix: &str| {
        name.strip_suffix(suffix)
            .is_some_and(|prefix| prefix.ends_with('_'))
    };
    let own: &[Family] = match naming {
        MetricsNaming::Native => &[],
        MetricsNaming::Resilience4j => &resilience4j::FAMILIES,
    };
    let family = own
        .iter()
        .chain(FAMILIES.iter())
        .find(|(suffix, ..)| of(suffix));
    let Some(&(_, kind, unit, help)) = family else {
        return;
    };
    let help = SharedString::const_str(help);
    match kind {
        FamilyKind::Counter => r.describe_counter(key.name_shared(), unit, help),
        FamilyKind::Gauge => r.describe_gauge(key.name_shared(), unit, help),
        FamilyKind::Histogram => r.describe_histogram(key.name_shared(), unit, help),
    }
}

/// Metric names under one prefix. Under [`MetricsNaming::Resilience4j`],
/// `error_rate` is `_failure_rate`, `duration` is `_calls_seconds` (the
/// binder's timer, which counts the calls too) and `requests` is not used.
#[derive(Debug)]
pub(crate) struct Names {
    pub(crate) naming: MetricsNaming,
    /// The label naming the breaker: `service`, or `name`.
    pub(crate) label: &'static str,
    pub(crate) state: SharedString,
    pub(crate) transitions: SharedString,
    pub(crate) error_rate: SharedString,
    pub(crate) slow_call_rate: SharedString,
    pub(crate) requests: SharedString,
    pub(crate) duration: SharedString,
    pub(crate) rejections: SharedString,
    pub(crate) failures: SharedString,
    pub(crate) recovery: SharedString,
    pub(crate) trip_risk: SharedString,
    pub(crate) dependency: SharedString,
    pub(crate) in_flight: SharedString,
    pub(crate) capacity_utilization: SharedString,
    pub(crate) trips_suppressed: SharedString,
    pub(crate) open_share: SharedString,
    /// Refused calls (resilience4j: `_not_permitted_calls_total`).
    pub(crate) not_permitted: SharedString,
    /// The window's calls by outcome (resilience4j: `_buffered_calls`).
    pub(crate) buffered_calls: SharedString,
}

#[derive(Clone, Copy)]
pub(crate) enum FamilyKind {
    Counter,
    Gauge,
    Histogram,
}

/// A family: the suffix of its name (after the prefix and `_`), its type,
/// unit and help.
pub(crate) type Family = (&'static str, FamilyKind, Option<Unit>, &'static str);

/// Each family of the contract.
const FAMILIES: [Family; 15] = {
    use FamilyKind::*;
    [
        (
            "state",
            Gauge,
            None,
            "Breaker state, one-hot: 1 for the current state, 0 for the others.",
        ),
        (
            "transitions_total",
            Counter,
            Some(Unit::Count),
            "State transitions, by from, to and reason.",
        ),
        (
            "error_rate",
            Gauge,
            None,
            "Failure ratio over the current window (0..1).",
        ),
        (
            "slow_call_rate",
            Gauge,
            None,
            "Slow-call ratio over the current window (0..1).",
        ),
        (
            "requests_total",
            Counter,
            Some(Unit::Count),
            "Requests seen by the breaker, by status: success, failure, ignored, rejected.",
        ),
        (
            "request_duration_seconds",
            Histogram,
            Some(Unit::Seconds),
            "Time spent inside the inner service, by status.",
        ),
        (
            "rejections_total",
            Counter,
            Some(Unit::Count),
            "Requests refused, by the state that refused them (metrics_only: would have refused).",
        ),
        (
            "failures_total",
            Counter,
            Some(Unit::Count),
            "Failed requests, by kind.",
        ),
        (
            "recovery_duration_seconds",
            Histogram,
            Some(Unit::Seconds),
            "Time from leaving Closed to Closed again.",
        ),
        (
            "trip_risk",
            Gauge,
            None,
            "How close the trip policies are to opening the breaker (0..1).",
        ),
        (
            "dependency",
            Gauge,
            None,
            "1 for each known caller to upstream edge.",
        ),
        (
            "in_flight",
            Gauge,
            None,
            "Calls in flight, for a breaker with a concurrency limit.",
        ),
        (
            "capacity_utilization",
            Gauge,
            None,
            "Calls in flight over the concurrency limit (0..1).",
        ),
        (
            "trips_suppressed_total",
            Counter,
            Some(Unit::Count),
            "Trips held back by a keyed layer's max_open_share.",
        ),
        (
            "open_share",
            Gauge,
            None,
            "Share of a keyed layer's live keys refusing calls (0..1).",
        ),
    ]
};

/// Every metric prefix a breaker was configured with in this process, with
/// its naming.
type Prefixes = std::collections::BTreeSet<(MetricsNaming, String)>;

fn prefixes() -> std::sync::MutexGuard<'static, Prefixes> {
    static PREFIXES: OnceLock<Mutex<Prefixes>> = OnceLock::new();
    PREFIXES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Whether `family` is the name of a metric family breakers report (with
/// the default prefix or any prefix configured in this process).
pub(crate) fn is_breaker_family(family: &str) -> bool {
    family_naming(family).is_some()
}

/// The naming of a family breakers report, if it is one: which label names
/// the breaker in it (`service`, or `name` under the resilience4j naming).
/// The default prefix is recognised without a lock.
pub(crate) fn family_naming(family: &str) -> Option<MetricsNaming> {
    let known = |naming: MetricsNaming, suffix: &str| match naming {
        MetricsNaming::Native => FAMILIES.iter().any(|f| f.0 == suffix),
        MetricsNaming::Resilience4j => resilience4j::SUFFIXES.contains(&suffix),
    };
    let matches = |prefix: &str, naming: MetricsNaming| {
        family
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|suffix| known(naming, suffix))
    };
    if matches(DEFAULT_PREFIX, MetricsNaming::Native) {
        return Some(MetricsNaming::Native);
    }
    prefixes()
        .iter()
        .find(|(naming, p)| matches(p, *naming))
        .map(|(naming, _)| *naming)
}

impl Names {
    pub(crate) fn new(prefix: &str, naming: MetricsNaming) -> Self {
        if naming != MetricsNaming::Native || prefix != DEFAULT_PREFIX {
            let mut known = prefixes();
            let entry = (naming, prefix.to_owned());
            if !known.contains(&entry) {
                known.insert(entry);
            }
        }
        let n = |suffix: &str| SharedString::from(format!("{prefix}_{suffix}"));
        let r4j = naming == MetricsNaming::Resilience4j;
        let pick = |native: &str, r4j_suffix: &str| n(if r4j { r4j_suffix } else { native });
        Names {
            naming,
            label: naming.breaker_label(),
            state: n("state"),
            transitions: n("transitions_total"),
            error_rate: pick("error_rate", "failure_rate"),
            slow_call_rate: n("slow_call_rate"),
            requests: n("requests_total"),
            duration: pick("request_duration_seconds", "calls_seconds"),
            not_permitted: n("not_permitted_calls_total"),
            buffered_calls: n("buffered_calls"),
            rejections: n("rejections_total"),
            failures: n("failures_total"),
            recovery: n("recovery_duration_seconds"),
            trip_risk: n("trip_risk"),
            dependency: n("dependency"),
            in_flight: n("in_flight"),
            capacity_utilization: n("capacity_utilization"),
            trips_suppressed: n("trips_suppressed_total"),
            open_share: n("open_share"),
        }
    }
}

/// Makes a label value safe and short: ASCII letters, digits and `_-.:/`
/// are kept, anything else becomes `_`; at most 64 characters; empty becomes
/// `unnamed`.
///
/// ```
/// use tower_breaker::metrics::sanitize_label;
/// assert_eq!(sanitize_label("payments-v2"), "payments-v2");
/// assert_eq!(sanitize_label("a\"}\nb{"), "a___b_");
/// assert_eq!(sanitize_label(""), "unnamed");
/// ```
pub fn sanitize_label(value: &str) -> String {
    let clean: String = value
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "unnamed".to_owned()
    } else {
        clean
    }
}

static SERVICE_LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_SERVICE_LIMIT);

/// Every `service` label in use in the process.
#[derive(Debug, Default)]
struct Registry {
    /// Each label with its holders: (named breakers, keyed breakers).
    names: HashMap<Arc<str>, (usize, usize)>,
    /// Labels held by at least one named breaker.
    named: usize,
    /// The labels reserved by keyed layers, in all.
    reserved: usize,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` with a test of whether a `service` label value is in use by a
/// live breaker (the overflow label always is), holding the registry for
/// the duration.
pub(crate) fn with_live_labels<R>(f: impl FnOnce(&dyn Fn(&str) -> bool) -> R) -> R {
    let registry = registry();
    f(&|label: &str| label == OVERFLOW_LABEL || registry.names.contains_key(label))
}

/// Sets the process-wide cap on distinct `service` label values (default
/// 1,000): the most names of named breakers, and the labels keyed layers
/// built from now on may reserve (see the [cardinality](self#cardinality)
/// rules). Names in use keep their label; budgets already reserved stand.
pub fn set_service_limit(limit: usize) {
    SERVICE_LIMIT.store(limit, Ordering::Relaxed);
}

/// A `service` label value, counted in the registry while it lives.
pub(crate) struct ServiceLabel {
    value: Arc<str>,
    /// Which holder count it is in: named or keyed; `None` for the
    /// overflow label, which is not counted.
    kind: Option<Kind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Named,
    Keyed,
}

impl ServiceLabel {
    /// The label of a named breaker: its name, sanitized; the overflow
    /// label only if the names of named breakers alone fill the cap.
    ///
    /// A name already used by a live breaker (two layers left unnamed, both
    /// `default`, or names that sanitize alike) is logged at warn: their
    /// series merge into one.
    pub(crate) fn named(name: &str) -> Self {
        let clean: Arc<str> = sanitize_label(name).into();
        let mut registry = registry();
        let (held, keyed) = registry.names.get(&clean).copied().unwrap_or((0, 0));
        if held == 0 && registry.named >= SERVICE_LIMIT.load(Ordering::Relaxed) {
            return ServiceLabel::overflow();
        }
        if held + keyed > 0 {
            #[cfg(feature = "tracing")]
            tracing::warn!(
                service = &*clean,
                name,
                "another live circuit breaker already reports as service {clean:?}: \
                 their metrics merge into one series; give each breaker its own \
                 Builder::name"
            );
        }
        ServiceLabel::register(&mut registry, clean, Kind::Named)
    }

    /// The label of a key, already sanitized, taken from a keyed layer's
    /// [`LabelBudget`] (the layer counts its keys against it).
    pub(crate) fn keyed(key: &str) -> Self {
        let clean: Arc<str> = sanitize_label(key).into();
        ServiceLabel::register(&mut registry(), clean, Kind::Keyed)
    }

    /// The shared label of names and keys past their cap; not counted.
    pub(crate) fn overflow() -> Self {
        ServiceLabel {
            value: OVERFLOW_LABEL.into(),
            kind: None,
        }
    }

    fn register(registry: &mut Registry, clean: Arc<str>, kind: Kind) -> Self {
        let (value, holders) = match registry.names.get_key_value(&clean) {
            Some((key, holders)) => (key.clone(), *holders),
            None => (clean, (0, 0)),
        };
        let holders = match kind {
            Kind::Named => {
                if holders.0 == 0 {
                    registry.named += 1;
                }
                (holders.0 + 1, holders.1)
            }
            Kind::Keyed => (holders.0, holders.1 + 1),
        };
        registry.names.insert(value.clone(), holders);
        ServiceLabel {
            value,
            kind: Some(kind),
        }
    }

    pub(crate) fn value(&self) -> &Arc<str> {
        &self.value
    }
}

impl Drop for ServiceLabel {
    fn drop(&mut self) {
        let Some(kind) = self.kind else {
            return;
        };
        let mut registry = registry();
        let Some(holders) = registry.names.get_mut(&self.value) else {
            return;
        };
        match kind {
            Kind::Named => holders.0 -= 1,
            Kind::Keyed => holders.1 -= 1,
        }
        let (named, keyed) = *holders;
        if kind == Kind::Named && named == 0 {
            registry.named -= 1;
        }
        if named == 0 && keyed == 0 {
            registry.names.remove(&self.value);
        }
    }
}

impl fmt::Debug for ServiceLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServiceLabel").field(&self.value).finish()
    }
}

/// The labels a keyed layer reserved from the process-wide cap, given
/// back when it is dropped.
#[derive(Debug)]
pub(crate) struct LabelBudget {
    granted: usize,
}

impl LabelBudget {
    /// Reserves up to `wanted` labels: what the cap has room for after the
    /// names of named breakers and the other layers' budgets.
    pub(crate) fn reserve(wanted: usize) -> Self {
        let mut registry = registry();
        let room = SERVICE_LIMIT
            .load(Ordering::Relaxed)
            .saturating_sub(registry.named + registry.reserved);
        let granted = wanted.min(room);
        registry.reserved += granted;
        LabelBudget { granted }
    }

    /// How many keys may have a label of their own.
    pub(crate) fn granted(&self) -> usize {
        self.granted
    }
}

impl Drop for LabelBudget {
    fn drop(&mut self) {
        registry().reserved -= self.granted;
    }
}

/// The identity of the recorder the facade would use here and now.
#[inline]
pub(crate) fn current_recorder() -> usize {
    metrics::with_recorder(|r| (r as *const dyn Recorder).cast::<()>() as usize)
}

const OUTCOMES: [&str; 3] = ["success", "failure", "ignored"];
/// The binder's `kind` of a call, in the order of [`OUTCOMES`].
const R4J_KINDS: [&str; 3] = ["successful", "failed", "ignored"];
/// The binder's `kind` of the buffered calls.
const R4J_BUFFERED: [&str; 2] = ["successful", "failed"];
/// In the order [`Handles::rejected`] indexes them.
const REJECTING: [State; 4] = [
    State::Open,
    State::HalfOpen,
    State::ForcedOpen,
    State::MetricsOnly,
];
/// The `state` label of a refusal for capacity: not a state, the reason.
const CAPACITY: &str = "capacity";
const FAILURE_SLOTS: usize = 32;

/// Whether `recorder` is the facade's no-op recorder, the one in use when
/// none is installed. Told by its vtable, which optimized builds share
/// between crates; where they do not, the answer is a safe "no": the calls
/// are then timed for nothing, but no metric is ever lost. A recorder of the
/// user's own, even a zero-sized one, is never taken for it.
pub(crate) fn is_noop(recorder: &dyn Recorder) -> bool {
    let noop = &metrics::NoopRecorder as &dyn Recorder as *const dyn Recorder;
    let recorder = recorder as *const dyn Recorder;
    // Moved to the same address, so the comparison is of the vtables alone.
    let delta = (recorder as *const u8 as isize).wrapping_sub(noop as *const u8 as isize);
    std::ptr::eq(noop.wrapping_byte_offset(delta), recorder)
}

/// Handles resolved against one recorder.
pub(crate) struct Handles {
    recorder: usize,
    level: MetricsLevel,
    naming: MetricsNaming,
    /// Resolved against the no-op recorder: nothing is recorded, so calls
    /// need not be timed for the duration histogram.
    noop: bool,
    /// Whether calls are timed for the duration histogram: a real recorder,
    /// and the Full level (or the resilience4j naming, whose timer is also
    /// its count of calls, at every level).
    timed: bool,
    /// The label naming the breaker, and its value.
    label: &'static str,
    service: SharedString,
    failures_name: SharedString,
    requests: [Counter; 3],
    rejected: Counter,
    duration: [Histogram; 3],
    rejections: [Counter; 4],
    /// Refusals for capacity; a no-op without a concurrency limit.
    rejected_capacity: Counter,
    in_flight: Gauge,
    capacity_utilization: Gauge,
    state: [Gauge; 6],
    error_rate: Gauge,
    slow_call_rate: Gauge,
    trip_risk: Gauge,
    /// The window's successful and failed calls (resilience4j naming only).
    buffered: [Gauge; 2],
    recovery: Histogram,
    failures: [OnceLock<(&'static str, Counter)>; FAILURE_SLOTS],
    suppressed_name: SharedString,
    /// Trips held back by the open-share guard, by trip policy: registered
    /// at the first one, so keys never held back have no series.
    suppressed: [OnceLock<Counter>; 3],
}

impl fmt::Debug for Handles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handles")
            .field("service", &self.service)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Handles {
    fn resolve(
        recorder: usize,
        names: &Names,
        service: &Arc<str>,
        level: MetricsLevel,
        capacity: bool,
    ) -> Self {
        let service = SharedString::from(service.clone());
        let label = names.label;
        let r4j = names.naming == MetricsNaming::Resilience4j;
        let with = |extra: &[(&'static str, &'static str)]| -> Vec<Label> {
            let mut labels = vec![Label::new(label, service.clone())];
            labels.extend(extra.iter().map(|(k, v)| Label::from_static_parts(k, v)));
            labels
        };
        let on = |min: MetricsLevel| level >= min;
        let limited = |min: MetricsLevel| capacity && level >= min;
        metrics::with_recorder(|r| {
            // Counters are created at zero: a recorder that makes a series
            // only when it is first counted (OpenTelemetry's) still has
            // every status from the start, as the Prometheus exposition has.
            let counter = |name: &SharedString, extra: &[(&'static str, &'static str)], min| {
                if on(min) {
                    let counter = register_counter(
                        r,
                        &Key::from_parts(name.clone(), with(extra)),
                        names.naming,
                    );
                    counter.increment(0);
                    counter
                } else {
                    Counter::noop()
                }
            };
            let gauge = |name: &SharedString, extra: &[(&'static str, &'static str)], min| {
                if on(min) {
                    register_gauge(r, &Key::from_parts(name.clone(), with(extra)), names.naming)
                } else {
                    Gauge::noop()
                }
            };
            let histogram = |name: &SharedString, extra: &[(&'static str, &'static str)], min| {
                if on(min) {
                    register_histogram(r, &Key::from_parts(name.clone(), with(extra)), names.naming)
                } else {
                    Histogram::noop()
                }
            };
            use MetricsLevel::*;
            let noop = is_noop(r);
            // Resilience4j: the timer counts the calls, at every level, and
            // refusals have a family of their own.
            let (requests, rejected, duration) = if r4j {
                (
                    [Counter::noop(), Counter::noop(), Counter::noop()],
                    counter(&names.not_permitted, &[("kind", "not_permitted")], Minimal),
                    R4J_KINDS.map(|k| histogram(&names.duration, &[("kind", k)], Minimal)),
                )
            } else {
                (
                    OUTCOMES.map(|s| counter(&names.requests, &[("status", s)], Minimal)),
                    counter(&names.requests, &[("status", "rejected")], Minimal),
                    OUTCOMES.map(|s| histogram(&names.duration, &[("status", s)], Full)),
                )
            };
            Handles {
                recorder,
                level,
                naming: names.naming,
                noop,
                timed: !noop && (level == Full || r4j),
                label,
                service: service.clone(),
                failures_name: names.failures.clone(),
                requests,
                rejected,
                duration,
                rejections: REJECTING
                    .map(|s| counter(&names.rejections, &[("state", s.as_str())], Standard)),
                rejected_capacity: if limited(Minimal) {
                    counter(&names.rejections, &[("state", CAPACITY)], Standard)
                } else {
                    Counter::noop()
                },
                in_flight: if limited(Standard) {
                    gauge(&names.in_flight, &[], Standard)
                } else {
                    Gauge::noop()
                },
                capacity_utilization: if limited(Standard) {
                    gauge(&names.capacity_utilization, &[], Standard)
                } else {
                    Gauge::noop()
                },
                state: State::ALL.map(|s| gauge(&names.state, &[("state", s.as_str())], Minimal)),
                error_rate: gauge(&names.error_rate, &[], Standard),
                slow_call_rate: gauge(&names.slow_call_rate, &[], Standard),
                trip_risk: gauge(&names.trip_risk, &[], Standard),
                buffered: if r4j {
                    R4J_BUFFERED.map(|k| gauge(&names.buffered_calls, &[("kind", k)], Standard))
                } else {
                    [Gauge::noop(), Gauge::noop()]
                },
                recovery: histogram(&names.recovery, &[], Standard),
                failures: std::array::from_fn(|_| OnceLock::new()),
                suppressed_name: names.trips_suppressed.clone(),
                suppressed: std::array::from_fn(|_| OnceLock::new()),
            }
        })
    }

    /// Whether these handles go to the no-op recorder: nothing they record
    /// is kept.
    #[inline]
    pub(crate) fn is_noop(&self) -> bool {
        self.noop
    }

    /// Whether calls must be timed for these handles: a real recorder and
    /// the duration histogram.
    #[inline]
    pub(crate) fn times_calls(&self) -> bool {
        self.timed
    }

    /// Counts a finished call and its time inside the inner service, when
    /// it was timed.
    #[inline]
    pub(crate) fn finished(&self, outcome: Outcome, seconds: Option<f64>) {
        if self.noop {
            return;
        }
        let i = match outcome {
            Outcome::Success => 0,
            Outcome::Failure(kind) => {
                self.failure(kind);
                1
            }
            Outcome::Ignored => 2,
        };
        self.requests[i].increment(1);
        if let (true, Some(seconds)) = (self.timed, seconds) {
            self.duration[i].record(seconds);
        }
    }

    /// Counts a refused call.
    pub(crate) fn rejected(&self, state: State) {
        if self.noop {
            return;
        }
        self.rejected.increment(1);
        // The index in REJECTING, without searching it.
        let i = match state {
            State::Open => 0,
            State::HalfOpen => 1,
            State::ForcedOpen => 2,
            State::MetricsOnly => 3,
            State::Closed | State::Disabled => return,
        };
        self.rejections[i].increment(1);
    }

    /// Counts a call refused for capacity.
    pub(crate) fn rejected_capacity(&self) {
        self.rejected.increment(1);
        self.rejected_capacity.increment(1);
    }

    /// Sets the in-flight gauges.
    pub(crate) fn set_in_flight(&self, in_flight: u32, limit: u32) {
        self.in_flight.set(f64::from(in_flight));
        self.capacity_utilization
            .set(f64::from(in_flight) / f64::from(limit.max(1)));
    }

    /// Counts a call let through only by shadow mode.
    pub(crate) fn shadow_rejected(&self) {
        self.rejections[3].increment(1);
    }

    fn failure(&self, kind: FailureKind) {
        if self.level < MetricsLevel::Standard {
            return;
        }
        let name = kind.as_str();
        let start = (name.as_ptr() as usize >> 3) % FAILURE_SLOTS;
        for probe in 0..FAILURE_SLOTS {
            let slot = &self.failures[(start + probe) % FAILURE_SLOTS];
            let (cached, counter) = slot.get_or_init(|| (name, self.failure_counter(name)));
            if std::ptr::eq(*cached, name) || *cached == name {
                counter.increment(1);
                return;
            }
        }
        // More kinds than slots: look this one up each time.
        self.failure_counter(name).increment(1);
    }

    /// Counts a trip held back by a keyed layer's open-share guard.
    pub(crate) fn trip_suppressed(&self, reason: Reason) {
        if self.level < MetricsLevel::Standard {
            return;
        }
        let slot = match reason {
            Reason::ConsecutiveFailures => 0,
            Reason::FailureRate => 1,
            Reason::SlowCallRate => 2,
            _ => return self.suppressed_counter(reason).increment(1),
        };
        self.suppressed[slot]
            .get_or_init(|| self.suppressed_counter(reason))
            .increment(1);
    }

    fn suppressed_counter(&self, reason: Reason) -> Counter {
        let labels = vec![
            Label::new(self.label, self.service.clone()),
            Label::from_static_parts("reason", reason.as_str()),
        ];
        let key = Key::from_parts(self.suppressed_name.clone(), labels);
        metrics::with_recorder(|r| register_counter(r, &key, MetricsNaming::Native))
    }

    fn failure_counter(&self, kind: &'static str) -> Counter {
        // Built-in kinds are clean; a custom one may not be.
        let kind = if sanitize_label(kind) == kind {
            Label::from_static_parts("kind", kind)
        } else {
            Label::new("kind", sanitize_label(kind))
        };
        let labels = vec![Label::new(self.label, self.service.clone()), kind];
        let key = Key::from_parts(self.failures_name.clone(), labels);
        metrics::with_recorder(|r| register_counter(r, &key, MetricsNaming::Native))
    }

    /// Sets the one-hot state gauge.
    pub(crate) fn set_state(&self, current: State) {
        for (gauge, state) in self.state.iter().zip(State::ALL) {
            gauge.set(if state == current { 1.0 } else { 0.0 });
        }
    }

    /// Zeroes the state gauge (every state 0) and the rates: the series of
    /// a breaker that is gone, such as an evicted key's.
    pub(crate) fn set_idle(&self) {
        for gauge in &self.state {
            gauge.set(0.0);
        }
        self.reset_rates();
    }

    /// The rate gauges of an empty window: 0 (resilience4j naming: -1, "not
    /// enough calls", and no buffered calls), and no trip risk.
    pub(crate) fn reset_rates(&self) {
        let empty = match self.naming {
            MetricsNaming::Native => 0.0,
            MetricsNaming::Resilience4j => resilience4j::NOT_ENOUGH_CALLS,
        };
        self.error_rate.set(empty);
        self.slow_call_rate.set(empty);
        self.trip_risk.set(0.0);
        for gauge in &self.buffered {
            gauge.set(0.0);
        }
    }

    /// Sets the rate gauges from the window's counts (and the trip risk):
    /// ratios, or under the resilience4j naming percentages, -1 below
    /// `minimum_calls`, and the buffered calls.
    pub(crate) fn set_rates(&self, counts: &Counts, minimum_calls: u64, trip_risk: f64) {
        match self.naming {
            MetricsNaming::Native => {
                self.error_rate.set(counts.failure_rate());
                self.slow_call_rate.set(counts.slow_call_rate());
            }
            MetricsNaming::Resilience4j => {
                let (failure, slow) = resilience4j::rates(counts, minimum_calls);
                self.error_rate.set(failure);
                self.slow_call_rate.set(slow);
                let failed = counts.failures.min(counts.calls);
                self.buffered[0].set((counts.calls - failed) as f64);
                self.buffered[1].set(failed as f64);
            }
        }
        self.trip_risk.set(trip_risk);
    }

    /// Records a recovery time.
    pub(crate) fn recovered(&self, seconds: f64) {
        self.recovery.record(seconds);
    }
}

/// One breaker's metrics: names, label, and handles cached per recorder.
pub(crate) struct BreakerMetrics {
    names: Arc<Names>,
    service: ServiceLabel,
    level: MetricsLevel,
    /// Whether the breaker has a concurrency limit (its gauges exist).
    capacity: bool,
    /// Transitions created at zero for every recorder.
    expected: Box<[Transition]>,
    /// Boxed: a breaker usually sees one recorder, and keyed breakers are many.
    slots: [OnceLock<Box<Handles>>; RECORDER_SLOTS],
}

/// The bytes of one recorder's handles, boxed per recorder a breaker sees.
pub(crate) const HANDLES_BYTES: usize =
    std::mem::size_of::<Handles>() + 2 * std::mem::size_of::<usize>();

/// The slot of handles resolved for one use only.
pub(crate) const UNCACHED: u8 = u8::MAX;

/// How many recorders' handles a breaker keeps. A call's record keeps the
/// slot in three bits, and 7 means none.
const RECORDER_SLOTS: usize = 4;
const _: () = assert!(RECORDER_SLOTS < 7);

/// A transition's labels: from, to, reason.
pub(crate) type Transition = (State, State, Reason);

impl fmt::Debug for BreakerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerMetrics")
            .field("service", &self.service)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

/// The handles of the current recorder, borrowed for one call.
pub(crate) enum HandlesRef<'a> {
    Cached(&'a Handles),
    /// More recorders than slots: resolved for this call only.
    Uncached(Box<Handles>),
}

impl std::ops::Deref for HandlesRef<'_> {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        match self {
            HandlesRef::Cached(h) => h,
            HandlesRef::Uncached(h) => h,
        }
    }
}

impl BreakerMetrics {
    /// Resolves handles against the current recorder and runs `fresh` on them.
    pub(crate) fn new(
        names: Arc<Names>,
        service: ServiceLabel,
        level: MetricsLevel,
        capacity: bool,
        fresh: impl Fn(&Handles),
    ) -> Self {
        let metrics = BreakerMetrics {
            names,
            service,
            level,
            capacity,
            expected: Box::new([]),
            slots: std::array::from_fn(|_| OnceLock::new()),
        };
        metrics.handles(fresh);
        metrics
    }

    /// Sets the transitions to create at zero, and creates them in the
    /// current recorder.
    pub(crate) fn expect_transitions(&mut self, expected: Vec<Transition>) {
        self.expected = expected.into_boxed_slice();
        self.create_expected();
    }

    fn create_expected(&self) {
        for &(from, to, reason) in self.expected.iter() {
            self.transition_counter(from, to, reason).increment(0);
        }
    }

    pub(crate) fn service(&self) -> &Arc<str> {
        self.service.value()
    }

    pub(crate) fn level(&self) -> MetricsLevel {
        self.level
    }

    fn resolve(&self, recorder: usize, fresh: &impl Fn(&Handles)) -> Handles {
        let handles = Handles::resolve(
            recorder,
            &self.names,
            self.service.value(),
            self.level,
            self.capacity,
        );
        self.create_expected();
        fresh(&handles);
        handles
    }

    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// The handles for the current recorder; `fresh` runs once for each
    /// recorder first seen, to set gauges that must exist from the start.
    #[inline]
    pub(crate) fn handles(&self, fresh: impl Fn(&Handles)) -> HandlesRef<'_> {
        self.current(fresh).1
    }

    /// The handles for the current recorder and their slot, which
    /// [`cached`](Self::cached) finds again without asking the facade
    /// ([`UNCACHED`] past the last slot).
    #[inline]
    pub(crate) fn current(&self, fresh: impl Fn(&Handles)) -> (u8, HandlesRef<'_>) {
        let recorder = current_recorder();
        match self.find(recorder) {
            Some((slot, handles)) => (slot, HandlesRef::Cached(handles)),
            None => self.insert(recorder, &fresh),
        }
    }

    /// The slot of the current recorder's handles, as
    /// [`current`](Self::current) finds it, whether they time calls, and
    /// whether they are the no-op recorder's. Handles already resolved are
    /// found inline.
    #[inline]
    pub(crate) fn current_slot(&self, fresh: impl Fn(&Handles)) -> (u8, bool, bool) {
        let recorder = current_recorder();
        match self.find(recorder) {
            Some((slot, handles)) => (slot, handles.times_calls(), handles.is_noop()),
            None => self.insert_slot(recorder, &fresh),
        }
    }

    /// [`current_slot`](Self::current_slot) for a recorder not found.
    /// Handles resolved for one use only are not called no-op: the call's
    /// outcome then looks the recorder up again, as it always did.
    #[cold]
    #[inline(never)]
    fn insert_slot(&self, recorder: usize, fresh: &impl Fn(&Handles)) -> (u8, bool, bool) {
        let (slot, handles) = self.insert(recorder, fresh);
        let noop = slot != UNCACHED && handles.is_noop();
        (slot, handles.times_calls(), noop)
    }

    /// The slot holding `recorder`'s handles, among those resolved.
    #[inline]
    fn find(&self, recorder: usize) -> Option<(u8, &Handles)> {
        for (i, slot) in self.slots.iter().enumerate() {
            match slot.get() {
                Some(handles) if handles.recorder == recorder => return Some((i as u8, handles)),
                Some(_) => {}
                None => break,
            }
        }
        None
    }

    /// Resolves handles for a recorder [`find`](Self::find) did not find,
    /// in the first free slot, or for this use only when none is free.
    #[cold]
    #[inline(never)]
    fn insert(&self, recorder: usize, fresh: &impl Fn(&Handles)) -> (u8, HandlesRef<'_>) {
        for (i, slot) in self.slots.iter().enumerate() {
            // Another thread may have filled the slot meanwhile, for this
            // recorder or another.
            let handles = slot.get_or_init(|| Box::new(self.resolve(recorder, fresh)));
            if handles.recorder == recorder {
                return (i as u8, HandlesRef::Cached(handles));
            }
        }
        let handles = HandlesRef::Uncached(Box::new(self.resolve(recorder, fresh)));
        (UNCACHED, handles)
    }

    /// The handles in a slot [`current`](Self::current) returned.
    #[inline]
    pub(crate) fn cached(&self, slot: u8) -> Option<&Handles> {
        self.slots.get(usize::from(slot))?.get().map(|h| &**h)
    }

    /// Runs `f` on the handles of every recorder seen so far.
    pub(crate) fn for_each_cached(&self, mut f: impl FnMut(&Handles)) {
        for handles in self.slots.iter().filter_map(OnceLock::get) {
            let handles: &Handles = handles;
            f(handles);
        }
    }

    /// Counts a transition (cold path: looked up each time).
    pub(crate) fn transition(&self, change: &StateChange) {
        self.transition_counter(change.from, change.to, change.reason)
            .increment(1);
    }

    fn transition_counter(&self, from: State, to: State, reason: Reason) -> Counter {
        let labels = vec![
            Label::new(
                self.names.label,
                SharedString::from(self.service.value().clone()),
            ),
            Label::from_static_parts("from", from.as_str()),
            Label::from_static_parts("to", to.as_str()),
            Label::from_static_parts("reason", reason.as_str()),
        ];
        let key = Key::from_parts(self.names.transitions.clone(), labels);
        metrics::with_recorder(|r| register_counter(r, &key, MetricsNaming::Native))
    }
}

/// Sets a keyed layer's open-share gauge (cold path: after transitions and
/// evictions), in the current recorder.
pub(crate) fn open_share(names: &Names, guard: &crate::capacity::FleetGuard) {
    guard.publish(current_recorder(), || {
        let labels = vec![Label::new(
            names.label,
            SharedString::from(guard.name.clone()),
        )];
        let key = Key::from_parts(names.open_share.clone(), labels);
        metrics::with_recorder(|r| register_gauge(r, &key, MetricsNaming::Native))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_label_values_are_neutralised() {
        assert_eq!(sanitize_label("svc\"} 1\n# HELP"), "svc___1___HELP");
        assert_eq!(sanitize_label(&"x".repeat(500)).len(), 64);
        assert_eq!(sanitize_label("é"), "_");
    }

    #[test]
    fn only_the_noop_recorder_is_taken_for_it() {
        struct ZeroSized;
        impl Recorder for ZeroSized {
            fn describe_counter(&self, _: metrics::KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_gauge(&self, _: metrics::KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_histogram(&self, _: metrics::KeyName, _: Option<Unit>, _: SharedString) {}
            fn register_counter(&self, _: &Key, _: &metrics::Metadata<'_>) -> Counter {
                Counter::noop()
            }
            fn register_gauge(&self, _: &Key, _: &metrics::Metadata<'_>) -> Gauge {
                Gauge::noop()
            }
            fn register_histogram(&self, _: &Key, _: &metrics::Metadata<'_>) -> Histogram {
                Histogram::noop()
            }
        }
        assert!(!metrics::with_local_recorder(&ZeroSized, || {
            metrics::with_recorder(is_noop)
        }));
        let debugging = metrics_util::debugging::DebuggingRecorder::new();
        assert!(!metrics::with_local_recorder(&debugging, || {
            metrics::with_recorder(is_noop)
        }));
    }

    /// The facade's own no-op recorder, with none installed, is recognised,
    /// so calls go untimed. Vtables are shared between codegen units only in
    /// optimized builds: `.ci/reliability` runs this one in its profile.
    #[test]
    #[cfg_attr(debug_assertions, ignore = "needs an optimized build")]
    fn no_recorder_is_the_noop_recorder() {
        assert!(metrics::with_recorder(is_noop));
        assert!(is_noop(&metrics::NoopRecorder));
    }

    #[test]
    fn names_follow_the_prefix() {
        let names = Names::new("edge", MetricsNaming::Native);
        assert_eq!(&*names.requests, "edge_requests_total");
        assert_eq!(&*names.duration, "edge_request_duration_seconds");
    }
}
