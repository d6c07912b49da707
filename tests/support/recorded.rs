//! Reading a `DebuggingRecorder` in tests.
//!
//! A `Snapshotter` drains what it reads: counters restart at zero, gauges read
//! zero and histograms are emptied. [`Recorded`] keeps the running totals, so
//! tests assert on values since the start:
//! - counters: the total since the recorder was created;
//! - histograms: every sample since the recorder was created;
//! - gauges: the value set since the previous [`Recorded::observe`] (zero if
//!   none was set), so assert on a gauge right after what should set it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use metrics::Unit;
use metrics_util::debugging::{DebugValue, Snapshotter};
use metrics_util::MetricKind;

/// A series: metric name and sorted labels.
pub type Series = (String, Vec<(String, String)>);

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

/// Totals read from a `DebuggingRecorder`.
pub struct Recorded {
    snapshotter: Snapshotter,
    kinds: BTreeMap<Series, MetricKind>,
    counters: BTreeMap<Series, u64>,
    gauges: BTreeMap<Series, f64>,
    histograms: BTreeMap<Series, Vec<f64>>,
    descriptions: BTreeMap<String, (Option<Unit>, String)>,
}

impl Recorded {
    /// Starts reading, and takes a first snapshot.
    pub fn new(snapshotter: Snapshotter) -> Self {
        let mut recorded = Recorded {
            snapshotter,
            kinds: BTreeMap::new(),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
            histograms: BTreeMap::new(),
            descriptions: BTreeMap::new(),
        };
        recorded.observe();
        recorded
    }

    /// Takes a snapshot and adds it to the totals.
    pub fn observe(&mut self) -> &mut Self {
        for gauge in self.gauges.values_mut() {
            *gauge = 0.0;
        }
        for (key, unit, description, value) in self.snapshotter.snapshot().into_vec() {
            let labels: Vec<(&str, &str)> =
                key.key().labels().map(|l| (l.key(), l.value())).collect();
            let s = series(key.key().name(), &labels);
            self.kinds.insert(s.clone(), key.kind());
            if let Some(description) = description {
                self.descriptions
                    .insert(key.key().name().to_owned(), (unit, description.to_string()));
            }
            match value {
                DebugValue::Counter(v) => *self.counters.entry(s).or_default() += v,
                DebugValue::Gauge(v) => {
                    self.gauges.insert(s, v.0);
                }
                DebugValue::Histogram(v) => self
                    .histograms
                    .entry(s)
                    .or_default()
                    .extend(v.into_iter().map(|x| x.0)),
            }
        }
        self
    }

    /// A counter's total; panics if the series does not exist.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let s = series(name, labels);
        *self
            .counters
            .get(&s)
            .unwrap_or_else(|| panic!("no counter {s:?}; have {:#?}", self.counters.keys()))
    }

    /// A gauge's value set since the previous observe; panics if the series
    /// does not exist.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let s = series(name, labels);
        *self
            .gauges
            .get(&s)
            .unwrap_or_else(|| panic!("no gauge {s:?}; have {:#?}", self.gauges.keys()))
    }

    /// A histogram's samples; panics if the series does not exist.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> &[f64] {
        let s = series(name, labels);
        self.histograms
            .get(&s)
            .unwrap_or_else(|| panic!("no histogram {s:?}; have {:#?}", self.histograms.keys()))
    }

    /// Whether the series exists.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.kinds.contains_key(&series(name, labels))
    }

    /// The kind of every metric name seen.
    pub fn names(&self) -> BTreeMap<String, MetricKind> {
        self.kinds
            .iter()
            .map(|((name, _), kind)| (name.clone(), *kind))
            .collect()
    }

    /// The label sets of one metric, each as `key=value` pairs joined by `,`.
    pub fn label_sets(&self, name: &str) -> BTreeSet<String> {
        self.kinds
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, labels)| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    /// The values of one label across a metric's series.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.kinds
            .keys()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, labels)| labels.iter().filter(|(k, _)| k == label))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A metric's unit and description.
    pub fn description(&self, name: &str) -> Option<&(Option<Unit>, String)> {
        self.descriptions.get(name)
    }

    /// The one-hot state gauge of `service` as `state -> value`.
    pub fn states(&self, prefix: &str, service: &str) -> BTreeMap<String, f64> {
        let name = format!("{prefix}_state");
        self.gauges
            .iter()
            .filter(|((n, labels), _)| {
                *n == name && labels.iter().any(|(k, v)| k == "service" && v == service)
            })
            .map(|((_, labels), v)| {
                let state = labels.iter().find(|(k, _)| k == "state").unwrap();
                (state.1.clone(), *v)
            })
            .collect()
    }
}

/// The expected one-hot state map with `current` at 1.
pub fn one_hot(current: &str) -> BTreeMap<String, f64> {
    [
        "closed",
        "open",
        "half_open",
        "disabled",
        "forced_open",
        "metrics_only",
    ]
    .into_iter()
    .map(|s| (s.to_owned(), if s == current { 1.0 } else { 0.0 }))
    .collect()
}

/// Asserts two floats are within 1e-9.
#[track_caller]
pub fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "expected {expected}, got {actual}"
    );
}

/// Asserts two lists of floats are pairwise within 1e-9.
#[track_caller]
pub fn assert_all_close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 1e-9, "{actual:?} vs {expected:?}");
    }
}
