#!/usr/bin/env bash
# Prints the path of a Go toolchain the demo can build its racy program with:
# `go` on PATH when it is a release the enforcer supports (go1.23 to go1.27,
# enforcer/src/binary/goelf/release.rs), else Debian's Go 1.23 (what
# .ci/install-build.sh installs when PATH has none). Fails when neither is.
set -euo pipefail
supported() {
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  [[ $v =~ ^go1\.(2[3-7])([.]|$) ]]
}
for go in "$(command -v go || true)" /usr/lib/go-1.23/bin/go; do
  if [ -n "$go" ] && [ -x "$go" ] && GOTOOLCHAIN=local supported "$go"; then
    echo "$go"
    exit 0
  fi
done
echo "no Go toolchain of release 1.23-1.27: run .ci/install-build.sh" >&2
exit 1
