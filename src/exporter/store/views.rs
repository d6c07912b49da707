//! The scoped views of the store's families, rendered from the series
//! themselves rather than by parsing and rewriting the text: the same
//! output as [`scope::render`](crate::exporter::scope) over the text, at
//! about the cost of the unscoped render (see `Scope` for what each view
//! shows).
//!
//! A series whose owner is factored out (its first label is `service`) is
//! judged by its owner slot, once per render; any other series (dependency
//! edges, series that override a global label) has its labels read back
//! from its text.

use std::borrow::Cow;

use indexmap::IndexMap;

use super::{
    cumulative, header, label_set, line_start, push_label, write_u64, write_value, Cells, Family,
    LabelSet, Owners, Series, Store, FACTORED, OWN_GLOBALS, REDACT_SAFE,
};
use crate::exporter::protobuf::parse_labels;
use crate::exporter::scope::{
    service_labels, Redactor, Scope, View, AGGREGATE_ERROR_RATE_HELP, BREAKER_LABELS, MAX_GAUGES,
    REDACTED_LABELS,
};

/// What a scope decided about each owner slot, and their redacted ids,
/// made once per render.
struct Owned<'a> {
    scope: &'a Scope,
    owners: &'a Owners,
    allowed: Vec<bool>,
    /// The redacted view's ids of the owners in scope.
    ids: Vec<Option<String>>,
}

impl<'a> Owned<'a> {
    fn new(scope: &'a Scope, owners: &'a Owners, redactor: Option<&Redactor>) -> Self {
        let allowed: Vec<bool> = owners
            .names
            .iter()
            .map(|n| n.as_deref().is_some_and(|n| scope.allows(n)))
            .collect();
        let ids = match redactor {
            Some(redactor) => owners
                .names
                .iter()
                .zip(&allowed)
                .map(|(n, ok)| n.as_deref().filter(|_| *ok).map(|n| redactor.id(n)))
                .collect(),
            None => Vec::new(),
        };
        Owned {
            scope,
            owners,
            allowed,
            ids,
        }
    }

    fn allows(&self, slot: u32) -> bool {
        self.allowed[slot as usize]
    }

    fn id(&self, slot: u32) -> &str {
        self.ids
            .get(slot as usize)
            .and_then(Option::as_deref)
            .unwrap_or("")
    }

    /// Every label of a series, the global ones first.
    fn pairs(&self, global: &str, family: &Family, series: &Series) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        if series.flags() & OWN_GLOBALS == 0 {
            pairs.extend(parse_labels(global));
        }
        if series.flags() & FACTORED != 0 {
            pairs.push((
                "service".to_owned(),
                self.owners.raw(series.owner).to_owned(),
            ));
        }
        pairs.extend(parse_labels(family.labels_of(series)));
        pairs
    }

    /// Whether a series is in the scope: every service it names is, and it
    /// names one.
    /// `names` are the family's [`service_labels`].
    fn in_scope(&self, global: &str, names: &[&str; 2], family: &Family, series: &Series) -> bool {
        if series.flags() & FACTORED != 0 {
            return self.allows(series.owner);
        }
        let mut named = false;
        for (label, value) in parse_labels(family.labels_of(series)) {
            if names.contains(&label.as_ref()) {
                named = true;
                if !self.scope.allows(&value) {
                    return false;
                }
            }
        }
        let _ = global;
        named
    }
}

/// The value of label `name` in a rendered label text (`a="x",b="y"`), if
/// it has it: one pass over the text, no allocation unless the value holds
/// escapes.
fn find_label<'t>(text: &'t str, name: &str) -> Option<Cow<'t, str>> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let eq = at + text[at..].find('=')?;
        let label = &text[at..eq];
        // The value: from after `="` to the first quote not escaped.
        let start = eq + 2;
        let mut end = start;
        let mut escaped = false;
        while end < bytes.len() {
            match bytes[end] {
                b'\\' if !escaped => escaped = true,
                b'"' if !escaped => break,
                _ => escaped = false,
            }
            end += 1;
        }
        if label == name {
            let raw = text.get(start..end)?;
            return Some(if raw.contains('\\') {
                Cow::Owned(
                    parse_labels(&format!("x=\"{raw}\""))
                        .pop()
                        .map(|(_, v)| v)
                        .unwrap_or_default(),
                )
            } else {
                Cow::Borrowed(raw)
            });
        }
        at = end + 2; // past `",`
    }
    None
}

fn value_of(family: &Family, i: usize) -> f64 {
    match &family.cells {
        Cells::Values(v) => {
            let bits = v[i].load(std::sync::atomic::Ordering::Relaxed);
            if family.kind == super::Kind::Counter {
                bits as f64
            } else {
                f64::from_bits(bits)
            }
        }
        Cells::Histograms(_) => 0.0,
    }
}

/// Writes one value as the unscoped render does: counters as integers.
fn write_number(out: &mut String, family: &Family, value: f64) {
    if family.kind == super::Kind::Counter && (0.0..9.0e15).contains(&value) && value.fract() == 0.0
    {
        write_u64(out, value as u64);
    } else {
        write_value(out, value);
    }
}

/// A histogram summed over series: per-bucket counts, sum, count.
struct Summed {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Store {
    /// Appends what `scope` may see of the breaker families (the only ones
    /// the store holds), in its view.
    pub(crate) fn render_scoped(&self, out: &mut String, scope: &Scope, redactor: &Redactor) {
        let state = self.prepared();
        let redacting = (scope.view() == View::Redacted).then_some(redactor);
        let owned = Owned::new(scope, &state.owners, redacting);
        let global = self.global.as_str();
        match scope.view() {
            View::Full => {
                for (name, family) in &state.families {
                    let names = service_labels(name);
                    let mut wrote = false;
                    for (i, series) in family.series.iter().enumerate() {
                        if !owned.in_scope(global, &names, family, series) {
                            continue;
                        }
                        if !wrote {
                            header(out, name, family);
                            wrote = true;
                        }
                        let labels = label_set(global, &state.owners, family, series);
                        write_series(out, name, family, i, &labels);
                    }
                    if wrote {
                        out.push('\n');
                    }
                }
            }
            View::Redacted => {
                for (name, family) in &state.families {
                    self.redacted(out, name, family, &owned, redactor);
                }
            }
            View::Aggregate => self.aggregate(out, &state.families, &owned),
        }
    }

    fn redacted(
        &self,
        out: &mut String,
        name: &str,
        family: &Family,
        owned: &Owned<'_>,
        redactor: &Redactor,
    ) {
        let global = self.global.as_str();
        let names = service_labels(name);
        // Collapsed failure kinds make series fall together.
        let collapses = family.has_kind;
        let mut merged: IndexMap<String, f64> = IndexMap::new();
        let mut wrote = false;
        for (i, series) in family.series.iter().enumerate() {
            if !owned.in_scope(global, &names, family, series) {
                continue;
            }
            let fast = series.flags() & (FACTORED | REDACT_SAFE) == FACTORED | REDACT_SAFE;
            if fast && !collapses {
                let labels = LabelSet {
                    global: "",
                    owner: Some(owned.id(series.owner)),
                    rest: family.labels_of(series),
                };
                if !wrote {
                    header(out, name, family);
                    wrote = true;
                }
                write_series(out, name, family, i, &labels);
                continue;
            }
            let pairs = owned.pairs(global, family, series);
            if pairs.iter().any(|(k, _)| k == "upstream") {
                continue; // dependency edges are hidden
            }
            let mut text = String::new();
            for (k, v) in pairs
                .iter()
                .filter(|(k, _)| REDACTED_LABELS.contains(&k.as_str()))
            {
                let v: Cow<'_, str> = match k.as_str() {
                    "service" if series.flags() & FACTORED != 0 => {
                        Cow::Borrowed(owned.id(series.owner))
                    }
                    "service" | "name" => Cow::Owned(redactor.id(v)),
                    "kind" if collapses => Cow::Borrowed("error"),
                    _ => Cow::Borrowed(v),
                };
                push_label(&mut text, k, &v);
            }
            text.pop();
            if collapses && matches!(family.cells, Cells::Values(_)) {
                *merged.entry(text).or_insert(0.0) += value_of(family, i);
                continue;
            }
            if !wrote {
                header(out, name, family);
                wrote = true;
            }
            let labels = LabelSet {
                global: "",
                owner: None,
                rest: &text,
            };
            write_series(out, name, family, i, &labels);
        }
        if !merged.is_empty() {
            if !wrote {
                header(out, name, family);
                wrote = true;
            }
            for (labels, value) in &merged {
                let labels = LabelSet {
                    global: "",
                    owner: None,
                    rest: labels,
                };
                line_start(out, name, "", &labels);
                out.push(' ');
                write_number(out, family, *value);
                out.push('\n');
            }
        }
        if wrote {
            out.push('\n');
        }
    }

    fn aggregate(
        &self,
        out: &mut String,
        families: &std::collections::BTreeMap<Box<str>, Family>,
        owned: &Owned<'_>,
    ) {
        let global = self.global.as_str();
        // The counters an error rate is the ratio of, per metric prefix.
        let mut failures: IndexMap<&str, f64> = IndexMap::new();
        let mut judged: IndexMap<&str, f64> = IndexMap::new();
        for (name, family) in families {
            let names = service_labels(name);
            let failures_of = name.strip_suffix("_failures_total");
            let requests_of = name.strip_suffix("_requests_total");
            if failures_of.is_none() && requests_of.is_none() {
                continue;
            }
            for (i, series) in family.series.iter().enumerate() {
                if !owned.in_scope(global, &names, family, series) {
                    continue;
                }
                if let Some(prefix) = failures_of {
                    *failures.entry(prefix).or_default() += value_of(family, i);
                }
                if let Some(prefix) = requests_of {
                    let status = find_label(family.labels_of(series), "status");
                    if matches!(status.as_deref(), Some("success" | "failure")) {
                        *judged.entry(prefix).or_default() += value_of(family, i);
                    }
                }
            }
        }
        for (name, family) in families {
            let names = service_labels(name);
            let gauge = family.kind == super::Kind::Gauge;
            if let Some(prefix) = name.strip_suffix("_error_rate").filter(|_| gauge) {
                let in_view = family
                    .series
                    .iter()
                    .any(|s| owned.in_scope(global, &names, family, s));
                if in_view {
                    let calls = judged.get(prefix).copied().unwrap_or(0.0);
                    let failed = failures.get(prefix).copied().unwrap_or(0.0);
                    let rate = if calls > 0.0 {
                        (failed / calls).min(1.0)
                    } else {
                        0.0
                    };
                    out.push_str("# HELP ");
                    out.push_str(name);
                    out.push(' ');
                    out.push_str(AGGREGATE_ERROR_RATE_HELP);
                    out.push_str("\n# TYPE ");
                    out.push_str(name);
                    out.push_str(" gauge\n");
                    out.push_str(name);
                    out.push(' ');
                    write_value(out, rate);
                    out.push_str("\n\n");
                }
                continue;
            }
            let max = gauge && MAX_GAUGES.iter().any(|suffix| name.ends_with(suffix));
            // Each group: its labels without `service`, and whether the
            // store's global labels go before them.
            let mut values: IndexMap<(bool, Cow<'_, str>), f64> = IndexMap::new();
            let mut histograms: IndexMap<(bool, Cow<'_, str>), Summed> = IndexMap::new();
            let stride = family.stride();
            for (i, series) in family.series.iter().enumerate() {
                if !owned.in_scope(global, &names, family, series) {
                    continue;
                }
                let key: (bool, Cow<'_, str>) = if series.flags() & FACTORED != 0 {
                    (true, Cow::Borrowed(family.labels_of(series)))
                } else {
                    let pairs = parse_labels(family.labels_of(series));
                    if pairs
                        .iter()
                        .any(|(k, _)| k == "upstream" || k == "quantile")
                    {
                        continue; // dependency edges name services
                    }
                    let mut text = String::new();
                    for (k, v) in pairs
                        .iter()
                        .filter(|(k, _)| !BREAKER_LABELS.contains(&k.as_str()))
                    {
                        push_label(&mut text, k, v);
                    }
                    text.pop();
                    (series.flags() & OWN_GLOBALS == 0, Cow::Owned(text))
                };
                match &family.cells {
                    Cells::Values(_) => {
                        let value = value_of(family, i);
                        values
                            .entry(key)
                            .and_modify(|total| {
                                *total = if max {
                                    total.max(value)
                                } else {
                                    *total + value
                                }
                            })
                            .or_insert(value);
                    }
                    Cells::Histograms(hists) => {
                        let counts = &family.counts[i * stride..(i + 1) * stride];
                        let dist = &hists[i].dist;
                        let summed = histograms.entry(key).or_insert_with(|| Summed {
                            counts: vec![0; stride],
                            sum: 0.0,
                            count: 0,
                        });
                        for (total, c) in summed.counts.iter_mut().zip(counts) {
                            *total += c;
                        }
                        summed.sum += dist.sum;
                        summed.count += dist.count;
                    }
                }
            }
            if values.is_empty() && histograms.is_empty() {
                continue;
            }
            header(out, name, family);
            let set = |(with_global, rest): &(bool, Cow<'_, str>)| -> (String, String) {
                (
                    (if *with_global { global } else { "" }).to_owned(),
                    rest.to_string(),
                )
            };
            for (key, value) in &values {
                let (g, rest) = set(key);
                let labels = LabelSet {
                    global: &g,
                    owner: None,
                    rest: &rest,
                };
                line_start(out, name, "", &labels);
                out.push(' ');
                write_number(out, family, *value);
                out.push('\n');
            }
            for (key, summed) in &histograms {
                let (g, rest) = set(key);
                let labels = LabelSet {
                    global: &g,
                    owner: None,
                    rest: &rest,
                };
                write_histogram(
                    out,
                    name,
                    family,
                    &summed.counts,
                    summed.sum,
                    summed.count,
                    &labels,
                );
            }
            out.push('\n');
        }
    }
}

/// Writes series `i` of `family` with `labels`.
fn write_series(out: &mut String, name: &str, family: &Family, i: usize, labels: &LabelSet<'_>) {
    match &family.cells {
        Cells::Values(v) => {
            let value = v[i].load(std::sync::atomic::Ordering::Relaxed);
            line_start(out, name, "", labels);
            out.push(' ');
            if family.kind == super::Kind::Counter {
                write_u64(out, value);
            } else {
                write_value(out, f64::from_bits(value));
            }
            out.push('\n');
        }
        Cells::Histograms(hists) => {
            let stride = family.stride();
            let counts = &family.counts[i * stride..(i + 1) * stride];
            let dist = &hists[i].dist;
            write_histogram(out, name, family, counts, dist.sum, dist.count, labels);
        }
    }
}

fn write_histogram(
    out: &mut String,
    name: &str,
    family: &Family,
    counts: &[u64],
    sum: f64,
    count: u64,
    labels: &LabelSet<'_>,
) {
    for ((_, c), le) in cumulative(&family.bounds, counts).zip(family.le.iter()) {
        super::bucket_line(out, name, labels, le, c);
    }
    super::bucket_line(out, name, labels, "+Inf", count);
    line_start(out, name, "_sum", labels);
    out.push(' ');
    write_value(out, sum);
    out.push('\n');
    line_start(out, name, "_count", labels);
    out.push(' ');
    write_u64(out, count);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::time::Duration;

    use metrics::{Key, Label};
    use proptest::prelude::*;

    use super::super::{Config, Store};
    use crate::exporter::exposition;
    use crate::exporter::scope::{self, Redactor, Scope, View};
    use crate::Clock;

    fn key(name: &str, labels: &[(&str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new((*k).to_owned(), (*v).to_owned()))
            .collect();
        Key::from_parts(name.to_owned(), labels)
    }

    /// A store with what breakers of `services` report, dependency edges
    /// between them, a series overriding a global label, and one with no
    /// service.
    fn populated(services: &[String], global: bool) -> Store {
        let store = Store::new(Config {
            expiry: Duration::from_secs(300),
            clock: Clock::manual().0,
            native: None,
            duration_buckets: Arc::from([0.1, 1.0]),
            recovery_buckets: Arc::from([10.0]),
            global_labels: if global {
                vec![("cluster".to_owned(), "eu\"1".to_owned())]
            } else {
                Vec::new()
            },
        });
        let cb = |s: &str| format!("circuit_breaker_{s}");
        store.describe(
            cb("requests_total").into(),
            super::super::Kind::Counter,
            "Requests.".into(),
        );
        for (i, s) in services.iter().enumerate() {
            let s = s.as_str();
            let n = i as u64 + 1;
            for (status, v) in [("success", 10 * n), ("failure", n), ("rejected", 2)] {
                store
                    .counter(&key(
                        &cb("requests_total"),
                        &[("service", s), ("status", status)],
                    ))
                    .increment(v);
            }
            for kind in ["timeout", "http_5xx"] {
                store
                    .counter(&key(
                        &cb("failures_total"),
                        &[("service", s), ("kind", kind)],
                    ))
                    .increment(n);
            }
            for state in ["closed", "open"] {
                let on = if (state == "open") == (i % 2 == 0) {
                    1.0
                } else {
                    0.0
                };
                store
                    .gauge(&key(&cb("state"), &[("service", s), ("state", state)]))
                    .set(on);
            }
            store
                .gauge(&key(&cb("error_rate"), &[("service", s)]))
                .set(0.1 * n as f64);
            store
                .gauge(&key(&cb("trip_risk"), &[("service", s)]))
                .set(0.05 * n as f64);
            let h = store.histogram(&key(
                &cb("request_duration_seconds"),
                &[("service", s), ("status", "success")],
            ));
            h.record(0.05 * n as f64);
            h.record(2.0);
            store
                .counter(&key(
                    &cb("transitions_total"),
                    &[
                        ("service", s),
                        ("from", "closed"),
                        ("to", "open"),
                        ("reason", "failure_rate"),
                    ],
                ))
                .increment(n);
            if let Some(next) = services.get(i + 1) {
                store
                    .gauge(&key(
                        &cb("dependency"),
                        &[("service", s), ("upstream", next)],
                    ))
                    .set(1.0);
            }
        }
        // The resilience4j naming: `name` for `service`, `kind` values that
        // are not failure kinds.
        let _ = crate::metrics::Names::new(
            crate::metrics::resilience4j::DEFAULT_PREFIX,
            crate::MetricsNaming::Resilience4j,
        );
        let r4j = |s: &str| format!("resilience4j_circuitbreaker_{s}");
        for (i, s) in services.iter().enumerate() {
            let s = s.as_str();
            let n = i as u64 + 1;
            for state in ["closed", "open"] {
                let on = if (state == "open") == (i % 2 == 0) {
                    1.0
                } else {
                    0.0
                };
                store
                    .gauge(&key(&r4j("state"), &[("name", s), ("state", state)]))
                    .set(on);
            }
            for (kind, v) in [("successful", 10 * n), ("failed", n)] {
                let h =
                    store.histogram(&key(&r4j("calls_seconds"), &[("name", s), ("kind", kind)]));
                for _ in 0..v {
                    h.record(0.05);
                }
                store
                    .gauge(&key(&r4j("buffered_calls"), &[("name", s), ("kind", kind)]))
                    .set(v as f64);
            }
            store
                .counter(&key(
                    &r4j("not_permitted_calls_total"),
                    &[("name", s), ("kind", "not_permitted")],
                ))
                .increment(n);
            store
                .gauge(&key(&r4j("failure_rate"), &[("name", s)]))
                .set(if i == 0 { -1.0 } else { 10.0 * n as f64 });
            for kind in ["timeout", "http_5xx"] {
                store
                    .counter(&key(&r4j("failures_total"), &[("name", s), ("kind", kind)]))
                    .increment(n);
            }
        }
        if let Some(first) = services.first() {
            // Overrides the global label: its own text keeps it.
            store
                .counter(&key(
                    &cb("requests_total"),
                    &[
                        ("service", first),
                        ("status", "ignored"),
                        ("cluster", "mine"),
                    ],
                ))
                .increment(4);
        }
        store
            .counter(&key(&cb("requests_total"), &[("status", "x")]))
            .increment(1);
        store
    }

    /// A family's HELP and TYPE lines and its samples.
    type Normal = (Option<String>, Option<String>, BTreeSet<String>);

    /// Families as sets of samples, to compare expositions whatever their
    /// order.
    fn normalized(text: &str) -> BTreeMap<String, Normal> {
        let mut out = BTreeMap::new();
        for family in exposition::parse(text).expect("valid exposition") {
            let samples: BTreeSet<String> = family
                .samples
                .iter()
                .map(|s| {
                    let mut labels: Vec<String> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    format!("{} {:?} {}", s.name, labels, s.value)
                })
                .collect();
            if samples.is_empty() {
                continue;
            }
            let entry = out
                .entry(family.name.to_owned())
                .or_insert((None, None, BTreeSet::new()));
            entry.0 = entry.0.take().or(family.help.map(str::to_owned));
            entry.1 = entry.1.take().or(family.type_line.map(str::to_owned));
            entry.2.extend(samples);
        }
        out
    }

    fn check(store: &Store, scope: &Scope) {
        if scope.is_everything() {
            return; // served as rendered, not through a view
        }
        let redactor = Redactor::with_secret(b"a-test-key-of-16-bytes");
        let mut text = String::new();
        store.render(&mut text);
        let expected = scope::render(&text, scope, &redactor).unwrap();
        let mut got = String::new();
        store.render_scoped(&mut got, scope, &redactor);
        let (got_n, expected_n) = (normalized(&got), normalized(&expected));
        if got_n != expected_n {
            for (family, e) in &expected_n {
                match got_n.get(family) {
                    None => panic!("{scope:?}: {family} missing"),
                    Some(g) if g != e => {
                        panic!("{scope:?}: {family} differs\nnative: {g:?}\ntext:   {e:?}")
                    }
                    _ => {}
                }
            }
            for family in got_n.keys() {
                assert!(
                    expected_n.contains_key(family),
                    "{scope:?}: extra {family}\n{got}"
                );
            }
        }
    }

    #[test]
    fn labels_are_found_in_rendered_text() {
        let text = r#"a="x",kind="q\"k",status="success""#;
        assert_eq!(super::find_label(text, "a").as_deref(), Some("x"));
        assert_eq!(super::find_label(text, "kind").as_deref(), Some("q\"k"));
        assert_eq!(
            super::find_label(text, "status").as_deref(),
            Some("success")
        );
        assert_eq!(super::find_label(text, "stat"), None);
        assert_eq!(super::find_label("", "a"), None);
    }

    #[test]
    fn every_view_matches_the_text_filter() {
        let services: Vec<String> = ["orders", "payments-eu", "payments-us", "a\\b", "ledger"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for global in [false, true] {
            let store = populated(&services, global);
            for patterns in [
                vec!["*"],
                vec!["payments-*"],
                vec!["orders", "ledger"],
                vec!["none"],
            ] {
                for view in [View::Full, View::Aggregate, View::Redacted] {
                    let scope = Scope::services(patterns.clone()).with_view(view);
                    check(&store, &scope);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn views_match_for_any_names(
            names in proptest::collection::btree_set("[a-c_.:/-]{1,6}", 1..6),
            pattern in "[a-c*]{1,3}",
            global in any::<bool>(),
        ) {
            let services: Vec<String> = names.into_iter().collect();
            let store = populated(&services, global);
            for view in [View::Full, View::Aggregate, View::Redacted] {
                check(&store, &Scope::services([pattern.clone()]).with_view(view));
            }
        }
    }
}
