#!/usr/bin/env bash
# The live status page, checked in a real browser: Debian's Chromium,
# headless, loads /breakers from a running mesh_demo and this script reads
# what a person would see (the DOM after the page's scripts ran).
#
#   bash .ci/status-page.sh
#
# Asserts that the page's routes are refused without a credential; that the
# orders tile reads "open" during the failing phase and "closed" after the
# recovery; that the graph has the demo's edges; that a scoped token sees
# only its breakers and a redacted one no real name; that the page says when
# its data stops answering. Writes a screenshot taken during the failing
# phase to $STATUS_SCREENSHOT (default target/status-page.png). Everything
# stays on 127.0.0.1; bounded: about a minute once the example is built.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PHASE=${STATUS_PHASE_SECS:-8}
DURATION=$((PHASE * 7))
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SCREENSHOT=${STATUS_SCREENSHOT:-$TARGET_DIR/status-page.png}

NAME=status-page
. .ci/lib.sh
die() {
    echo "status-page: $*" >&2
    echo "status-page: 0 passed, 1 failed"
    exit 1
}

install_missing curl:curl python3:python3 chromium:chromium ||
    die "could not install the tools it needs"

tmp=$(mktemp -d)
demo_pid=
cleanup() {
    [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null
    [ -n "${STATUS_KEEP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building mesh_demo"
cargo build --quiet --example mesh_demo --all-features || die "cargo build --example mesh_demo failed"
demo_bin="$TARGET_DIR/debug/examples/mesh_demo"

port=$(free_port 19464)
token="page-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
orders_token="orders-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
redacted_token="redacted-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
log "starting mesh_demo: ${DURATION}s, phases of ${PHASE}s, status page on 127.0.0.1:$port"
"$demo_bin" --duration-secs "$DURATION" --phase-secs "$PHASE" --port "$port" --gateway-port 0 \
    --token "$token" \
    --viewer "$orders_token=services=orders" \
    --viewer "$redacted_token=services=*;view=redacted" >"$tmp/demo.log" 2>&1 &
demo_pid=$!
started=$SECONDS
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
    curl -sf --max-time 2 -u "x:$token" "$base/breakers.json" >/dev/null 2>&1 && break
    sleep 0.2
done

# page TOKEN [QUERY]: the DOM of /breakers once its scripts ran, the token
# given as the Basic password in the URL, as a person's browser would after
# its login prompt.
page() {
    timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$tmp/profile-$RANDOM" --virtual-time-budget=3000 \
        --dump-dom "http://x:$1@127.0.0.1:$port/breakers${2:-}" 2>>"$tmp/chromium.log"
}

# tiles: "name state-as-shown" per tile, then "edge from to" per graph edge,
# then "banner text", read from the DOM on stdin.
tiles() {
    python3 -c '
import sys
from html.parser import HTMLParser
class Page(HTMLParser):
    def __init__(self):
        super().__init__(); self.name = None; self.field = None; self.banner = False; self.out = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs); cls = (a.get("class") or "").split()
        if "tile" in cls: self.name = a.get("data-name")
        if "state" in cls and self.name: self.field = "state"
        if "edge" in cls: self.out.append("edge %s %s" % (a.get("data-from"), a.get("data-to")))
        if a.get("id") == "banner": self.banner = True
    def handle_data(self, data):
        if self.field == "state":
            self.out.append("tile %s %s" % (self.name, data.strip())); self.field = None; self.name = None
        elif self.banner:
            self.out.append("banner " + data.strip()); self.banner = False
p = Page(); p.feed(sys.stdin.read()); print("\n".join(p.out))'
}

shot() {
    timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$tmp/profile-shot" --timeout=3500 --hide-scrollbars \
        --window-size=1280,900 --screenshot="$1" "http://x:$token@127.0.0.1:$port/breakers" \
        >/dev/null 2>>"$tmp/chromium.log"
}

# No credential: the page and its data are refused.
code_page=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/breakers")
code_json=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/breakers.json")
if [ "$code_page" = 401 ] && [ "$code_json" = 401 ]; then
    report "the page's routes are refused without a credential (401)" 1
else
    report "the page's routes are refused without a credential (401)" 0 "page $code_page, data $code_json"
fi

# The failing phase: orders reads "open" in its tile, as a person sees it.
opened=
while [ $((SECONDS - started)) -lt $((PHASE * 4)) ]; do
    page "$token" | tiles >"$tmp/view"
    if grep -qx 'tile orders open' "$tmp/view"; then
        opened=$((SECONDS - started))
        shot "$tmp/shot.png"
        break
    fi
    sleep 1
done
if [ -n "$opened" ]; then
    report "the orders tile reads \"open\" during the failing phase" 1 "after ${opened}s"
else
    report "the orders tile reads \"open\" during the failing phase" 0 "$(grep orders "$tmp/view")"
fi
missing=
for edge in "gateway orders" "gateway catalog" "frontend checkout" "checkout payments"; do
    grep -qx "edge $edge" "$tmp/view" || missing="$missing [$edge]"
done
if [ -z "$missing" ]; then
    report "the graph has the demo's edges" 1
else
    report "the graph has the demo's edges" 0 "missing$missing"
fi
if grep -q '^banner Live' "$tmp/view"; then
    report "the page says it is live" 1
else
    report "the page says it is live" 0 "$(grep '^banner' "$tmp/view")"
fi

# Scopes apply to the page.
page "$orders_token" | tiles >"$tmp/orders"
if [ "$(grep '^tile' "$tmp/orders" | cut -d' ' -f2 | sort -u)" = orders ] && ! grep -q '^edge' "$tmp/orders"; then
    report "a scoped token (services=orders) sees only the orders tile" 1
else
    report "a scoped token (services=orders) sees only the orders tile" 0 "$(tr '\n' ';' <"$tmp/orders")"
fi
page "$redacted_token" | tiles >"$tmp/redacted"
leaked=$(grep -E '^tile (orders|payments|catalog|checkout) ' "$tmp/redacted")
if [ "$(grep -c '^tile svc-' "$tmp/redacted")" -ge 4 ] && [ -z "$leaked" ] && ! grep -q '^edge' "$tmp/redacted"; then
    report "a redacted token sees hashed names and no edge" 1
else
    report "a redacted token sees hashed names and no edge" 0 "$(tr '\n' ';' <"$tmp/redacted")"
fi

# Its data not answering: the page says so.
page "$token" "?json=not-there.json" | tiles >"$tmp/down"
if grep -q '^banner The endpoint is not answering' "$tmp/down"; then
    report "the page says when its data stops answering" 1
else
    report "the page says when its data stops answering" 0 "$(grep '^banner' "$tmp/down")"
fi

# The recovery: orders reads "closed" again.
closed=
while [ $((SECONDS - started)) -lt $((DURATION - 2)) ]; do
    page "$token" | tiles >"$tmp/view"
    if [ -n "$opened" ] && grep -qx 'tile orders closed' "$tmp/view"; then
        closed=$((SECONDS - started))
        break
    fi
    sleep 1
done
if [ -n "$closed" ]; then
    report "the orders tile reads \"closed\" after the recovery" 1 "after ${closed}s"
else
    report "the orders tile reads \"closed\" after the recovery" 0 "$(grep orders "$tmp/view")"
fi

if [ -s "$tmp/shot.png" ] && head -c 8 "$tmp/shot.png" | grep -q PNG; then
    mkdir -p "$(dirname "$SCREENSHOT")" && cp "$tmp/shot.png" "$SCREENSHOT"
    report "a screenshot of the failing phase was written" 1 "$SCREENSHOT"
else
    report "a screenshot of the failing phase was written" 0
fi
if [ "$failed" -gt 0 ]; then
    echo "--- chromium (last 10 lines)" >&2
    grep -v -e dbus -e 'Fontconfig' "$tmp/chromium.log" | tail -n 10 >&2
fi
echo "status-page: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
