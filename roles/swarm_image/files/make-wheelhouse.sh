#!/usr/bin/env bash
# Make the wheelhouse the swarm image installs from with --no-index (air-gapped hosts): every
# wheel the pinned stack needs, with wheels built here for the packages PyPI has only as sdists
# (prefetch_generator, python-baseconv, varint, cpufeature).
#   make-wheelhouse.sh [DIR]           (default /var/cache/netbench/wheelhouse)
# Env: PYTHON     interpreter whose version and platform the wheels are for: it must match the
#                 image base's python3 (Debian bookworm: 3.11)
#      TORCH_SPEC torch requirement (default: install.sh's); 'none' for a base that ships torch
#                 (CUDA PyTorch images): torch and its CUDA wheels are then left out
# The pins are the project's: pyproject.toml; nothing here re-pins.
# Cached: DIR/.netbench-wheelhouse holds a key of the inputs; an up-to-date DIR is kept as it is.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${NETBENCH_SOURCE:-$(cd "$here/../../.." && pwd)}"
out=${1:-/var/cache/netbench/wheelhouse}
PYTHON=${PYTHON:-python3}
# install.sh's defaults are the source of truth for torch and petals
TORCH_SPEC=${TORCH_SPEC:-$(sed -n 's/^TORCH_SPEC="\${TORCH_SPEC:-\(.*\)}"$/\1/p' "$root/bench_client/install.sh")}
PETALS_SPEC=$(sed -n 's/^PETALS_SPEC="\(.*\)"$/\1/p' "$root/bench_client/install.sh")
[[ -n $TORCH_SPEC && -n $PETALS_SPEC ]] || { echo "[wheelhouse] cannot read TORCH_SPEC/PETALS_SPEC from install.sh" >&2; exit 1; }
pytag=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

stamp="$out/.netbench-wheelhouse"
key=$( { cat "$root/pyproject.toml" "$0"; echo "$TORCH_SPEC $PETALS_SPEC $pytag"; } | sha256sum | cut -c1-16)
if [[ -f $stamp ]] && grep -qx "key=$key" "$stamp"; then
  echo "[wheelhouse] $out up to date ($(ls "$out"/*.whl | wc -l) wheels, key $key)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
torch_req=()
[[ $TORCH_SPEC != none ]] && torch_req=("$TORCH_SPEC")
echo "[wheelhouse] resolving the project's dependencies for $pytag (torch: $TORCH_SPEC)"
# A dry-run install resolves the whole closure under the project's constraints, whatever is
# installed here, and reads only metadata.
"$PYTHON" -m pip install -q --dry-run --ignore-installed --report "$work/report.json" \
  "${torch_req[@]}" "$root[test]"
"$PYTHON" - "$work/report.json" "$TORCH_SPEC" >"$work/requirements.txt" <<'PY'
import json, re, sys
report, torch_spec = json.load(open(sys.argv[1])), sys.argv[2]
for item in report["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if name.lower().replace("_", "-") == "petals-netbench":
        continue  # the project itself is installed from its source
    if torch_spec == "none" and re.match(r"(torch|triton|nvidia-.*)$", name.lower()):
        continue  # the base image brings torch and its CUDA libraries
    print(f"{name}=={version}")
PY
echo "[wheelhouse] $(wc -l <"$work/requirements.txt") packages + pip/setuptools/wheel + $PETALS_SPEC"
mkdir -p "$work/wheels"
"$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$work/wheels" -r "$work/requirements.txt" pip setuptools wheel
# petals pins an uninstallable hivemind: install.sh installs it --no-deps, so it is fetched alone.
"$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$work/wheels" "$PETALS_SPEC"

mkdir -p "$out"
rm -f "$out"/*.whl
mv "$work"/wheels/*.whl "$out"/
printf 'key=%s\npython=%s\ntorch=%s\n' "$key" "$pytag" "$TORCH_SPEC" >"$stamp"
echo "[wheelhouse] $out: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1)"
