#!/usr/bin/env bash
# Builds every Go test program with every toolchain of tests/go/toolchains:
#   OUTDIR/<tag>/{racy,clean,bench,corrupt}/<name>
# plus variants for the scan and enforcement tests:
#   OUTDIR/<tag>/stripped/delete_assign        -ldflags="-s -w" (no DWARF, no symtab)
#   OUTDIR/<tag>/stripped/channel_handoff      the same, for inline-aware symbolization
#   OUTDIR/<tag>/stripped/<racy>               every racy program stripped (enforcement tests)
#   OUTDIR/<tag>/pie/<racy>                    every racy program -buildmode=pie (and pie/mutex)
#   OUTDIR/<tag>/arm64/delete_assign           GOARCH=arm64 (a non-x86-64 ELF)
#   OUTDIR/<tag>/noswiss/delete_assign         GOEXPERIMENT=noswissmap, where the row says so
#   OUTDIR/<tag>/noswiss/bad_map_state         the same, of corrupt/bad_map_state
#   OUTDIR/<tag>/race/mapheavy                 -race, the benchmark's baseline (needs gcc)
# A toolchain marked `refused` (a release the enforcer must refuse) builds
# only OUTDIR/<tag>/racy/delete_assign.
# Incremental: a program is rebuilt only when a .go file, go.mod, the
# toolchains file or this script is newer than its output. Standard library
# only, no network. Toolchains build one after another, each with its own
# parallel `go build`s.
#
# Usage: tests/go/build.sh OUTDIR
# Env:   MAPGUARD_GO_TOOLCHAINS: the toolchains file (default tests/go/toolchains).
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$(cd "$(dirname "$0")" && pwd)
toolchains=${MAPGUARD_GO_TOOLCHAINS:-$src/toolchains}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=off CGO_ENABLED=0

built=0
skipped=0
jobs=()

# build GO TAG OUTPUT PKGDIR [go build flags...]  (in the background)
build() {
	local go=$1 tag=$2 output=$3 pkg=$4
	shift 4
	if [[ -x $output ]] && [[ -z $(find "$src/$pkg" "$src/go.mod" "$src/build.sh" "$toolchains" -newer "$output" -print -quit) ]]; then
		skipped=$((skipped + 1))
		return
	fi
	mkdir -p "$(dirname "$output")"
	(cd "$src" && "$go" build "$@" -o "$output" "./$pkg" && echo "built $tag ${output#"$out"/}") &
	jobs+=($!)
	built=$((built + 1))
}

# Waits for the builds started so far; fails if any did.
wait_builds() {
	local failed=0
	for j in "${jobs[@]}"; do wait "$j" || failed=1; done
	jobs=()
	[[ $failed == 0 ]] || { echo "build.sh: a build failed" >&2; exit 1; }
}

have_cc=0
if command -v "${CC:-gcc}" >/dev/null || command -v cc >/dev/null; then have_cc=1; fi

while read -r tag go extra; do
	[[ -z $tag || $tag == \#* ]] && continue
	if [[ ! -x $go ]]; then
		echo "build.sh: $tag toolchain not found at $go (see $toolchains; .ci/install-deps.sh installs it)" >&2
		exit 1
	fi
	if [[ ${extra:-} == refused ]]; then
		# go.mod asks for a newer Go: build the package's files outside the module.
		GO111MODULE=off build "$go" "$tag" "$out/$tag/racy/delete_assign" racy/delete_assign
		wait_builds
		continue
	fi
	for dir in "$src"/racy/*/ "$src"/clean/*/ "$src"/bench/*/ "$src"/corrupt/*/; do
		[[ -f $dir/main.go ]] || continue
		rel=${dir#"$src"/}
		rel=${rel%/}
		build "$go" "$tag" "$out/$tag/$rel" "$rel"
	done
	wait_builds
	for dir in "$src"/racy/*/; do
		name=$(basename "$dir")
		build "$go" "$tag" "$out/$tag/stripped/$name" "racy/$name" -ldflags="-s -w"
	done
	build "$go" "$tag" "$out/$tag/stripped/channel_handoff" clean/channel_handoff -ldflags="-s -w"
	wait_builds
	for dir in "$src"/racy/*/; do
		name=$(basename "$dir")
		build "$go" "$tag" "$out/$tag/pie/$name" "racy/$name" -buildmode=pie
	done
	build "$go" "$tag" "$out/$tag/pie/mutex" clean/mutex -buildmode=pie
	wait_builds
	GOARCH=arm64 build "$go" "$tag" "$out/$tag/arm64/delete_assign" racy/delete_assign
	if [[ ${extra:-} == noswiss ]]; then
		GOEXPERIMENT=noswissmap build "$go" "$tag" "$out/$tag/noswiss/delete_assign" racy/delete_assign
		GOEXPERIMENT=noswissmap build "$go" "$tag" "$out/$tag/noswiss/bad_map_state" corrupt/bad_map_state
	fi
	# The race detector needs cgo (a C compiler); only the benchmark baseline uses it.
	if [[ $have_cc == 1 ]]; then
		CGO_ENABLED=1 build "$go" "$tag" "$out/$tag/race/mapheavy" bench/mapheavy -race
	else
		echo "build.sh: no C compiler, skipping $tag/race/mapheavy (the benchmark's -race baseline)" >&2
	fi
	wait_builds
done <"$toolchains"
echo "build.sh: $built built, $skipped up to date in $out"
