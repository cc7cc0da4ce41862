#!/usr/bin/env bash
# Installs what the real-service benchmark (enforcer/benches/real_service.rs)
# needs, on a Debian 12 machine, as root. Not part of CI's test run.
# Idempotent: when everything is in place it only prints the versions.
#
#   wrk                                          Debian's package (the load generator)
#   /opt/mapguard/bench/etcd-<v>/bin/etcd        go.etcd.io/etcd/server/v3 (tests/bench/etcd/go.mod)
#   /opt/mapguard/bench/etcd-<v>/bin/etcd-race   the same, built with -race
#   /opt/mapguard/bench/caddy-<v>/bin/caddy      github.com/caddyserver/caddy/v2/cmd/caddy (tests/bench/caddy/go.mod)
#   /opt/mapguard/bench/caddy-<v>/bin/caddy-race the same, built with -race
#
# <v> is the version each module requires (e.g. 3.6.16, 2.11.9); the
# benchmark reads the same line. Both variants of a service are built by the
# same toolchain: Go 1.26 (`go` on PATH if it is 1.26, else Debian's
# golang-1.26-go from trixie-backports unpacked into /opt/mapguard/go-1.26).
# Go code comes only from the Go module proxy, pinned by the committed
# go.sum. The -race builds need cgo (gcc).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
modules=$here/../tests/bench
root=${MAPGUARD_BENCH_ROOT:-/opt/mapguard/bench}

log() { printf '==> %s\n' "$*" >&2; }

# service   module folder   main package                               binary
services=(
  "etcd     $modules/etcd   go.etcd.io/etcd/server/v3                  etcd"
  "caddy    $modules/caddy  github.com/caddyserver/caddy/v2/cmd/caddy  caddy"
)

# The version of `module` that the go.mod in folder `dir` requires.
required() {
  awk -v m="$2" '$1 == m && $2 ~ /^v[0-9]/ { sub(/^v/, "", $2); print $2; exit }
                 $1 == "require" && $2 == m && $3 ~ /^v[0-9]/ { sub(/^v/, "", $3); print $3; exit }' "$1/go.mod"
}
module_of() { # main package -> the module that provides it
  case $1 in
    go.etcd.io/etcd/server/v3) echo go.etcd.io/etcd/server/v3 ;;
    github.com/caddyserver/caddy/v2/*) echo github.com/caddyserver/caddy/v2 ;;
    *) echo "$1" ;;
  esac
}

if ! command -v wrk > /dev/null; then
  log "installing wrk from Debian"
  apt-get install -y -qq wrk > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk > /dev/null; }
fi
wrk --version 2>&1 | head -n1 || true # wrk prints its usage and exits 1

installed() { # name version binary
  [ -x "$root/$1-$2/bin/$3" ] && [ -x "$root/$1-$2/bin/$3-race" ]
}
missing=0
for line in "${services[@]}"; do
  read -r name dir pkg bin <<< "$line"
  version=$(required "$dir" "$(module_of "$pkg")")
  [ -n "$version" ] || { echo "no '$(module_of "$pkg") vX.Y.Z' requirement in $dir/go.mod" >&2; exit 1; }
  installed "$name" "$version" "$bin" || missing=1
done

GO=
if [ "$missing" = 1 ]; then
  export GOTOOLCHAIN=local # never download a toolchain
  is_go126() { "$1" env GOVERSION 2> /dev/null | grep -qE '^go1\.26(\.|$)'; }
  GO=$(command -v go || true)
  if [ -z "$GO" ] || ! is_go126 "$GO"; then
    # Debian's 1.26, which .ci/install-deps.sh unpacks (make bench-deps runs it first).
    GO=/opt/mapguard/go-1.26/usr/lib/go-1.26/bin/go
    [ -x "$GO" ] || { echo "no Go 1.26: run .ci/install-deps.sh (it installs $GO)" >&2; exit 1; }
  fi
  "$GO" version
fi

for line in "${services[@]}"; do
  read -r name dir pkg bin <<< "$line"
  version=$(required "$dir" "$(module_of "$pkg")")
  prefix=$root/$name-$version
  if ! installed "$name" "$version" "$bin"; then
    # Built into a scratch folder beside the target and moved into place,
    # so an interrupted run never leaves a folder that looks installed.
    mkdir -p "$root"
    stage=$(mktemp -d "$root/.$name-$version.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    started=$(date +%s)
    log "building $name $version, plain and with -race (minutes on a cold cache)"
    (cd "$dir" && GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
      "$GO" build -trimpath -o "$stage/bin/$bin" "$pkg")
    (cd "$dir" && GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=1 \
      "$GO" build -race -trimpath -o "$stage/bin/$bin-race" "$pkg")
    rm -rf "$prefix"
    mv "$stage" "$prefix"
    chmod 755 "$prefix"
    trap - EXIT
    log "$name $version built in $(($(date +%s) - started)) s: $(du -sh "$prefix" | cut -f1) in $prefix/bin"
  fi
  for b in "$bin" "$bin-race"; do
    built_by=$("${GO:-go}" version "$prefix/bin/$b" 2> /dev/null | awk '{print $2}' || true)
    printf '%-6s %-8s %-11s %-8s %s\n' "$name" "$version" "$b" "${built_by:-?}" "$prefix/bin/$b"
  done
done
