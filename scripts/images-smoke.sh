#!/usr/bin/env bash
# Runs each image once in a throwaway containerd (`make images-smoke`, root):
# starts containerd (bookworm's 1.6, runc) on a socket of its own under a
# temporary folder, lets scripts/images.sh import the images into its k8s.io
# namespace (MAPGUARD_CONTAINERD_ADDRESS, as with a cluster's containerd),
# then `ctr run --rm IMAGE --help` for each: the usage proves the binary, its
# libraries and the user the image runs as (shown from the container's spec).
# Then the two halves of the admission path, each in its image as 65532:
# certs-gen writes a serving certificate into a bind mount, and the webhook
# serves it on 127.0.0.1 (host network) and judges a Pod (curl).
# Stops what it started (tasks, then containerd: SIGTERM, SIGKILL after 10 s)
# and removes the folder.
#
# Usage: scripts/images-smoke.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'images-smoke: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
command -v containerd >/dev/null && command -v runc >/dev/null \
  || die "containerd or runc is missing: run .ci/install-images.sh --containerd"

dir=$(mktemp -d /tmp/mapguard-images-smoke.XXXXXX)
sock=$dir/containerd.sock
pid=
stop() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    # Tasks first: their shims would outlive containerd.
    local t
    for t in $(ctr --address "$sock" -n k8s.io task ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io task kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      ctr --address "$sock" -n k8s.io task delete --force "$t" >/dev/null 2>&1 || true
    done
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
  fi
  # containerd's mounts under its root are gone with it; the folder goes too.
  rm -rf "$dir"
}
trap stop EXIT

# Only what `ctr image import` and `ctr run` need: no CRI, nothing outside $dir.
cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
log "starting a throwaway containerd on $sock"
containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  ctr --address "$sock" version >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/containerd.log" >&2; die "containerd exited"; }
  sleep 0.1
done
ctr --address "$sock" version >/dev/null || die "containerd did not answer on $sock"

MAPGUARD_CONTAINERD_ADDRESS=$sock bash "$root/scripts/images.sh"

c() { ctr --address "$sock" -n k8s.io "$@"; }
log "images in containerd's k8s.io namespace"
c image ls | awk 'NR == 1 || /mapguard/'

# The tag mapguard-<name> was imported under (images.sh took it from manifests/).
image() { c image ls -q | grep -E "^ghcr\.io/mapguard/mapguard-$1:" || die "mapguard-$1 was not imported"; }

failed=0
for name in webhook agent certs-gen; do
  tag=$(image "$name")
  # The user and program containerd runs for the image, from the spec it
  # writes when no command is given.
  c container create "$tag" "smoke-$name-spec" >/dev/null
  spec=$(c container info "smoke-$name-spec" | python3 -c '
import json, sys
p = json.load(sys.stdin)["Spec"]["process"]
u = p["user"]
print("user %d:%d, args %s" % (u["uid"], u["gid"], p["args"]))')
  c container rm "smoke-$name-spec" >/dev/null
  log "mapguard-$name: containerd runs $spec"
  log "ctr run --rm $tag smoke-$name /usr/local/bin/mapguard-$name --help"
  if ! c run --rm "$tag" "smoke-$name" /usr/local/bin/mapguard-"$name" --help; then
    echo "mapguard-$name --help failed in its image" >&2
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1

log "mapguard-certs-gen in its image writes a serving certificate into a bind mount"
mkdir -p "$dir/certs"
chown 65532:65532 "$dir/certs"
c run --rm --mount "type=bind,src=$dir/certs,dst=/certs,options=rbind:rw" \
  "$(image certs-gen)" smoke-certs-gen-out \
  /usr/local/bin/mapguard-certs-gen --out-dir /certs --service mapguard-webhook --namespace mapguard-system
ls -ln "$dir/certs"

port=$((20000 + RANDOM % 20000))
mport=$((port + 1))
log "mapguard-webhook in its image serves that certificate on 127.0.0.1:$port (host network)"
c run -d --net-host --log-uri "file://$dir/webhook.log" \
  --mount "type=bind,src=$dir/certs,dst=/etc/mapguard/tls,options=rbind:ro" \
  --mount "type=bind,src=$root/tests/data/admission,dst=/data,options=rbind:ro" \
  "$(image webhook)" smoke-webhook-serve \
  /usr/local/bin/mapguard-webhook --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
  --namespaces-file /data/namespaces.yaml
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$mport/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$mport/readyz" >/dev/null || { cat "$dir/webhook.log" >&2; die "the webhook never became ready"; }
wpid=$(c task ls | awk '$1 == "smoke-webhook-serve" { print $2 }')
echo "mapguard-webhook pid $wpid: $(grep -E '^(Uid|Gid):' "/proc/$wpid/status" | tr -s '\t\n' '  ')"
log "POST /validate: a privileged Pod (tests/data/admission/pod-privileged-create.json)"
curl -fsS --cacert "$dir/certs/ca.crt" -H 'Content-Type: application/json' \
  --data-binary @"$root/tests/data/admission/pod-privileged-create.json" \
  "https://localhost:$port/validate" | python3 -c '
import json, sys
r = json.load(sys.stdin)["response"]
print(json.dumps({"allowed": r["allowed"], "message": r.get("status", {}).get("message")}))
sys.exit(0 if r["allowed"] is False else 1)' || die "the webhook in its image did not deny a privileged Pod"
c task kill -s SIGTERM smoke-webhook-serve
for _ in $(seq 100); do
  c task ls | grep -q '^smoke-webhook-serve .*RUNNING' || break
  sleep 0.1
done
c task delete smoke-webhook-serve >/dev/null
c container rm smoke-webhook-serve
log "each image ran in containerd; the webhook served and denied from its image"
