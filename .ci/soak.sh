#!/usr/bin/env bash
# Load and soak test: the mesh demo under sustained extra load while its flaky
# upstream flaps.
#
#   bash .ci/soak.sh                  # 72 s of load, phases of 6 s (4 cycles)
#   SOAK_SECONDS=600 bash .ci/soak.sh # a longer soak
#
# Builds `mesh_demo` in release, starts it on 127.0.0.1 (short phases: the
# `orders` upstream goes healthy -> failing -> recovering every 3 phases; the
# demo's own load generator keeps running), then drives the gateway with
# `wrk` (Debian's package; installed with apt when missing) for SOAK_SECONDS
# with .ci/soak.lua, which classifies every response. While wrk runs it
# samples the demo's RSS (VmRSS) and open file descriptors every second. At
# the end it scrapes /metrics and checks:
#
#   1. wrk saw only expected responses: 200, the breaker's 503, and the flaky
#      upstream's own 500 forwarded by the gateway; no socket errors or
#      timeouts;
#   2. RSS is flat: the max over the last third of the run is at most
#      SOAK_RSS_RATIO (1.25) times the max over the middle third (the first
#      third is warm-up);
#   3. open file descriptors stay bounded: at most SOAK_MAX_FDS (512), and
#      the last third's max at most the middle third's max + 32;
#   4. the gateway's `orders` breaker (one key of its keyed layer) tripped
#      (closed -> open) and recovered (half_open -> closed) once per schedule
#      cycle (within 1), and every trip recovered (the final scrape waits for
#      the breaker to be closed); `catalog` never opened nor refused a call;
#   5. the demo stopped cleanly on SIGINT (status 0), with no transport
#      errors or skipped requests in its own load generator;
#   6. upstream churn (--churn-secs: a new key every SOAK_CHURN_SECS, 2 s,
#      each evicted after it idles; --series-expiry-secs
#      SOAK_SERIES_EXPIRY_SECS, 10 s) leaves the exposition flat: the
#      scraped line count's last-third max is at most SOAK_RSS_RATIO times
#      the middle third's, and the churned keys shown at once stay bounded
#      by those live, idle or inside their expiry (at most 16), while more
#      than that many came and went.
#
# Prints the figures (requests, rate, status counts, RSS series per third, fd
# counts, transitions per cycle), then `soak: N passed, M failed`; exits
# non-zero on any failure. Everything stays on 127.0.0.1; everything started
# here is stopped on exit.
#
# Phases shorter than 6 s make the count of trips per cycle unreliable: the
# demo's breakers back off 2 -> 4 -> 8 s while probes fail, and with 5 s
# phases a probe that fails early in the recovering phase can keep the
# breaker open into the next failing phase, through a whole cycle.
#
# The demo's log is kept in $CARGO_TARGET_DIR/soak-demo.log.
#
# Environment: SOAK_SECONDS (default 72), SOAK_PHASE_SECS (6),
# SOAK_CHURN_SECS (2), SOAK_SERIES_EXPIRY_SECS (10),
# SOAK_CONNECTIONS (16), SOAK_THREADS (1), SOAK_DELAY_MS (0: wrk's pause
# between two requests on a connection), SOAK_RATE (the demo's own load, 200
# req/s), SOAK_RSS_RATIO (1.25), SOAK_MAX_FDS (512), SOAK_PROFILE (release;
# `.ci/run` passes `dev` to reuse the debug build of the e2e step: a cold
# release build of the example takes about 2.5 min on the 2-core machine).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

SECS=${SOAK_SECONDS:-72}
PHASE=${SOAK_PHASE_SECS:-6}
CONNS=${SOAK_CONNECTIONS:-16}
THREADS=${SOAK_THREADS:-1}
RATE=${SOAK_RATE:-200}
RSS_RATIO=${SOAK_RSS_RATIO:-1.25}
MAX_FDS=${SOAK_MAX_FDS:-512}
PROFILE=${SOAK_PROFILE:-release}
CHURN=${SOAK_CHURN_SECS:-2}
EXPIRY=${SOAK_SERIES_EXPIRY_SECS:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
export SOAK_DELAY_MS=${SOAK_DELAY_MS:-0}

NAME=soak
. .ci/lib.sh
die() {
    echo "soak: $*" >&2
    echo "soak: 0 passed, 1 failed"
    exit 1
}
[ "$SECS" -ge 30 ] 2>/dev/null || die "SOAK_SECONDS must be a whole number >= 30 (got '$SECS')"
[ "$PHASE" -ge 6 ] 2>/dev/null || die "SOAK_PHASE_SECS must be a whole number >= 6 (got '$PHASE'): see the header"
[ "$SECS" -ge $((PHASE * 6)) ] || die "SOAK_SECONDS ($SECS) must cover at least two cycles (6 x SOAK_PHASE_SECS = $((PHASE * 6)))"

# ---------------------------------------------------------------------------
# Tools: wrk, curl, python3. Installed with apt when missing.
# ---------------------------------------------------------------------------
install_missing wrk:wrk curl:curl python3:python3 ||
    die "could not install the tools it needs"

# ---------------------------------------------------------------------------
# Processes, temp dir, cleanup
# ---------------------------------------------------------------------------
tmp=$(mktemp -d)
demo_pid=
wrk_pid=
cleanup() {
    for pid in $wrk_pid $demo_pid; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    cp "$tmp/demo.log" "$TARGET_DIR/soak-demo.log" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_log() {
    echo "--- mesh_demo log (last 30 lines)" >&2
    tail -n 30 "$tmp/demo.log" >&2 2>/dev/null
}

log "building mesh_demo ($PROFILE)"
build_started=$SECONDS
cargo build --quiet --profile "$PROFILE" --example mesh_demo --all-features ||
    die "cargo build --profile $PROFILE --example mesh_demo failed"
log "build took $((SECONDS - build_started)) s"
profile_dir=$PROFILE
[ "$PROFILE" = dev ] && profile_dir=debug
demo_bin="$TARGET_DIR/$profile_dir/examples/mesh_demo"
[ -x "$demo_bin" ] || die "no $demo_bin after the build"

metrics_port=$(free_port)
gateway_port=$(free_port)
[ -n "$metrics_port" ] && [ -n "$gateway_port" ] && [ "$metrics_port" != "$gateway_port" ] ||
    die "no free ports on 127.0.0.1"
token="soak-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
# The demo's own deadline is only a backstop: it is stopped with SIGINT once
# wrk is done and /metrics is scraped.
backstop=$((SECS + 60))

log "starting mesh_demo: phases of ${PHASE}s, its own load ${RATE} req/s, metrics on 127.0.0.1:$metrics_port, gateway on 127.0.0.1:$gateway_port"
"$demo_bin" --duration-secs "$backstop" --phase-secs "$PHASE" --rate "$RATE" \
    --churn-secs "$CHURN" --series-expiry-secs "$EXPIRY" \
    --port "$metrics_port" --gateway-port "$gateway_port" --token "$token" >"$tmp/demo.log" 2>&1 &
demo_pid=$!
demo_started=$(date +%s.%N)

metrics_url="http://127.0.0.1:$metrics_port/metrics"
scrape() { curl -sf --max-time 5 -H "Authorization: Bearer $token" "$metrics_url"; }
ready=0
for _ in $(seq 1 100); do
    if scrape 2>/dev/null | grep -q '^circuit_breaker_state' &&
        curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$gateway_port/catalog"; then
        ready=1
        break
    fi
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.2
done
[ "$ready" -eq 1 ] || { show_log; die "mesh_demo did not serve $metrics_url and its gateway within 20 s"; }

# ---------------------------------------------------------------------------
# Load, and samples of RSS and fds every second while it runs
# ---------------------------------------------------------------------------
log "wrk -t$THREADS -c$CONNS -d${SECS}s (pause ${SOAK_DELAY_MS} ms) against http://127.0.0.1:$gateway_port"
SOAK_COUNTS_FILE="$tmp/counts" wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --timeout 5s \
    -s .ci/soak.lua "http://127.0.0.1:$gateway_port" >"$tmp/wrk.log" 2>&1 &
wrk_pid=$!

: >"$tmp/samples"
: >"$tmp/exposition"
while kill -0 "$wrk_pid" 2>/dev/null; do
    # The exposition's size, and the churned keys it shows.
    if scrape >"$tmp/sample.prom" 2>/dev/null; then
        lines=$(grep -cv '^#' "$tmp/sample.prom")
        pods=$(grep -o 'service="pod-[0-9]*"' "$tmp/sample.prom" | sort -u | tr '\n' ' ')
        echo "$lines $pods" >>"$tmp/exposition"
    fi
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$demo_pid/status" 2>/dev/null)
    if [ -z "$rss" ]; then
        show_log
        die "mesh_demo (pid $demo_pid) exited while under load"
    fi
    fds=$(find "/proc/$demo_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    echo "$rss $fds" >>"$tmp/samples"
    sleep 1
done
wait "$wrk_pid"
wrk_status=$?
wrk_pid=

# Scrape once the orders breaker is closed again (the demo's own load keeps
# probing it), so that every trip so far must have been followed by a
# recovery: at most a phase of 8 s open plus a cycle.
log "waiting for the orders breaker to close, then scraping /metrics"
closed=0
for _ in $(seq 1 $((PHASE * 3 + 10))); do
    scrape >"$tmp/scrape.prom" 2>/dev/null || { show_log; die "could not scrape $metrics_url after the load"; }
    if grep -Eq '^circuit_breaker_state\{service="orders",state="closed"\} 1$' "$tmp/scrape.prom"; then
        closed=1
        break
    fi
    sleep 1
done
elapsed=$(python3 -c "import time; print(f'{time.time() - $demo_started:.1f}')")

log "stopping mesh_demo with SIGINT"
kill -INT "$demo_pid" 2>/dev/null
wait_exit "$demo_pid" 150 0.1
[ -n "$exit_code" ] && demo_pid=

# ---------------------------------------------------------------------------
# Checks and figures
# ---------------------------------------------------------------------------

echo
echo "--- figures"
# The checks are in python: one line per check, `ok<TAB>name<TAB>detail`,
# after the figures.
python3 - "$tmp/counts" "$tmp/samples" "$tmp/scrape.prom" "$elapsed" "$PHASE" \
    "$RSS_RATIO" "$MAX_FDS" "$wrk_status" "$closed" "$tmp/exposition" >"$tmp/checks" <<'PY'
import re, statistics, sys
exposition_path = sys.argv[10]

counts_path, samples_path, scrape_path = sys.argv[1:4]
elapsed, phase = float(sys.argv[4]), int(sys.argv[5])
rss_ratio, max_fds, wrk_status = float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
orders_closed = sys.argv[9] == "1"
checks = []
def check(ok, name, detail=""):
    checks.append((1 if ok else 0, name, detail))
def fig(line):
    print(line, file=sys.stderr)

# 1. wrk's counts.
counts, first_unexpected = {}, None
try:
    for line in open(counts_path):
        key, _, value = line.rstrip("\n").partition(" ")
        if key == "first_unexpected":
            first_unexpected = value
        else:
            counts[key] = int(value)
except OSError:
    pass
requests = counts.get("wrk_requests", 0)
secs = counts.get("wrk_duration_us", 0) / 1e6 or 1
statuses = {k[7:]: v for k, v in sorted(counts.items()) if k.startswith("status_")}
errors = {k[4:]: counts.get(k, 0) for k in ("err_connect", "err_read", "err_write", "err_timeout")}
fig(f"wrk: {requests} requests in {secs:.1f} s ({requests / secs:.0f} req/s); "
    f"statuses {statuses}; 503s with Retry-After {counts.get('retry_after', 0)}; "
    f"socket errors {errors}; latency p50 {counts.get('latency_p50_us', 0) / 1e3:.1f} ms, "
    f"p99 {counts.get('latency_p99_us', 0) / 1e3:.1f} ms, max {counts.get('latency_max_us', 0) / 1e3:.1f} ms")
unexpected = counts.get("unexpected", 0)
answered = sum(statuses.values())
check(wrk_status == 0 and requests > 0 and unexpected == 0 and answered > 0,
      "wrk saw only 200, the breaker's 503 and the upstream's injected 500",
      f"{requests} requests, {unexpected} unexpected"
      + (f", first: {first_unexpected}" if first_unexpected else "")
      + ("" if wrk_status == 0 else f", wrk exited with {wrk_status}"))
check(sum(errors.values()) == 0, "no connection errors or timeouts",
      ", ".join(f"{k} {v}" for k, v in errors.items()))

# 2 and 3. RSS and fds, per third.
samples = [tuple(map(int, l.split())) for l in open(samples_path) if l.strip()]
def thirds(xs):
    n = len(xs) // 3
    return xs[:n], xs[n:2 * n], xs[2 * n:]
def summary(xs):
    return f"min {min(xs)} / median {statistics.median(xs):g} / max {max(xs)}" if xs else "none"
if len(samples) >= 9:
    rss = [s[0] for s in samples]
    fds = [s[1] for s in samples]
    r1, r2, r3 = thirds(rss)
    f1, f2, f3 = thirds(fds)
    for name, a in (("warm-up", r1), ("middle", r2), ("last", r3)):
        fig(f"RSS (KiB), {name} third ({len(a)} samples): {summary(a)}")
    for name, a in (("warm-up", f1), ("middle", f2), ("last", f3)):
        fig(f"open fds, {name} third: {summary(a)}")
    ratio = max(r3) / max(r2)
    check(ratio <= rss_ratio, f"RSS flat (last third max <= {rss_ratio} x middle third max)",
          f"{max(r3)} KiB vs {max(r2)} KiB, ratio {ratio:.3f}")
    check(max(fds) <= max_fds and max(f3) <= max(f2) + 32, "open file descriptors bounded",
          f"max {max(fds)} <= {max_fds}; last third max {max(f3)} vs middle {max(f2)}")
else:
    check(False, "RSS flat", f"only {len(samples)} samples")
    check(False, "open file descriptors bounded", f"only {len(samples)} samples")

# 4. Transitions of the gateway's keyed breakers.
metric = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')
label = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
def value(name, **want):
    total = 0.0
    for line in open(scrape_path):
        m = metric.match(line.strip())
        if not m or m.group(1) != name:
            continue
        labels = dict(label.findall(m.group(2)))
        if all(labels.get(k) == v for k, v in want.items()):
            total += float(m.group(3))
    return int(total)
t = "circuit_breaker_transitions_total"
trips = value(t, service="orders", **{"from": "closed", "to": "open"})
reopens = value(t, service="orders", **{"from": "half_open", "to": "open"})
recoveries = value(t, service="orders", **{"from": "half_open", "to": "closed"})
rejected = value("circuit_breaker_rejections_total", service="orders")
rejected_half_open = value("circuit_breaker_rejections_total", service="orders", state="half_open")
cycles = elapsed / (3 * phase)
full = int(cycles)
fig(f"schedule: {elapsed:.1f} s of phases of {phase} s = {cycles:.2f} cycles "
    f"(healthy -> failing -> recovering)")
fig(f"orders breaker (gateway -> orders, keyed): {trips} trips (closed -> open), {recoveries} recoveries "
    f"(half_open -> closed), {reopens} failed probes (half_open -> open), {rejected} rejections "
    f"({rejected_half_open} while half-open: no Retry-After then); "
    f"per full cycle: {trips / max(full, 1):.2f} trips, {recoveries / max(full, 1):.2f} recoveries")
check(abs(trips - full) <= 1 and trips >= 1,
      "orders breaker opened once per cycle (within 1)", f"{trips} trips, {full} full cycles")
check(orders_closed and abs(recoveries - full) <= 1 and recoveries == trips,
      "orders breaker recovered once per cycle (within 1), after every trip",
      f"{recoveries} recoveries, {trips} trips, {full} full cycles"
      + ("" if orders_closed else f"; still not closed {elapsed:.0f} s in"))
catalog_opened = value(t, service="catalog", to="open")
catalog_rejected = value("circuit_breaker_rejections_total", service="catalog")
catalog_ok = value("circuit_breaker_requests_total", service="catalog", status="success")
check(catalog_opened == 0 and catalog_rejected == 0 and catalog_ok > 0,
      "catalog breaker never opened nor refused a call under the same load",
      f"{catalog_opened} opens, {catalog_rejected} rejections, {catalog_ok} successes")

# 6. The exposition under upstream churn.
exposition = []
for line in open(exposition_path):
    parts = line.split()
    if parts:
        exposition.append((int(parts[0]), set(parts[1:])))
if len(exposition) >= 9:
    sizes = [n for n, _ in exposition]
    e1, e2, e3 = thirds(sizes)
    for name, a in (("warm-up", e1), ("middle", e2), ("last", e3)):
        fig(f"/metrics lines, {name} third ({len(a)} scrapes): {summary(a)}")
    shown = max(len(p) for _, p in exposition)
    seen = set().union(*(p for _, p in exposition))
    fig(f"churned keys: {len(seen)} came and went, at most {shown} shown at once")
    ratio = max(e3) / max(e2)
    check(ratio <= rss_ratio and shown <= 16 and len(seen) > 16,
          f"exposition flat under key churn (last third max <= {rss_ratio} x middle; at most 16 churned keys shown)",
          f"{max(e3)} vs {max(e2)} lines, ratio {ratio:.3f}; {shown} keys shown at once, {len(seen)} seen")
else:
    check(False, "exposition flat under key churn", f"only {len(exposition)} scrapes")

for ok, name, detail in checks:
    print(f"{ok}\t{name}\t{detail}")
PY
while IFS=$'\t' read -r ok name detail; do
    report "$name" "$ok" "$detail"
done <"$tmp/checks"
[ -s "$tmp/checks" ] || report "figures computed" 0 "the python checks failed; see above"

# 5. The demo's own exit and load generator.
summary=$(grep -E '^ *(orders|catalog|frontend): ' "$tmp/demo.log")
bad=$(echo "$summary" | awk '{ for (i = 1; i <= NF; i++) if (($(i) == "errors," && $(i-1) != 0) || ($(i) == "skipped" && $(i-1) != 0)) print }')
if [ "$exit_code" = 0 ] && [ -n "$summary" ] && [ -z "$bad" ]; then
    report "mesh_demo stopped cleanly on SIGINT; its own load saw no transport errors or skips" 1
else
    report "mesh_demo stopped cleanly on SIGINT; its own load saw no transport errors or skips" 0 \
        "status ${exit_code:-still running}; ${bad:-${summary:-no summary lines}}"
fi
echo "--- mesh_demo's own load generator"
echo "$summary"

[ "$failed" -eq 0 ] || show_log
echo "soak: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
