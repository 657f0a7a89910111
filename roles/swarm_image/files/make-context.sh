#!/usr/bin/env bash
# Assemble the swarm image's build context as one tarball (`docker build - < it`, easy to ship)
# and its content hash, from which the image tag derives.
#   make-context.sh OUT_DIR WHEELHOUSE_DIR [BUILD_ARG=VALUE ...]
# The context: Dockerfile, src/ (the package: pyproject.toml, README.md, bench_client/),
# wheelhouse/ and build-args (the args, part of the hash). WHEELHOUSE_DIR '-' = online build.
# Writes OUT_DIR/context-<hash>.tar and OUT_DIR/content-hash (16 hex digits of a sha256 over every
# file's path and content); prints "unchanged" when that context was already there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${NETBENCH_SOURCE:-$(cd "$here/../../.." && pwd)}"
out=${1:?usage: make-context.sh OUT_DIR WHEELHOUSE_DIR [ARG=VALUE ...]}
wheels=${2:?usage: make-context.sh OUT_DIR WHEELHOUSE_DIR [ARG=VALUE ...]}
shift 2

mkdir -p "$out"
ctx=$(mktemp -d "$out/.context.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/src" "$ctx/deps/bench_client" "$ctx/wheelhouse"
cp "$here/Dockerfile" "$ctx/"
cp "$root/pyproject.toml" "$ctx/src/"
if [[ -f $root/README.md ]]; then cp "$root/README.md" "$ctx/src/"; else : >"$ctx/src/README.md"; fi
# the package's files only: no caches, no egg-info of an editable install on the controller
tar -C "$root" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - bench_client | tar -C "$ctx/src" -xf -
# deps/: only what decides the installed dependencies (the Dockerfile's cached layer)
cp "$ctx/src/pyproject.toml" "$ctx/src/README.md" "$ctx/deps/"
for f in install.sh compat.py __init__.py; do
  if [[ -f $ctx/src/bench_client/$f ]]; then cp "$ctx/src/bench_client/$f" "$ctx/deps/bench_client/"; fi
done
: >>"$ctx/deps/bench_client/__init__.py"
if [[ $wheels != - ]]; then
  compgen -G "$wheels/*.whl" >/dev/null || { echo "[context] no wheels in $wheels (make-wheelhouse.sh makes them)" >&2; exit 1; }
  cp -l "$wheels"/*.whl "$wheels/.netbench-wheelhouse" "$ctx/wheelhouse/" 2>/dev/null ||
    cp "$wheels"/*.whl "$wheels/.netbench-wheelhouse" "$ctx/wheelhouse/"
fi
printf '%s\n' "$@" | LC_ALL=C sort >"$ctx/build-args"
hash=$(cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [[ -s $out/context-$hash.tar ]]; then
  echo "[context] unchanged: $out/context-$hash.tar"
else
  tar -C "$ctx" --sort=name --owner=0 --group=0 --numeric-owner -cf "$out/context-$hash.tar.tmp" .
  mv "$out/context-$hash.tar.tmp" "$out/context-$hash.tar"
  echo "[context] $out/context-$hash.tar"
fi
# older contexts are superseded (the images built from them keep their own tags)
find "$out" -maxdepth 1 -name 'context-*.tar' ! -name "context-$hash.tar" -delete
echo "$hash" >"$out/content-hash"
