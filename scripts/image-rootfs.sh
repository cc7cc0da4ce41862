#!/usr/bin/env bash
# Assembles the base file system of mapguard's container images from Debian
# packages: glibc and libgcc only (TLS is rustls: no OpenSSL), no shell, no
# package manager, like distroless/cc without OpenSSL and libstdc++.
#
#   DEST/lib*/..., DEST/usr/...   libc6 and libgcc-s1, unpacked with dpkg -x
#                                 (without iconv modules and documentation)
#   DEST/etc/passwd, group        root (0) and nonroot (65532), no login shell
#   DEST/etc/nsswitch.conf        hosts from /etc/hosts, then DNS
#   DEST/etc/os-release           this Debian release's (base-files)
#   DEST/var/lib/dpkg/status.d/   each package's control data, so that image
#                                 scanners see what the image holds
#   DEST/tmp                      1777
#   DEST/home/nonroot             nonroot's home (owner set by the caller)
#
# The packages are the versions installed on this machine (the glibc the
# binaries were linked against), fetched with `apt-get download`; set
# MAPGUARD_DEB_CACHE to keep the .debs between runs. Used by
# scripts/images.sh (`make images`) and by the Containerfiles' base stage.
#
# Usage: scripts/image-rootfs.sh DEST [PACKAGE...]
#        (default: libc6 libgcc-s1 gcc-12-base, the last for libgcc's copyright)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DEST [PACKAGE...]" >&2; exit 2; }
dest=$1
shift
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(libc6 libgcc-s1 gcc-12-base)

cache=${MAPGUARD_DEB_CACHE:-}
tmp=
if [ -z "$cache" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cache=$tmp
fi
mkdir -p "$cache"

rm -rf "$dest"
mkdir -p "$dest"
for p in "${pkgs[@]}"; do
  # The installed version: the binaries were linked against it.
  version=$(dpkg-query -W -f='${Version}' "$p")
  arch=$(dpkg-query -W -f='${Architecture}' "$p")
  deb=$cache/${p}_${version//:/%3a}_${arch}.deb
  if [ ! -s "$deb" ]; then
    # As root apt warns that _apt cannot write here; let it download as root.
    (cd "$cache" && apt-get download -qq -o APT::Sandbox::User=root "$p=$version")
  fi
  [ -s "$deb" ] || { echo "apt-get download $p=$version left no $deb" >&2; exit 1; }
  dpkg -x "$deb" "$dest"
  mkdir -p "$dest/var/lib/dpkg/status.d"
  # Laid out as dpkg's own status entries (Status after Package).
  dpkg-deb -f "$deb" | sed '1a Status: install ok installed' >"$dest/var/lib/dpkg/status.d/$p"
done

# Documentation out, licences kept (each package's copyright file).
find "$dest/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
rm -rf "$dest/usr/share/lintian" "$dest/usr/share/man" "$dest/usr/share/info"
# iconv's modules (8 MB): Rust's standard library never calls iconv.
rm -rf "$dest/usr/lib/"*-linux-gnu/gconv

mkdir -p "$dest/etc" "$dest/tmp" "$dest/home/nonroot" "$dest/root"
chmod 1777 "$dest/tmp"
chmod 0700 "$dest/root"
cat >"$dest/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$dest/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
echo 'hosts: files dns' >"$dest/etc/nsswitch.conf"
cp /usr/lib/os-release "$dest/etc/os-release"
