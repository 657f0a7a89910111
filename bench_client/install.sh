#!/usr/bin/env bash
# One command that installs the harness and the 2026-working Petals stack into a virtualenv.
#   bash bench_client/install.sh            # creates ./.venv
#   VENV=/opt/petals bash bench_client/install.sh
#   WHEELHOUSE=/path/to/wheels bash bench_client/install.sh   # air-gapped: install from wheels only
#   EXTRAS= bash bench_client/install.sh      # a swarm host: no Ansible, plots or test tools
# EXTRAS (default controller,report,test: this machine runs everything) are pyproject's extras.
# torch is kept when the interpreter already has it (GPU hosts, CUDA base images); otherwise
# TORCH_SPEC is installed (default: the CPU build this project tests with).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
VENV="${VENV:-$root/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PETALS_SPEC="petals==2.2.0.post1"
EXTRAS="${EXTRAS-controller,report,test}"

pip_args=(-q)
if [[ -n "${WHEELHOUSE:-}" ]]; then pip_args+=(--no-index --find-links "$WHEELHOUSE"); fi
if [[ "${SYSTEM_SITE_PACKAGES:-0}" == 1 ]]; then venv_args=(--system-site-packages); else venv_args=(); fi

if [[ "$VENV" != none ]]; then
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "${venv_args[@]}" "$VENV"
  py="$VENV/bin/python"
else
  py="$PYTHON"
fi
"$py" -m pip install "${pip_args[@]}" --upgrade pip setuptools wheel >/dev/null
if ! "$py" -c 'import torch' 2>/dev/null; then
  echo "[install] torch: $TORCH_SPEC"
  "$py" -m pip install "${pip_args[@]}" "$TORCH_SPEC"
fi
echo "[install] harness and the Petals stack (pinned in pyproject.toml; extras: ${EXTRAS:-none})"
"$py" -m pip install "${pip_args[@]}" -e "$root${EXTRAS:+[$EXTRAS]}"
# petals' own metadata pins hivemind==1.1.10.post2 (uninstallable): install it without deps.
"$py" -m pip install "${pip_args[@]}" --no-deps "$PETALS_SPEC"
"$py" -c 'import bench_client.compat as c; c.apply(); import petals; print("[install] ok: petals", petals.__version__)'
