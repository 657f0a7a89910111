#!/usr/bin/env bash
# FlexGen (flexgen 0.1.8, FMInference) measured through our harness on one H200 (issue 13).
#
# Here (a machine with internet), once:   bash tools/gpu/flexgen.sh fetch
#   -> .whl/flexgen/: flexgen-0.1.8 (installed --no-deps), attrs (flexgen.utils imports attr).
#      pulp, also a declared dependency, is fetched for completeness but never imported by flex_opt
#      (FlexGen's LP policy search is not in the wheel). torch 2.11, transformers, numpy and tqdm
#      come from the host (torch) and the Petals wheel set in .whl/ (docs/results/gpu/run_gpu.sh).
# On the one-H200 host (python3.12 + torch 2.11, no internet), from the repository root:
#   bash tools/gpu/flexgen.sh smoke   OUT   # ~2 min: dry-run plans, then OPT-6.7B batch 2 once
#   bash tools/gpu/flexgen.sh opt6.7b OUT   # search + 3 repeats, prompt 512 (then 256 1024: FLEXGEN_PROMPTS)
#   bash tools/gpu/flexgen.sh opt30b  OUT
#   bash tools/gpu/flexgen.sh opt175b OUT   # 4-bit weights + cache: the only policies that fit (see below)
# Every stage resumes (rows are appended; trials already in OUT/*.search.jsonl are not rerun), so a
# stage cut by a time limit is simply run again (a trial killed with its parent dies too: no orphan
# keeps the GPU). Each trial is a whole FlexGen run (dummy-weight init + warm-up + benchmark): about
# 0.5 min for OPT-6.7B, 1-2 min for OPT-30B, 3+ min for OPT-175B (estimates: time the smoke stage).
# With a 10-minute limit per command, run one model per command, FLEXGEN_MAX_TRIALS=3 (default here,
# the plan's best three; 6 for a fuller search) and prompt 512 first (FLEXGEN_PROMPTS).
set -euo pipefail
stage="${1:?stage: fetch|smoke|opt6.7b|opt30b|opt175b}"
if [[ "$stage" == fetch ]]; then
  python3 -m pip download --no-deps -d .whl/flexgen flexgen==0.1.8 attrs pulp
  exit 0
fi
out="${2:?OUT directory}"; mkdir -p "$out"
if [[ ! -d /tmp/site/flexgen ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/flexgen/*.whl
fi
if [[ ! -d /tmp/site/transformers ]] && ls .whl/*.whl >/dev/null 2>&1; then  # the Petals wheel set brings transformers
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
free -g | tee "$out/host-memory.txt"
prompts=(${FLEXGEN_PROMPTS:-512})   # FLEXGEN_PROMPTS="512 256 1024" when the time allows
trials="${FLEXGEN_MAX_TRIALS:-3}"
flexgen() {  # flexgen TAG MODEL [args...]
  local tag="$1" model="$2"; shift 2
  python3 -m bench_client.flexgen --model "$model" --prompt-lengths "${prompts[@]}" --new-tokens 32 \
    --output "$out/flexgen-$tag.tsv" --repeats 3 --max-trials "$trials" --trial-timeout 900 "$@" 2>&1 \
    | tee -a "$out/flexgen-$tag.log"
  return "${PIPESTATUS[0]}"
}
case "$stage" in
  smoke)
    for m in facebook/opt-6.7b facebook/opt-30b facebook/opt-175b; do
      python3 -m bench_client.flexgen --model "$m" --prompt-lengths 512 --output "$out/dry.tsv" --search --dry-run
    done | tee "$out/flexgen-plans.txt"
    # the measured point (OPT-30B: 38.9 tokens/s at batch 2), on OPT-6.7B to be quick
    python3 -m bench_client.flexgen --model facebook/opt-6.7b --prompt-lengths 512 --output "$out/flexgen-smoke.tsv" \
      --gpu-batch-size 2 --percent 100 0 100 0 100 0 2>&1 | tee "$out/flexgen-smoke.log"
    ;;
  opt6.7b) flexgen opt6.7b facebook/opt-6.7b --search ;;
  opt30b) flexgen opt30b facebook/opt-30b --search ;;
  # OPT-175B: 325 GiB of fp16 weights do not fit 136 GiB of GPU + ~109 GiB of host RAM (a 128 GB host), so
  # the memory model leaves only 4-bit policies; the best it plans is all on the GPU, 91 GiB of compressed
  # weights + 4-bit cache: --percent 100 0 100 0 100 0 --compress-weight --compress-cache, GPU batch 32 x 1
  # (falls back to 16 x 1, 16 x 2, 8 x 1 on OOM). On the two-H200 host (256 GB) fp16 fits too, offloaded
  # (best planned: --percent 30 70 100 0 100 0, GPU batch 1 x 12, estimated ~1 token/s): add
  # FLEXGEN_175B_FP16=1 there to search both.
  opt175b) flexgen opt175b facebook/opt-175b --search $([[ -n "${FLEXGEN_175B_FP16:-}" ]] || echo --compression-only) ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
