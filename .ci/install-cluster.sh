#!/usr/bin/env bash
# Installs the Kubernetes control plane that mapguard's cluster tests start
# (mapguard-testenv), on a Debian 12 machine, as root. Idempotent: when the
# binaries are in place it only checks them.
#
#   /opt/mapguard/kube/<version>/bin/kube-apiserver  built from k8s.io/kubernetes
#   /opt/mapguard/kube/<version>/bin/kubectl          (tests/cluster/apiserver/go.mod)
#   /opt/mapguard/kube/<version>/bin/etcd             Debian trixie's etcd-server, unpacked
#
# <version> is the k8s.io/kubernetes release required in
# tests/cluster/apiserver/go.mod (e.g. 1.37.2); testenv reads the same line.
# The build needs Go >= 1.26: `go` on PATH if it is new enough, else Debian's
# golang-1.26-go that .ci/install-deps.sh unpacks into /opt/mapguard/go-1.26
# (install-deps runs this script last).
# A cold build takes about 8 minutes on 2 cores and fills the Go module and
# build caches (~0.6 GB and ~3 GB); the installed folder is about 200 MB.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
module=$here/../tests/cluster/apiserver

log() { printf '==> %s\n' "$*" >&2; }

version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { sub(/^v/, "", $2); print $2; exit }' "$module/go.mod")
[ -n "$version" ] || { echo "no 'k8s.io/kubernetes vX.Y.Z' requirement in $module/go.mod" >&2; exit 1; }
prefix=/opt/mapguard/kube/$version
bin=$prefix/bin

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kubectl" ] && [ -x "$bin/etcd" ]; then
  "$bin/kube-apiserver" --version
  "$bin/etcd" --version | sed -n 1p
  exit 0
fi

# apt suites: trixie for etcd-server.
has_suite() { apt-cache policy 2>/dev/null | grep -q " $1/main "; }
ensure_suites() {
  if ! has_suite trixie || ! has_suite trixie-backports; then
    log "adding Debian bookworm-backports, trixie and trixie-backports (pinned low) suites"
    bash "$here/debian-suites.sh"
  fi
}

# Go >= 1.26 (Kubernetes 1.37's go.mod says `go 1.26.0`).
export GOTOOLCHAIN=local # never download a toolchain
go_new_enough() {
  local minor
  minor=$("$1" env GOVERSION 2>/dev/null | sed -nE 's/^go1\.([0-9]+).*/\1/p')
  [ -n "$minor" ] && [ "$minor" -ge 26 ]
}
GO=$(command -v go || true)
if [ -z "$GO" ] || ! go_new_enough "$GO"; then
  # Debian's 1.26, which .ci/install-deps.sh unpacks (it runs this script last).
  GO=/opt/mapguard/go-1.26/usr/lib/go-1.26/bin/go
  [ -x "$GO" ] || { echo "no Go >= 1.26: run .ci/install-deps.sh (it installs $GO)" >&2; exit 1; }
fi
"$GO" version

# Build into a scratch folder beside the target, then move it into place, so
# an interrupted run never leaves a half-filled folder that looks installed.
mkdir -p /opt/mapguard/kube
stage=$(mktemp -d "/opt/mapguard/kube/.$version.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin"

log "building kube-apiserver and kubectl v$version (several minutes on a cold cache)"
minor=$(echo "$version" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
# As Kubernetes' own release builds: static, no cgo, stripped.
(cd "$module" && GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
  "$GO" build -trimpath -ldflags "$ldflags" -o "$stage/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)

ensure_suites
log "unpacking etcd-server from trixie"
(cd "$stage" && apt-get download -qq etcd-server/trixie)
dpkg -x "$stage"/etcd-server_*.deb "$stage/etcd-server"
mv "$stage/etcd-server/usr/bin/etcd" "$stage/bin/etcd"
rm -rf "$stage/etcd-server" "$stage"/etcd-server_*.deb

"$stage/bin/kube-apiserver" --version
"$stage/bin/kubectl" version --client
"$stage/bin/etcd" --version | sed -n 1p
rm -rf "$prefix"
mv "$stage" "$prefix"
chmod 755 "$prefix"
trap - EXIT
log "Kubernetes $version control plane in $bin ($(du -sh "$prefix" | cut -f1))"
