#!/usr/bin/env bash
# Installs what mapguard's one-node cluster (scripts/cluster.sh, `make
# cluster-up`) runs besides the control plane, on a Debian 12 machine, as
# root. Idempotent: when everything is in place it only checks it.
#
#   /opt/mapguard/kube/<version>/bin/kubelet                   built from k8s.io/kubernetes
#   /opt/mapguard/kube/<version>/bin/kube-controller-manager   (tests/cluster/apiserver/go.mod,
#   /opt/mapguard/kube/<version>/bin/kube-scheduler             the module and release of
#   /opt/mapguard/kube/<version>/bin/kube-proxy                 kube-apiserver and kubectl)
#   /opt/mapguard/kube/<version>/images/pause.oci.tar          the sandbox image, from
#                                                              tests/cluster/node/pause.c
#   containerd, runc, containernetworking-plugins, iptables, conntrack,
#   buildah, socat                                             from bookworm
#
# Versions and the reason for each: tests/cluster/node/pins.sh. It first runs
# .ci/install-cluster.sh (kube-apiserver, kubectl, etcd). With a warm Go build
# cache (after install-cluster.sh) the four binaries take about 5 minutes on
# 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
module=$repo/tests/cluster/apiserver
# shellcheck source=../tests/cluster/node/pins.sh
. "$repo/tests/cluster/node/pins.sh"

log() { printf '==> %s\n' "$*" >&2; }

bash "$here/install-cluster.sh"

version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { sub(/^v/, "", $2); print $2; exit }' "$module/go.mod")
prefix=/opt/mapguard/kube/$version
bin=$prefix/bin
[ -x "$bin/kube-apiserver" ] || { echo "install-cluster.sh left no $bin/kube-apiserver" >&2; exit 1; }

# --- Debian packages ---------------------------------------------------------
# "1:1.4.7-1+b2" -> "1.4.7"; "1.6.20~ds1-1+deb12u3" -> "1.6.20".
upstream() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null | sed -E 's/^[0-9]+://; s/[-~+].*$//'; }
missing=()
for row in "${NODE_DEBS[@]}"; do
  pkg=${row%% *}
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from bookworm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
fi
for row in "${NODE_DEBS[@]}"; do
  pkg=${row%% *}
  want=${row#* }
  got=$(upstream "$pkg")
  if [ "$got" != "$want" ]; then
    echo "$pkg is $got, tests/cluster/node/pins.sh pins $want: check the node with it, then update the pin" >&2
    exit 1
  fi
done
# Debian's containerd package ships a systemd unit only: nothing starts it
# here (no systemd as init), so scripts/cluster.sh runs its own.
for cni in bridge host-local portmap loopback; do
  [ -x "/usr/lib/cni/$cni" ] || { echo "no /usr/lib/cni/$cni (containernetworking-plugins)" >&2; exit 1; }
done

# --- kubelet, kube-controller-manager, kube-scheduler, kube-proxy ------------
node_bins=(kubelet kube-controller-manager kube-scheduler kube-proxy)
need_build=0
for b in "${node_bins[@]}"; do [ -x "$bin/$b" ] || need_build=1; done
if [ "$need_build" = 1 ]; then
  export GOTOOLCHAIN=local # never download a toolchain
  GO=$(command -v go || true)
  minor=""
  [ -z "$GO" ] || minor=$("$GO" env GOVERSION 2>/dev/null | sed -nE 's/^go1\.([0-9]+).*/\1/p')
  if [ -z "$minor" ] || [ "$minor" -lt 26 ]; then
    GO=/opt/mapguard/go-1.26/usr/lib/go-1.26/bin/go
    [ -x "$GO" ] || { echo "no Go >= 1.26: run .ci/install-deps.sh (it installs $GO)" >&2; exit 1; }
  fi
  # Built beside the target, moved in only when all four are built.
  stage=$(mktemp -d "/opt/mapguard/kube/.$version-node.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  log "building ${node_bins[*]} v$version with $("$GO" version | cut -d' ' -f3) (about 5 minutes on a warm cache)"
  kminor=$(echo "$version" | cut -d. -f2)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kminor -X $pkg.gitTreeState=clean"
  done
  pkgs=()
  for b in "${node_bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  # As install-cluster.sh and Kubernetes' release builds: static, no cgo,
  # stripped, the version stamped in.
  (cd "$module" && GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
    "$GO" build -trimpath -ldflags "$ldflags" -o "$stage/" "${pkgs[@]}")
  for b in "${node_bins[@]}"; do
    "$stage/$b" --version
    mv "$stage/$b" "$bin/$b"
  done
  rm -rf "$stage"
  trap - EXIT
fi

# --- the pause image ---------------------------------------------------------
# Rebuilt when pause.c or the tag changes (the .source file records both).
images=$prefix/images
archive=$images/pause.oci.tar
source_id="$(sha256sum "$repo/tests/cluster/node/pause.c" | cut -d' ' -f1) $PAUSE_IMAGE"
if [ ! -s "$archive" ] || [ "$(cat "$archive.source" 2>/dev/null)" != "$source_id" ]; then
  log "building the pause image $PAUSE_IMAGE (gcc -static, buildah from scratch)"
  mkdir -p "$images"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  gcc -static -O2 -Wall -Wextra -Werror -o "$work/pause" "$repo/tests/cluster/node/pause.c"
  strip "$work/pause"
  # A storage of its own, thrown away after: nothing left in /var/lib/containers.
  bah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
  ctr=$("${bah[@]}" from scratch)
  "${bah[@]}" copy "$ctr" "$work/pause" /pause >/dev/null
  "${bah[@]}" config --entrypoint '["/pause"]' --cmd '' --user 65535:65535 "$ctr"
  "${bah[@]}" commit -q --format oci "$ctr" "oci-archive:$work/pause.oci.tar:$PAUSE_IMAGE" >/dev/null
  "${bah[@]}" rm "$ctr" >/dev/null
  mv "$work/pause.oci.tar" "$archive"
  echo "$source_id" >"$archive.source"
  rm -rf "$work"
  trap - EXIT
fi

for b in "${node_bins[@]}"; do printf '%s: ' "$b"; "$bin/$b" --version; done
containerd --version
runc --version | sed -n 1p
log "one-node cluster ready to start: $bin, $archive ($PAUSE_IMAGE)"
