#!/usr/bin/env bash
# The minimum supported Rust version, checked against the locked tree: for
# each feature set, the highest `rust-version` among the crates a build of
# tower-breaker compiles (normal and build dependencies, Linux x86_64,
# features as Cargo's resolver 2 resolves them). With the default features it
# must equal the manifest's `rust-version`; with each optional feature it must
# equal what README.md's "Minimum Rust" table says. So the declared minimum
# is the real one, and a dependency update that raises it fails here.
# Needs python3 (installed with apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=msrv
. .ci/lib.sh
install_missing python3:python3

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cargo metadata --format-version 1 --locked >"$tmp/metadata.json"
# feature set name | cargo flags
sets=(
    "default|"
    "no default features|--no-default-features"
    "grpc|--features grpc"
    "axum|--features axum"
    "tower-http|--features tower-http"
    "hyper-util|--features hyper-util"
    "tonic|--features tonic"
    "all features|--all-features"
)
for entry in "${sets[@]}"; do
    label=${entry%%|*}
    flags=${entry#*|}
    # shellcheck disable=SC2086 # flags are words
    cargo tree --locked $flags -e normal,build --target x86_64-unknown-linux-gnu \
        --prefix none -f '{p}' >"$tmp/tree-$label.txt"
done

python3 - "$tmp" README.md <<'PY'
import json, re, sys
from pathlib import Path

tmp, readme = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
meta = json.loads((tmp / "metadata.json").read_text())
versions = {(p["name"], p["version"]): p.get("rust_version") for p in meta["packages"]}
root = next(p for p in meta["packages"] if p["name"] == "tower-breaker")
declared = root["rust_version"]

def key(v):
    return tuple(int(x) for x in v.split("."))

def short(v):
    return ".".join(v.split(".")[:2])

# README: | `feature` | 1.88 | ... rows between the "Minimum Rust" heading
# and the next blank line after the table.
section = readme.split("Minimum Rust", 1)
if len(section) < 2:
    sys.exit("msrv: README.md has no 'Minimum Rust' table")
stated = {}
for line in section[1].splitlines()[1:]:
    m = re.match(r"\|\s*(?:`([^`]+)`|([a-z ]+?))\s*\|\s*(1\.\d+)\s*\|", line)
    if m:
        stated[(m.group(1) or m.group(2)).strip()] = m.group(3)
    elif stated and not line.startswith("|"):
        break

failed = False
for tree in sorted(tmp.glob("tree-*.txt")):
    label = tree.stem[len("tree-"):]
    needs = []
    for line in tree.read_text().splitlines():
        m = re.match(r"(\S+) v(\S+)", line)
        if not m or m.group(1) == "tower-breaker":
            continue
        rv = versions.get((m.group(1), m.group(2)))
        if rv:
            needs.append((key(rv), m.group(1), m.group(2)))
    need = max(needs) if needs else ((0,), "-", "-")
    need_s = ".".join(map(str, need[0][:2]))
    expected = short(declared) if label in ("default", "no default features") else stated.get(label)
    if label == "default" and stated.get("default") != short(declared):
        failed = True
        print(f"msrv: FAIL README.md's Minimum Rust table says {stated.get('default')} for the "
              f"default features, Cargo.toml's rust-version says {short(declared)}", file=sys.stderr)
    crates = len({l for l in tree.read_text().splitlines() if l.strip()})
    print(f"msrv: {label:20} needs Rust {need_s} ({need[1]} {need[2]}), "
          f"{crates} crates; declared {expected}")
    if label == "no default features":
        ok = key(need_s) <= key(short(declared))
    else:
        ok = expected is not None and key(need_s) == key(expected)
    if not ok:
        failed = True
        where = "Cargo.toml's rust-version" if label in ("default", "no default features") \
            else "README.md's Minimum Rust table"
        print(f"msrv: FAIL {label}: the locked tree needs {need_s}, {where} says {expected}",
              file=sys.stderr)
if failed:
    sys.exit(1)
print(f"msrv: rust-version {declared} is the real minimum")
PY
