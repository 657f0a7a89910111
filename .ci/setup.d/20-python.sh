#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/../.."
bash bench_client/install.sh
# CI only (not a project dependency: the swarm image's wheelhouse stays as it is): .ci/run runs the tests
# marked parallel on both cores
.venv/bin/python -m pip install -q "pytest-xdist>=3.5,<4"
