# Shared by the CI scripts: logging, installing missing tools, free ports,
# PASS/FAIL reporting, waiting for a process. Source it after setting NAME
# (the prefix of error and summary lines).

log() { printf '==> %s\n' "$*"; }

# install_missing COMMAND:PACKAGE ...: installs, with apt, the package of
# every command not on PATH. The prometheus package's postinst would start
# a daemon on :9090, so service starts are denied during the install
# (unless the machine has a policy-rc.d of its own).
install_missing() {
    local pkgs=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || pkgs+=("${pair#*:}")
    done
    [ "${#pkgs[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "$NAME: missing ${pkgs[*]}; install them (Debian: apt-get install --no-install-recommends ${pkgs[*]})" >&2
        return 1
    fi
    log "installing ${pkgs[*]} with apt-get"
    local policy=/usr/sbin/policy-rc.d own_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
    } || rc=$?
    [ "$own_policy" -eq 1 ] && rm -f "$policy"
    [ "$rc" -eq 0 ] || return "$rc"
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 ||
            { echo "$NAME: ${pair%%:*} still not found after install" >&2; return 1; }
    done
}

# free_port [PREFERRED]: a free TCP port on 127.0.0.1, the preferred one if
# it is free.
free_port() {
    python3 - "${1:-0}" <<'PY'
import socket, sys
preferred = int(sys.argv[1])
for port in (preferred, 0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(s.getsockname()[1])
        break
    except OSError:
        continue
    finally:
        s.close()
PY
}

# report NAME OK DETAIL: one PASS or FAIL line, counted in passed/failed.
passed=0
failed=0
report() {
    if [ "$2" -eq 1 ]; then
        passed=$((passed + 1))
        printf 'PASS  %s%s\n' "$1" "${3:+ ($3)}"
    else
        failed=$((failed + 1))
        printf 'FAIL  %s%s\n' "$1" "${3:+ ($3)}"
    fi
}

# wait_exit PID TRIES INTERVAL: waits for PID to exit, polling TRIES times
# every INTERVAL seconds; sets exit_code (empty if it did not exit).
wait_exit() {
    exit_code=
    local i
    for ((i = 0; i < $2; i++)); do
        if ! kill -0 "$1" 2>/dev/null; then
            wait "$1"
            exit_code=$?
            return 0
        fi
        sleep "$3"
    done
}
