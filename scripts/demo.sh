#!/usr/bin/env bash
# The mapguard demo (`make demo`), on embedded defaults:
#   1. the runtime enforcer catching a racy Go program (audit, kill, stop),
#   2. the admission webhook judging sample AdmissionReviews over HTTPS,
#   3. the CI command judging sample manifests.
# Needs root (BPF). It builds what it shows, as it goes: the enforcer (the
# `demo` profile of Cargo.toml: no LTO, no debug info) and its one racy Go
# program (one Go toolchain, scripts/demo-go.sh) before part 1, the webhook,
# certs-gen and the CI command before part 2. With MAPGUARD_BIN set, the
# binaries there are used and nothing of mapguard is built.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MAPGUARD_BIN:-$root/target/demo}
cargo=${CARGO:-cargo}
build() { # crate...
  [ -n "${MAPGUARD_BIN:-}" ] && return 0
  local args=() started=$SECONDS
  for c in "$@"; do args+=(-p "$c"); done
  echo "building $* (cargo --profile demo)"
  (cd "$root" && "$cargo" build --quiet --profile demo "${args[@]}")
  echo "built in $((SECONDS - started)) s"
}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; }
pretty() { python3 -c 'import json,sys
for line in sys.stdin:
    line=line.strip()
    if line: print(json.dumps(json.loads(line), indent=2))'; }

if [ "$(id -u)" -ne 0 ]; then
  echo "the enforcer loads BPF programs: run the demo as root (sudo make demo)" >&2
  exit 1
fi

build mapguard-enforcer
go=$(bash "$root/scripts/demo-go.sh")
racy=$root/target/demo-go/delete_assign
echo "building tests/go/racy/delete_assign with $("$go" version | cut -d' ' -f3)"
(cd "$root/tests/go" && GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=off CGO_ENABLED=0 \
  "$go" build -o "$racy" ./racy/delete_assign)

bold "1a. A Go program with a map race, on its own"
show "$racy"
set +e; "$racy" >/dev/null 2>"$work/plain.err"; st=$?; set -e
grep -m1 'fatal error' "$work/plain.err" || true
echo "exit status $st: the Go runtime gave up (or the race went unnoticed)."

bold "1b. What the enforcer will probe in it"
show "mapguard-enforcer scan $racy"
"$bin/mapguard-enforcer" scan "$racy" | sed -n 1,30p

bold "1c. Audit mode: every violation reported, the program keeps going"
show "mapguard-enforcer exec --mode audit --events $work/audit.jsonl -- $racy"
set +e; "$bin/mapguard-enforcer" exec --mode audit --events "$work/audit.jsonl" -- "$racy" 2>"$work/audit.err" >/dev/null; st=$?; set -e
grep -m3 '^mapguard' "$work/audit.err" || true
echo "first violation report (exit status $st):"
head -n1 "$work/audit.jsonl" | pretty

bold "1d. Kill mode: the racing process is gone before the runtime's own fatal error"
show "mapguard-enforcer exec --mode kill -- $racy"
set +e; "$bin/mapguard-enforcer" exec --mode kill --events "$work/kill.jsonl" -- "$racy" 2>"$work/kill.err" >/dev/null; st=$?; set -e
grep -m1 '^mapguard' "$work/kill.err" || true
echo "exit status $st (137 = SIGKILL)"
if grep -q 'fatal error: concurrent map' "$work/kill.err"; then echo "unexpected: the runtime printed its fatal error"; fi

echo
build mapguard-webhook mapguard-certs-gen mapguard-cli
bold "2. The admission webhook, over HTTPS on 127.0.0.1"
show "mapguard-certs-gen --out-dir $work/certs --service mapguard-webhook --namespace mapguard-system"
"$bin/mapguard-certs-gen" --out-dir "$work/certs" --service mapguard-webhook --namespace mapguard-system
port=$((20000 + RANDOM % 20000)); mport=$((port + 1))
show "mapguard-webhook --listen 127.0.0.1:$port --metrics-listen 127.0.0.1:$mport --tls-cert .../tls.crt --tls-key .../tls.key --namespaces-file tests/data/admission/namespaces.yaml"
"$bin/mapguard-webhook" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
  --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
  --namespaces-file "$root/tests/data/admission/namespaces.yaml" 2>"$work/webhook.log" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$mport/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$mport/readyz" >/dev/null || { cat "$work/webhook.log"; exit 1; }
review() { # endpoint fixture
  curl -fsS --cacert "$work/certs/ca.crt" -H 'Content-Type: application/json' \
    --data-binary @"$root/tests/data/admission/$2" "https://localhost:$port/$1" | python3 -c '
import base64,json,sys
r=json.load(sys.stdin)["response"]
out={"allowed": r["allowed"]}
if r.get("status",{}).get("message"): out["message"]=r["status"]["message"]
if r.get("warnings"): out["warnings"]=r["warnings"]
if r.get("patch"): out["patch"]=json.loads(base64.b64decode(r["patch"]))
print(json.dumps(out, indent=2))'
}
for case in "validate pod-privileged-create.json a privileged Pod" \
            "mutate deployment-kill-namespace-create.json a Deployment in a namespace labelled mapguard.io/mode=kill" \
            "validate pod-plain-create.json a plain Pod"; do
  set -- $case; ep=$1; fx=$2; shift 2
  bold "POST /$ep: $*"
  review "$ep" "$fx"
done
echo; echo "metrics (excerpt: the requests just made; every series is listed, most at 0):"
curl -fs "http://127.0.0.1:$mport/metrics" | awk '/^mapguard_admission_requests_total/ && $NF != 0' | sed -n 1,6p || true

bold "3. The same policies in CI: mapguard check"
for dir in allowed denied; do
  show "mapguard check -f tests/manifests/$dir --namespaces tests/data/namespaces.yaml"
  set +e; "$bin/mapguard" check -f "$root/tests/manifests/$dir" --namespaces "$root/tests/data/namespaces.yaml"; st=$?; set -e
  echo "exit status $st (0 = allowed, 1 = something was denied)"
done
