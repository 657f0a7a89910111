#!/usr/bin/env bash
# Parity of the main command with the engine: the paper workload through `ansible-playbook site.yml`
# (local inventory, no venv, no ssh) and through `python -m bench_client.swarm.local` on the same
# card, one after the other, then their per-GPU throughputs compared (target: within 5 %).
#
# On the controller (with internet/package index), once: the Ansible wheels for the GPU host
#   bash tools/gpu/parity.sh wheels                  # -> .whl/*.whl (tools/gpu/make-wheels.sh)
# On the one-H200 host (python3.12 + torch, the Petals wheels in .whl/ as for run_gpu.sh), from the
# repository root:
#   bash tools/gpu/parity.sh run OUTDIR
#   NETBENCH_GIT_COMMIT=<commit> bash tools/gpu/parity.sh run OUTDIR   # where the copy has no .git
# OUTDIR gets ansible/<run_id>/none/out.{tsv,jsonl}, local_swarm/out.{tsv,jsonl}, the logs,
# parity.json (the comparison) and gpu.txt. Exit status: 0 within the tolerance, 1 outside, other: failed.
# The same script runs on CPU with a tiny model (tests/ansible/test_gpu_parity_script.py):
#   MODEL=netbench/tiny DEVICE=cpu DTYPE=float32 SERVERS=2 ... bash tools/gpu/parity.sh run OUTDIR
set -euo pipefail
stage="${1:?usage: parity.sh wheels | run OUTDIR}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

if [[ "$stage" == wheels ]]; then  # the Petals stack and Ansible for the GPU host's CPython 3.12
  exec bash tools/gpu/make-wheels.sh .whl
fi
[[ "$stage" == run ]] || { echo "usage: parity.sh wheels | run OUTDIR" >&2; exit 2; }
out="$(mkdir -p "${2:?OUTDIR}" && cd "$2" && pwd)"

# The workload: the paper's (OPT-30B, 4 servers on one GPU, float16, batch 2 x 1 micro-batch x 6
# processes, prompt 512, 32 new tokens, no shaping). SERVERS is what site.yml must choose by itself
# (netbench_servers_per_gpu's default) and what local_swarm is told.
MODEL="${MODEL:-facebook/opt-30b}" DEVICE="${DEVICE:-cuda}" DTYPE="${DTYPE:-float16}" SERVERS="${SERVERS:-4}"
BATCH="${BATCH:-2}" MICRO="${MICRO:-1}" PROCS="${PROCS:-6}" PROMPT="${PROMPT:-512}" NEW="${NEW:-32}"
TOLERANCE="${TOLERANCE:-0.05}" SITE="${SITE:-/tmp/site}" WORK="${WORK:-/tmp/parity-work}"
HANDLERS="${HANDLERS:-$([[ "$DEVICE" == cuda ]] && echo 4 || echo 2)}"  # the role's default on each device

if [[ "$DEVICE" == cuda ]]; then  # the GPU host: every Python package from the carried wheels, no venv
  if [[ ! -d "$SITE/petals" || ! -d "$SITE/ansible" ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  fi
  export PYTHONPATH="$SITE:$repo" NETBENCH_MODELS_DIR=/tmp/netbench-models
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 LC_ALL="${LC_ALL:-C.UTF-8}" ANSIBLE_CONFIG="$repo/ansible.cfg"
# Both runs record the same commit: git's word where the tree has .git, else the caller's.
if [[ -z "${NETBENCH_GIT_COMMIT:-}" ]] && commit="$(git -C "$repo" rev-parse HEAD 2>/dev/null)"; then
  export NETBENCH_GIT_COMMIT="$commit"
  git -C "$repo" diff --quiet HEAD && export NETBENCH_GIT_DIRTY=false || export NETBENCH_GIT_DIRTY=true
fi
cache="$("$PY" -c "from bench_client.core.sweep import attention_cache_tokens as a; print(a($BATCH, $PROCS, [$PROMPT], [$NEW]))")"
workload=(-e "bench_client_batch_size=$BATCH" -e "bench_client_num_micro_batches=$MICRO"
          -e "bench_client_num_processes=$PROCS" -e "{\"bench_client_prompt_lengths\": [$PROMPT]}"
          -e "bench_client_new_tokens=$NEW" -e bench_client_token_sweep=none)
# 1. site.yml on the local inventory (ansible_connection local; modules and the swarm run with this
#    python3, PYTHONPATH inherited). Only the model, device and dtype are given: the servers per GPU,
#    their pinning, handlers and attention cache are the roles' defaults under test.
ansible=("$PY" -m ansible.cli.playbook -i "$repo/inventory/local/hosts.yml" "$repo/site.yml"
         -e "model=$MODEL" -e "netbench_device=$DEVICE" -e "dtype=$DTYPE" -e profiles=none "${workload[@]}"
         -e run_id=parity -e "results_dir=$out/ansible" -e "netbench_workdir=$WORK/ansible")
start=$(date +%s)
set +e
"${ansible[@]}" 2>&1 | tee "$out/ansible.log"
rc=${PIPESTATUS[0]}
echo "site.yml: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$out/ansible.log"
mkdir -p "$out/logs-ansible"; cp "$WORK"/ansible/logs/*.log "$out/logs-ansible/" 2>/dev/null
"${ansible[@]}" --tags cleanup > "$out/ansible-cleanup.log" 2>&1 || echo "cleanup failed: $out/ansible-cleanup.log"
set -e
[[ $rc -eq 0 ]] || { echo "site.yml failed (exit $rc): $out/ansible.log" >&2; exit 3; }

# 2. local_swarm, the same workload on the same card, the same server settings.
mkdir -p "$out/local_swarm"
# per-GPU throughput over the one GPU (site.yml's plan passes the same); on CPU both count the servers
num_gpus=(); [[ "$DEVICE" == cuda ]] && num_gpus=(--num-gpus 1)
"$PY" -m bench_client.swarm.local --model "$MODEL" --servers "$SERVERS" --device "$DEVICE" --dtype "$DTYPE" \
  --num-handlers "$HANDLERS" --attn-cache-tokens "$cache" --workdir "$WORK/local_swarm" -- \
  -b "$BATCH" --num-micro-batches "$MICRO" --num-processes "$PROCS" --prompt-lengths "$PROMPT" --new-tokens "$NEW" \
  --token-sweep none --network-profile none "${num_gpus[@]}" --run-id parity-local --output "$out/local_swarm/out.tsv" \
  2>&1 | tee "$out/local_swarm.log"
cp "$WORK/local_swarm/bringup.json" "$out/local_swarm/" 2>/dev/null || true

# 3. The comparison (exit 0 within TOLERANCE, 1 outside)
"$PY" tools/gpu/compare_parity.py "$out/ansible/parity/none/out.jsonl" "$out/local_swarm/out.jsonl" \
  --servers "$SERVERS" --tolerance "$TOLERANCE" --out "$out/parity.json"
