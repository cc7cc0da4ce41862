#!/usr/bin/env bash
# Installs everything mapguard's tests need on a fresh Debian 12 machine
# (run as root): what the build and the demo need (.ci/install-build.sh),
# then the test toolchains and servers. Idempotent: a second run only checks.
#   - Go 1.22 (a release the enforcer must refuse) and Go 1.23 (classic
#     maps) from bookworm-backports:                       /usr/lib/go-1.2x
#   - Go 1.24 (swiss maps) unpacked from trixie:            /opt/mapguard/go-1.24
#   - Go 1.25, 1.26, 1.27 unpacked from trixie-backports:  /opt/mapguard/go-1.2x
#     (the releases of the enforcer's release table; tests/go/toolchains
#     lists where each one is)
#   - the build's and demo's prerequisites: .ci/install-build.sh
#   - kube-apiserver, kubectl and etcd for the cluster tests (install-cluster.sh)
#   - the one-node cluster's kubelet, containerd, runc, CNI (install-node.sh)
#   - prometheus and promtool for the SLO tests (install-prometheus.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Installed from bookworm-backports: 1.22 (refused), 1.23.
BACKPORTED=(1.22 1.23)
# Unpacked Debian toolchains: version, suite.
UNPACKED=("1.24 trixie" "1.25 trixie-backports" "1.26 trixie-backports" "1.27 trixie-backports")
gobin() { echo "/opt/mapguard/go-$1/usr/lib/go-$1/bin/go"; }

log() { printf '==> %s\n' "$*" >&2; }

bash "$here/install-build.sh"

missing=0
for v in "${BACKPORTED[@]}"; do
  [ -x "/usr/lib/go-$v/bin/go" ] || missing=1
done
for row in "${UNPACKED[@]}"; do
  [ -x "$(gobin "${row%% *}")" ] || missing=1
done
if [ "$missing" = 1 ]; then
  log "adding Debian bookworm-backports, trixie and trixie-backports (pinned low) suites"
  bash "$here/debian-suites.sh"
fi
for v in "${BACKPORTED[@]}"; do
  [ -x "/usr/lib/go-$v/bin/go" ] && continue
  log "installing Go $v from bookworm-backports"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports "golang-$v-go" >/dev/null
done
for row in "${UNPACKED[@]}"; do
  v=${row%% *}
  suite=${row#* }
  [ -x "$(gobin "$v")" ] && continue
  log "unpacking Go $v from $suite into /opt/mapguard/go-$v"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "golang-$v-go/$suite" "golang-$v-src/$suite")
  mkdir -p "/opt/mapguard/go-$v"
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" "/opt/mapguard/go-$v"; done
  rm -rf "$tmp"
done
for v in "${BACKPORTED[@]}"; do "/usr/lib/go-$v/bin/go" version; done
for row in "${UNPACKED[@]}"; do "$(gobin "${row%% *}")" version; done

# kube-apiserver, kubectl and etcd for the tests against a real API server
# (tests/cluster/README.md): built once, cached under /opt/mapguard/kube.
bash "$here/install-cluster.sh"
# kubelet, kube-controller-manager, kube-scheduler, kube-proxy, containerd,
# runc, CNI plugins and the pause image for the one-node cluster
# (scripts/cluster.sh, testenv's NodeCluster).
bash "$here/install-node.sh"
# prometheus and promtool for the SLO tests (cached under /opt/mapguard/prometheus).
bash "$here/install-prometheus.sh"
log "dependencies ready"
