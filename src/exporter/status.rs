//! The live status page: `/breakers` (one self-contained HTML page) and
//! `/breakers.json` (what it polls), scoped like every route.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::exposition;
use super::scope::{Redactor, Scope, View};
use crate::dependency::{json_number as number, json_string, DependencyGraph};

/// Where the page is served.
pub const STATUS_PAGE_PATH: &str = "/breakers";

/// Where the data the page polls is served.
pub const STATUS_JSON_PATH: &str = "/breakers.json";

/// The page: HTML, CSS and JavaScript in one file, no external fetch.
pub(super) const PAGE: &str = include_str!("status.html");

/// How long a render's request and rejection counts are reused.
const COUNTS_TTL: Duration = Duration::from_millis(500);

/// Requests and rejections per `service` label.
type Totals = HashMap<String, (f64, f64)>;

/// Requests and rejections per `service` label, read from the exposition at
/// most twice a second, with the readings of the last 10 s to turn them
/// into rates.
#[derive(Debug, Default)]
pub(super) struct Counts {
    history: Mutex<VecDeque<(Instant, Totals)>>,
}

/// How long readings are kept, and how old one must be to take a rate from.
const HISTORY: Duration = Duration::from_secs(10);
const RATE_SPAN: Duration = Duration::from_secs(1);

impl Counts {
    /// The latest totals, and per second since a reading at least a second
    /// old (`None` until there is one).
    fn get(&self, render: impl FnOnce() -> String) -> (Totals, Option<(Totals, f64)>) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = history
            .back()
            .is_some_and(|(at, _)| at.elapsed() < COUNTS_TTL);
        if !fresh {
            let text = render();
            let mut totals = Totals::new();
            for family in exposition::parse_lenient(&text) {
                for sample in &family.samples {
                    let Some(service) = sample.label("service") else {
                        continue;
                    };
                    let entry = totals.entry(service.to_owned()).or_default();
                    if sample.name.ends_with("_requests_total")
                        && sample.label("status") != Some("rejected")
                    {
                        entry.0 += sample.value;
                    } else if sample.name.ends_with("_rejections_total") {
                        entry.1 += sample.value;
                    }
                }
            }
            history.push_back((Instant::now(), totals));
            while history
                .front()
                .is_some_and(|(at, _)| at.elapsed() > HISTORY)
            {
                history.pop_front();
            }
        }
        let (now, latest) = history.back().cloned().expect("just pushed or fresh");
        let before = history
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= RATE_SPAN)
            .map(|(at, totals)| (totals.clone(), now.duration_since(*at).as_secs_f64()));
        (latest, before)
    }
}

/// Whether the page has something to show `scope`: not in the aggregate
/// view, which has no breaker to show.
pub(super) fn shows(scope: &Scope) -> bool {
    scope.view() != View::Aggregate
}

/// The page's data for `scope`, as JSON; `None` where it
/// [shows](shows) nothing.
pub(super) fn json(
    scope: &Scope,
    redactor: &Redactor,
    counts: &Counts,
    render: impl FnOnce() -> String,
) -> Option<String> {
    if !shows(scope) {
        return None;
    }
    let redacted = scope.view() == View::Redacted;
    let shown = |name: &str| -> String {
        if redacted {
            redactor.id(name)
        } else {
            name.to_owned()
        }
    };
    let (counts, before) = counts.get(render);
    // Per second since the reading a second or more ago; a counter that went
    // down restarted, and counts from zero.
    let per_second = |service: &str, now: f64, pick: fn(&(f64, f64)) -> f64| -> Option<f64> {
        let (totals, secs) = before.as_ref()?;
        let then = totals.get(service).map(pick).unwrap_or(0.0);
        Some(if now >= then { now - then } else { now } / secs)
    };
    let opt = |x: Option<f64>| x.map_or("null".to_owned(), number);
    let mut breakers: Vec<(f64, String)> = Vec::new();
    for breaker in crate::live::breakers() {
        let name = breaker.service();
        if !scope.allows(name) {
            continue;
        }
        let (snapshot, in_state, last) = breaker.status();
        let label = &**breaker.label();
        let (requests, rejections) = counts.get(label).copied().unwrap_or_default();
        let rps = per_second(label, requests, |c| c.0);
        let jps = per_second(label, rejections, |c| c.1);
        let mut tile = String::from("{\"name\":");
        json_string(&mut tile, &shown(name));
        let _ = write!(
            tile,
            ",\"state\":\"{}\",\"error_rate\":{},\"slow_call_rate\":{},\"trip_risk\":{},\
             \"requests\":{},\"rejections\":{},\"requests_per_sec\":{},\
             \"rejections_per_sec\":{},\"in_state_secs\":{}",
            snapshot.state.as_str(),
            number(snapshot.failure_rate),
            number(snapshot.slow_call_rate),
            number(snapshot.trip_risk),
            number(requests),
            number(rejections),
            opt(rps),
            opt(jps),
            number(in_state),
        );
        match last {
            Some((t, ago)) => {
                let _ = write!(
                    tile,
                    ",\"last_transition\":{{\"from\":\"{}\",\"to\":\"{}\",\"reason\":\"{}\",\"secs_ago\":{}}}}}",
                    t.from.as_str(),
                    t.to.as_str(),
                    t.reason.as_str(),
                    number(ago)
                );
            }
            None => tile.push_str(",\"last_transition\":null}"),
        }
        breakers.push((snapshot.trip_risk, tile));
    }
    // The riskiest first; ties by name, so the order is stable.
    breakers.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = format!("{{\"view\":\"{}\",\"breakers\":[", scope.view().as_str());
    for (i, (_, tile)) in breakers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(tile);
    }
    out.push_str("],\"edges\":[");
    // Edges name services: only the full view shows them.
    if scope.view() == View::Full {
        let graph = DependencyGraph::snapshot();
        let edges = graph
            .edges()
            .iter()
            .filter(|e| scope.allows(&e.caller) && scope.allows(&e.upstream));
        for (i, edge) in edges.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"from\":");
            json_string(&mut out, &edge.caller);
            out.push_str(",\"to\":");
            json_string(&mut out, &edge.upstream);
            let _ = write!(out, ",\"state\":\"{}\"}}", edge.state.as_str());
        }
    }
    out.push_str("]}");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_small() {
        assert!(PAGE.len() < 100 * 1024, "{} bytes", PAGE.len());
        // The SVG namespace is a name, not a fetch.
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for external in [
            "http://", "https://", "//cdn", "src=", "href=", "@import", "url(http",
        ] {
            assert!(!page.contains(external), "the page refers to {external}");
        }
        assert!(PAGE.contains(STATUS_JSON_PATH.trim_start_matches('/')));
    }

    #[test]
    fn strings_are_escaped_for_json_and_html() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c<script>\n");
        assert_eq!(out, "\"a\\\"b\\\\c\\u003cscript\\u003e\\u000a\"");
    }
}
