#!/usr/bin/env bash
# Fleet end-to-end test: three mesh_demo replicas scraped as one job by a
# real Prometheus that evaluates deploy/recording_rules.yml, and a central
# Prometheus federating from it with deploy/federation/central.yml.
#
#   bash .ci/fleet-e2e.sh
#
# Builds mesh_demo as .ci/e2e-prometheus.sh does (same command, dev profile,
# so CI reuses that build; an up-to-date build is a no-op), starts three
# replicas on free ports (short phases, bounded duration; their fault
# schedules run in step), starts Prometheus (Debian's `prometheus` package)
# with a generated config (1s scrape and evaluation intervals, one job, one
# `instance` per replica, external label cluster="fleet-e2e") and the
# recording rules, then polls the Prometheus HTTP API until the recorded
# fleet views say what happened:
#
#   - every service is guarded by 3 breakers, and the rules evaluate cleanly;
#   - at one evaluation the orders breaker was open on 3 of 3 replicas (open
#     share 1) while catalog's was open on none (0);
#   - orders' fleet error rate and rejection ratio rose well above the
#     healthy baseline; its transitions per minute are above 0;
#   - once the replicas recovered, orders' p50 and p95 recovery times exist
#     (finite, p50 <= p95);
#   - catalog, the healthy upstream, stayed at 0 in every fleet view;
#   - the central Prometheus received every recorded series and the
#     open-state gauges, with cluster="fleet-e2e" and the replicas' own
#     `instance`, and none of the other raw families.
#
# Every wait is a bounded poll, everything stays on 127.0.0.1 and everything
# started here is stopped on exit. Prints `fleet: N passed, M failed` and
# exits non-zero on any failure. About 30 s once the example is built.
#
# Environment: FLEET_PHASE_SECS (default 8), FLEET_DURATION_SECS (default 6
# phases: the demos' lifetime, and the bound of the polling), FLEET_RATE
# (requests per second of each replica's load generator, default 150).
set -euo pipefail
cd "$(dirname "$0")/.."

PHASE=${FLEET_PHASE_SECS:-8}
DURATION=${FLEET_DURATION_SECS:-$((PHASE * 6))}
RATE=${FLEET_RATE:-150}
REPLICAS=3
TARGET_DIR=${CARGO_TARGET_DIR:-target}
JOB=tower-breaker-fleet
CLUSTER=fleet-e2e
SERVICES="orders catalog payments checkout"

NAME=fleet
# shellcheck source=.ci/lib.sh
. .ci/lib.sh
die() {
    echo "fleet: $*" >&2
    echo "fleet: 0 passed, 1 failed"
    exit 1
}

# ---------------------------------------------------------------------------
# Tools: curl, jq (JSON), python3 (free ports), prometheus. Installed with
# apt when missing.
# ---------------------------------------------------------------------------
install_missing curl:curl jq:jq python3:python3 prometheus:prometheus ||
    die "could not install the tools it needs"

# ---------------------------------------------------------------------------
# Processes, temp dir, cleanup
# ---------------------------------------------------------------------------
tmp=$(mktemp -d)
demo_pids=()
prom_pid=
central_pid=
cleanup() {
    local pid
    for pid in $central_pid $prom_pid "${demo_pids[@]}"; do
        if kill "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$tmp"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {
    local i
    for ((i = 1; i <= REPLICAS; i++)); do
        echo "--- mesh_demo replica $i log (last 15 lines)" >&2
        tail -n 15 "$tmp/demo-$i.log" >&2 2>/dev/null || true
    done
    echo "--- prometheus log (last 15 lines)" >&2
    tail -n 15 "$tmp/prometheus.log" >&2 2>/dev/null || true
    echo "--- central prometheus log (last 15 lines)" >&2
    tail -n 15 "$tmp/central.log" >&2 2>/dev/null || true
}

# wait_until TRIES INTERVAL WHAT PID CMD...: runs CMD until it succeeds,
# at most TRIES times, INTERVAL seconds apart, giving up early if PID died.
wait_until() {
    local tries=$1 interval=$2 what=$3 pid=$4 i
    shift 4
    for ((i = 0; i < tries; i++)); do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || { show_logs; die "$what: the process exited"; }
        sleep "$interval"
    done
    show_logs
    die "$what: not after $tries tries ${interval}s apart"
}

log "building mesh_demo"
cargo build --quiet --example mesh_demo --all-features || die "cargo build --example mesh_demo failed"
demo_bin="$TARGET_DIR/debug/examples/mesh_demo"
[ -x "$demo_bin" ] || die "no $demo_bin after the build"
t0=$SECONDS

# ---------------------------------------------------------------------------
# Three replicas, each with its own metrics port (its `instance`) and any
# free gateway port.
# ---------------------------------------------------------------------------
ports=()
while [ "${#ports[@]}" -lt $((REPLICAS + 2)) ]; do
    port=$(free_port 0)
    [ -n "$port" ] || die "no free port on 127.0.0.1"
    case " ${ports[*]} " in *" $port "*) continue ;; esac
    ports+=("$port")
done
metrics_ports=("${ports[@]:0:REPLICAS}")
prom_port=${ports[REPLICAS]}
central_port=${ports[REPLICAS + 1]}

log "starting $REPLICAS mesh_demo replicas: ${DURATION}s, phases of ${PHASE}s, $RATE req/s each, metrics on ports ${metrics_ports[*]}"
for ((i = 1; i <= REPLICAS; i++)); do
    "$demo_bin" --duration-secs "$DURATION" --phase-secs "$PHASE" --rate "$RATE" \
        --port "${metrics_ports[i - 1]}" --gateway-port 0 >"$tmp/demo-$i.log" 2>&1 &
    demo_pids+=($!)
done
started=$SECONDS

# Saved first: under pipefail, `grep -q` quitting early would fail curl.
serves_metrics() {
    curl -sf --max-time 2 "http://127.0.0.1:$1/metrics" -o "$tmp/ready-$1.prom" 2>/dev/null &&
        grep -q '^circuit_breaker_state' "$tmp/ready-$1.prom"
}
for ((i = 1; i <= REPLICAS; i++)); do
    wait_until 100 0.2 "replica $i serving http://127.0.0.1:${metrics_ports[i - 1]}/metrics" \
        "${demo_pids[i - 1]}" serves_metrics "${metrics_ports[i - 1]}"
done

# ---------------------------------------------------------------------------
# Prometheus: all replicas as one job, the recording rules, 1s intervals.
# ---------------------------------------------------------------------------
cp deploy/recording_rules.yml "$tmp/"
{
    cat <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
  external_labels:
    cluster: $CLUSTER
rule_files:
  - recording_rules.yml
scrape_configs:
  - job_name: $JOB
    static_configs:
      - targets:
EOF
    for port in "${metrics_ports[@]}"; do
        echo "          - 127.0.0.1:$port"
    done
} >"$tmp/prometheus.yml"

# The central server: deploy/federation/central.yml with the cluster servers
# replaced by this one and the intervals shortened.
sed -e "s/^          - prometheus\.eu-west-1\.example\.internal:9090$/          - 127.0.0.1:$prom_port/" \
    -e '/^          - prometheus\.us-east-1\.example\.internal:9090$/d' \
    -e 's/^  scrape_interval: 30s$/  scrape_interval: 1s/' \
    -e 's/^  scrape_timeout: 20s$/  scrape_timeout: 1s/' \
    -e 's/^  evaluation_interval: 30s$/  evaluation_interval: 1s/' \
    deploy/federation/central.yml >"$tmp/central.yml"
if ! grep -q "^          - 127.0.0.1:$prom_port$" "$tmp/central.yml" ||
    grep -q 'example\.internal' "$tmp/central.yml" ||
    [ "$(grep -c '^  scrape_interval: 1s$\|^  scrape_timeout: 1s$' "$tmp/central.yml")" -ne 2 ]; then
    die "deploy/federation/central.yml changed shape: expected the targets prometheus.{eu-west-1,us-east-1}.example.internal:9090 and global scrape_interval 30s, scrape_timeout 20s"
fi

start_prometheus() { # NAME PORT: starts prometheus with $tmp/NAME.yml, echoes nothing
    prometheus --config.file="$tmp/$1.yml" \
        --web.listen-address="127.0.0.1:$2" \
        --storage.tsdb.path="$tmp/$1-tsdb" \
        --storage.tsdb.retention.time=1h \
        --log.level=warn >"$tmp/$1.log" 2>&1 &
}
is_ready() { curl -sf --max-time 2 "http://127.0.0.1:$1/-/ready" >/dev/null 2>&1; }

log "starting prometheus on 127.0.0.1:$prom_port and the central one on 127.0.0.1:$central_port"
start_prometheus prometheus "$prom_port"
prom_pid=$!
start_prometheus central "$central_port"
central_pid=$!
wait_until 150 0.2 "prometheus ready on 127.0.0.1:$prom_port" "$prom_pid" is_ready "$prom_port"
wait_until 150 0.2 "central prometheus ready on 127.0.0.1:$central_port" "$central_pid" is_ready "$central_port"
api="http://127.0.0.1:$prom_port"
central_api="http://127.0.0.1:$central_port"

# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------
# query API EXPR: the JSON answer of an instant query (empty on error).
query() {
    curl -sf --max-time 5 -G "$1/api/v1/query" --data-urlencode "query=$2" 2>/dev/null || true
}
# holds API EXPR: true if EXPR returns a non-empty result (a comparison in
# PromQL filters out what does not hold).
holds() {
    query "$1" "$2" | jq -e '.status == "success" and (.data.result | length > 0)' >/dev/null 2>&1
}
# shows API EXPR: the result of EXPR on one line, for failure messages.
shows() {
    local out
    out=$(query "$1" "$2" | jq -r '
        if .status != "success" then "query failed"
        elif (.data.result | length) == 0 then "empty result"
        else [.data.result[] | "{\(.metric | to_entries | map("\(.key)=\(.value)") | join(","))} \(.value[1])"]
             | join("; ") end' 2>/dev/null) || true
    echo "${out:-no answer}"
}
oneline() { echo "$*" | tr -s ' \n' ' '; }

rule_count=$(grep -c '^ *- record:' deploy/recording_rules.yml)
rules_ok() {
    curl -sf --max-time 5 "$api/api/v1/rules" 2>/dev/null | jq -e --argjson n "$rule_count" '
        [.data.groups[].rules[] | select(.type == "recording")] as $r
        | ($r | length) == $n and ($r | all(.health == "ok"))' >/dev/null 2>&1
}

R=service:circuit_breaker_
# Checks latched while the replicas run: each passes once its expression
# holds at some poll. max_over_time over a subquery or a recorded series
# looks back over the whole run, so a poll that falls between two
# evaluations misses nothing. shows_[i] is the query whose result the
# report prints beside check i (the values behind it).
names=(
    "prometheus scrapes the $REPLICAS replicas as one job, one instance each"
    "recording rules loaded ($rule_count), every one evaluating without error"
    "every service is guarded by $REPLICAS breakers (instances:count)"
    "orders open on $REPLICAS of $REPLICAS replicas (open share 1) while catalog open on none (0), at one evaluation"
    "orders fleet error rate above 5% (healthy baseline 1%)"
    "orders rejection ratio above 10%, rejected calls in the status component"
    "orders transitions per minute above 0"
    "orders recovered: p50 and p95 recovery time finite, p50 <= p95"
)
exprs=(
    "count(count by (instance) (up{job=\"$JOB\"} == 1)) == $REPLICAS"
    ''
    "count(${R}instances:count{service=~\"${SERVICES// /|}\"} == $REPLICAS) == $(wc -w <<<"$SERVICES")"
    "max_over_time((
        ${R}open_instances:sum{service=\"orders\"} == $REPLICAS
        and on() ${R}open_instances:ratio{service=\"orders\"} == 1
        and on() ${R}open_instances:ratio{service=\"catalog\"} == 0
      )[5m:1s]) == $REPLICAS"
    "max_over_time(${R}requests_failed:ratio_rate5m{service=\"orders\"}[5m]) > 0.05"
    "max_over_time(${R}requests_rejected:ratio_rate5m{service=\"orders\"}[5m]) > 0.1
       and on() service_status:circuit_breaker_requests:rate5m{service=\"orders\",status=\"rejected\"} > 0"
    "max_over_time(${R}transitions:per_minute_rate5m{service=\"orders\"}[5m]) > 0"
    "${R}recovery_duration_seconds:p50_rate30m{service=\"orders\"} > 0
       and ${R}recovery_duration_seconds:p50_rate30m{service=\"orders\"} < 3600
       and on() ${R}recovery_duration_seconds:p95_rate30m{service=\"orders\"} < 3600
       and on() (${R}recovery_duration_seconds:p95_rate30m{service=\"orders\"}
                 - on(service) ${R}recovery_duration_seconds:p50_rate30m{service=\"orders\"}) >= 0"
)
PAIR='service=~"orders|catalog"'
shows_=(
    "sum by (instance) (up{job=\"$JOB\"})"
    ''
    "${R}instances:count"
    "max_over_time(${R}open_instances:sum{$PAIR}[5m])"
    "max_over_time(${R}requests_failed:ratio_rate5m{$PAIR}[5m])"
    "max_over_time(${R}requests_rejected:ratio_rate5m{$PAIR}[5m])"
    "max_over_time(${R}transitions:per_minute_rate5m{$PAIR}[5m])"
    "label_replace({__name__=~\"${R}recovery_duration_seconds:p.*\",service=\"orders\"}, \"q\", \"\$1\", \"__name__\", \".*:(p[0-9]+)_.*\")
       or sum by (service) (circuit_breaker_recovery_duration_seconds_count{service=\"orders\"})"
)
passed_at=()
for i in "${!names[@]}"; do passed_at[i]=; done

log "polling the Prometheus API while the replicas run (at most ${DURATION}s)"
deadline=$((started + DURATION + 10))
while :; do
    all=1
    for i in "${!names[@]}"; do
        [ -n "${passed_at[i]}" ] && continue
        if [ -z "${exprs[i]}" ]; then
            rules_ok && passed_at[i]=$((SECONDS - started))
        elif holds "$api" "${exprs[i]}"; then
            passed_at[i]=$((SECONDS - started))
        fi
        [ -n "${passed_at[i]}" ] || all=0
    done
    [ "$all" -eq 1 ] && break
    [ "$SECONDS" -ge "$deadline" ] && break
    alive=0
    for pid in "${demo_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    # The replicas are gone: one last round on what was recorded, then stop.
    if [ "$alive" -eq 0 ]; then
        deadline=$SECONDS
        continue
    fi
    sleep 1
done

# ---------------------------------------------------------------------------
# Final checks, over the whole run so far
# ---------------------------------------------------------------------------
catalog_clean="max_over_time(${R}open_instances:ratio{service=\"catalog\"}[5m]) == 0
  and on() max_over_time(${R}requests_failed:ratio_rate5m{service=\"catalog\"}[5m]) < 0.01
  and on() max_over_time(${R}requests_rejected:ratio_rate5m{service=\"catalog\"}[5m]) == 0
  and on() max_over_time(${R}transitions:per_minute_rate5m{service=\"catalog\"}[5m]) == 0"
catalog_shows="max_over_time({__name__=~\"${R}(open_instances:ratio|requests_failed:ratio_rate5m|requests_rejected:ratio_rate5m|transitions:per_minute_rate5m)\",service=\"catalog\"}[5m])"

# Federation: the recorded views and the open-state gauges arrive with the
# cluster label and the replicas' instance; other raw families stay behind.
federated_views="count(${R}open_instances:ratio{cluster=\"$CLUSTER\",service=~\"${SERVICES// /|}\"}) == $(wc -w <<<"$SERVICES")
  and on() count(count by (__name__) ({__name__=~\".+:circuit_breaker_.+\",cluster=\"$CLUSTER\"})) == $rule_count
  and on() count(service_status:circuit_breaker_requests:rate5m{cluster=\"$CLUSTER\",service=\"orders\"}) == 4
  and on() count(service_le:circuit_breaker_recovery_duration_seconds_bucket:rate30m{cluster=\"$CLUSTER\",service=\"orders\"}) > 0
  and on() count(count by (instance) (circuit_breaker_state{cluster=\"$CLUSTER\",job=\"$JOB\",state=\"open\"})) == $REPLICAS"
federated_raw="count({__name__=~\"circuit_breaker_.+\",__name__!=\"circuit_breaker_state\"})
  or count(circuit_breaker_state{state!=\"open\"})"
federation_ok=0
for _ in $(seq 1 20); do
    if holds "$central_api" "$federated_views"; then
        federation_ok=1
        break
    fi
    kill -0 "$central_pid" 2>/dev/null || break
    sleep 0.5
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
for i in "${!names[@]}"; do
    if [ -n "${passed_at[i]}" ]; then
        report "${names[i]}" 1 "after ${passed_at[i]}s${shows_[i]:+; now $(shows "$api" "${shows_[i]}")}"
    elif [ -z "${exprs[i]}" ]; then
        report "${names[i]}" 0 "never held; GET /api/v1/rules: $(curl -sf --max-time 5 "$api/api/v1/rules" |
            jq -c '[.data.groups[].rules[] | {name, health, lastError}]' 2>/dev/null)"
    else
        report "${names[i]}" 0 "never held; query: $(oneline "${exprs[i]}"); $(oneline "${shows_[i]}") = $(shows "$api" "${shows_[i]}")"
    fi
done
if holds "$api" "$catalog_clean"; then
    report "catalog (healthy) stayed at 0 in every fleet view: open share, error rate, rejections, transitions" 1
else
    report "catalog (healthy) stayed at 0 in every fleet view: open share, error rate, rejections, transitions" 0 \
        "query: $(oneline "$catalog_clean"); $catalog_shows = $(shows "$api" "$catalog_shows")"
fi
if [ "$federation_ok" -eq 1 ]; then
    report "central prometheus federates the recorded views and open-state gauges with cluster=\"$CLUSTER\"" 1
else
    report "central prometheus federates the recorded views and open-state gauges with cluster=\"$CLUSTER\"" 0 \
        "query: $(oneline "$federated_views"); {__name__=~\"service.*\"} = $(shows "$central_api" "count by (__name__, cluster) ({__name__=~\"service.*\"})")"
fi
if [ "$federation_ok" -eq 1 ] && ! holds "$central_api" "$federated_raw"; then
    report "central prometheus has no other raw circuit_breaker_* series" 1
else
    report "central prometheus has no other raw circuit_breaker_* series" 0 \
        "query: $(oneline "$federated_raw") = $(shows "$central_api" "$federated_raw")"
fi

[ "$failed" -eq 0 ] || show_logs
echo "fleet: $passed passed, $failed failed in $((SECONDS - t0))s (after the build)"
[ "$failed" -eq 0 ]
