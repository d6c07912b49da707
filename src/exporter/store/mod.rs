//! The series of the breaker's metric families, kept by the recorder
//! [`BreakerRecorder`](super::BreakerRecorder) and rendered without going
//! through the Prometheus exporter's generic path.
//!
//! # Why
//!
//! The exporter re-formats every label of every series on every render (one
//! `format!` per label per line, a hash map per family, a copy of each
//! histogram), so its cost per line grows with the labels a series carries,
//! and the breaker's series carry two to four. Here a series keeps its label
//! set already rendered, and a render writes each line from it: the cost of
//! a line no longer depends on its labels or on how many services there are.
//!
//! # Lifecycle
//!
//! A series is kept while something can still write to it: a breaker (or
//! any caller) holds its handle, or its owner (the `service` label, or
//! `upstream` for dependency edges) is in use by a live breaker. When
//! neither is true, the series is marked gone at the next sweep, and removed
//! at the first sweep at least `expiry` later. A sweep runs at most every
//! `expiry / 4` (between 1 s and 60 s), during a render, an upkeep or the
//! registration of a new series; a name taken again before its series are
//! removed keeps them (and its counters continue).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashbrown::HashTable;
use metrics::atomics::AtomicU64;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, SharedString};
use metrics_util::storage::AtomicBucket;

use super::exposition::write_value;
use super::histogram::{cumulative, Distribution, NativeConfig};
use super::protobuf;
use crate::clock::{duration_nanos, Clock};

mod views;

/// What a family holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// How the store is set up.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) expiry: Duration,
    pub(crate) clock: Clock,
    pub(crate) native: Option<NativeConfig>,
    pub(crate) duration_buckets: Arc<[f64]>,
    pub(crate) recovery_buckets: Arc<[f64]>,
    /// Labels put before every series' own (a series' label of the same
    /// name wins).
    pub(crate) global_labels: Vec<(String, String)>,
}

/// A histogram series: where handles push samples, and what they add up to.
struct Hist {
    samples: Arc<AtomicBucket<f64>>,
    dist: Distribution,
}

/// The cells handles write to, in series order.
enum Cells {
    /// Counters, or gauges (the bits of an `f64`).
    Values(Vec<Arc<AtomicU64>>),
    Histograms(Vec<Hist>),
}

impl Cells {
    /// Whether a handle to series `i` exists outside the store.
    fn held(&self, i: usize) -> bool {
        match self {
            Cells::Values(v) => Arc::strong_count(&v[i]) > 1,
            Cells::Histograms(h) => Arc::strong_count(&h[i].samples) > 1,
        }
    }
}

/// No owner: a series without a `service` (or `upstream`) label.
const NO_OWNER: u32 = u32::MAX;

/// The series' first label is `service`, its owner, kept in [`Owners`].
const FACTORED: u32 = 1 << 31;
/// The series' labels override a global label: its text holds the global
/// labels it keeps, and the store's are not written.
const OWN_GLOBALS: u32 = 1 << 30;
/// Every label of the series' own text is one the redacted view keeps.
const REDACT_SAFE: u32 = 1 << 29;
const FLAGS: u32 = FACTORED | OWN_GLOBALS | REDACT_SAFE;

impl Series {
    fn length(&self) -> usize {
        (self.len & !FLAGS) as usize
    }

    fn flags(&self) -> u32 {
        self.len & FLAGS
    }

    /// The owner slot that is part of the series' identity.
    fn identity_owner(&self) -> u32 {
        if self.len & FACTORED != 0 {
            self.owner
        } else {
            NO_OWNER
        }
    }
}

/// What tells two series of a family apart, hashed for the index.
fn identity_hash(hasher: &impl BuildHasher, flags: u32, owner: u32, text: &str) -> u64 {
    hasher.hash_one((flags, owner, text))
}

/// One series: its cell is the same index in `family.cells`. Its labels
/// are, in order: the store's global labels (unless [`OWN_GLOBALS`]), its
/// owner as `service` when [`FACTORED`] (the owner's name is kept once,
/// not in every series), then `family.labels[start..start + length]`.
struct Series {
    start: u32,
    /// The length of the label text, with the flags in the top bits.
    len: u32,
    /// 0 while owned; else the second (from the clock's origin, plus one)
    /// a sweep first found it unowned.
    gone: u32,
    /// Its owner's slot in [`Owners`], or [`NO_OWNER`].
    owner: u32,
}

/// One metric family, laid out for rendering in order: the series and
/// their cells in vectors, their rendered label sets (`a="x",b="y"`, no
/// braces) one after the other in one string, and histogram bucket counts
/// in one array.
struct Family {
    kind: Kind,
    /// The escaped description.
    help: Option<Box<str>>,
    /// Histograms: the classic bucket bounds, and each one as `le` shows it.
    bounds: Arc<[f64]>,
    le: Box<[Box<str>]>,
    series: Vec<Series>,
    cells: Cells,
    labels: String,
    /// `bounds.len() + 1` counts per histogram series, in series order.
    counts: Vec<u64>,
    /// Series index by label set.
    index: HashTable<u32>,
    /// Whether a series has a failure `kind` label (the redacted view
    /// collapses them).
    has_kind: bool,
}

/// Makes room for `extra` more, growing by an eighth rather than doubling:
/// a store of many series keeps little slack.
fn room<T>(v: &mut Vec<T>, extra: usize) {
    if v.capacity() - v.len() < extra {
        v.reserve_exact(extra.max(v.len() / 8 + 8));
    }
}

fn room_str(s: &mut String, extra: usize) {
    if s.capacity() - s.len() < extra {
        s.reserve_exact(extra.max(s.len() / 8 + 64));
    }
}

impl Family {
    fn new(kind: Kind, bounds: Arc<[f64]>) -> Self {
        let le = bounds
            .iter()
            .map(|b| {
                let mut s = String::new();
                write_value(&mut s, *b);
                s.into_boxed_str()
            })
            .collect();
        Family {
            kind,
            help: None,
            bounds,
            le,
            series: Vec::new(),
            cells: match kind {
                Kind::Histogram => Cells::Histograms(Vec::new()),
                _ => Cells::Values(Vec::new()),
            },
            labels: String::new(),
            counts: Vec::new(),
            index: HashTable::new(),
            has_kind: false,
        }
    }

    fn stride(&self) -> usize {
        self.bounds.len() + 1
    }

    /// The series' own label text (without globals or a factored owner).
    fn labels_of(&self, series: &Series) -> &str {
        text_of(&self.labels, series)
    }

    fn find(&self, hash: u64, flags: u32, owner: u32, text: &str) -> Option<usize> {
        self.index
            .find(hash, |&i| {
                let s = &self.series[i as usize];
                s.flags() == flags && s.identity_owner() == owner && self.labels_of(s) == text
            })
            .map(|&i| i as usize)
    }

    fn index_insert(&mut self, hasher: &impl BuildHasher, hash: u64, at: u32) {
        let (labels, series) = (&self.labels, &self.series);
        self.index.insert_unique(hash, at, |&j| {
            let s = &series[j as usize];
            identity_hash(hasher, s.flags(), s.identity_owner(), text_of(labels, s))
        });
    }

    /// Adds a series; its index.
    fn push(
        &mut self,
        hasher: &impl BuildHasher,
        hash: u64,
        (flags, labels): (u32, &str),
        owner: u32,
        native: Option<&NativeConfig>,
    ) -> usize {
        let at = self.series.len();
        room(&mut self.series, 1);
        self.series.push(Series {
            start: self.labels.len() as u32,
            len: labels.len() as u32 | flags,
            gone: 0,
            owner,
        });
        room_str(&mut self.labels, labels.len());
        self.labels.push_str(labels);
        let stride = self.stride();
        match &mut self.cells {
            Cells::Values(v) => {
                room(v, 1);
                v.push(Arc::new(AtomicU64::new(0)));
            }
            Cells::Histograms(h) => {
                room(h, 1);
                h.push(Hist {
                    samples: Arc::new(AtomicBucket::new()),
                    dist: Distribution::new(native),
                });
                room(&mut self.counts, stride);
                self.counts.resize(self.counts.len() + stride, 0);
            }
        }
        self.index_insert(hasher, hash, at as u32);
        at
    }

    /// Keeps the series `keep` says to (by index), compacting everything,
    /// and rebuilds the index.
    fn retain(&mut self, hasher: &impl BuildHasher, mut keep: impl FnMut(&Series) -> bool) {
        let stride = self.stride();
        let old_labels = std::mem::take(&mut self.labels);
        let old_counts = std::mem::take(&mut self.counts);
        let old_series = std::mem::take(&mut self.series);
        let mut old_values = match &mut self.cells {
            Cells::Values(v) => std::mem::take(v).into_iter().map(Some).collect::<Vec<_>>(),
            Cells::Histograms(_) => Vec::new(),
        };
        let mut old_hists = match &mut self.cells {
            Cells::Histograms(h) => std::mem::take(h).into_iter().map(Some).collect::<Vec<_>>(),
            Cells::Values(_) => Vec::new(),
        };
        self.index.clear();
        for (i, mut series) in old_series.into_iter().enumerate() {
            if !keep(&series) {
                continue;
            }
            let text = text_of(&old_labels, &series);
            series.start = self.labels.len() as u32;
            self.labels.push_str(text);
            match &mut self.cells {
                Cells::Values(v) => v.extend(old_values[i].take()),
                Cells::Histograms(h) => {
                    h.extend(old_hists[i].take());
                    self.counts
                        .extend_from_slice(&old_counts[i * stride..(i + 1) * stride]);
                }
            }
            let hash = identity_hash(hasher, series.flags(), series.identity_owner(), text);
            let at = self.series.len() as u32;
            self.series.push(series);
            self.index_insert(hasher, hash, at);
        }
    }
}

fn text_of<'a>(labels: &'a str, series: &Series) -> &'a str {
    &labels[series.start as usize..series.start as usize + series.length()]
}

/// The owners of series (label values), each stored once.
#[derive(Default)]
struct Owners {
    names: Vec<Option<Arc<str>>>,
    /// Each name escaped for the text format, where that changes it.
    escaped: Vec<Option<Box<str>>>,
    /// How many series each slot owns.
    refs: Vec<u32>,
    by_name: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
}

impl Owners {
    /// The slot of `name`, if it owns series.
    fn find(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The name of a slot in use, escaped for the text format.
    fn text(&self, slot: u32) -> &str {
        let slot = slot as usize;
        match &self.escaped[slot] {
            Some(escaped) => escaped,
            None => self.names[slot].as_deref().unwrap_or(""),
        }
    }

    fn raw(&self, slot: u32) -> &str {
        self.names[slot as usize].as_deref().unwrap_or("")
    }

    fn take(&mut self, name: &str) -> u32 {
        if let Some(&slot) = self.by_name.get(name) {
            self.refs[slot as usize] += 1;
            return slot;
        }
        let mut escaped = String::new();
        escape(&mut escaped, name);
        let escaped = (escaped != name).then(|| escaped.into_boxed_str());
        let name: Arc<str> = name.into();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.names[slot as usize] = Some(name.clone());
                self.escaped[slot as usize] = escaped;
                self.refs[slot as usize] = 1;
                slot
            }
            None => {
                self.names.push(Some(name.clone()));
                self.escaped.push(escaped);
                self.refs.push(1);
                (self.names.len() - 1) as u32
            }
        };
        self.by_name.insert(name, slot);
        slot
    }

    fn release(&mut self, slot: u32) {
        if slot == NO_OWNER {
            return;
        }
        let refs = &mut self.refs[slot as usize];
        *refs -= 1;
        if *refs == 0 {
            if let Some(name) = self.names[slot as usize].take() {
                self.by_name.remove(&name);
            }
            self.escaped[slot as usize] = None;
            self.free.push(slot);
        }
    }
}

struct State {
    families: BTreeMap<Box<str>, Family>,
    owners: Owners,
    last_sweep: u64,
    /// The length of the last text render, to size the next one.
    last_len: usize,
    /// Scratch: the values of one family, read before they are written out.
    values: Vec<u64>,
}

/// The breaker families' series.
pub(crate) struct Store {
    state: Mutex<State>,
    config: Config,
    hasher: std::collections::hash_map::RandomState,
    /// The global labels, rendered (`a="x",b="y"`).
    global: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("expiry", &self.config.expiry)
            .field("native", &self.config.native.is_some())
            .finish_non_exhaustive()
    }
}

/// Escapes a label value or description for the text format.
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A label name as Prometheus accepts it: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn label_name(out: &mut String, name: &str) {
    if name.is_empty() {
        out.push('_');
    }
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
        out.push(if ok { c } else { '_' });
    }
}

/// Appends `name="value",`, both made safe.
fn push_label(out: &mut String, name: &str, value: &str) {
    label_name(out, name);
    out.push_str("=\"");
    escape(out, value);
    out.push_str("\",");
}

/// A metric name as Prometheus accepts it: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn metric_name(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            let ok =
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit());
            if ok {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Seconds from the clock's origin, plus one (0 means "owned").
fn second(nanos: u64) -> u32 {
    u32::try_from(nanos / 1_000_000_000)
        .unwrap_or(u32::MAX - 1)
        .saturating_add(1)
}

impl Store {
    pub(crate) fn new(config: Config) -> Self {
        let mut global = String::new();
        for (name, value) in &config.global_labels {
            push_label(&mut global, name, value);
        }
        global.pop();
        Store {
            global,
            state: Mutex::new(State {
                families: BTreeMap::new(),
                owners: Owners::default(),
                last_sweep: 0,
                last_len: 0,
                values: Vec::new(),
            }),
            config,
            hasher: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> u64 {
        self.config.clock.now()
    }

    pub(crate) fn native(&self) -> bool {
        self.config.native.is_some()
    }

    fn bounds_for(&self, name: &str) -> Arc<[f64]> {
        if name.ends_with("recovery_duration_seconds") {
            self.config.recovery_buckets.clone()
        } else {
            self.config.duration_buckets.clone()
        }
    }

    /// The family `name`, created if new; `None` if the name holds
    /// another kind.
    fn family<'s>(
        &self,
        families: &'s mut BTreeMap<Box<str>, Family>,
        name: &str,
        kind: Kind,
    ) -> Option<&'s mut Family> {
        let name = metric_name(name);
        if !families.contains_key(name.as_str()) {
            let bounds: Arc<[f64]> = match kind {
                Kind::Histogram => self.bounds_for(&name),
                _ => Arc::from([]),
            };
            families.insert(name.clone().into_boxed_str(), Family::new(kind, bounds));
        }
        let family = families.get_mut(name.as_str())?;
        // One name, one type: a second type under the same name would make
        // the exposition invalid, so it is not recorded.
        (family.kind == kind).then_some(family)
    }

    /// Records the description of a family.
    pub(crate) fn describe(&self, name: KeyName, kind: Kind, description: SharedString) {
        let mut state = self.lock();
        let Some(family) = self.family(&mut state.families, name.as_str(), kind) else {
            return;
        };
        if family.help.is_none() {
            // In HELP, only backslashes and line feeds are escaped.
            let help = description.replace('\\', "\\\\").replace('\n', "\\n");
            family.help = Some(help.into_boxed_str());
        }
    }

    /// Finds or creates the series `key` names; the family and the index.
    fn register<'s>(
        &self,
        state: &'s mut State,
        key: &Key,
        kind: Kind,
    ) -> Option<(&'s mut Family, usize)> {
        let overrides = self
            .config
            .global_labels
            .iter()
            .any(|(name, _)| key.labels().any(|l| l.key() == name));
        let mut labels = String::with_capacity(48);
        let mut flags = 0;
        if overrides {
            flags |= OWN_GLOBALS;
            for (name, value) in &self.config.global_labels {
                if !key.labels().any(|l| l.key() == name) {
                    push_label(&mut labels, name, value);
                }
            }
        }
        let mut service: Option<&str> = None;
        let mut upstream: Option<&str> = None;
        // The breaker's `name` under the resilience4j naming.
        let mut named: Option<&str> = None;
        // The owner is factored out only when it is the first label.
        let factor = !overrides && !key.labels().any(|l| l.key() == "upstream");
        for (i, label) in key.labels().enumerate() {
            match label.key() {
                "service" => service = Some(label.value()),
                "upstream" => upstream = Some(label.value()),
                "name" => named = Some(label.value()),
                _ => {}
            }
            if i == 0 && label.key() == "service" && factor {
                // Kept once per owner, not in each series' text.
                flags |= FACTORED;
                continue;
            }
            push_label(&mut labels, label.key(), label.value());
        }
        labels.pop(); // the last comma
        if !overrides
            && key
                .labels()
                .all(|l| super::scope::REDACTED_LABELS.contains(&l.key()))
        {
            flags |= REDACT_SAFE;
        }
        // The dependency gauge lives as long as its upstream's breaker.
        let owner = upstream.or(service).or(named);

        let now = self.now();
        if now.saturating_sub(state.last_sweep) >= self.sweep_interval() {
            self.sweep(state, now);
        }
        // Native buckets for the request-duration histograms only: the
        // recovery histogram stays classic, for the rules built on it.
        let native = self
            .config
            .native
            .as_ref()
            .filter(|_| key.name().ends_with("request_duration_seconds"));
        let hasher = &self.hasher;
        let State {
            families, owners, ..
        } = state;
        let family = self.family(families, key.name(), kind)?;
        // A factored series is told apart by its owner's slot, which exists
        // if the series does.
        let known = if flags & FACTORED != 0 {
            owner.and_then(|o| owners.find(o))
        } else {
            Some(NO_OWNER)
        };
        let found = known.and_then(|identity| {
            let hash = identity_hash(hasher, flags, identity, &labels);
            family.find(hash, flags, identity, &labels)
        });
        let at = match found {
            Some(at) => at,
            None => {
                family.has_kind |= super::scope::collapses_kind(key.name())
                    && key.labels().any(|l| l.key() == "kind");
                let owner = owner.map_or(NO_OWNER, |o| owners.take(o));
                let identity = if flags & FACTORED != 0 {
                    owner
                } else {
                    NO_OWNER
                };
                let hash = identity_hash(hasher, flags, identity, &labels);
                family.push(hasher, hash, (flags, &labels), owner, native)
            }
        };
        family.series[at].gone = 0;
        Some((family, at))
    }

    fn value(&self, key: &Key, kind: Kind) -> Option<Arc<AtomicU64>> {
        let mut state = self.lock();
        let (family, at) = self.register(&mut state, key, kind)?;
        match &family.cells {
            Cells::Values(v) => Some(v[at].clone()),
            Cells::Histograms(_) => None,
        }
    }

    pub(crate) fn counter(&self, key: &Key) -> Counter {
        self.value(key, Kind::Counter)
            .map_or_else(Counter::noop, Counter::from_arc)
    }

    pub(crate) fn gauge(&self, key: &Key) -> Gauge {
        self.value(key, Kind::Gauge)
            .map_or_else(Gauge::noop, Gauge::from_arc)
    }

    pub(crate) fn histogram(&self, key: &Key) -> Histogram {
        let mut state = self.lock();
        match self.register(&mut state, key, Kind::Histogram) {
            Some((family, at)) => match &family.cells {
                Cells::Histograms(h) => Histogram::from_arc(h[at].samples.clone()),
                Cells::Values(_) => Histogram::noop(),
            },
            None => Histogram::noop(),
        }
    }

    fn sweep_interval(&self) -> u64 {
        duration_nanos(
            (self.config.expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        )
    }

    /// Marks the series no one can write to any more, and removes those
    /// marked for `expiry`.
    fn sweep(&self, state: &mut State, now: u64) {
        state.last_sweep = now;
        let now = second(now);
        let expiry = u32::try_from(self.config.expiry.as_secs().max(1)).unwrap_or(u32::MAX);
        let hasher = &self.hasher;
        let State {
            families, owners, ..
        } = state;
        // One registry lookup per owner, not per series.
        let live: Vec<bool> = crate::metrics::with_live_labels(|live| {
            owners
                .names
                .iter()
                .map(|n| n.as_deref().is_some_and(live))
                .collect()
        });
        for family in families.values_mut() {
            let mut expired = false;
            for (i, series) in family.series.iter_mut().enumerate() {
                let owned = family.cells.held(i)
                    || (series.owner != NO_OWNER && live[series.owner as usize]);
                if owned {
                    series.gone = 0;
                } else if series.gone == 0 {
                    series.gone = now;
                } else if now.saturating_sub(series.gone) >= expiry {
                    expired = true;
                }
            }
            if expired {
                family.retain(hasher, |s| {
                    let keep = s.gone == 0 || now.saturating_sub(s.gone) < expiry;
                    if !keep {
                        owners.release(s.owner);
                    }
                    keep
                });
            }
        }
        families.retain(|_, f| !f.series.is_empty() || f.help.is_some());
    }

    /// Moves pending histogram samples into their distributions and runs a
    /// sweep if one is due.
    pub(crate) fn upkeep(&self) {
        let now = self.now();
        let mut state = self.lock();
        Self::drain(&mut state);
        if now.saturating_sub(state.last_sweep) >= self.sweep_interval() {
            self.sweep(&mut state, now);
        }
    }

    fn drain(state: &mut State) {
        for family in state.families.values_mut() {
            let stride = family.stride();
            let bounds = &family.bounds;
            let Cells::Histograms(hists) = &mut family.cells else {
                continue;
            };
            for (hist, counts) in hists.iter_mut().zip(family.counts.chunks_exact_mut(stride)) {
                let dist = &mut hist.dist;
                hist.samples.clear_with(|s| dist.record(bounds, counts, s));
            }
        }
    }

    /// How many series the store holds, and how many of them are marked
    /// gone.
    pub(crate) fn series(&self) -> (usize, usize) {
        let state = self.lock();
        let mut all = 0;
        let mut gone = 0;
        for family in state.families.values() {
            all += family.series.len();
            gone += family.series.iter().filter(|s| s.gone != 0).count();
        }
        (all, gone)
    }

    /// The state, swept if a sweep is due, with every pending sample in
    /// its histogram: ready to render.
    fn prepared(&self) -> MutexGuard<'_, State> {
        let now = self.now();
        let mut state = self.lock();
        if now.saturating_sub(state.last_sweep) >= self.sweep_interval() {
            self.sweep(&mut state, now);
        }
        Self::drain(&mut state);
        state
    }

    /// Appends the text exposition of every family.
    pub(crate) fn render(&self, out: &mut String) {
        let mut state = self.prepared();
        out.reserve(state.last_len + state.last_len / 8);
        let start = out.len();
        let State {
            families,
            values,
            owners,
            ..
        } = &mut *state;
        let set = |family, series| label_set(&self.global, owners, family, series);
        for (name, family) in families.iter() {
            if family.series.is_empty() {
                continue;
            }
            header(out, name, family);
            match &family.cells {
                Cells::Values(cells) => {
                    // Read every value first: independent loads, which the
                    // processor overlaps, instead of one cache miss per line.
                    values.clear();
                    values.extend(cells.iter().map(|v| v.load(Ordering::Relaxed)));
                    for (series, &value) in family.series.iter().zip(values.iter()) {
                        line_start(out, name, "", &set(family, series));
                        out.push(' ');
                        if family.kind == Kind::Counter {
                            write_u64(out, value);
                        } else {
                            write_value(out, f64::from_bits(value));
                        }
                        out.push('\n');
                    }
                }
                Cells::Histograms(hists) => {
                    let stride = family.stride();
                    for ((series, hist), counts) in family
                        .series
                        .iter()
                        .zip(hists.iter())
                        .zip(family.counts.chunks_exact(stride))
                    {
                        let dist = &hist.dist;
                        let labels = set(family, series);
                        for ((_, count), le) in
                            cumulative(&family.bounds, counts).zip(family.le.iter())
                        {
                            bucket_line(out, name, &labels, le, count);
                        }
                        bucket_line(out, name, &labels, "+Inf", dist.count);
                        line_start(out, name, "_sum", &labels);
                        out.push(' ');
                        write_value(out, dist.sum);
                        out.push('\n');
                        line_start(out, name, "_count", &labels);
                        out.push(' ');
                        write_u64(out, dist.count);
                        out.push('\n');
                    }
                }
            }
            out.push('\n');
        }
        state.last_len = out.len() - start;
    }

    /// Appends the protobuf exposition (length-delimited `MetricFamily`
    /// messages) of every family.
    pub(crate) fn render_protobuf(&self, out: &mut Vec<u8>) {
        let state = self.prepared();
        let global = protobuf::parse_labels(&self.global);
        for (name, family) in &state.families {
            if family.series.is_empty() {
                continue;
            }
            let stride = family.stride();
            let mut metrics = Vec::with_capacity(family.series.len());
            for (i, series) in family.series.iter().enumerate() {
                let mut pairs = Vec::new();
                if series.flags() & OWN_GLOBALS == 0 {
                    pairs.extend(global.iter().cloned());
                }
                if series.flags() & FACTORED != 0 {
                    let owner = state.owners.raw(series.owner).to_owned();
                    pairs.push(("service".to_owned(), owner));
                }
                pairs.extend(protobuf::parse_labels(family.labels_of(series)));
                let value = match &family.cells {
                    Cells::Values(v) => {
                        let v = v[i].load(Ordering::Relaxed);
                        if family.kind == Kind::Counter {
                            protobuf::Value::Counter(v as f64)
                        } else {
                            protobuf::Value::Gauge(f64::from_bits(v))
                        }
                    }
                    Cells::Histograms(h) => protobuf::Value::Histogram(
                        &h[i].dist,
                        &family.bounds,
                        &family.counts[i * stride..(i + 1) * stride],
                    ),
                };
                metrics.push(protobuf::metric(&pairs, value));
            }
            let help = family.help.as_deref().map(protobuf::unescape_help);
            protobuf::family(
                out,
                name,
                help.as_deref(),
                family.kind.as_str(),
                metrics.iter().map(Vec::as_slice),
            );
        }
    }
}

/// Writes a family's `# HELP` (if described) and `# TYPE` lines.
fn header(out: &mut String, name: &str, family: &Family) {
    if let Some(help) = &family.help {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        out.push_str(help);
        out.push('\n');
    }
    out.push_str("# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(family.kind.as_str());
    out.push('\n');
}

/// Writes an integer without the formatting machinery.
#[inline]
fn write_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

fn label_set<'a>(
    global: &'a str,
    owners: &'a Owners,
    family: &'a Family,
    series: &'a Series,
) -> LabelSet<'a> {
    LabelSet {
        global: if series.flags() & OWN_GLOBALS != 0 {
            ""
        } else {
            global
        },
        owner: (series.flags() & FACTORED != 0).then(|| owners.text(series.owner)),
        rest: family.labels_of(series),
    }
}

/// The labels of one series, in three parts: global, owner, own.
struct LabelSet<'a> {
    global: &'a str,
    /// The escaped `service` value, when factored out.
    owner: Option<&'a str>,
    rest: &'a str,
}

impl LabelSet<'_> {
    fn is_empty(&self) -> bool {
        self.global.is_empty() && self.owner.is_none() && self.rest.is_empty()
    }

    /// Writes the labels, comma-separated, without braces.
    #[inline]
    fn write(&self, out: &mut String) {
        let mut first = true;
        if !self.global.is_empty() {
            out.push_str(self.global);
            first = false;
        }
        if let Some(owner) = self.owner {
            if !first {
                out.push(',');
            }
            out.push_str("service=\"");
            out.push_str(owner);
            out.push('"');
            first = false;
        }
        if !self.rest.is_empty() {
            if !first {
                out.push(',');
            }
            out.push_str(self.rest);
        }
    }
}

/// Writes `name{suffix}{labels}` (no braces when there are no labels).
#[inline]
fn line_start(out: &mut String, name: &str, suffix: &str, labels: &LabelSet<'_>) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() {
        out.push('{');
        labels.write(out);
        out.push('}');
    }
}

#[inline]
fn bucket_line(out: &mut String, name: &str, labels: &LabelSet<'_>, le: &str, count: u64) {
    out.push_str(name);
    out.push_str("_bucket{");
    if !labels.is_empty() {
        labels.write(out);
        out.push(',');
    }
    out.push_str("le=\"");
    out.push_str(le);
    out.push_str("\"} ");
    write_u64(out, count);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::Label;

    fn store(global: &[(&str, &str)]) -> Store {
        Store::new(Config {
            expiry: Duration::from_secs(60),
            clock: Clock::manual().0,
            native: None,
            duration_buckets: Arc::from([0.1, 1.0]),
            recovery_buckets: Arc::from([10.0]),
            global_labels: global
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect();
        Key::from_parts(name, labels)
    }

    fn render(store: &Store) -> String {
        let mut out = String::new();
        store.render(&mut out);
        out
    }

    #[test]
    fn lines_render_as_the_text_format_says() {
        let s = store(&[]);
        s.describe(
            "cb_requests_total".into(),
            Kind::Counter,
            "Calls, \\ \"quoted\"\nnext".into(),
        );
        s.counter(&key(
            "cb_requests_total",
            &[("service", "a"), ("status", "ok")],
        ))
        .increment(3);
        s.gauge(&key("cb_error_rate", &[("service", "b\"\\\n")]))
            .set(0.25);
        let h = s.histogram(&key(
            "cb_request_duration_seconds",
            &[("service", "a"), ("status", "ok")],
        ));
        h.record(0.05);
        h.record(0.5);
        h.record(7.0);
        s.gauge(&key("cb_bare", &[])).set(f64::NAN);
        assert_eq!(
            render(&s),
            "# TYPE cb_bare gauge\n\
             cb_bare NaN\n\
             \n\
             # TYPE cb_error_rate gauge\n\
             cb_error_rate{service=\"b\\\"\\\\\\n\"} 0.25\n\
             \n\
             # TYPE cb_request_duration_seconds histogram\n\
             cb_request_duration_seconds_bucket{service=\"a\",status=\"ok\",le=\"0.1\"} 1\n\
             cb_request_duration_seconds_bucket{service=\"a\",status=\"ok\",le=\"1\"} 2\n\
             cb_request_duration_seconds_bucket{service=\"a\",status=\"ok\",le=\"+Inf\"} 3\n\
             cb_request_duration_seconds_sum{service=\"a\",status=\"ok\"} 7.55\n\
             cb_request_duration_seconds_count{service=\"a\",status=\"ok\"} 3\n\
             \n\
             # HELP cb_requests_total Calls, \\\\ \"quoted\"\\nnext\n\
             # TYPE cb_requests_total counter\n\
             cb_requests_total{service=\"a\",status=\"ok\"} 3\n\
             \n"
        );
    }

    #[test]
    fn global_labels_come_first_and_a_series_label_wins() {
        let s = store(&[("cluster", "eu"), ("zone", "z1")]);
        s.counter(&key("cb_x_total", &[("service", "a")]))
            .increment(1);
        s.counter(&key("cb_x_total", &[("service", "b"), ("zone", "z9")]))
            .increment(2);
        s.counter(&key("cb_y_total", &[])).increment(3);
        let text = render(&s);
        assert!(text.contains("cb_x_total{cluster=\"eu\",zone=\"z1\",service=\"a\"} 1\n"));
        assert!(text.contains("cb_x_total{cluster=\"eu\",service=\"b\",zone=\"z9\"} 2\n"));
        assert!(text.contains("cb_y_total{cluster=\"eu\",zone=\"z1\"} 3\n"));
    }

    #[test]
    fn one_key_one_series_and_one_name_one_type() {
        let s = store(&[]);
        let k = key("cb_z_total", &[("service", "a"), ("status", "x")]);
        s.counter(&k).increment(1);
        s.counter(&k).increment(1);
        // The same name as a gauge is refused: it would make the text invalid.
        s.gauge(&key("cb_z_total", &[("service", "a")])).set(9.0);
        let text = render(&s);
        assert!(
            text.contains("cb_z_total{service=\"a\",status=\"x\"} 2\n"),
            "{text}"
        );
        assert_eq!(text.matches("cb_z_total{").count(), 1, "{text}");
        assert_eq!(s.series(), (1, 0));
    }

    #[test]
    fn unowned_series_expire_and_held_ones_stay() {
        let (clock, time) = Clock::manual();
        let s = Store::new(Config {
            clock,
            ..store(&[]).config
        });
        // No breaker holds these names.
        let held = s.counter(&key("cb_held_total", &[("service", "nobody-1")]));
        drop(s.counter(&key("cb_dropped_total", &[("service", "nobody-2")])));
        time.advance(Duration::from_secs(15));
        let _ = render(&s); // marks the dropped one
        assert_eq!(s.series(), (2, 1));
        time.advance(Duration::from_secs(59));
        let _ = render(&s);
        assert_eq!(s.series(), (2, 1), "not before the expiry");
        time.advance(Duration::from_secs(16));
        let text = render(&s);
        assert!(!text.contains("nobody-2"), "{text}");
        assert!(text.contains("nobody-1"), "{text}");
        assert_eq!(s.series(), (1, 0));
        held.increment(1);
        assert!(render(&s).contains("cb_held_total{service=\"nobody-1\"} 1"));
    }
}
