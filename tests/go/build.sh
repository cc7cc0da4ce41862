#!/usr/bin/env bash
# Builds every Go test program with both toolchains:
#   OUTDIR/go1.23/{racy,clean,bench}/<name>   classic maps
#   OUTDIR/go1.24/{racy,clean,bench}/<name>   swiss maps
# plus variants of racy/delete_assign for the scan tests:
#   OUTDIR/<go>/stripped/delete_assign        -ldflags="-s -w" (no DWARF, no symtab)
#   OUTDIR/<go>/stripped/channel_handoff      the same, for inline-aware symbolization
#   OUTDIR/<go>/pie/delete_assign             -buildmode=pie (and pie/mutex from clean/mutex)
#   OUTDIR/<go>/arm64/delete_assign           GOARCH=arm64 (a non-x86-64 ELF)
#   OUTDIR/go1.24/noswiss/delete_assign       GOEXPERIMENT=noswissmap (classic maps on 1.24)
#   OUTDIR/<go>/race/mapheavy                 -race, the benchmark's baseline (needs gcc)
# Incremental: a program is rebuilt only when a .go file, go.mod or this
# script is newer than its output. Standard library only, no network.
#
# Usage: tests/go/build.sh OUTDIR
# Env:   GO123 / GO124: the go binaries (defaults: Debian packages used here).
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$(cd "$(dirname "$0")" && pwd)
GO123=${GO123:-/usr/lib/go-1.23/bin/go}
GO124=${GO124:-/opt/mapguard/go-1.24/usr/lib/go-1.24/bin/go}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=off CGO_ENABLED=0

built=0
skipped=0

# build GO TAG OUTPUT PKGDIR [go build flags...]
build() {
	local go=$1 tag=$2 output=$3 pkg=$4
	shift 4
	if [[ -x $output ]] && [[ -z $(find "$src/$pkg" "$src/go.mod" "$src/build.sh" -newer "$output" -print -quit) ]]; then
		skipped=$((skipped + 1))
		return
	fi
	mkdir -p "$(dirname "$output")"
	(cd "$src" && "$go" build "$@" -o "$output" "./$pkg")
	echo "built $tag ${output#"$out"/}"
	built=$((built + 1))
}

for pair in "go1.23:$GO123" "go1.24:$GO124"; do
	tag=${pair%%:*}
	go=${pair#*:}
	if [[ ! -x $go ]]; then
		echo "build.sh: $tag toolchain not found at $go (set GO123/GO124)" >&2
		exit 1
	fi
	for dir in "$src"/racy/*/ "$src"/clean/*/ "$src"/bench/*/; do
		[[ -f $dir/main.go ]] || continue
		rel=${dir#"$src"/}
		rel=${rel%/}
		build "$go" "$tag" "$out/$tag/$rel" "$rel"
	done
	build "$go" "$tag" "$out/$tag/stripped/delete_assign" racy/delete_assign -ldflags="-s -w"
	build "$go" "$tag" "$out/$tag/stripped/channel_handoff" clean/channel_handoff -ldflags="-s -w"
	build "$go" "$tag" "$out/$tag/pie/delete_assign" racy/delete_assign -buildmode=pie
	build "$go" "$tag" "$out/$tag/pie/mutex" clean/mutex -buildmode=pie
	GOARCH=arm64 build "$go" "$tag" "$out/$tag/arm64/delete_assign" racy/delete_assign
	if [[ $tag == go1.24 ]]; then
		GOEXPERIMENT=noswissmap build "$go" "$tag" "$out/$tag/noswiss/delete_assign" racy/delete_assign
	fi
	# The race detector needs cgo (a C compiler); only the benchmark baseline uses it.
	if command -v "${CC:-gcc}" >/dev/null || command -v cc >/dev/null; then
		CGO_ENABLED=1 build "$go" "$tag" "$out/$tag/race/mapheavy" bench/mapheavy -race
	else
		echo "build.sh: no C compiler, skipping $tag/race/mapheavy (the benchmark's -race baseline)" >&2
	fi
done
echo "build.sh: $built built, $skipped up to date in $out"
