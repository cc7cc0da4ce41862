#!/usr/bin/env bash
# Installs everything mapguard's build, demo and tests need on a fresh
# Debian 12 machine (run as root). Idempotent: a second run only checks.
#   - Go 1.23 (classic maps) from bookworm-backports: /usr/lib/go-1.23
#   - Go 1.24 (swiss maps) unpacked from trixie:      /opt/mapguard/go-1.24
#   - nightly Rust with rust-src and bpf-linker, for enforcer-ebpf
#   - curl and procps for the demo and tests
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${MAPGUARD_SHARED:-$here/../../shared}
GO123=/usr/lib/go-1.23/bin/go
GO124=/opt/mapguard/go-1.24/usr/lib/go-1.24/bin/go

log() { printf '==> %s\n' "$*" >&2; }

if [ ! -x "$GO123" ] || [ ! -x "$GO124" ]; then
  log "adding Debian bookworm-backports and trixie (pinned low) suites"
  bash "$shared/ci/debian-suites.sh" --trixie
fi
if [ ! -x "$GO123" ]; then
  log "installing Go 1.23 from bookworm-backports"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports golang-1.23-go >/dev/null
fi
if [ ! -x "$GO124" ]; then
  log "unpacking Go 1.24 from trixie into /opt/mapguard/go-1.24"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq golang-1.24-go golang-1.24-src)
  mkdir -p /opt/mapguard/go-1.24
  for deb in "$tmp"/*.deb; do dpkg -x "$deb" /opt/mapguard/go-1.24; done
  rm -rf "$tmp"
fi
"$GO123" version
"$GO124" version

need_pkgs=()
for p in curl procps; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

log "Rust: stable components and the nightly used for the BPF target"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
if ! rustup toolchain list | grep -q '^nightly'; then
  log "no nightly toolchain: trying rustup toolchain install nightly"
  rustup toolchain install nightly --profile minimal --component rust-src || {
    echo "no nightly Rust toolchain and none could be installed: enforcer-ebpf (the BPF program) needs one" >&2
    exit 1
  }
fi
rustup component add rust-src --toolchain nightly >/dev/null
if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  log "building bpf-linker 0.13 against the nightly's own LLVM (about 75 s)"
  S=$(rustc +nightly --print sysroot)/lib
  llvm=$(basename "$(ls "$S"/libLLVM-*-rust-*.so | head -n1)" .so)
  llvm=${llvm#lib}
  ver=$(echo "$llvm" | sed -E 's/^LLVM-([0-9]+)-.*/\1/')
  RUSTFLAGS="-L native=$S -l dylib=$llvm -C link-arg=-Wl,-rpath,$S" \
    cargo +nightly install --locked bpf-linker --version '^0.13' \
      --no-default-features --features "llvm-$ver,no-llvm-linking"
fi
log "dependencies ready"
