#!/usr/bin/env bash
# The exact commands of the GPU run (docs/results/gpu/README.md). Run from the repository root on a
# CUDA host whose python3 has torch; the Petals stack comes from wheels in .whl/ (no internet there).
#   bash docs/results/gpu/run_gpu.sh STAGE OUTDIR
set -euo pipefail
stage="$1"; out="$2"; mkdir -p "$out"
if [[ ! -d /tmp/site/petals ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 NETBENCH_MODELS_DIR=/tmp/netbench-models
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
swarm() {  # swarm NAME MODEL SERVERS -- client args...
  local name="$1" model="$2" servers="$3"; shift 3
  python3 -m bench_client.local_swarm --model "$model" --servers "$servers" --device cuda --dtype float16 \
    --num-handlers 4 --workdir "/tmp/work-$name" "$@" 2>&1 | grep -vE "FutureWarning|_register_pytree_node|bloom-license" \
    | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  cp "/tmp/work-$name/bringup.json" "$out/$name.bringup.json" 2>/dev/null || true
  mkdir -p "$out/logs-$name"; cp /tmp/work-"$name"/*.log "$out/logs-$name/" 2>/dev/null || true
  return "$rc"
}
case "$stage" in
  smoke)
    swarm smoke netbench/tiny 2 --timeout 90 -- -b 1 --num-processes 2 --output "$out/smoke.tsv" --prompt-lengths 16 \
      --new-tokens 4 --token-sweep none
    ;;
  blocks)
    python3 -m bench_client.bench_engine blocks --model facebook/opt-30b --device cuda --dtype float16 --blocks 12 | tee "$out/blocks-opt30b.json"
    ;;
  opt6.7b)
    for setting in "-b 2 --num-micro-batches 1" "-b 1 --num-micro-batches 2"; do
      tag=$(echo "$setting" | tr -d ' -' | tr 'b' 'b')
      swarm "opt6.7b-$tag" facebook/opt-6.7b 1 -- $setting --num-processes 6 --output "$out/opt6.7b.tsv" \
        --prompt-lengths 256 512 1024 --new-tokens 32 --token-sweep none --network-profile none --num-gpus 1
    done
    ;;
  opt30b)
    # the paper's token sweep (0..32 new tokens at prompt 512), every 4th point to fit the device budget
    swarm opt30b-b2 facebook/opt-30b 4 -- -b 2 --num-micro-batches 1 --num-processes 6 --output "$out/opt30b.tsv" \
      --token-sweep 0:33:4 --network-profile none --num-gpus 1
    ;;
  opt30b-seed)
    swarm opt30b-b1m2 facebook/opt-30b 4 -- -b 1 --num-micro-batches 2 --num-processes 6 --output "$out/opt30b.tsv" \
      --token-sweep none --network-profile none --num-gpus 1
    ;;
esac
