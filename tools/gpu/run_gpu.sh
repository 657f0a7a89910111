#!/usr/bin/env bash
# The exact commands of the GPU run (docs/results/gpu/README.md). Run from the repository root on a
# CUDA host whose python3 has torch; the Petals stack comes from wheels in .whl/ (no internet there).
#   bash tools/gpu/run_gpu.sh STAGE OUTDIR
set -euo pipefail
stage="$1"; out="$2"; mkdir -p "$out"
# REPEATS=3: measure every configuration 3 times (the client's --repeats; an OUT that already holds
# rows keeps them and measures only the missing repeats)
repeats="${REPEATS:-1}"
if [[ ! -d /tmp/site/petals ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 NETBENCH_MODELS_DIR=/tmp/netbench-models
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
swarm_env=()  # VAR=VALUE for the swarm's processes
swarm() {  # swarm NAME MODEL SERVERS -- client args...
  local name="$1" model="$2" servers="$3"; shift 3
  env "${swarm_env[@]}" python3 -m bench_client.swarm.local --model "$model" --servers "$servers" --device cuda --dtype float16 \
    --num-handlers 4 --workdir "/tmp/work-$name" "$@" 2>&1 | grep -vE "FutureWarning|_register_pytree_node|bloom-license" \
    | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  cp "/tmp/work-$name/bringup.json" "$out/$name.bringup.json" 2>/dev/null || true
  mkdir -p "$out/logs-$name"; cp /tmp/work-"$name"/*.log "$out/logs-$name/" 2>/dev/null || true
  return "$rc"
}
step() {  # step [VAR=VALUE] python3 -m bench_client.swarm.engine_bench step ...: one JSON line in step.jsonl
  env "$@" | python3 -c "import json, sys; print(json.dumps(json.load(sys.stdin)))" >> "$out/step.jsonl"
}
case "$stage" in
  smoke)
    swarm smoke netbench/tiny 2 --timeout 90 -- -b 1 --num-processes 2 --output "$out/smoke.tsv" --prompt-lengths 16 \
      --new-tokens 4 --token-sweep none
    ;;
  blocks)
    python3 -m bench_client.swarm.engine_bench blocks --model facebook/opt-30b --device cuda --dtype float16 --blocks 12 | tee "$out/blocks-opt30b.json"
    ;;
  opt6.7b)
    for setting in "-b 2 --num-micro-batches 1" "-b 1 --num-micro-batches 2"; do
      tag=$(echo "$setting" | tr -d ' -' | tr 'b' 'b')
      swarm "opt6.7b-$tag" facebook/opt-6.7b 1 -- $setting --num-processes 6 --output "$out/opt6.7b.tsv" \
        --prompt-lengths 256 512 1024 --new-tokens 32 --token-sweep none --network-profile none --num-gpus 1 \
        --repeats "$repeats"
    done
    ;;
  opt30b)
    # the paper's token sweep (0..32 new tokens at prompt 512), every 4th point to fit the device budget
    swarm opt30b-b2 facebook/opt-30b 4 -- -b 2 --num-micro-batches 1 --num-processes 6 --output "$out/opt30b.tsv" \
      --token-sweep 0:33:4 --network-profile none --num-gpus 1 --repeats "$repeats"
    ;;
  settings)
    # Server and client settings at the paper workload (OPT-30B, 4 servers, 512 / 32, batch 2 x 6), one
    # TSV per setting (the same configuration in one TSV would be resumed, not measured again).
    # Each setting: "environment | local_swarm flags | client flags" (the last of a repeated flag wins).
    # SETTINGS picks some: SETTINGS="baseline one-server" bash run_gpu.sh settings OUT
    declare -A setting=(
      [baseline]="||"
      [upstream-alibi]="NETBENCH_UPSTREAM_ALIBI=1 ||"  # without compat's alibi workaround (item 6)
      [client-fp16]="|| --client-dtype float16"
      [one-server]="| --servers 1 |"
      [handlers16]="| --num-handlers 16 |"
      [procs12]="|| --num-processes 12"
    )
    for name in ${SETTINGS:-baseline client-fp16 one-server handlers16 procs12}; do
      IFS='|' read -r env_part swarm_part client_part <<< "${setting[$name]}"
      read -r -a swarm_env <<< "$env_part"
      read -r -a swarm_flags <<< "$swarm_part"
      read -r -a client_flags <<< "$client_part"
      swarm "settings-$name" facebook/opt-30b 4 "${swarm_flags[@]}" -- -b 2 --num-micro-batches 1 \
        --num-processes 6 --output "$out/settings-$name.tsv" --prompt-lengths 512 --new-tokens 32 \
        --token-sweep none --network-profile none --num-gpus 1 "${client_flags[@]}" || echo "setting $name failed"
    done
    swarm_env=()
    ;;
  opt175b)
    # OPT-175B in float16 (350 GB) over the 4 GPUs of one host: 4 servers x 24 blocks, server i on cuda:i
    for setting in "-b 2 --num-micro-batches 1" "-b 1 --num-micro-batches 2"; do
      tag=$(echo "$setting" | tr -d ' -')
      swarm "opt175b-$tag" facebook/opt-175b 4 --gpus 4 --timeout 400 -- $setting --num-processes 6 \
        --output "$out/opt175b.tsv" --prompt-lengths 512 --new-tokens 32 --token-sweep none --network-profile none \
        --num-gpus 4 --repeats "$repeats"
    done
    ;;
  step)
    # The GPU side of a server's decode step without Petals' networking (bench_engine step): OPT-30B
    # blocks, batch 2, 528 cached tokens; one JSON line per measurement in step.jsonl.
    bench="python3 -m bench_client.swarm.engine_bench step --model facebook/opt-30b --device cuda --dtype float16"
    step $bench --blocks 12 --kernels                          # one server's 12 blocks
    step NETBENCH_UPSTREAM_ALIBI=1 $bench --blocks 12 --kernels  # the same with transformers' alibi
    step $bench --blocks 48                                    # one process holding the whole model
    step $bench --blocks 12 --processes 4                      # 4 servers' processes sharing the GPU
    step $bench --blocks 12 --batch 12 --kernels               # 6 sessions x 2 batched in one step
    ;;
  prefill)
    # The GPU side of the prefill (bench_engine step --past 0 --tokens 512): batch 2 x 512 tokens
    bench="python3 -m bench_client.swarm.engine_bench step --model facebook/opt-30b --device cuda --dtype float16 --past 0"
    step $bench --blocks 12 --tokens 512 --kernels
    step $bench --blocks 48 --tokens 512
    step $bench --blocks 12 --tokens 512 --processes 4
    step $bench --blocks 12 --tokens 1024 --batch 1 --kernels
    ;;
  bringup)
    # Issue 12 item 5: DHT + 4 servers x 12 OPT-30B blocks on one GPU, brought up and stopped REPEATS
    # times (default 5), medians printed and kept in bringup.json; rows in bringup*.jsonl (a rerun resumes).
    # The same with --sequential: the order before (servers started once the DHT is up), for the A/B.
    n="${REPEATS:-5}"
    for order in overlap sequential; do
      flag=(); [[ "$order" == sequential ]] && flag=(--sequential)
      python3 tools/bench_bringup.py --model facebook/opt-30b --servers 4 --device cuda --dtype float16 \
        --repeats "$n" "${flag[@]}" --output "$out/bringup-opt30b-$order.jsonl" --workdir "/tmp/work-bringup-$order" \
        -- --num-handlers 4 | tee "$out/bringup-opt30b-$order.json"
    done
    ;;
  opt30b-seed)
    swarm opt30b-b1m2 facebook/opt-30b 4 -- -b 1 --num-micro-batches 2 --num-processes 6 --output "$out/opt30b.tsv" \
      --token-sweep none --network-profile none --num-gpus 1
    ;;
esac
