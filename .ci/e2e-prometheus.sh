#!/usr/bin/env bash
# End-to-end test: the mesh demo scraped by a real Prometheus.
#
#   bash .ci/e2e-prometheus.sh
#
# Builds and starts `mesh_demo` (short phases, bounded duration, a bearer
# token), starts Prometheus (Debian's `prometheus` package) on 127.0.0.1 with
# a temporary TSDB and the deploy kit's config (deploy/prometheus.yml with the
# target port swapped and its commented `authorization` block enabled, plus
# deploy/alerts.yml and deploy/recording_rules.yml), then asserts through the
# Prometheus HTTP API that the `orders` breaker opened, rejected calls and
# recovered, that the cascade and the dependency graph show up, and that the
# healthy `catalog` upstream was never tripped. Everything stays on 127.0.0.1; everything started here is
# stopped on exit. Prints `e2e: N passed, M failed` and exits non-zero on any
# failure. Runs in about a minute once the example is built.
#
# Environment: E2E_PHASE_SECS (default 8), E2E_DURATION_SECS (default 6
# phases), E2E_METRICS_PORT (default 9464), E2E_PROMETHEUS_PORT (default
# 9090); a busy default port is replaced by a free one.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PHASE=${E2E_PHASE_SECS:-8}
DURATION=${E2E_DURATION_SECS:-$((PHASE * 6))}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

NAME=e2e
. .ci/lib.sh
die() {
    echo "e2e: $*" >&2
    echo "e2e: 0 passed, 1 failed"
    exit 1
}

# ---------------------------------------------------------------------------
# Tools: curl, python3 (JSON), prometheus. Installed with apt when missing.
# ---------------------------------------------------------------------------
install_missing curl:curl python3:python3 prometheus:prometheus ||
    die "could not install the tools it needs"

# ---------------------------------------------------------------------------
# Processes, temp dir, cleanup
# ---------------------------------------------------------------------------
tmp=$(mktemp -d)
demo_pid=
prom_pid=
cleanup() {
    for pid in $prom_pid $demo_pid; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {
    echo "--- mesh_demo log (last 30 lines)" >&2
    tail -n 30 "$tmp/demo.log" >&2 2>/dev/null
    echo "--- prometheus log (last 15 lines)" >&2
    tail -n 15 "$tmp/prometheus.log" >&2 2>/dev/null
}

log "building mesh_demo"
cargo build --quiet --example mesh_demo --all-features || die "cargo build --example mesh_demo failed"
demo_bin="$TARGET_DIR/debug/examples/mesh_demo"
[ -x "$demo_bin" ] || die "no $demo_bin after the build"

metrics_port=$(free_port "${E2E_METRICS_PORT:-9464}")
prom_port=$(free_port "${E2E_PROMETHEUS_PORT:-9090}")
[ -n "$metrics_port" ] && [ -n "$prom_port" ] || die "no free port on 127.0.0.1"
token="e2e-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
printf '%s' "$token" >"$tmp/metrics-token"
# Scoped viewers (label-based authorization): two services in full, every
# service aggregated, every service redacted.
scoped_token="scoped-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
aggregate_token="aggregate-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
redacted_token="redacted-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"

log "starting mesh_demo: ${DURATION}s, phases of ${PHASE}s, metrics on 127.0.0.1:$metrics_port"
"$demo_bin" --duration-secs "$DURATION" --phase-secs "$PHASE" --port "$metrics_port" \
    --gateway-port 0 --token "$token" \
    --viewer "$scoped_token=services=orders,payments" \
    --viewer "$aggregate_token=services=*;view=aggregate" \
    --viewer "$redacted_token=services=*;view=redacted" >"$tmp/demo.log" 2>&1 &
demo_pid=$!
started=$SECONDS

metrics_url="http://127.0.0.1:$metrics_port/metrics"
ready=0
for _ in $(seq 1 100); do
    if curl -sf --max-time 2 -H "Authorization: Bearer $token" "$metrics_url" 2>/dev/null |
        grep -q '^circuit_breaker_state'; then
        ready=1
        break
    fi
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.2
done
[ "$ready" -eq 1 ] || { show_logs; die "mesh_demo did not serve $metrics_url within 20 s"; }
unauthenticated=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$metrics_url")

# ---------------------------------------------------------------------------
# Prometheus: the deploy kit's config, pointed at this demo, token enabled.
# ---------------------------------------------------------------------------
sed -e "s/127\.0\.0\.1:9464/127.0.0.1:$metrics_port/" \
    -e 's/^    # authorization:$/    authorization:/' \
    -e 's/^    #   type: Bearer$/      type: Bearer/' \
    -e 's/^    #   credentials_file: metrics-token$/      credentials_file: metrics-token/' \
    deploy/prometheus.yml >"$tmp/prometheus.yml"
cp deploy/alerts.yml deploy/recording_rules.yml "$tmp/"
grep -q "127.0.0.1:$metrics_port" "$tmp/prometheus.yml" &&
    grep -q '^      credentials_file: metrics-token$' "$tmp/prometheus.yml" ||
    die "deploy/prometheus.yml changed shape: expected target 127.0.0.1:9464 and a commented authorization block with credentials_file: metrics-token"

log "starting prometheus on 127.0.0.1:$prom_port"
prometheus --config.file="$tmp/prometheus.yml" \
    --web.listen-address="127.0.0.1:$prom_port" \
    --storage.tsdb.path="$tmp/tsdb" \
    --storage.tsdb.retention.time=1h \
    --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!
api="http://127.0.0.1:$prom_port"
ready=0
for _ in $(seq 1 150); do
    if curl -sf --max-time 2 "$api/-/ready" >/dev/null 2>&1; then
        ready=1
        break
    fi
    kill -0 "$prom_pid" 2>/dev/null || break
    sleep 0.2
done
[ "$ready" -eq 1 ] || { show_logs; die "prometheus did not become ready on $api within 30 s"; }

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
# `holds EXPR`: true if the instant query EXPR returns a non-empty result (a
# comparison in PromQL filters out what does not hold).
holds() {
    curl -sf --max-time 5 -G "$api/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
        python3 -c 'import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d.get("status") == "success" and d["data"]["result"] else 1)'
}

# Latched checks: each passes once its expression holds at some poll.
names=(
    "prometheus scrapes the demo with the bearer token (up == 1)"
    "orders breaker opened (transitions to=open > 0, state open == 1)"
    "orders breaker rejected calls (rejections_total > 0, requests_total{status=rejected} > 0)"
    "orders breaker recovered (state closed == 1, recovery_duration_seconds_count > 0)"
    "cascade: payments opened, frontend saw checkout fail, 4 dependency edges"
    "catalog (healthy, own breaker) served calls"
    "alert and recording rules loaded, every rule evaluated without error"
)
exprs=(
    'up{job="tower-breaker-demo"} == 1'
    'sum(circuit_breaker_transitions_total{service="orders",to="open"}) > 0
       and on() max_over_time(circuit_breaker_state{service="orders",state="open"}[10m]) == 1'
    'sum(circuit_breaker_rejections_total{service="orders"}) > 0
       and on() sum(circuit_breaker_requests_total{service="orders",status="rejected"}) > 0'
    'circuit_breaker_state{service="orders",state="closed"} == 1
       and on() sum(circuit_breaker_recovery_duration_seconds_count{service="orders"}) > 0
       and on() sum(circuit_breaker_transitions_total{service="orders",to="closed"}) > 0'
    'sum(circuit_breaker_transitions_total{service="payments",to="open"}) > 0
       and on() sum(circuit_breaker_failures_total{service="checkout"}) > 0
       and on() count(circuit_breaker_dependency == 1) >= 4'
    'sum(circuit_breaker_requests_total{service="catalog",status="success"}) > 0'
    ''
)
passed_at=()
for i in "${!names[@]}"; do passed_at[i]=; done

rules_ok() {
    curl -sf --max-time 5 "$api/api/v1/rules" 2>/dev/null | python3 -c 'import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
names = {r["name"] for r in rules}
want = {"CircuitBreakerOpenTooLong", "CircuitBreakerFlapping",
        "CircuitBreakerTripRiskHigh", "CircuitBreakerHighRejectionRatio"}
ok = want <= names and all(r.get("health") == "ok" for r in rules)
sys.exit(0 if ok else 1)'
}

# Never-trip check: the healthy upstream's breaker must not open.
catalog_tripped='sum(circuit_breaker_transitions_total{service="catalog",to="open"}) > 0'
catalog_opened=0

log "polling the Prometheus API while the demo runs (up to ${DURATION}s)"
while kill -0 "$demo_pid" 2>/dev/null; do
    all=1
    for i in "${!names[@]}"; do
        [ -n "${passed_at[i]}" ] && continue
        if [ -z "${exprs[i]}" ]; then
            rules_ok && passed_at[i]=$((SECONDS - started))
        elif holds "${exprs[i]}"; then
            passed_at[i]=$((SECONDS - started))
        fi
        [ -n "${passed_at[i]}" ] || all=0
    done
    holds "$catalog_tripped" && catalog_opened=1
    # Keep the latest scrape of the demo (and of each scoped view) for the
    # checks below.
    for view in scrape:$token scoped:$scoped_token aggregate:$aggregate_token redacted:$redacted_token; do
        curl -sf --max-time 5 -H "Authorization: Bearer ${view#*:}" "$metrics_url" >"$tmp/${view%%:*}.new" 2>/dev/null &&
            mv "$tmp/${view%%:*}.new" "$tmp/${view%%:*}.prom"
    done
    [ "$all" -eq 1 ] && [ "$catalog_opened" -eq 0 ] && [ $((SECONDS - started)) -ge $((PHASE * 4)) ] && break
    sleep 2
done

# The demo stops by itself after --duration-secs.
wait_exit "$demo_pid" $((started + DURATION + 30 - SECONDS)) 1
[ -n "$exit_code" ] && demo_pid=

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
for i in "${!names[@]}"; do
    if [ -n "${passed_at[i]}" ]; then
        report "${names[i]}" 1 "after ${passed_at[i]}s"
    else
        report "${names[i]}" 0 "never held; query: $(echo "${exprs[i]:-GET /api/v1/rules}" | tr -s ' \n' ' ')"
    fi
done
if [ "$catalog_opened" -eq 0 ]; then
    report "catalog breaker never opened (per-upstream breakers isolate the failing upstream)" 1
else
    report "catalog breaker never opened (per-upstream breakers isolate the failing upstream)" 0 "query held: $catalog_tripped"
fi
if [ "$unauthenticated" = 401 ]; then
    report "/metrics refuses a scrape without the token (401)" 1
else
    report "/metrics refuses a scrape without the token (401)" 0 "got HTTP $unauthenticated"
fi
# What the demo serves is what the deploy kit expects: promtool-clean, and
# every metric family of the contract (the dashboard and alerts use them).
families="state transitions_total requests_total rejections_total failures_total error_rate
slow_call_rate trip_risk dependency request_duration_seconds recovery_duration_seconds"
missing=
for f in $families; do
    grep -q "^# TYPE circuit_breaker_$f " "$tmp/scrape.prom" 2>/dev/null || missing="$missing circuit_breaker_$f"
done
lint=$(promtool check metrics <"$tmp/scrape.prom" 2>&1) || lint="${lint:-promtool failed}"
if [ ! -s "$tmp/scrape.prom" ]; then
    report "the demo's /metrics is promtool-clean with every contract family" 0 "no scrape taken"
elif [ -n "$missing" ] || [ -n "$lint" ]; then
    report "the demo's /metrics is promtool-clean with every contract family" 0 "missing:${missing:- none}; promtool: ${lint:-clean}"
else
    report "the demo's /metrics is promtool-clean with every contract family" 1
fi
# Label-based authorization: each scoped token sees only its scope, and
# every view is promtool-clean, while Prometheus scrapes with the full token.
scoped_names=$(grep -o '\(service\|upstream\)="[^"]*"' "$tmp/scoped.prom" 2>/dev/null | cut -d'"' -f2 | sort -u | tr '\n' ' ')
if [ -s "$tmp/scoped.prom" ] && [ "$scoped_names" = "orders payments " ] &&
    [ -z "$(promtool check metrics <"$tmp/scoped.prom" 2>&1)" ]; then
    report "a scoped token (services=orders,payments) sees only orders and payments" 1
else
    report "a scoped token (services=orders,payments) sees only orders and payments" 0 "names: ${scoped_names:-none}"
fi
if [ -s "$tmp/aggregate.prom" ] && ! grep -q 'service=' "$tmp/aggregate.prom" &&
    grep -q '^circuit_breaker_state{state="closed"}' "$tmp/aggregate.prom" &&
    [ -z "$(promtool check metrics <"$tmp/aggregate.prom" 2>&1)" ]; then
    report "the aggregate view has no service label, and counts breakers per state" 1
else
    report "the aggregate view has no service label, and counts breakers per state" 0 "$(grep -m1 'service=' "$tmp/aggregate.prom" 2>/dev/null)"
fi
leaked=
for name in orders payments catalog checkout frontend gateway; do
    grep -q "$name" "$tmp/redacted.prom" 2>/dev/null && leaked="$leaked $name"
done
if [ -s "$tmp/redacted.prom" ] && [ -z "$leaked" ] && grep -q 'service="svc-' "$tmp/redacted.prom" &&
    [ -z "$(promtool check metrics <"$tmp/redacted.prom" 2>&1)" ]; then
    report "the redacted view shows no real service name" 1
else
    report "the redacted view shows no real service name" 0 "leaked:${leaked:- none}"
fi
if grep -q 'early warning: gateway -> orders' "$tmp/demo.log"; then
    report "early warning logged for gateway -> orders" 1
else
    report "early warning logged for gateway -> orders" 0 "no 'early warning: gateway -> orders' line in the demo log"
fi
if [ "$exit_code" = 0 ]; then
    report "mesh_demo stopped by itself after ${DURATION}s with status 0" 1
else
    report "mesh_demo stopped by itself after ${DURATION}s with status 0" 0 "status: ${exit_code:-still running}"
fi

[ "$failed" -eq 0 ] || show_logs
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
