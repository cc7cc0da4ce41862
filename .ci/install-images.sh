#!/usr/bin/env bash
# Installs what `make images` needs on a Debian 12 machine (run as root):
#   buildah   assembles the OCI images from scratch (scripts/images.sh)
# and, with --containerd, what `make images-smoke` needs to run them:
#   containerd, runc   a throwaway containerd (ctr image import, ctr run)
# Idempotent: when everything is installed it only checks, without apt.
#
# Usage: .ci/install-images.sh [--containerd]
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

pkgs=(buildah)
[ "${1:-}" = --containerd ] && pkgs+=(containerd runc)

need=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  # Only bookworm's own packages: the newer suites the other install scripts
  # add are pinned low and never chosen here.
  if ! apt-cache show "${need[0]}" >/dev/null 2>&1; then
    log "refreshing apt's package lists"
    apt-get update -qq
  fi
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
buildah --version
if [ "${1:-}" = --containerd ]; then
  containerd --version
  runc --version | sed -n 1p
fi
