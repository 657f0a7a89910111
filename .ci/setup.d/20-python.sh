#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/../.."
bash bench_client/install.sh
