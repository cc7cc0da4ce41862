#!/usr/bin/env bash
# Adds newer Debian suites to apt, on the mirror this machine already uses, so
# that mapguard's install scripts can take packages bookworm does not have:
#   bookworm-backports   Go 1.22 and 1.23 (apt-get install -t bookworm-backports)
#   trixie               Go 1.24, etcd-server, prometheus, promtool
#   trixie-backports     Go 1.25, 1.26, 1.27
# The trixie suites are pinned below bookworm (priority 50): apt never picks
# them by itself, and the scripts only `apt-get download` + `dpkg -x` from
# them (installing from trixie would replace bookworm's libc).
# Idempotent: the lists are refreshed only when the sources file changes or
# a suite is missing from apt's cache. Run as root.
#
# Usage: .ci/debian-suites.sh            bookworm-backports, trixie, trixie-backports
#        .ci/debian-suites.sh --check    exit 0 when all three are usable
set -euo pipefail
suites=(bookworm-backports trixie trixie-backports)
sources=/etc/apt/sources.list.d/mapguard.sources
pins=/etc/apt/preferences.d/mapguard-trixie

usable() {
  local policy s
  policy=$(apt-cache policy 2>/dev/null)
  for s in "${suites[@]}"; do
    grep -q " $s/main " <<<"$policy" || return 1
  done
}

if [ "${1:-}" = --check ]; then
  usable
  exit
fi

# The machine's own mirror: deb822 sources (Debian 12 images) or a classic
# sources.list line.
mirror=""
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
  [ -r "$f" ] && [ "$f" != "$sources" ] || continue
  mirror=$(awk '/^URIs:/ { print $2; exit }' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $0 ~ /bookworm/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || { echo "debian-suites.sh: cannot find this machine's Debian mirror in /etc/apt" >&2; exit 1; }

want=$(printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
  "$mirror" "${suites[*]}")
pin=$(printf 'Package: *\nPin: release n=trixie\nPin-Priority: 50\n\nPackage: *\nPin: release n=trixie-backports\nPin-Priority: 50\n')
changed=0
if [ "$(cat "$sources" 2>/dev/null)" != "$want" ]; then
  printf '%s\n' "$want" >"$sources"
  changed=1
fi
if [ "$(cat "$pins" 2>/dev/null)" != "$pin" ]; then
  printf '%s\n' "$pin" >"$pins"
  changed=1
fi
if [ "$changed" = 1 ] || ! usable; then
  echo "==> apt: adding ${suites[*]} from $mirror (trixie pinned low)" >&2
  apt-get update -qq
fi
usable || { echo "debian-suites.sh: apt still lacks one of: ${suites[*]}" >&2; exit 1; }
