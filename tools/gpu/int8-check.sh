#!/usr/bin/env bash
# INT8 (the paper's dtype) on a CUDA 13 host: is it right, what does it cost. bitsandbytes 0.50.2 has a
# CUDA 13 build; its 43 MB wheel carries libraries for every CUDA and ROCm, stripped here to CUDA 13.x
# and the CPU one (~8 MB) so it travels with the Petals wheels (64 MiB a call).
#
# On the controller (package index reachable), once:
#   bash tools/gpu/int8-check.sh wheel            # -> .whl-bnb/bitsandbytes-0.50.2-*.whl (stripped)
#   bash tools/gpu/make-wheels.sh .whl            # the Petals stack, if .whl/ is not there yet
# On the GPU host, from the repository root (carry .whl and .whl-bnb):
#   bash tools/gpu/int8-check.sh run OUTDIR
# The same run on CPU (what tests/processes/test_int8_check_script.py does, with a small model):
#   MODEL=facebook/opt-125m DEVICE=cpu BLOCKS=2 bash tools/gpu/int8-check.sh run OUTDIR
# OUTDIR gets, one JSON file each:
#   check-<dtype>-<model>.json  quantised block vs float32, same weights (bench_client.swarm.quant_check);
#                               exit 1 of the script when int8 is off by more than its limit
#   blocks-<dtype>.json         BLOCKS blocks built as a server builds them: seconds, GB, GPU GiB
#   step-<dtype>.json           a decode step of those blocks (batch 2, 528 cached tokens), STEP_SECONDS (5) of them
#   server-int8.json            a real server of BLOCKS int8 blocks: seconds to ONLINE, GPU memory it holds
set -euo pipefail
stage="${1:?usage: int8-check.sh wheel | run OUTDIR}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
BNB="${BNB:-bitsandbytes==0.50.2}"

if [[ "$stage" == wheel ]]; then
  rm -rf .whl-bnb && mkdir -p .whl-bnb
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl-bnb/full "$BNB"
  python3 - .whl-bnb/full/*.whl .whl-bnb <<'EOF'
import sys, zipfile
from pathlib import Path

source, out = Path(sys.argv[1]), Path(sys.argv[2])
keep = ("libbitsandbytes_cuda13", "libbitsandbytes_cpu")  # CUDA 13.x (torch 2.11 on the H200s) and the CPU
def wanted(name: str) -> bool:
    leaf = name.rsplit("/", 1)[-1]
    return not (leaf.startswith("libbitsandbytes_") and not leaf.startswith(keep))
with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out / source.name, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not wanted(item.filename):
            continue
        data = zin.read(item)
        if item.filename.endswith(".dist-info/RECORD"):  # drop the rows of the libraries left out
            data = b"".join(line for line in data.splitlines(keepends=True) if wanted(line.split(b",")[0].decode()))
        zout.writestr(item, data)
print(f"[int8] {out / source.name}: {(out / source.name).stat().st_size / 1e6:.1f} MB")
EOF
  rm -rf .whl-bnb/full
  exit 0
fi
[[ "$stage" == run ]] || { echo "usage: int8-check.sh wheel | run OUTDIR" >&2; exit 2; }
out="$(mkdir -p "${2:?OUTDIR}" && cd "$2" && pwd)"
MODEL="${MODEL:-facebook/opt-30b}" DEVICE="${DEVICE:-cuda}" BLOCKS="${BLOCKS:-4}" SITE="${SITE:-/tmp/site}"
STEP_SECONDS="${STEP_SECONDS:-5}"  # how long each decode-step benchmark measures
PY="${PYTHON:-python3}"
if [[ "$DEVICE" == cuda* ]]; then  # the GPU host: the Petals stack and bitsandbytes from the carried wheels
  if [[ ! -d "$SITE/petals" || ! -d "$SITE/bitsandbytes" ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl .whl-bnb/*.whl
  fi
  export PYTHONPATH="$SITE:$repo" NETBENCH_MODELS_DIR=/tmp/netbench-models
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
else
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
quiet() { grep -vE "FutureWarning|_register_pytree_node|bloom-license|kernels-community" >&2 || true; }

# 1. correctness first: int8 (and nf4) against float32 on a small model and on MODEL's width
status=0
checks=("int8 facebook/opt-125m" "nf4 facebook/opt-125m")
[[ "$MODEL" == facebook/opt-125m ]] || checks+=("int8 $MODEL")  # MODEL's width (once, when it is not OPT-125M)
for check in "${checks[@]}"; do
  set -- $check
  name="check-$1-${2//\//_}.json"
  if ! "$PY" -m bench_client.swarm.quant_check --model "$2" --device "$DEVICE" --dtype "$1" > "$out/$name" 2> >(quiet); then
    [[ "$1" == int8 ]] && status=1
    echo "[int8] $name: FAILED (see the file)" >&2
  fi
  "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print('[int8]', sys.argv[1].rsplit('/',1)[-1], r['$1'], 'other weights', r['other_weights']['out'])" "$out/$name"
done

# 2. cost: BLOOM-block memory and a decode step, float16 against int8, as engine_bench builds them
for dtype in float16 int8; do
  "$PY" -m bench_client.swarm.engine_bench blocks --model "$MODEL" --device "$DEVICE" --dtype "$dtype" --blocks "$BLOCKS" \
    > "$out/blocks-$dtype.json" 2> >(quiet)
  "$PY" -m bench_client.swarm.engine_bench step --model "$MODEL" --device "$DEVICE" --dtype "$dtype" --blocks "$BLOCKS" \
    --seconds "$STEP_SECONDS" > "$out/step-$dtype.json" 2> >(quiet)
  echo "[int8] $dtype: $(tr -d '\n ' < "$out/blocks-$dtype.json") $(tr -d '\n ' < "$out/step-$dtype.json")"
done

# 3. a real Petals server of BLOCKS int8 blocks: time to ONLINE and the GPU memory it holds
work="$(mktemp -d)"
pids=()
stop() { for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done; sleep 2
         for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done; }
trap stop EXIT
setsid "$PY" -m bench_client.swarm.dht --address-file "$work/dht.maddrs" --host-maddrs /ip4/127.0.0.1/tcp/0 \
  > "$work/dht.log" 2>&1 & pids+=($!)
for _ in $(seq 120); do [[ -s "$work/dht.maddrs" ]] && break; sleep 0.5; done
start=$(date +%s.%N)
setsid "$PY" -m bench_client.swarm.server --model "$MODEL" --block-indices "0:$BLOCKS" --dtype int8 --device "$DEVICE" \
  --initial-peers "@$work/dht.maddrs" --host-maddrs /ip4/127.0.0.1/tcp/0 --num-handlers 2 > "$work/server.log" 2>&1 &
pids+=($!)
online=""
for _ in $(seq 120); do
  sleep 3
  kill -0 "${pids[1]}" 2>/dev/null || break
  if "$PY" -m bench_client.swarm.blocks info --initial-peers "@$work/dht.maddrs" --model "$MODEL" 2>/dev/null \
     > "$work/info.json" && grep -q '"state": "ONLINE"' "$work/info.json"; then
    online=$(python3 -c "import sys; print(round($(date +%s.%N) - float(sys.argv[1]), 1))" "$start"); break
  fi
done
gpu_mib=null
if [[ "$DEVICE" == cuda* ]] && [[ -n "$online" ]]; then
  gpu_mib=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | awk -F', ' '{s+=$2} END {print s+0}')
fi
cp "$work/server.log" "$out/server-int8.log"
quant=$(grep -o '"quant_type": "[a-z0-9]*"' "$work/info.json" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
printf '{"model": "%s", "blocks": %s, "dtype": "int8", "seconds_to_online": %s, "gpu_mib_all_processes": %s, "announced_quant_type": "%s"}\n' \
  "$MODEL" "$BLOCKS" "${online:-null}" "$gpu_mib" "$quant" | tee "$out/server-int8.json"
[[ -n "$online" ]] || { echo "[int8] the int8 server never came ONLINE: $out/server-int8.log" >&2; status=1; }
exit "$status"
