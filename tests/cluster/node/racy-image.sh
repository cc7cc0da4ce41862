#!/usr/bin/env bash
# Builds the end-to-end test's racing image: tests/go/racy/delete_assign (a
# static Go program, CGO_ENABLED=0, with the machine's `go`) in an image from
# scratch, written as an OCI archive tagged localhost/mapguard/racy:test.
# The container's args choose when it races (`-start-delay 3s`).
#
#   tests/cluster/node/racy-image.sh ARCHIVE
#   scripts/cluster.sh import ARCHIVE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../go" && pwd)
out=${1:?usage: $0 ARCHIVE}
tag=${MAPGUARD_RACY_IMAGE:-localhost/mapguard/racy:test}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Not stripped: the agent and the records name the call sites from DWARF.
(cd "$src" && GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=off CGO_ENABLED=0 \
  go build -o "$work/delete_assign" ./racy/delete_assign)
# A storage of its own, thrown away after: nothing left in /var/lib/containers.
bah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
ctr=$("${bah[@]}" from scratch)
"${bah[@]}" copy "$ctr" "$work/delete_assign" /delete_assign >/dev/null
"${bah[@]}" config --entrypoint '["/delete_assign"]' --cmd '' "$ctr"
rm -f "$out"
"${bah[@]}" commit -q --format oci "$ctr" "oci-archive:$out:$tag" >/dev/null
"${bah[@]}" rm "$ctr" >/dev/null
echo "$tag"
