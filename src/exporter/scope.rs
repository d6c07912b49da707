//! Scopes: which services a credential may see, and in which view (see
//! [`Scope`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hasher;
use std::str::FromStr;

use super::exposition::{self, Family, Kind, Sample};

/// What a credential may see: services and a view.
///
/// A scope is a list of service patterns (exact names, or globs where `*`
/// matches any run of characters, such as `payments-*`) and a view:
///
/// - **full**: every series of those services, as rendered.
/// - **aggregate**: mesh totals over those services, with the `service`
///   label (`name` under the [resilience4j naming](crate::metrics::resilience4j))
///   removed. Counters and histogram buckets, sums and counts are
///   summed; the one-hot `_state` gauge becomes one gauge per state counting
///   the breakers in it; `_error_rate` becomes the ratio of the summed
///   counters, `_failures_total` over `_requests_total{status="success"|"failure"}`
///   (since the process started, not over a window); `_slow_call_rate`,
///   `_trip_risk` and the resilience4j naming's `_failure_rate` become the
///   largest value (the worst service); summary
///   quantiles (from a recorder without histogram buckets) are left out,
///   since they do not add up. The dependency edges are left out.
/// - **redacted**: every series of those services, with each `service`
///   (or `name`) value replaced by a stable id, `svc-` and 12 hex digits of
///   a keyed hash, failure kinds (the `kind` of `_failures_total`) collapsed
///   to `error` (their counts summed), every label other than `service`,
///   `name`, `status`, `state`, `kind`, `from`, `to`, `reason` and `le`
///   dropped (a global label could name something), and the dependency
///   edges left out.
///
/// A series is in a scope when every service it names (its `service` or
/// `name` label, and `upstream` on dependency edges) matches a pattern of
/// the scope. A
/// scope that does not see everything (all services, `*`, in the full view)
/// sees only the metric families breakers report (with any prefix
/// configured in the process): other metrics in the same recorder, and lines
/// that do not parse, are left out, since their labels may name services in
/// ways a scope cannot tell.
///
/// ```
/// use tower_breaker::exporter::{Scope, View};
///
/// let scope: Scope = "services=orders,payments-*;view=aggregate".parse().unwrap();
/// assert!(scope.allows("payments-eu"));
/// assert!(!scope.allows("ledger"));
/// assert_eq!(scope.view(), View::Aggregate);
/// assert!(Scope::all().allows("anything"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    patterns: Vec<Pattern>,
    view: View,
}

/// How a scope shows the series it may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum View {
    /// Every series, as rendered.
    Full,
    /// Mesh totals, without the `service` label.
    Aggregate,
    /// Service names replaced by stable ids, failure kinds collapsed.
    Redacted,
}

impl View {
    /// The view's name in a scope string: `full`, `aggregate`, `redacted`.
    pub fn as_str(&self) -> &'static str {
        match self {
            View::Full => "full",
            View::Aggregate => "aggregate",
            View::Redacted => "redacted",
        }
    }
}

/// A service name pattern: `*` matches any run of characters.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern(String);

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// Glob matching with `*` only, without backtracking blow-up: the last
/// star is the only one ever revisited.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Why a scope string does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeError {
    reason: String,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid scope: {}", self.reason)
    }
}

impl std::error::Error for ScopeError {}

fn scope_error(reason: impl Into<String>) -> ScopeError {
    ScopeError {
        reason: reason.into(),
    }
}

impl Scope {
    /// Every service, full view: what a plain bearer token sees.
    pub fn all() -> Self {
        Scope {
            patterns: vec![Pattern("*".to_owned())],
            view: View::Full,
        }
    }

    /// The services matching `patterns` (exact names, or globs with `*`),
    /// full view.
    pub fn services<I>(patterns: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Scope {
            patterns: patterns.into_iter().map(|p| Pattern(p.into())).collect(),
            view: View::Full,
        }
    }

    /// The same services, seen in `view`.
    pub fn with_view(mut self, view: View) -> Self {
        self.view = view;
        self
    }

    /// The view.
    pub fn view(&self) -> View {
        self.view
    }

    /// Whether the scope may see service `name`.
    pub fn allows(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    /// Whether the scope sees everything as rendered: all services, full view.
    pub fn is_everything(&self) -> bool {
        self.view == View::Full && self.patterns.iter().any(|p| p.0 == "*")
    }

    /// Renders `exposition` (a recorder's text, such as
    /// `PrometheusHandle::render()`) as this scope may see it, for an HTTP
    /// server of your own; the redacted view's ids are keyed with
    /// `redaction_key`.
    ///
    /// ```
    /// use tower_breaker::exporter::{Scope, View};
    ///
    /// let text = "# TYPE circuit_breaker_state gauge\n\
    ///             circuit_breaker_state{service=\"orders\",state=\"open\"} 1\n\
    ///             circuit_breaker_state{service=\"ledger\",state=\"open\"} 0\n";
    /// let scope = Scope::services(["orders"]);
    /// assert_eq!(
    ///     scope.apply(text, b"a-key-of-16-bytes").unwrap(),
    ///     "# TYPE circuit_breaker_state gauge\n\
    ///      circuit_breaker_state{service=\"orders\",state=\"open\"} 1\n"
    /// );
    /// let totals = Scope::all().with_view(View::Aggregate).apply(text, b"a-key-of-16-bytes").unwrap();
    /// assert!(totals.contains("circuit_breaker_state{state=\"open\"} 1"));
    /// ```
    ///
    /// # Errors
    ///
    /// Fails if `exposition` is not valid Prometheus text.
    pub fn apply(&self, exposition: &str, redaction_key: &[u8]) -> Result<String, ScopeError> {
        render(exposition, self, &Redactor::with_secret(redaction_key))
            .map_err(|e| scope_error(format!("the exposition does not parse: {e}")))
    }

    /// Checks the patterns: at least one, each non-empty, of the characters
    /// a `service` label keeps (letters, digits, `_-.:/`) and `*`.
    pub(crate) fn validate(&self) -> Result<(), ScopeError> {
        if self.patterns.is_empty() {
            return Err(scope_error("no services"));
        }
        for Pattern(p) in &self.patterns {
            let ok = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:/*".contains(&b));
            if !ok {
                return Err(scope_error(format!(
                    "service pattern {p:?} may hold only letters, digits, '_-.:/' and '*'"
                )));
            }
        }
        Ok(())
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    /// Parses `services=NAME[,NAME...][;view=full|aggregate|redacted]`
    /// (view `full` by default), e.g. `services=orders,payments-*;view=aggregate`.
    fn from_str(s: &str) -> Result<Self, ScopeError> {
        let mut services = None;
        let mut view = None;
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| scope_error(format!("{part:?} is not key=value")))?;
            match key.trim() {
                "services" if services.is_some() => {
                    return Err(scope_error("services= is given twice"))
                }
                "view" if view.is_some() => return Err(scope_error("view= is given twice")),
                "services" => {
                    let list: Vec<String> = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    services = Some(list);
                }
                "view" => {
                    view = Some(match value.trim() {
                        "full" => View::Full,
                        "aggregate" => View::Aggregate,
                        "redacted" => View::Redacted,
                        other => {
                            return Err(scope_error(format!(
                                "view {other:?} is not full, aggregate or redacted"
                            )))
                        }
                    })
                }
                other => return Err(scope_error(format!("unknown key {other:?}"))),
            }
        }
        let services = services.ok_or_else(|| scope_error("services= is missing"))?;
        let scope = Scope::services(services).with_view(view.unwrap_or(View::Full));
        scope.validate()?;
        Ok(scope)
    }
}

/// Turns service names into stable ids with a keyed hash.
#[derive(Clone)]
pub(crate) struct Redactor {
    keys: (u64, u64),
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor(<key>)")
    }
}

impl Redactor {
    /// A redactor keyed by `secret`: the same secret gives the same ids in
    /// every process.
    pub(crate) fn with_secret(secret: &[u8]) -> Self {
        let half = |salt: u64| {
            let mut h = siphasher(salt, !salt);
            h.write(secret);
            h.finish()
        };
        Redactor {
            keys: (half(0x7462_7265_6461_6374), half(0x6b65_7973_6964_3031)),
        }
    }

    /// A redactor with a key drawn at random: ids are stable for this
    /// process only.
    pub(crate) fn random() -> Self {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        Redactor {
            keys: (state.hash_one(1u8), state.hash_one(2u8)),
        }
    }

    /// The id of service `name`: `svc-` and 12 hex digits.
    pub(crate) fn id(&self, name: &str) -> String {
        let mut h = siphasher(self.keys.0, self.keys.1);
        h.write(name.as_bytes());
        format!("svc-{:012x}", h.finish() >> 16)
    }
}

/// SipHash-2-4 with the given keys (std's, deprecated only in favour of
/// unstable variants; its output is fixed by its specification).
#[allow(deprecated)]
fn siphasher(k0: u64, k1: u64) -> std::hash::SipHasher {
    std::hash::SipHasher::new_with_keys(k0, k1)
}

/// The description of `_error_rate` in the aggregate view.
pub(crate) const AGGREGATE_ERROR_RATE_HELP: &str =
    "Failed over judged requests, summed over the services since start (aggregate view).";

/// The labels that name services in a breaker family's series: the
/// breaker's (`service`, or `name` under the resilience4j naming) and the
/// upstream of a dependency edge. Any other `service` or `name` label (a
/// global label, say) names nothing.
pub(crate) fn service_labels(family: &str) -> [&'static str; 2] {
    let naming = crate::metrics::family_naming(family).unwrap_or_default();
    [naming.breaker_label(), "upstream"]
}

/// The labels that name the breaker a series is of.
pub(crate) const BREAKER_LABELS: [&str; 2] = ["service", "name"];

/// The gauges the aggregate view shows the largest value of (the worst
/// service).
pub(crate) const MAX_GAUGES: [&str; 3] = ["_slow_call_rate", "_trip_risk", "_failure_rate"];

/// The labels the redacted view keeps: those of the breaker families with
/// values from fixed sets, and the bucket bound. Any other label (a global
/// label, say) could name something, and is dropped.
pub(crate) const REDACTED_LABELS: [&str; 9] = [
    "service", "name", "status", "state", "kind", "from", "to", "reason", "le",
];

/// Whether the redacted view collapses the `kind` label of family `name`:
/// the failure kinds of `_failures_total`, which may be the user's own
/// words. The `kind` of the resilience4j families (`successful`, ...) is
/// kept.
pub(crate) fn collapses_kind(name: &str) -> bool {
    name.ends_with("_failures_total")
}

/// Whether `sample` is in `scope`.
/// Whether `sample` is in `scope`; `names` are its family's
/// [`service_labels`].
fn in_scope(scope: &Scope, names: &[&str; 2], sample: &Sample<'_>) -> bool {
    let mut names_a_service = false;
    for (label, value) in &sample.labels {
        if names.contains(label) {
            names_a_service = true;
            if !scope.allows(value) {
                return false;
            }
        }
    }
    names_a_service || scope.is_everything()
}

/// Renders `text` (the recorder's exposition) as `scope` may see it.
pub(crate) fn render(
    text: &str,
    scope: &Scope,
    redactor: &Redactor,
) -> Result<String, exposition::ParseError> {
    if scope.is_everything() {
        return Ok(text.to_owned());
    }
    // Lines that do not parse are left out (nothing can tell whose they
    // are); so are families breakers do not report: their labels may name
    // services in ways this view cannot know.
    let families: Vec<Family<'_>> = exposition::parse_lenient(text)
        .into_iter()
        .filter(|f| crate::metrics::is_breaker_family(f.name))
        .collect();
    let mut out = String::with_capacity(text.len() / 2);
    match scope.view {
        View::Full => {
            for family in &families {
                let names = service_labels(family.name);
                let kept: Vec<&Sample<'_>> = family
                    .samples
                    .iter()
                    .filter(|s| in_scope(scope, &names, s))
                    .collect();
                if kept.is_empty() {
                    continue;
                }
                metadata(&mut out, family);
                for sample in kept {
                    out.push_str(sample.raw);
                    out.push('\n');
                }
            }
        }
        View::Redacted => {
            // Each service is hashed once per render.
            let mut ids: HashMap<&str, String> = HashMap::new();
            for family in &families {
                let names = service_labels(family.name);
                // Only collapsed failure kinds make samples fall together.
                let collapses = collapses_kind(family.name)
                    && family.samples.iter().any(|s| s.label("kind").is_some());
                let mut merged = Merged::default();
                let mut wrote_metadata = false;
                for sample in family.samples.iter().filter(|s| in_scope(scope, &names, s)) {
                    if sample.label("upstream").is_some() {
                        continue; // dependency edges are hidden
                    }
                    let kept = sample
                        .labels
                        .iter()
                        .filter(|(k, _)| REDACTED_LABELS.contains(k));
                    let labels = kept.map(|(k, v)| {
                        let value: Cow<'_, str> = match *k {
                            "service" | "name" => Cow::Owned(
                                ids.entry(v.as_ref())
                                    .or_insert_with(|| redactor.id(v))
                                    .clone(),
                            ),
                            "kind" if collapses => Cow::Borrowed("error"),
                            _ => Cow::Borrowed(v.as_ref()),
                        };
                        (*k, value)
                    });
                    if collapses {
                        merged.add(sample.name, labels, sample.value, Combine::Sum);
                    } else {
                        if !wrote_metadata {
                            metadata(&mut out, family);
                            wrote_metadata = true;
                        }
                        let labels: Vec<(&str, Cow<'_, str>)> = labels.collect();
                        let labels = labels.iter().map(|(k, v)| (*k, v.as_ref()));
                        exposition::write_sample(&mut out, sample.name, labels, sample.value);
                    }
                }
                merged.write(&mut out, family);
            }
        }
        View::Aggregate => aggregate(&families, scope, &mut out),
    }
    Ok(out)
}

/// How samples that fall together are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Combine {
    Sum,
    Max,
}

/// A sample's name and labels.
type SeriesKey<'a> = (&'a str, Vec<(&'a str, Cow<'a, str>)>);

/// Samples keyed by name and labels, combined as they come, in first-seen
/// order.
#[derive(Default)]
struct Merged<'a> {
    order: Vec<SeriesKey<'a>>,
    values: BTreeMap<SeriesKey<'a>, f64>,
}

impl<'a> Merged<'a> {
    fn add(
        &mut self,
        name: &'a str,
        labels: impl Iterator<Item = (&'a str, Cow<'a, str>)>,
        value: f64,
        combine: Combine,
    ) {
        let key = (name, labels.collect::<Vec<_>>());
        match self.values.get_mut(&key) {
            Some(total) => {
                *total = match combine {
                    Combine::Sum => *total + value,
                    Combine::Max => total.max(value),
                }
            }
            None => {
                self.order.push(key.clone());
                self.values.insert(key, value);
            }
        }
    }

    fn write(&self, out: &mut String, family: &Family<'_>) {
        if self.order.is_empty() {
            return;
        }
        metadata(out, family);
        for key in &self.order {
            let value = self.values[key];
            let labels = key.1.iter().map(|(k, v)| (*k, v.as_ref()));
            exposition::write_sample(out, key.0, labels, value);
        }
    }
}

fn metadata(out: &mut String, family: &Family<'_>) {
    for line in [family.help, family.type_line].into_iter().flatten() {
        out.push_str(line);
        out.push('\n');
    }
}

fn aggregate(families: &[Family<'_>], scope: &Scope, out: &mut String) {
    // The counters an error rate is the ratio of, per metric prefix.
    let mut failures: BTreeMap<&str, f64> = BTreeMap::new();
    let mut judged: BTreeMap<&str, f64> = BTreeMap::new();
    for family in families {
        let names = service_labels(family.name);
        for sample in family.samples.iter().filter(|s| in_scope(scope, &names, s)) {
            if let Some(prefix) = sample.name.strip_suffix("_failures_total") {
                *failures.entry(prefix).or_default() += sample.value;
            }
            if let Some(prefix) = sample.name.strip_suffix("_requests_total") {
                if matches!(sample.label("status"), Some("success" | "failure")) {
                    *judged.entry(prefix).or_default() += sample.value;
                }
            }
        }
    }
    for family in families {
        let names = service_labels(family.name);
        if family.kind == Kind::Gauge {
            if let Some(prefix) = family.name.strip_suffix("_error_rate") {
                let in_view = family.samples.iter().any(|s| in_scope(scope, &names, s));
                if in_view {
                    let calls = judged.get(prefix).copied().unwrap_or(0.0);
                    let failed = failures.get(prefix).copied().unwrap_or(0.0);
                    let rate = if calls > 0.0 {
                        (failed / calls).min(1.0)
                    } else {
                        0.0
                    };
                    out.push_str("# HELP ");
                    out.push_str(family.name);
                    out.push(' ');
                    out.push_str(AGGREGATE_ERROR_RATE_HELP);
                    out.push('\n');
                    if let Some(line) = family.type_line {
                        out.push_str(line);
                        out.push('\n');
                    }
                    exposition::write_sample(out, family.name, [], rate);
                }
                continue;
            }
        }
        let combine = if family.kind == Kind::Gauge
            && MAX_GAUGES
                .iter()
                .any(|suffix| family.name.ends_with(suffix))
        {
            Combine::Max
        } else {
            Combine::Sum
        };
        let mut merged = Merged::default();
        for sample in family.samples.iter().filter(|s| in_scope(scope, &names, s)) {
            if sample.label("upstream").is_some() || sample.label("quantile").is_some() {
                // Dependency edges name services; quantiles do not add up.
                continue;
            }
            let labels = sample
                .labels
                .iter()
                .filter(|(k, _)| !BREAKER_LABELS.contains(k))
                .map(|(k, v)| (*k, Cow::Borrowed(v.as_ref())));
            merged.add(sample.name, labels, sample.value, combine);
        }
        merged.write(out, family);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference(pattern in pattern(), name in "[a-c_.:/-]{0,8}") {
            prop_assert_eq!(glob(pattern.as_bytes(), name.as_bytes()), reference_glob(pattern.as_bytes(), name.as_bytes()));
        }
    }

    #[test]
    fn a_name_label_beside_service_does_not_name_the_breaker() {
        // A global label `name` on a native series.
        let text = "# TYPE circuit_breaker_state gauge\n\
                    circuit_breaker_state{service=\"orders\",state=\"closed\",name=\"pod-1\"} 1\n\
                    circuit_breaker_state{service=\"payments\",state=\"closed\",name=\"pod-1\"} 1\n";
        let scope = Scope::services(["orders"]);
        let out = render(text, &scope, &Redactor::with_secret(b"k")).unwrap();
        assert!(out.contains("service=\"orders\""), "{out}");
        assert!(!out.contains("payments"), "{out}");
    }

    #[test]
    fn globs_match_as_expected() {
        for (pattern, name, expected) in [
            ("orders", "orders", true),
            ("orders", "orders-2", false),
            ("payments-*", "payments-eu", true),
            ("payments-*", "payments-", true),
            ("payments-*", "payment", false),
            ("*", "", true),
            ("*-eu", "a-b-eu", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "x", true),
        ] {
            assert_eq!(
                glob(pattern.as_bytes(), name.as_bytes()),
                expected,
                "{pattern} {name}"
            );
        }
        // No exponential blow-up on hostile patterns.
        let name = "a".repeat(64);
        assert!(!glob(
            format!("{}b", "*a".repeat(30)).as_bytes(),
            name.as_bytes()
        ));
    }

    #[test]
    fn scope_strings_parse_and_name_what_is_wrong() {
        let scope: Scope = "services=orders, payments-*;view=redacted".parse().unwrap();
        assert_eq!(scope.view(), View::Redacted);
        assert!(scope.allows("orders") && scope.allows("payments-x") && !scope.allows("x"));
        assert_eq!("services=a".parse::<Scope>().unwrap().view(), View::Full);
        for (bad, says) in [
            ("view=full", "services"),
            ("services=", "no services"),
            ("services=a;view=secret", "view"),
            ("services=a b", "pattern"),
            ("services=a;colour=red", "unknown key"),
            ("services", "key=value"),
        ] {
            let err = bad.parse::<Scope>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    use proptest::prelude::*;

    /// An exposition with counters, a one-hot state gauge, a histogram and
    /// dependency edges for `services` (default prefix), plus an unrelated
    /// series and an application series with a `service` label, which no
    /// scope short of everything sees.
    fn exposition_of(services: &[String]) -> String {
        let mut out = String::from("# TYPE app_total counter\napp_total 1\n");
        out.push_str("# TYPE http_calls_total counter\n");
        for s in services {
            exposition::write_sample(
                &mut out,
                "http_calls_total",
                [("service", s.as_str()), ("target", "elsewhere")],
                1.0,
            );
        }
        let cb = |s: &str| format!("circuit_breaker_{s}");
        out.push_str("# HELP circuit_breaker_requests_total Requests.\n");
        out.push_str("# TYPE circuit_breaker_requests_total counter\n");
        for (i, s) in services.iter().enumerate() {
            for status in ["success", "failure"] {
                let labels = [("service", s.as_str()), ("status", status)];
                exposition::write_sample(&mut out, &cb("requests_total"), labels, i as f64);
            }
        }
        out.push_str("# TYPE circuit_breaker_failures_total counter\n");
        for s in services {
            for kind in ["timeout", "http_5xx"] {
                let labels = [("service", s.as_str()), ("kind", kind)];
                exposition::write_sample(&mut out, &cb("failures_total"), labels, 1.0);
            }
        }
        out.push_str("# TYPE circuit_breaker_state gauge\n");
        for s in services {
            for (state, v) in [("closed", 1.0), ("open", 0.0)] {
                let labels = [("service", s.as_str()), ("state", state)];
                exposition::write_sample(&mut out, &cb("state"), labels, v);
            }
        }
        out.push_str("# TYPE circuit_breaker_error_rate gauge\n");
        for s in services {
            exposition::write_sample(&mut out, &cb("error_rate"), [("service", s.as_str())], 0.5);
        }
        out.push_str("# TYPE circuit_breaker_request_duration_seconds histogram\n");
        let h = cb("request_duration_seconds");
        for s in services {
            for (le, v) in [("0.1", 1.0), ("+Inf", 2.0)] {
                let labels = [("service", s.as_str()), ("le", le)];
                exposition::write_sample(&mut out, &format!("{h}_bucket"), labels, v);
            }
            exposition::write_sample(
                &mut out,
                &format!("{h}_sum"),
                [("service", s.as_str())],
                0.3,
            );
            exposition::write_sample(
                &mut out,
                &format!("{h}_count"),
                [("service", s.as_str())],
                2.0,
            );
        }
        out.push_str("# TYPE circuit_breaker_dependency gauge\n");
        for pair in services.windows(2) {
            let labels = [
                ("service", pair[0].as_str()),
                ("upstream", pair[1].as_str()),
            ];
            exposition::write_sample(&mut out, &cb("dependency"), labels, 1.0);
        }
        out
    }

    /// A reference glob match, written differently from [`glob`]: plain
    /// recursion over the pattern (exponential, fine for short strings).
    fn reference_glob(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len()).any(|i| reference_glob(rest, &name[i..])),
            Some((c, rest)) => name.first() == Some(c) && reference_glob(rest, &name[1..]),
        }
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-c][a-c_.:/-]{0,5}"
    }

    fn pattern() -> impl Strategy<Value = String> {
        prop_oneof![name(), "[a-c]{0,2}\\*[a-c_.:/-]{0,2}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

        /// No view ever shows a series outside the scope, and the full view
        /// shows every series inside it.
        #[test]
        fn no_view_leaks_a_series_outside_its_scope(
            services in proptest::collection::btree_set(name(), 1..8),
            patterns in proptest::collection::vec(pattern(), 1..4),
        ) {
            let services: Vec<String> = services.into_iter().collect();
            let text = exposition_of(&services);
            let redactor = Redactor::with_secret(b"k");
            let scope = Scope::services(patterns.clone());
            // Full: exactly the series whose every service is in scope.
            let full = render(&text, &scope, &redactor).unwrap();
            let input = exposition::parse(&text).unwrap();
            let output = exposition::parse(&full).unwrap();
            // The reference: a series is kept when it belongs to a breaker
            // family and every service it names matches some pattern, by a
            // glob of its own; everything is kept for an everything scope.
            let allowed = |n: &str| patterns.iter().any(|p| reference_glob(p.as_bytes(), n.as_bytes()));
            let everything = patterns.iter().any(|p| p == "*");
            let keep = |s: &Sample<'_>| {
                let named: Vec<&str> = ["service", "upstream"].iter().filter_map(|l| s.label(l)).collect();
                everything
                    || (s.name.starts_with("circuit_breaker_")
                        && !named.is_empty()
                        && named.iter().all(|n| allowed(n)))
            };
            let want: Vec<&str> = input.iter().flat_map(|f| f.samples.iter()).filter(|s| keep(s)).map(|s| s.raw).collect();
            let got: Vec<&str> = output.iter().flat_map(|f| f.samples.iter()).map(|s| s.raw).collect();
            prop_assert_eq!(got, want);

            // Redacted: no real name as a label value, ids only.
            let redacted = render(&text, &scope.clone().with_view(View::Redacted), &redactor).unwrap();
            for family in exposition::parse(&redacted).unwrap() {
                for sample in &family.samples {
                    for (label, value) in &sample.labels {
                        prop_assert!(!services.iter().any(|s| s == value), "{} leaked", value);
                        if *label == "service" {
                            prop_assert!(value.starts_with("svc-"));
                        }
                        prop_assert!(*label != "upstream");
                        if *label == "kind" {
                            prop_assert_eq!(value.as_ref(), "error");
                        }
                    }
                }
            }

            // Aggregate: no label names a service.
            let aggregate = render(&text, &scope.clone().with_view(View::Aggregate), &redactor).unwrap();
            for family in exposition::parse(&aggregate).unwrap() {
                for sample in &family.samples {
                    prop_assert!(sample.label("service").is_none() && sample.label("upstream").is_none());
                }
            }
        }
    }

    #[test]
    fn ids_are_stable_per_key_and_hide_the_name() {
        let a = Redactor::with_secret(b"fleet secret");
        let b = Redactor::with_secret(b"fleet secret");
        let c = Redactor::with_secret(b"another");
        assert_eq!(a.id("orders"), b.id("orders"));
        assert_ne!(a.id("orders"), c.id("orders"));
        assert_ne!(a.id("orders"), a.id("payments"));
        let id = a.id("orders");
        assert!(
            id.starts_with("svc-") && id.len() == 16 && !id.contains("orders"),
            "{id}"
        );
    }
}
