#!/usr/bin/env bash
# A sampled profile of an OPT-30B-sized swarm on one GPU at the paper workload (4 servers x 12 blocks,
# float16, prompt 512, batch 2 x 6 client processes; 128 new tokens so that decoding lasts):
# py-spy samples one server (with its handler subprocesses) and one client worker for 20 s while
# nvidia-smi samples the GPU's utilisation every 200 ms and cpu_sample.py the CPU of every process.
#   bash docs/results/gpu/profile_server.sh OUTDIR
#   NEW_TOKENS=1 MICRO_BATCHES=16 bash docs/results/gpu/profile_server.sh OUTDIR   # mostly prefills
# Run from the repository root on the GPU host (wheels in .whl/, py-spy in .whl/tools/).
set -u
out=$1; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --target /tmp/tools .whl/tools/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 NETBENCH_MODELS_DIR=/tmp/netbench-models
work=/tmp/prof; rm -rf "$work"
python3 -m bench_client.swarm.local --model facebook/opt-30b --servers 4 --device cuda --dtype float16 \
  --num-handlers 4 --workdir "$work" -- -b 2 --num-processes 6 --num-micro-batches "${MICRO_BATCHES:-2}" --output "$work/out.tsv" \
  --prompt-lengths 512 --new-tokens "${NEW_TOKENS:-128}" --token-sweep none --num-gpus 1 > "$out/client.log" 2>&1 &
swarm=$!
for _ in $(seq 1 180); do [[ -s $work/pids.json ]] && break; sleep 1; done
sleep 30  # the six clients load their embeddings and warm up; then they decode for about a minute
pid_of() { python3 -c "import json, sys; print(json.load(open('$work/pids.json'))[sys.argv[1]])" "$1"; }
server=$(pid_of server-1)
# a client worker: a multiprocessing child running python (not the resource tracker or a p2pd)
worker=$(python3 -c "
from pathlib import Path
from bench_client.core import daemon
workers = [p for p in daemon.descendants([$(pid_of client)]) if b'spawn_main' in Path(f'/proc/{p}/cmdline').read_bytes()
           and b'resource_tracker' not in Path(f'/proc/{p}/cmdline').read_bytes()]
print(workers[0])")
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 200 > "$out/gpu-util.csv" &
smi=$!
python3 docs/results/gpu/cpu_sample.py "$work/pids.json" --seconds 10 > "$out/cpu.json" &
/tmp/tools/bin/py-spy record --pid "$server" --subprocesses --duration 20 --rate 100 --format raw --nonblocking \
  -o "$out/server.folded" > "$out/pyspy-server.log" 2>&1 &
spy1=$!
/tmp/tools/bin/py-spy record --pid "$worker" --duration 20 --rate 100 --format raw --nonblocking \
  -o "$out/client.folded" > "$out/pyspy-client.log" 2>&1 &
spy2=$!
wait "$spy1" "$spy2"
kill "$smi"
wait "$swarm"
for part in server client; do
  python3 docs/results/gpu/fold_summary.py "$out/$part.folded" > "$out/$part-summary.txt"
done
cp "$work"/*.log "$work"/out.* "$work"/bringup.json "$work"/pids.json "$out/" 2>/dev/null
