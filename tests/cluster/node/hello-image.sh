#!/usr/bin/env bash
# Builds the one-node cluster's test image: tests/cluster/node/hello (a static
# Go program, CGO_ENABLED=0, with the machine's `go`) in an image from
# scratch, written as an OCI archive tagged localhost/mapguard/hello:test.
#
#   tests/cluster/node/hello-image.sh ARCHIVE
#   scripts/cluster.sh import ARCHIVE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: $0 ARCHIVE}
tag=${MAPGUARD_HELLO_IMAGE:-localhost/mapguard/hello:test}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$here/hello" && GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 \
  go build -trimpath -ldflags '-s -w' -o "$work/hello" .)
# A storage of its own, thrown away after: nothing left in /var/lib/containers.
bah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
ctr=$("${bah[@]}" from scratch)
"${bah[@]}" copy "$ctr" "$work/hello" /hello >/dev/null
"${bah[@]}" config --entrypoint '["/hello"]' --cmd '' "$ctr"
rm -f "$out"
"${bah[@]}" commit -q --format oci "$ctr" "oci-archive:$out:$tag" >/dev/null
"${bah[@]}" rm "$ctr" >/dev/null
echo "$tag"
