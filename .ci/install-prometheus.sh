#!/usr/bin/env bash
# Installs Prometheus and promtool for the SLO tests (agent/tests/slo.rs:
# `promtool check rules`, `promtool test rules` on manifests/monitoring/,
# and a real Prometheus server scraping a real node agent), as root on a
# Debian 12 machine. Idempotent: when the binaries are in place it only
# checks them.
#
#   /opt/mapguard/prometheus/usr/bin/prometheus   Debian trixie's prometheus, unpacked
#   /opt/mapguard/prometheus/usr/bin/promtool     Debian trixie's promtool, unpacked
#
# Unpacked with `dpkg -x`, never `apt-get install`ed from trixie (its libc
# would replace bookworm's); both are Go binaries that need only libc.
# bookworm's own 2.42 would do as well, but trixie's 2.53 is the release
# current operators ship rules for.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/mapguard/prometheus
bin=$prefix/usr/bin

log() { printf '==> %s\n' "$*" >&2; }

if [ -x "$bin/prometheus" ] && [ -x "$bin/promtool" ]; then
  "$bin/promtool" --version | sed -n 1p
  exit 0
fi
has_suite() { apt-cache policy 2>/dev/null | grep -q " $1/main "; }
if ! has_suite trixie; then
  log "adding Debian bookworm-backports, trixie and trixie-backports (pinned low) suites"
  bash "$here/debian-suites.sh"
fi
log "unpacking prometheus and promtool from trixie into $prefix"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq prometheus/trixie promtool/trixie)
# Unpack beside the target, then move it into place: an interrupted run
# never leaves a half-filled folder that looks installed.
rm -rf "$prefix.new"
mkdir -p "$prefix.new"
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$prefix.new"; done
rm -rf "$prefix"
mv "$prefix.new" "$prefix"
"$bin/prometheus" --version | sed -n 1p
"$bin/promtool" --version | sed -n 1p
