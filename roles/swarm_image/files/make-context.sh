#!/usr/bin/env bash
# Assemble the swarm image's build context and its content hash (the image tag derives from it).
#   make-context.sh CONTEXT_DIR WHEELHOUSE_DIR [BUILD_ARG=VALUE ...]
# CONTEXT_DIR gets: Dockerfile, src/ (the package: pyproject.toml, README.md, bench_client/),
# wheelhouse/ (hard links when possible), build-args (the args, one a line, part of the hash)
# and content-hash: sha256 over every file's path and content, the first 16 hex digits.
# WHEELHOUSE_DIR may be '-' for an online build (empty wheelhouse/).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${NETBENCH_SOURCE:-$(cd "$here/../../.." && pwd)}"
ctx=${1:?usage: make-context.sh CONTEXT_DIR WHEELHOUSE_DIR [ARG=VALUE ...]}
wheels=${2:?usage: make-context.sh CONTEXT_DIR WHEELHOUSE_DIR [ARG=VALUE ...]}
shift 2

rm -rf "$ctx.tmp"
mkdir -p "$ctx.tmp/src" "$ctx.tmp/wheelhouse"
cp "$here/Dockerfile" "$ctx.tmp/"
cp "$root/pyproject.toml" "$ctx.tmp/src/"
[[ -f $root/README.md ]] && cp "$root/README.md" "$ctx.tmp/src/" || : >"$ctx.tmp/src/README.md"
# the package's files only: no caches, no egg-info of an editable install on the controller
tar -C "$root" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - bench_client |
  tar -C "$ctx.tmp/src" -xf -
if [[ $wheels != - ]]; then
  ls "$wheels"/*.whl >/dev/null || { echo "[context] no wheels in $wheels" >&2; exit 1; }
  cp -l "$wheels"/*.whl "$wheels/.netbench-wheelhouse" "$ctx.tmp/wheelhouse/" 2>/dev/null ||
    cp "$wheels"/*.whl "$wheels/.netbench-wheelhouse" "$ctx.tmp/wheelhouse/"
fi
printf '%s\n' "$@" | sort >"$ctx.tmp/build-args"
(cd "$ctx.tmp" && find . -type f ! -name content-hash -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
  sha256sum | cut -c1-16 >"$ctx.tmp/content-hash"
rm -rf "$ctx"
mv "$ctx.tmp" "$ctx"
echo "[context] $ctx: content hash $(cat "$ctx/content-hash")"
