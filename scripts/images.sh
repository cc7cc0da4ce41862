#!/usr/bin/env bash
# Builds mapguard's three container images on this machine, with no registry
# and no container engine (`make images`; run as root after `make release`):
#
#   base      scripts/image-rootfs.sh: glibc and libgcc from Debian's .debs
#   image     buildah from the base, the release binary stripped of its debug
#             info in /usr/local/bin, user, entrypoint, ports and labels
#   output    target/images/mapguard-<name>.tar, an OCI archive (gzip layers)
#             tagged as manifests/ names the image (ghcr.io/mapguard/...)
#
# With MAPGUARD_CONTAINERD_ADDRESS set to a containerd socket, the archives
# are also imported into its k8s.io namespace under the same tags, so that
# `kubectl apply -k manifests/` runs them unchanged.
#
# The images must describe what each Containerfile describes (user,
# entrypoint, binary path, ports, labels): scripts/images-check.py compares
# them (`make images-check`).
#
# Usage: scripts/images.sh [NAME...]     (default: webhook agent certs-gen)
#   CARGO_TARGET_DIR       where `cargo build --release` left the binaries
#   MAPGUARD_IMAGES_DIR    output folder (default target/images)
#   MAPGUARD_CONTAINERD_ADDRESS  containerd socket to import into (optional)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
release=${CARGO_TARGET_DIR:-$root/target}/release
out=${MAPGUARD_IMAGES_DIR:-$root/target/images}

# One row per image: name (folder, mapguard-<name>), user, exposed ports.
# The binary is mapguard-<name> in /usr/local/bin, the entrypoint is the
# binary alone (the manifests pass the arguments).
IMAGES=(
  "webhook    65532:65532  8443 9090"
  "agent      0:0          9091 9092"
  "certs-gen  65532:65532"
)
SOURCE=https://github.com/mapguard/mapguard

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'images: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (buildah's storage under $out/storage)"
command -v buildah >/dev/null || die "buildah is missing: run .ci/install-images.sh"

# buildah with its own storage beside the archives (vfs: works on any file
# system, nested or not), so nothing here touches the machine's other images.
storage=$out/storage
bh() { buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs "$@"; }

# The tag of mapguard-<name> as the manifests spell it: exactly one.
manifest_tag() {
  local tags
  tags=$(grep -rhoE "ghcr\.io/mapguard/mapguard-$1:[A-Za-z0-9._-]+" "$root/manifests" | sort -u)
  [ -n "$tags" ] || die "no image ghcr.io/mapguard/mapguard-$1:TAG in manifests/"
  [ "$(wc -l <<<"$tags")" = 1 ] || die "manifests/ name mapguard-$1 with several tags: $tags"
  echo "$tags"
}

# A file's size in MB (10^6 bytes, as buildah counts).
mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }

# Every shared library a binary needs (ELF NEEDED) must be in the base.
check_libs() {
  local bin=$1 rootfs=$2 lib found d
  for lib in $(readelf -d "$bin" | sed -nE 's/.*\(NEEDED\).*\[(.*)\]/\1/p'); do
    found=
    for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 lib usr/lib; do
      [ -e "$rootfs/$d/$lib" ] && found=1 && break
    done
    [ -n "$found" ] || die "$(basename "$bin") needs $lib, which the base does not have (scripts/image-rootfs.sh)"
  done
  local interp
  interp=$(readelf -l "$bin" | sed -nE 's/.*Requesting program interpreter: (.*)\]/\1/p')
  [ -z "$interp" ] || [ -e "$rootfs$interp" ] || die "$(basename "$bin") needs the interpreter $interp, missing in the base"
}

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for row in "${IMAGES[@]}"; do names+=("${row%% *}"); done
fi
row_of() {
  local row
  for row in "${IMAGES[@]}"; do
    [ "${row%% *}" = "$1" ] && { echo "$row"; return; }
  done
  die "unknown image $1 (known: webhook agent certs-gen)"
}
for name in "${names[@]}"; do
  row_of "$name" >/dev/null
  [ -x "$release/mapguard-$name" ] || die "$release/mapguard-$name is missing: run make release (or cargo build --release)"
done

mkdir -p "$out"
work=$(mktemp -d "$out/.work.XXXXXX")
c= # the working container, removed if the script stops half-way
cleanup() {
  [ -z "$c" ] || bh rm "$c" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

log "base file system from Debian packages"
MAPGUARD_DEB_CACHE=$out/debs bash "$root/scripts/image-rootfs.sh" "$work/rootfs"
# nonroot's home is copied on its own, owned by nonroot (buildah copy sets
# root as the owner of everything else).
mv "$work/rootfs/home/nonroot" "$work/nonroot"

# The base is one layer that the three images share (same digest: stored
# once by containerd).
base=localhost/mapguard-base:build
c=$(bh from --quiet scratch)
bh copy --quiet "$c" "$work/rootfs/" / >/dev/null
bh copy --quiet --chown 65532:65532 "$c" "$work/nonroot/" /home/nonroot >/dev/null
bh config --os linux --arch amd64 "$c"
bh commit --quiet --rm --timestamp 0 --identity-label=false "$c" "$base" >/dev/null
c=

summary=()
for name in "${names[@]}"; do
  read -r _ user ports <<<"$(row_of "$name")"
  tag=$(manifest_tag "$name")
  bin=/usr/local/bin/mapguard-$name
  archive=$out/mapguard-$name.tar
  log "mapguard-$name → $tag"

  # The release profile keeps line tables (debug = 1) for the benchmarks'
  # profiles; the image carries the binary without them.
  strip --strip-debug -o "$work/mapguard-$name" "$release/mapguard-$name"
  check_libs "$work/mapguard-$name" "$work/rootfs"

  c=$(bh from --quiet --pull=never "$base")
  bh copy --quiet --chmod 0755 "$c" "$work/mapguard-$name" "$bin" >/dev/null
  config=(--os linux --arch amd64 --user "$user" --entrypoint "[\"$bin\"]"
    --label "org.opencontainers.image.title=mapguard-$name"
    --label "org.opencontainers.image.source=$SOURCE"
    --label "org.opencontainers.image.licenses=Apache-2.0")
  for p in $ports; do config+=(--port "$p/tcp"); done
  bh config "${config[@]}" "$c"
  # --timestamp 0: the same inputs give the same digests, so a second import
  # of an unchanged image is a no-op.
  bh commit --quiet --rm --timestamp 0 --identity-label=false "$c" "$tag" >/dev/null
  c=
  rm -f "$archive"
  bh push --quiet --disable-compression=false "$tag" "oci-archive:$archive:$tag"

  summary+=("$(printf '%-19s %-42s image %s (binary %s, unstripped %s), archive %s' \
    "mapguard-$name" "$tag" "$(bh images --format '{{.Size}}' "$tag")" \
    "$(mb "$work/mapguard-$name")" "$(mb "$release/mapguard-$name")" "$(mb "$archive")")")
done

# Earlier builds' images, untagged by this one (vfs keeps full copies).
bh rmi --prune >/dev/null 2>&1 || true

if [ -n "${MAPGUARD_CONTAINERD_ADDRESS:-}" ]; then
  command -v ctr >/dev/null || die "ctr is missing (containerd's client): .ci/install-images.sh --containerd"
  for name in "${names[@]}"; do
    log "importing mapguard-$name into $MAPGUARD_CONTAINERD_ADDRESS (namespace k8s.io)"
    ctr --address "$MAPGUARD_CONTAINERD_ADDRESS" -n k8s.io image import "$out/mapguard-$name.tar"
  done
fi

printf '%s\n' "${summary[@]}"
