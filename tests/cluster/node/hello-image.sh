#!/usr/bin/env bash
# Builds the one-node cluster's test image: tests/cluster/node/hello (a static
# Go program, stripped) in an image from scratch, written as an OCI archive
# tagged localhost/mapguard/hello:test (go-image.sh).
#
#   tests/cluster/node/hello-image.sh ARCHIVE
#   scripts/cluster.sh import ARCHIVE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec bash "$here/go-image.sh" "${1:?usage: $0 ARCHIVE}" \
  "${MAPGUARD_HELLO_IMAGE:-localhost/mapguard/hello:test}" "$here/hello" . \
  -trimpath -ldflags '-s -w'
