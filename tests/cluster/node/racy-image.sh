#!/usr/bin/env bash
# Builds the end-to-end test's racing image: tests/go/racy/delete_assign (a
# static Go program) in an image from scratch, written as an OCI archive
# tagged localhost/mapguard/racy:test (go-image.sh). The container's args
# choose when it races (`-start-delay 3s`; at once without it).
#
#   tests/cluster/node/racy-image.sh ARCHIVE
#   scripts/cluster.sh import ARCHIVE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Not stripped: the agent and the records name the call sites from DWARF.
exec bash "$here/go-image.sh" "${1:?usage: $0 ARCHIVE}" \
  "${MAPGUARD_RACY_IMAGE:-localhost/mapguard/racy:test}" "$here/../../go" ./racy/delete_assign
