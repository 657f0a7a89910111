#!/usr/bin/env bash
# Make a minimal Debian base image without any registry: debootstrap + `docker import`.
#   make-base.sh [TAG] [CACHE_DIR]      (defaults: netbench-base:bookworm /var/cache/netbench/debootstrap)
# Env: SUITE (bookworm: python3 is 3.11, matching the wheelhouse), MIRROR, INCLUDE (extra packages).
# Cached: an existing image is kept; the root filesystem tarball is kept in CACHE_DIR, so a fresh
# Docker engine on the same machine re-imports it instead of running debootstrap again.
set -euo pipefail
tag=${1:-netbench-base:bookworm}
cache=${2:-/var/cache/netbench/debootstrap}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
# python3-venv: install.sh makes a venv; ca-certificates: so that pip inside may use an index
packages="python3,python3-venv,ca-certificates${INCLUDE:+,$INCLUDE}"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "[base] $tag present"
  exit 0
fi
key=$(printf '%s\n' "$suite" "$mirror" "$packages" | sha256sum | cut -c1-12)
tarball="$cache/$suite-$key.tar"
if [[ ! -s $tarball ]]; then
  command -v debootstrap >/dev/null || { echo "[base] debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/root.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "[base] debootstrap $suite ($packages)"
  debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    { tail -n 20 "$cache/debootstrap.log"; exit 1; }
  # Nothing in an image needs the package cache or the lists; the docs are not used either.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
echo "[base] docker import $tarball -> $tag"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.opencontainers.image.title=netbench-base org.opencontainers.image.description=\"debootstrap $suite minbase with $packages\" netbench.base.key=$key" \
  "$tarball" "$tag" >/dev/null
docker image inspect "$tag" --format '[base] {{.RepoTags}} {{.Size}} bytes'
