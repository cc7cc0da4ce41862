#!/usr/bin/env bash
# Builds a Go program of this repository (static, CGO_ENABLED=0, with the
# machine's `go`) into an image from scratch whose entrypoint is the program,
# written as an OCI archive tagged TAG; prints TAG. The test images of the
# one-node cluster (hello-image.sh, racy-image.sh) are built by it.
#
#   tests/cluster/node/go-image.sh ARCHIVE TAG MODULE_DIR PACKAGE [GO BUILD FLAGS...]
#   scripts/cluster.sh import ARCHIVE
set -euo pipefail
usage="usage: $0 ARCHIVE TAG MODULE_DIR PACKAGE [GO BUILD FLAGS...]"
out=${1:?$usage}
tag=${2:?$usage}
module=${3:?$usage}
pkg=${4:?$usage}
shift 4
name=$(basename "$(cd "$module/$pkg" && pwd)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$module" && GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=off CGO_ENABLED=0 \
  go build "$@" -o "$work/$name" "$pkg")
# A storage of its own, thrown away after: nothing left in /var/lib/containers.
bah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
ctr=$("${bah[@]}" from scratch)
"${bah[@]}" copy "$ctr" "$work/$name" "/$name" >/dev/null
"${bah[@]}" config --entrypoint "[\"/$name\"]" --cmd '' "$ctr"
rm -f "$out"
"${bah[@]}" commit -q --format oci "$ctr" "oci-archive:$out:$tag" >/dev/null
"${bah[@]}" rm "$ctr" >/dev/null
echo "$tag"
