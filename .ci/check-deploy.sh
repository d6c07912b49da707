#!/usr/bin/env bash
# Checks the deploy/ kit: Prometheus configs (the demo's and the federation
# example's), alert and recording rules with their unit tests, and the
# Grafana dashboard.
#
# Lives at .ci/check-deploy.sh and is run from anywhere, e.g.
#   bash .ci/check-deploy.sh
# On Debian, as root, it installs what is missing (promtool from the
# `prometheus` package, python3); when both are present it skips apt
# entirely. Exits non-zero if any check fails.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
if [ ! -d deploy ]; then
    echo "check-deploy: no deploy/ directory in $(pwd) (expected the script at <repo>/.ci/)" >&2
    exit 1
fi

DEPLOY=deploy
DASHBOARD="$DEPLOY/grafana/tower-breaker-dashboard.json"

NAME=check-deploy
. .ci/lib.sh

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------

if ! install_missing promtool:prometheus python3:python3; then
    echo "check-deploy: 0 passed, 1 failed"
    exit 1
fi
log "$(promtool --version 2>&1 | head -n1)"

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
passed=0
failed=0
failures=()

check() {
    local name=$1
    shift
    log "$name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "FAILED: $name" >&2
    fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Structural checks of the dashboard, plus: every metric name used by the
# dashboard and the rule files belongs to the metrics contract or is recorded
# by recording_rules.yml, the mesh overview row shows the fleet views from
# recorded series only, and every dashboard query is written out as a
# recording rule (Grafana variables replaced by sample values) so that
# promtool parses its PromQL.
dashboard_lint() {
    python3 - "$DASHBOARD" "$DEPLOY/alerts.yml" "$DEPLOY/recording_rules.yml" "$tmp/dashboard_queries.yml" <<'PY'
import json
import re
import sys

dash_path, alerts_path, recording_path, rules_out = sys.argv[1:5]

CONTRACT = {
    "circuit_breaker_state", "circuit_breaker_transitions_total", "circuit_breaker_error_rate",
    "circuit_breaker_slow_call_rate", "circuit_breaker_requests_total",
    "circuit_breaker_rejections_total", "circuit_breaker_failures_total",
    "circuit_breaker_trip_risk", "circuit_breaker_dependency",
    "circuit_breaker_in_flight", "circuit_breaker_capacity_utilization",
    "circuit_breaker_trips_suppressed_total", "circuit_breaker_open_share",
}
for hist in ("circuit_breaker_request_duration_seconds", "circuit_breaker_recovery_duration_seconds"):
    CONTRACT |= {hist + s for s in ("_bucket", "_sum", "_count")}

# Recorded series (level:metric:operations), read from the record: lines.
record_re = re.compile(r"^\s*-\s*record:\s*(\S+)\s*$")
with open(recording_path) as f:
    RECORDED = {m.group(1) for m in map(record_re.match, f) if m}
# The fleet views the mesh overview row must show.
MESH_VIEWS = {
    "service:circuit_breaker_open_instances:ratio",
    "service:circuit_breaker_requests_failed:ratio_rate5m",
    "service:circuit_breaker_requests_rejected:ratio_rate5m",
    "service:circuit_breaker_recovery_duration_seconds:p50_rate30m",
    "service:circuit_breaker_recovery_duration_seconds:p95_rate30m",
    "service:circuit_breaker_transitions:per_minute_rate5m",
}

errors = []
for name in sorted(MESH_VIEWS - RECORDED):
    errors.append(f"{recording_path}: no rule records {name}")
with open(dash_path) as f:
    dash = json.load(f)

ds_ref = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
metric_re = re.compile(r"\bcircuit_breaker_[a-z0-9_]+")
recorded_re = re.compile(r"\b[a-z_]+:circuit_breaker_[a-z0-9_]+:[a-z0-9_]+")
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds_var = variables.get("DS_PROMETHEUS")
if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
    errors.append("templating: missing datasource variable DS_PROMETHEUS of type prometheus")
svc = variables.get("service")
if not svc or "label_values(circuit_breaker_state, service)" not in json.dumps(svc.get("query")):
    errors.append("templating: variable service must come from label_values(circuit_breaker_state, service)")
if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
    errors.append("schemaVersion missing or too old")

# Rows: a collapsed row holds its panels; an open one is followed by them.
panels, row_of = [], {}
row = None
for p in dash.get("panels", []):
    if p.get("type") == "row":
        row = p
        panels.append(p)
        for q in p.get("panels") or []:
            panels.append(q)
            row_of[id(q)] = p
        continue
    panels.append(p)
    if row is not None:
        row_of[id(p)] = row
ids = [p.get("id") for p in panels]
if len(ids) != len(set(ids)) or None in ids:
    errors.append(f"panel ids missing or not unique: {ids}")
for kind in ("state-timeline", "timeseries", "heatmap", "nodeGraph"):
    if not any(p.get("type") == kind for p in panels):
        errors.append(f"no {kind} panel")

exprs = []
mesh_row = next((p for p in panels if p.get("type") == "row"
                 and p.get("title", "").lower().startswith("mesh overview")), None)
if mesh_row is None:
    errors.append("no row titled 'Mesh overview ...'")
mesh_shown = set()
for p in panels:
    where = f"panel {p.get('id')} ({p.get('title')!r})"
    for key in ("type", "title", "gridPos"):
        if key not in p:
            errors.append(f"{where}: no {key}")
    if p.get("type") == "row":
        if p.get("targets"):
            errors.append(f"{where}: a row must not have queries")
        continue
    if mesh_row is not None and row_of.get(id(p)) is mesh_row:
        for t in p.get("targets") or []:
            expr = t.get("expr", "")
            used = set(recorded_re.findall(expr))
            mesh_shown |= used
            if not used and not expr.startswith("vector("):
                errors.append(f"{where}: mesh overview query {t.get('refId')} uses no recorded series: {expr!r}")
            if metric_re.findall(recorded_re.sub("", expr)):
                errors.append(f"{where}: mesh overview query {t.get('refId')} reads raw series: {expr!r}")
    if p.get("datasource") != ds_ref:
        errors.append(f"{where}: datasource is not ${{DS_PROMETHEUS}}")
    targets = p.get("targets") or []
    if not targets:
        errors.append(f"{where}: no targets")
    refids = [t.get("refId") for t in targets]
    if len(refids) != len(set(refids)):
        errors.append(f"{where}: duplicate refId")
    for t in targets:
        if t.get("datasource") != ds_ref:
            errors.append(f"{where}: target {t.get('refId')} datasource is not ${{DS_PROMETHEUS}}")
        if not t.get("expr"):
            errors.append(f"{where}: target {t.get('refId')} has no expr")
        else:
            exprs.append((where, t["expr"]))
for a in dash.get("annotations", {}).get("list", []):
    if a.get("expr"):
        exprs.append((f"annotation {a.get('name')!r}", a["expr"]))

for where, expr in exprs:
    for m in recorded_re.findall(expr):
        if m not in RECORDED:
            errors.append(f"{where}: {m} is not recorded by {recording_path}")
    for m in metric_re.findall(recorded_re.sub("", expr)):
        if m not in CONTRACT:
            errors.append(f"{where}: metric {m} is not in the metrics contract")
for name in sorted(MESH_VIEWS - mesh_shown):
    errors.append(f"mesh overview row: no panel shows {name}")
for path in (alerts_path, recording_path):
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            for m in metric_re.findall(recorded_re.sub("", line)):
                if m not in CONTRACT:
                    errors.append(f"{path}:{lineno}: metric {m} is not in the metrics contract")

# Grafana variables -> sample values, so promtool can parse the queries.
subst = [("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h"),
         ("$error_threshold", "0.5"), ("$service", ".*")]
with open(rules_out, "w") as out:
    out.write("groups:\n  - name: dashboard-queries\n    rules:\n")
    for i, (where, expr) in enumerate(exprs):
        for var, val in subst:
            expr = expr.replace(var, val)
        if "$" in expr:
            errors.append(f"{where}: unknown variable left in {expr!r}")
        out.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(expr)}\n")

for e in errors:
    print("dashboard lint:", e, file=sys.stderr)
print(f"dashboard lint: {len(panels)} panels, {len(exprs)} queries, {len(errors)} problems")
sys.exit(1 if errors else 0)
PY
}

check "promtool check config $DEPLOY/prometheus.yml" promtool check config "$DEPLOY/prometheus.yml"
check "promtool check rules $DEPLOY/alerts.yml" promtool check rules "$DEPLOY/alerts.yml"
check "promtool test rules $DEPLOY/alerts_test.yml" promtool test rules "$DEPLOY/alerts_test.yml"
check "promtool check rules $DEPLOY/recording_rules.yml" promtool check rules "$DEPLOY/recording_rules.yml"
check "promtool test rules $DEPLOY/recording_rules_test.yml" promtool test rules "$DEPLOY/recording_rules_test.yml"
for config in "$DEPLOY"/federation/cluster.yml "$DEPLOY"/federation/central.yml; do
    check "promtool check config $config" promtool check config "$config"
done
check "python3 -m json.tool $DASHBOARD" sh -c 'python3 -m json.tool "$1" >/dev/null' _ "$DASHBOARD"
check "dashboard structure and metric names" dashboard_lint
if [ -s "$tmp/dashboard_queries.yml" ]; then
    check "promtool parses the dashboard queries" promtool check rules "$tmp/dashboard_queries.yml"
else
    check "promtool parses the dashboard queries" false
fi

if [ "$failed" -ne 0 ]; then
    printf 'failed: %s\n' "${failures[@]}" >&2
fi
echo "check-deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
