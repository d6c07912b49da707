#!/usr/bin/env bash
# End-to-end test of native histograms: mesh_demo started with
# --native-histograms, scraped by Debian's Prometheus (2.42) started with
# --enable-feature=native-histograms, which asks for the protobuf format.
#
#   bash .ci/e2e-native.sh
#
# Asserts through the Prometheus HTTP API that
#   - histogram_quantile(0.9, sum(rate(circuit_breaker_request_duration_seconds[1m])))
#     returns a number: the duration histogram arrived as native series;
#   - no circuit_breaker_request_duration_seconds_bucket series exists (it
#     was not ingested as a classic histogram);
#   - the recovery histogram kept its classic buckets (the recording rules
#     use them);
# and that a plain text scrape of the same demo still has classic buckets.
# Reuses the dev build of .ci/e2e-prometheus.sh. Every wait is a bounded
# poll; everything started here is stopped on exit. About 20 s after the
# build. Prints `native: N passed, M failed`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

TARGET_DIR=${CARGO_TARGET_DIR:-target}
PHASE=${NATIVE_PHASE_SECS:-4}
DURATION=${NATIVE_DURATION_SECS:-60}

NAME=native
# shellcheck source=.ci/lib.sh
. .ci/lib.sh
die() {
    echo "native: $*" >&2
    echo "native: 0 passed, 1 failed"
    exit 1
}

install_missing curl:curl python3:python3 prometheus:prometheus ||
    die "could not install the tools it needs"

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
    echo "--- mesh_demo log (last 20 lines)" >&2
    tail -n 20 "$tmp/demo.log" >&2 2>/dev/null
    echo "--- prometheus log (last 15 lines)" >&2
    tail -n 15 "$tmp/prometheus.log" >&2 2>/dev/null
}

log "building mesh_demo"
cargo build --quiet --example mesh_demo --all-features || die "cargo build --example mesh_demo failed"
demo_bin="$TARGET_DIR/debug/examples/mesh_demo"

metrics_port=$(free_port 0)
prom_port=$(free_port 0)
log "starting mesh_demo --native-histograms on 127.0.0.1:$metrics_port"
"$demo_bin" --native-histograms --duration-secs "$DURATION" --phase-secs "$PHASE" \
    --port "$metrics_port" --gateway-port 0 >"$tmp/demo.log" 2>&1 &
demo_pid=$!
metrics_url="http://127.0.0.1:$metrics_port/metrics"
ready=0
for _ in $(seq 1 100); do
    if curl -sf --max-time 2 "$metrics_url" -o "$tmp/ready.prom" 2>/dev/null &&
        grep -q '^circuit_breaker_state' "$tmp/ready.prom"; then
        ready=1
        break
    fi
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.2
done
[ "$ready" -eq 1 ] || { show_logs; die "mesh_demo did not serve $metrics_url within 20 s"; }

cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: native
    static_configs:
      - targets: ["127.0.0.1:$metrics_port"]
EOF
log "starting prometheus --enable-feature=native-histograms on 127.0.0.1:$prom_port"
prometheus --config.file="$tmp/prometheus.yml" \
    --enable-feature=native-histograms \
    --web.listen-address="127.0.0.1:$prom_port" \
    --storage.tsdb.path="$tmp/tsdb" \
    --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!
api="http://127.0.0.1:$prom_port"
ready=0
for _ in $(seq 1 150); do
    curl -sf --max-time 2 "$api/-/ready" >/dev/null 2>&1 && { ready=1; break; }
    kill -0 "$prom_pid" 2>/dev/null || break
    sleep 0.2
done
[ "$ready" -eq 1 ] || { show_logs; die "prometheus did not become ready within 30 s"; }

# `value EXPR`: the first sample's value of an instant query, or nothing.
value() {
    curl -sf --max-time 5 -G "$api/api/v1/query" --data-urlencode "query=$1" 2>/dev/null |
        python3 -c 'import json, sys
d = json.load(sys.stdin)
r = d.get("data", {}).get("result", [])
print(r[0]["value"][1] if r else "")'
}

quantile='histogram_quantile(0.9, sum(rate(circuit_breaker_request_duration_seconds[1m])))'
p90=
deadline=$((SECONDS + 45))
while [ "$SECONDS" -lt "$deadline" ]; do
    p90=$(value "$quantile")
    case "$p90" in
    "" | NaN | +Inf | -Inf) p90= ;;
    *) break ;;
    esac
    sleep 1
done
if [ -n "$p90" ]; then
    report "native: $quantile returns a number" 1 "$p90 s"
else
    show_logs
    report "native: $quantile returns a number" 0 "got: $(value "$quantile")"
fi
classic=$(value 'count(circuit_breaker_request_duration_seconds_bucket)')
if [ -z "$classic" ]; then
    report "the duration histogram was ingested as native series only (no _bucket series)" 1
else
    report "the duration histogram was ingested as native series only (no _bucket series)" 0 "$classic _bucket series"
fi
recovery=$(value 'count(circuit_breaker_recovery_duration_seconds_bucket)')
if [ -n "$recovery" ] && [ "$recovery" != 0 ]; then
    report "the recovery histogram kept its classic buckets" 1 "$recovery series"
else
    report "the recovery histogram kept its classic buckets" 0 "none"
fi
# Saved first: `grep -q` quits at its first match, and under pipefail the
# SIGPIPE that gives curl would fail the check.
if curl -sf --max-time 5 "$metrics_url" -o "$tmp/text.prom" &&
    grep -q '^circuit_breaker_request_duration_seconds_bucket{' "$tmp/text.prom"; then
    report "a text scrape of the same demo still has classic duration buckets" 1
else
    report "a text scrape of the same demo still has classic duration buckets" 0
fi

[ "$failed" -eq 0 ] || show_logs
echo "native: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
