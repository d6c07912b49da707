//! Service dependency tracking: which caller talks to which upstream, and how
//! that upstream is doing.
//!
//! A breaker built with a caller, from [`Builder::caller`](crate::Builder::caller)
//! or the process-wide [`set_local_service`], records the edge
//! `caller -> upstream`, where the upstream is the breaker's name (its
//! `service` label; for per-key breakers, the key's label). Each known edge
//! is exported as
//!
//! ```text
//! circuit_breaker_dependency{service="<caller>",upstream="<upstream>"} 1
//! ```
//!
//! Note that on this metric `service` is the **caller**, as the deploy
//! kit's dependency-graph panel expects; name each breaker after its
//! upstream so that the graph chains (`gateway -> orders`, and the `orders`
//! process's own `orders -> inventory`).
//!
//! [`DependencyGraph::snapshot`] reads the edges with each one's current
//! state, error rate and trip risk, and renders them as JSON or Graphviz DOT.
//! With the `prometheus` feature,
//! [`MetricsEndpointBuilder::dependency_routes`](crate::exporter::MetricsEndpointBuilder::dependency_routes)
//! serves both next to `/metrics`.
//!
//! ```
//! use tower_breaker::dependency::DependencyGraph;
//! use tower_breaker::{CircuitBreakerLayer, State};
//!
//! let layer = CircuitBreakerLayer::builder()
//!     .name("doc-orders")
//!     .caller("doc-gateway")
//!     .build()
//!     .unwrap();
//! let graph = DependencyGraph::snapshot();
//! let edge = graph.edge("doc-gateway", "doc-orders").unwrap();
//! assert_eq!(edge.state, State::Closed);
//! assert!(graph.to_dot().contains("\"doc-gateway\" -> \"doc-orders\""));
//! drop(layer); // the edge goes with its last breaker
//! assert!(DependencyGraph::snapshot().edge("doc-gateway", "doc-orders").is_none());
//! ```
//!
//! # Bounds and lifetime
//!
//! The registry is process-wide and holds at most [`set_edge_limit`]
//! distinct edges (default [`DEFAULT_EDGE_LIMIT`]). Past the cap a new edge
//! is **refused**: it is neither exported nor listed, a `tracing` warning is
//! logged the first time, and [`DependencyGraph::refused`] counts the
//! refusals. Breakers that share an edge (same caller and upstream) count
//! once. Per-key breakers past their own cap share the `__overflow__` label,
//! hence one `caller -> __overflow__` edge.
//!
//! An edge lives as long as one of its breakers. When the last is dropped
//! the edge leaves the graph and its gauge is **set to 0** (the `metrics`
//! facade cannot delete a series): query `circuit_breaker_dependency > 0` or
//! `== 1` for the live edges, and let the exporter's idle timeout drop the
//! stale series if you configure one.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use metrics::{Gauge, Key, Label, SharedString};

use crate::breaker::Breaker;
use crate::metrics::{current_recorder, sanitize_label};
use crate::State;

/// The default cap on distinct edges.
pub const DEFAULT_EDGE_LIMIT: usize = 1_000;

/// The path [`dependency_routes`](crate::exporter::MetricsEndpointBuilder::dependency_routes)
/// serves the JSON graph at.
pub const JSON_PATH: &str = "/dependencies.json";

/// The path [`dependency_routes`](crate::exporter::MetricsEndpointBuilder::dependency_routes)
/// serves the Graphviz graph at.
pub const DOT_PATH: &str = "/dependencies.dot";

static EDGE_LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_EDGE_LIMIT);

fn local() -> &'static RwLock<Option<Arc<str>>> {
    static LOCAL: OnceLock<RwLock<Option<Arc<str>>>> = OnceLock::new();
    LOCAL.get_or_init(Default::default)
}

/// Names this process, the caller of every breaker built afterwards without
/// its own [`Builder::caller`](crate::Builder::caller). The name is
/// sanitized like a label. Breakers built before keep what they had.
///
/// ```
/// use tower_breaker::dependency::{self, DependencyGraph};
/// use tower_breaker::CircuitBreakerLayer;
///
/// dependency::set_local_service("checkout");
/// assert_eq!(dependency::local_service().as_deref(), Some("checkout"));
/// let payments = CircuitBreakerLayer::builder().name("payments").build().unwrap();
/// let fraud = CircuitBreakerLayer::builder().name("fraud").caller("payments").build().unwrap();
/// let graph = DependencyGraph::snapshot();
/// assert!(graph.edge("checkout", "payments").is_some());
/// assert!(graph.edge("payments", "fraud").is_some(), "an explicit caller wins");
/// # drop((payments, fraud));
/// ```
pub fn set_local_service(name: &str) {
    *local().write().unwrap_or_else(|p| p.into_inner()) = Some(sanitize_label(name).into());
}

/// The name set by [`set_local_service`], if any.
pub fn local_service() -> Option<String> {
    local()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_deref()
        .map(str::to_owned)
}

/// Sets the process-wide cap on distinct edges (default 1,000). Edges
/// already known stay; past the cap new edges are refused.
///
/// ```
/// use tower_breaker::dependency::{self, DependencyGraph};
/// use tower_breaker::CircuitBreakerLayer;
///
/// dependency::set_edge_limit(1);
/// let build = |name: &str| {
///     CircuitBreakerLayer::builder().name(name).caller("edge").build().unwrap()
/// };
/// let (a, b, a_again) = (build("a"), build("b"), build("a"));
/// let graph = DependencyGraph::snapshot();
/// assert_eq!(graph.edges().len(), 1);
/// assert_eq!(graph.edge("edge", "a").unwrap().breakers, 2, "a known edge is shared");
/// assert!(graph.edge("edge", "b").is_none());
/// assert_eq!(graph.refused(), 1);
/// // `b` still works as a breaker; it is just not in the graph.
/// # drop((a, b, a_again));
/// ```
pub fn set_edge_limit(limit: usize) {
    EDGE_LIMIT.store(limit, Ordering::Relaxed);
}

type EdgeKey = (Arc<str>, Arc<str>);
type Members = Vec<Weak<Breaker>>;

#[derive(Default)]
struct Registry {
    edges: BTreeMap<EdgeKey, Entry>,
    next_id: u64,
    refused: u64,
}

#[derive(Default)]
struct Entry {
    breakers: Vec<(u64, Weak<Breaker>)>,
    /// The gauges set to 1, by recorder identity and metric name.
    gauges: Vec<(usize, SharedString, Gauge)>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// A breaker's membership of one edge; leaves the graph when dropped.
pub(crate) struct EdgeGuard {
    key: EdgeKey,
    id: u64,
    metric: SharedString,
    /// The label naming the caller: `service`, or `name` (resilience4j naming).
    label: &'static str,
}

impl fmt::Debug for EdgeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EdgeGuard({} -> {})", self.key.0, self.key.1)
    }
}

/// Records the edge `caller -> breaker` for a freshly built breaker.
///
/// `caller` is the configured caller; without one, the process-wide
/// [`set_local_service`] name; without either, nothing is recorded. Call it
/// once per breaker, after putting it in its `Arc` (layers and per-key
/// breakers alike); a second call is a no-op.
pub(crate) fn track(breaker: &Arc<Breaker>, caller: Option<&str>) {
    if breaker.dependency.get().is_some() {
        return;
    }
    let caller: Arc<str> = match caller {
        Some(c) => sanitize_label(c).into(),
        None => match local().read().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(c) => c,
            None => return,
        },
    };
    let key = (caller, breaker.label().clone());
    let metric = breaker.metrics.names().dependency.clone();
    let label = breaker.metrics.names().label;
    let mut reg = lock();
    if !reg.edges.contains_key(&key) && reg.edges.len() >= EDGE_LIMIT.load(Ordering::Relaxed) {
        reg.refused += 1;
        let first = reg.refused == 1;
        drop(reg);
        #[cfg(feature = "tracing")]
        if first {
            tracing::warn!(
                caller = &*key.0,
                upstream = &*key.1,
                limit = EDGE_LIMIT.load(Ordering::Relaxed),
                "dependency edge limit reached, new edges are not tracked"
            );
        }
        let _ = first;
        return;
    }
    reg.next_id += 1;
    let id = reg.next_id;
    reg.edges
        .entry(key.clone())
        .or_default()
        .breakers
        .push((id, Arc::downgrade(breaker)));
    let guard = EdgeGuard {
        key,
        id,
        metric,
        label,
    };
    publish_locked(&mut reg, &guard);
    drop(reg);
    // Built by this thread just now, so nobody else can have set it.
    let _ = breaker.dependency.set(guard);
}

impl EdgeGuard {
    /// Sets the edge's gauge to 1 in the current recorder, once per recorder.
    pub(crate) fn publish(&self) {
        publish_locked(&mut lock(), self);
    }
}

fn publish_locked(reg: &mut Registry, guard: &EdgeGuard) {
    let Some(entry) = reg.edges.get_mut(&guard.key) else {
        return;
    };
    let recorder = current_recorder();
    if entry
        .gauges
        .iter()
        .any(|(r, name, _)| *r == recorder && *name == guard.metric)
    {
        return;
    }
    let labels = vec![
        Label::new(guard.label, SharedString::from(guard.key.0.clone())),
        Label::new("upstream", SharedString::from(guard.key.1.clone())),
    ];
    let key = Key::from_parts(guard.metric.clone(), labels);
    let gauge = metrics::with_recorder(|r| {
        crate::metrics::register_gauge(r, &key, crate::metrics::MetricsNaming::Native)
    });
    gauge.set(1.0);
    entry.gauges.push((recorder, guard.metric.clone(), gauge));
}

impl Drop for EdgeGuard {
    fn drop(&mut self) {
        let mut reg = lock();
        let Some(entry) = reg.edges.get_mut(&self.key) else {
            return;
        };
        entry.breakers.retain(|(id, _)| *id != self.id);
        if entry.breakers.is_empty() {
            if let Some(entry) = reg.edges.remove(&self.key) {
                for (_, _, gauge) in entry.gauges {
                    gauge.set(0.0);
                }
            }
        }
    }
}

/// One `caller -> upstream` edge, as it is now.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Edge {
    /// The calling service.
    pub caller: String,
    /// The upstream: the breaker's name.
    pub upstream: String,
    /// The breaker's state; with several breakers on this edge, the worst
    /// (forced open, open, half-open, metrics-only, closed, disabled).
    pub state: State,
    /// The failure rate over the breaker's window (the largest of several).
    pub error_rate: f64,
    /// The breaker's trip risk, as its gauge shows it (the largest of several).
    pub trip_risk: f64,
    /// How many live breakers share this edge.
    pub breakers: usize,
}

/// A point-in-time copy of the process's dependency graph.
///
/// ```
/// use tower_breaker::dependency::DependencyGraph;
///
/// let graph = DependencyGraph::snapshot();
/// let json = graph.to_json(); // {"nodes":[...],"edges":[...],"refused":0}
/// assert!(json.starts_with("{\"nodes\":["));
/// assert!(graph.to_dot().starts_with("digraph dependencies {"));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DependencyGraph {
    edges: Vec<Edge>,
    refused: u64,
}

fn severity(state: State) -> u8 {
    match state {
        State::Disabled => 0,
        State::Closed => 1,
        State::MetricsOnly => 2,
        State::HalfOpen => 3,
        State::Open => 4,
        State::ForcedOpen => 5,
    }
}

impl DependencyGraph {
    /// Reads every known edge and its breakers' current state.
    pub fn snapshot() -> Self {
        // Copy the weak references out first: a breaker upgraded here may be
        // dropped by us, and its drop takes the registry lock.
        let (edges, refused): (Vec<(EdgeKey, Members)>, u64) = {
            let reg = lock();
            let edges = reg
                .edges
                .iter()
                .map(|(k, e)| {
                    (
                        k.clone(),
                        e.breakers.iter().map(|(_, w)| w.clone()).collect(),
                    )
                })
                .collect();
            (edges, reg.refused)
        };
        let edges = edges
            .into_iter()
            .filter_map(|((caller, upstream), weak)| {
                let mut edge: Option<Edge> = None;
                for breaker in weak.iter().filter_map(Weak::upgrade) {
                    let view = breaker.view();
                    let e = edge.get_or_insert_with(|| Edge {
                        caller: caller.to_string(),
                        upstream: upstream.to_string(),
                        state: view.state,
                        error_rate: 0.0,
                        trip_risk: 0.0,
                        breakers: 0,
                    });
                    if severity(view.state) > severity(e.state) {
                        e.state = view.state;
                    }
                    e.error_rate = e.error_rate.max(view.error_rate);
                    e.trip_risk = e.trip_risk.max(view.trip_risk);
                    e.breakers += 1;
                }
                edge
            })
            .collect();
        DependencyGraph { edges, refused }
    }

    /// The edges, sorted by caller then upstream.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The edge `caller -> upstream`, if known.
    pub fn edge(&self, caller: &str, upstream: &str) -> Option<&Edge> {
        self.edges
            .iter()
            .find(|e| e.caller == caller && e.upstream == upstream)
    }

    /// Edges refused since the process started because the cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Every service named by an edge, sorted, each once.
    pub fn nodes(&self) -> Vec<&str> {
        let mut nodes: Vec<&str> = self
            .edges
            .iter()
            .flat_map(|e| [e.caller.as_str(), e.upstream.as_str()])
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The graph as JSON:
    ///
    /// ```text
    /// {"nodes":["a","b"],
    ///  "edges":[{"caller":"a","upstream":"b","state":"open","error_rate":0.5,"trip_risk":1,"breakers":1}],
    ///  "refused":0}
    /// ```
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"nodes\":[");
        for (i, node) in self.nodes().into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(&mut out, node);
        }
        out.push_str("],\"edges\":[");
        for (i, e) in self.edges.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"caller\":");
            json_string(&mut out, &e.caller);
            out.push_str(",\"upstream\":");
            json_string(&mut out, &e.upstream);
            let _ = write!(
                out,
                ",\"state\":\"{}\",\"error_rate\":{},\"trip_risk\":{},\"breakers\":{}}}",
                e.state.as_str(),
                json_number(e.error_rate),
                json_number(e.trip_risk),
                e.breakers
            );
        }
        let _ = write!(out, "],\"refused\":{}}}", self.refused);
        out
    }

    /// The graph in Graphviz DOT: one edge per dependency, labelled with the
    /// state and error rate and coloured by state (green closed, orange
    /// half-open, red open, grey overridden). Render with `dot -Tsvg`.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph dependencies {\n  rankdir=LR;\n  node [shape=box];\n");
        for node in self.nodes() {
            let _ = writeln!(out, "  {};", dot_id(node));
        }
        for e in &self.edges {
            let color = match e.state {
                State::Closed => "green",
                State::HalfOpen => "orange",
                State::Open | State::ForcedOpen => "red",
                State::Disabled | State::MetricsOnly => "gray",
            };
            let _ = writeln!(
                out,
                "  {} -> {} [label=\"{} {:.1}% errors\", color={color}, fontcolor={color}];",
                dot_id(&e.caller),
                dot_id(&e.upstream),
                e.state.as_str(),
                e.error_rate * 100.0,
            );
        }
        out.push_str("}\n");
        out
    }
}

/// A number as JSON: `null` when not finite.
pub(crate) fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".to_owned()
    }
}

/// A string as JSON. `<`, `>` and `&` are escaped too, so the text is safe
/// wherever a page may put it.
pub(crate) fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&') => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn dot_id(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
impl crate::exporter::MetricsEndpointBuilder {
    /// Also serves the [`DependencyGraph`] at [`JSON_PATH`]
    /// (`/dependencies.json`, `application/json`) and [`DOT_PATH`]
    /// (`/dependencies.dot`, `text/vnd.graphviz`), behind the same IP and
    /// token checks as `/metrics`. A scoped caller sees the edges whose
    /// caller and upstream are both in its scope, in the full view; the
    /// aggregate and redacted views hide the edges (403).
    pub fn dependency_routes(self) -> Self {
        self.scoped_route(
            JSON_PATH,
            "application/json",
            Arc::new(|scope| Some(DependencyGraph::snapshot().scoped(scope)?.to_json())),
        )
        .scoped_route(
            DOT_PATH,
            "text/vnd.graphviz; charset=utf-8",
            Arc::new(|scope| Some(DependencyGraph::snapshot().scoped(scope)?.to_dot())),
        )
    }
}

#[cfg(feature = "prometheus")]
impl DependencyGraph {
    /// The edges `scope` may see: both ends in scope, full view only.
    fn scoped(mut self, scope: &crate::exporter::Scope) -> Option<Self> {
        if scope.view() != crate::exporter::View::Full {
            return None;
        }
        if !scope.is_everything() {
            self.edges
                .retain(|e| scope.allows(&e.caller) && scope.allows(&e.upstream));
            // The edges refused mesh-wide are not this scope's to count.
            self.refused = 0;
        }
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_are_escaped_and_stable() {
        let graph = DependencyGraph {
            edges: vec![Edge {
                caller: "a\"b".into(),
                upstream: "c\\d".into(),
                state: State::HalfOpen,
                error_rate: 0.25,
                trip_risk: 1.0,
                breakers: 2,
            }],
            refused: 3,
        };
        assert_eq!(
            graph.to_json(),
            "{\"nodes\":[\"a\\\"b\",\"c\\\\d\"],\"edges\":[{\"caller\":\"a\\\"b\",\"upstream\":\"c\\\\d\",\
             \"state\":\"half_open\",\"error_rate\":0.25,\"trip_risk\":1,\"breakers\":2}],\"refused\":3}"
        );
        let dot = graph.to_dot();
        assert!(
            dot.contains(
                "\"a\\\"b\" -> \"c\\\\d\" [label=\"half_open 25.0% errors\", color=orange"
            ),
            "{dot}"
        );
        assert!(dot.ends_with("}\n"));
        let mut s = String::new();
        json_string(&mut s, "\n");
        assert_eq!(s, "\"\\u000a\"");
        assert_eq!(json_number(f64::NAN), "null");
    }

    #[test]
    fn worst_state_wins() {
        assert!(severity(State::Open) > severity(State::HalfOpen));
        assert!(severity(State::HalfOpen) > severity(State::Closed));
        assert!(severity(State::ForcedOpen) > severity(State::Open));
        assert!(severity(State::Closed) > severity(State::Disabled));
    }
}
