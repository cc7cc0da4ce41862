#!/usr/bin/env bash
# Installs what building mapguard and running `make demo` need on a fresh
# Debian 12 machine (run as root); `.ci/install-deps.sh` adds what the tests
# need on top. Idempotent: a second run only checks.
#   - curl, procps, python3 and a C compiler (the demo, bpf-linker's link)
#   - rustfmt and clippy for the stable toolchain (rust-toolchain.toml)
#   - the pinned nightly Rust with rust-src, and bpf-linker built against
#     its own LLVM, for enforcer-ebpf
#   - one Go toolchain of a release the enforcer supports, for the demo's
#     racy program: `go` on PATH when it is one, else Go 1.23 from
#     bookworm-backports
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The nightly that builds the BPF program (rustc 1.97.0-nightly e50aa6fba,
# LLVM 22). Pinned: a newer nightly brings another LLVM, and bpf-linker is
# built against the nightly's own. enforcer/build.rs uses the same default.
NIGHTLY=${MAPGUARD_BPF_TOOLCHAIN:-nightly-2026-05-20}

log() { printf '==> %s\n' "$*" >&2; }

command -v rustup >/dev/null || {
  echo "rustup not found: install Rust with rustup (https://rustup.rs), then rerun" >&2
  exit 1
}

need_pkgs=()
for p in curl procps python3 gcc; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

log "Rust: stable components and $NIGHTLY for the BPF target"
# rust-toolchain.toml names the channel and components; this installs them
# where rustup has not yet.
(cd "$here/.." && rustup component add rustfmt clippy >/dev/null 2>&1) || true
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src
fi
rustup component add rust-src --toolchain "$NIGHTLY" >/dev/null
rustc "+$NIGHTLY" --version
# bpf-linker must load the same LLVM as the nightly that emits the bitcode.
S=$(rustc "+$NIGHTLY" --print sysroot)/lib
llvm=$(basename "$(ls "$S"/libLLVM-*-rust-*.so | sed -n 1p)" .so)
llvm=${llvm#lib}
linker=$(command -v bpf-linker || true)
[ -n "$linker" ] || linker=$HOME/.cargo/bin/bpf-linker
# Built against this nightly: it loads LLVM from the nightly's own lib folder.
if [ ! -x "$linker" ] || ! ldd "$linker" 2>/dev/null | grep -q "libLLVM.* => $S/"; then
  log "building bpf-linker 0.13 against $NIGHTLY's own LLVM ($llvm, about 75 s)"
  ver=$(echo "$llvm" | sed -E 's/^LLVM-([0-9]+)-.*/\1/')
  RUSTFLAGS="-L native=$S -l dylib=$llvm -C link-arg=-Wl,-rpath,$S" \
    cargo "+$NIGHTLY" install --force --locked bpf-linker --version '^0.13' \
      --no-default-features --features "llvm-$ver,no-llvm-linking"
fi

# One Go toolchain for the demo (scripts/demo.sh finds it the same way).
if ! go=$(bash "$here/../scripts/demo-go.sh" 2>/dev/null); then
  bash "$here/debian-suites.sh"
  log "installing Go 1.23 from bookworm-backports (the demo's Go)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports golang-1.23-go >/dev/null
  go=$(bash "$here/../scripts/demo-go.sh")
fi
"$go" version
