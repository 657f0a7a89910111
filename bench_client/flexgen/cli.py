"""FlexGen as a second system: its own benchmark (``flexgen.flex_opt``, FMInference's ``flexgen`` 0.1.8)
run for our models and workloads, with a policy search, written as rows of our TSV + JSONL.

    python -m bench_client.flexgen --model facebook/opt-30b --prompt-lengths 512 --new-tokens 32 \
        --output flexgen_30b.tsv [--search] [--repeats 3]

One FlexGen run is one ``generate()`` of ``gpu_batch_size x num_gpu_batches`` sequences on one GPU.
Row mapping (the original 7 columns): batch_size = GPU batch size, num_micro_batches = number of
GPU batches, num_processes = 1; column 6 = FlexGen's "total throughput" (generated tokens / (prefill
+ decode latency)), column 7 = its total latency (one whole generate() call, as for Petals).

Each trial is a child process (``--run-flexgen``) so that a CUDA out-of-memory kills only that trial
and the next policy starts on a clean GPU. The child patches flex_opt's AutoTokenizer with a
stand-in: run_flexgen loads facebook/opt-30b's tokenizer from the hub (GPU hosts have no internet),
and with dummy weights the inputs are dummy ids anyway (recorded as ``tokenizer`` in the metadata).

The policy search follows the paper (§5, and its benchmark suite): GPU batch size x number of GPU
batches, the fraction of weights / KV cache / activations on GPU vs CPU, 4-bit group-wise
compression of weights and cache on or off. A memory model of the GPU and the host prunes what
cannot fit; a rough cost model orders the rest; real trials then run best-first, an OOM falls
back to the next one, and a larger batch of an arrangement that already ran out of memory is skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench_client.core import environment
from bench_client.core.arguments import description, positive_int
from bench_client.core.metrics import per_gpu, throughput
from bench_client.core.models import UnknownModelError, get_model
from bench_client.core.processes import fail
from bench_client.core.results import (ResultRecord, ResultsWriter, TsvRow, append_line, load_extra_metadata,
                                       new_run_id, now_iso, read_metadata, read_records, repair_tail)
from bench_client.core.sweep import ORIGINAL_NEW_TOKENS, ORIGINAL_PROMPT_LENGTHS
from bench_client.flexgen.log import FlexGenLog
from bench_client.flexgen.policy import GIB, Hardware, Policy, Workload, estimate, h200, parse_percent, plan_search
from bench_client.flexgen.tokenizer import STAND_IN_TOKENIZER, run_child
from bench_client.flexgen.trials import Trial, TrialFailed, run_trial, search
from bench_client.systems.flexgen import SYSTEM as FLEXGEN

SYSTEM = FLEXGEN.name  # what its records' ``system`` field says
FLEXGEN_VERSION = "0.1.8"  # the release whose run_flexgen / log format this module was written against
EXIT_NO_POLICY = 5
EXIT_TRIAL_ERROR = 6


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench_client.flexgen", description=description(__doc__))
    p.add_argument("--model", required=True, help="e.g. facebook/opt-30b")
    p.add_argument("--prompt-lengths", nargs="+", type=positive_int, default=list(ORIGINAL_PROMPT_LENGTHS))
    p.add_argument("--new-tokens", type=positive_int, default=ORIGINAL_NEW_TOKENS)
    p.add_argument("--output", required=True, help="TSV file; rows are appended, a rerun resumes")
    p.add_argument("--metadata", default=None, help="JSON lines beside the TSV (default: OUTPUT with .jsonl)")
    p.add_argument("--repeats", type=positive_int, default=1, help="measurements of the chosen policy per prompt length")
    policy = p.add_argument_group("the policy without --search (flex_opt's flags and defaults)")
    policy.add_argument("--gpu-batch-size", type=positive_int, default=4)
    policy.add_argument("--num-gpu-batches", type=positive_int, default=1)
    policy.add_argument("--percent", nargs="+", type=int, default=[100, 0, 100, 0, 100, 0],
                        help="W_GPU W_CPU C_GPU C_CPU A_GPU A_CPU")
    policy.add_argument("--compress-weight", action="store_true")
    policy.add_argument("--compress-cache", action="store_true")
    s = p.add_argument_group("policy search")
    s.add_argument("--search", action="store_true", help="search the policy per prompt length (the paper's way)")
    s.add_argument("--max-trials", type=positive_int, default=8, help="real FlexGen runs per prompt length")
    s.add_argument("--no-compression", action="store_true", help="search fp16 policies only")
    s.add_argument("--compression-only", action="store_true", help="search 4-bit policies only")
    s.add_argument("--gpu-mem-gib", type=float, default=None,
                   help="GPU memory the search may plan, GiB (default: an H200's 140.4 less 4.4)")
    s.add_argument("--cpu-mem-gib", type=float, default=None,
                   help="host memory the search may plan, GiB (default: MemTotal - 16)")
    p.add_argument("--trial-timeout", type=float, default=1800.0, help="seconds one FlexGen run may take")
    p.add_argument("--python", default=sys.executable, help="Python with flexgen importable (PYTHONPATH is passed on)")
    p.add_argument("--network-profile", default="none", help="recorded (FlexGen runs on one host: no network)")
    p.add_argument("--extra-metadata", default=None, help="JSON file merged into every metadata line")
    p.add_argument("--run-id", default=None)
    p.add_argument("--dry-run", action="store_true", help="print the plan (policies, memory estimate) and exit")
    return p


def host_memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    raise RuntimeError("no MemTotal in /proc/meminfo")


def hardware_from_args(args: argparse.Namespace) -> Hardware:
    hw = h200(host_memory_gib())
    return Hardware(gpu_bytes=args.gpu_mem_gib * GIB if args.gpu_mem_gib else hw.gpu_bytes,
                    cpu_bytes=args.cpu_mem_gib * GIB if args.cpu_mem_gib else hw.cpu_bytes)


def gpu_name() -> str | None:
    """From nvidia-smi, not torch: this parent must not hold a CUDA context while trials run."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def versions() -> dict:
    from importlib import metadata

    found = environment.package_versions()
    for package in ("flexgen", "pulp", "attrs"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def fixed_policy(args: argparse.Namespace) -> Policy:
    percent = parse_percent(args.percent)
    policy = Policy(args.gpu_batch_size, args.num_gpu_batches, *percent, args.compress_weight, args.compress_cache)
    policy.check()
    return policy


def search_log_path(metadata: Path) -> Path:
    return metadata.with_name(metadata.stem + ".search.jsonl")


def row_and_record(trial: Trial, work: Workload, repeat: int, common: dict) -> tuple[TsvRow, ResultRecord]:
    """One FlexGen measurement as our TSV row and JSONL record (one GPU: per-GPU = total)."""
    log = trial.log
    assert log is not None
    policy = trial.policy
    tokens = policy.num_sequences * work.gen_len
    total = throughput(tokens, log.total_latency_s) if log.total_latency_s > 0 else log.total_throughput
    row = TsvRow(policy.gpu_batch_size, policy.num_gpu_batches, 1, work.prompt_len, work.gen_len, total,
                 log.total_latency_s)
    record = ResultRecord.of({
        **common, "prompt_length": work.prompt_len, "new_tokens": work.gen_len, "repeat": repeat,
        "batch_size": policy.gpu_batch_size, "num_micro_batches": policy.num_gpu_batches, "num_processes": 1,
        "policy": policy.to_dict(), "policy_label": policy.label,
        "weight_dtype": "int4-g64" if policy.compress_weight else "float16",
        "total_tokens": tokens, "wall_time_s": log.total_latency_s, "total_throughput": total,
        "per_gpu_throughput": per_gpu(total, 1), "mean_generate_latency_s": log.total_latency_s,
        "prefill_time_s": log.prefill_latency_s, "decode_time_s": log.decode_latency_s,
        "per_token_latency_s": log.decode_latency_s / (work.gen_len - 1) if work.gen_len > 1 else None,
        "flexgen_log": asdict(log), "trial_seconds": trial.seconds, "status": "ok", "error": None,
    })
    return row, record


def load_search_log(path: Path, model: str, prompt_len: int, gen_len: int) -> dict[Policy, Trial]:
    """Trials of an earlier (interrupted) search to reuse: measured or out of memory. A trial that
    failed otherwise (FlexGen missing or broken) is run again once that is fixed."""
    known: dict[Policy, Trial] = {}
    for record in read_metadata(path):
        if (record.get("model"), record.get("prompt_length"), record.get("new_tokens")) != (model, prompt_len, gen_len):
            continue
        if record.get("status") == "error":
            continue
        policy = Policy.from_dict(record["policy"])
        log = FlexGenLog(**record["flexgen_log"]) if record.get("flexgen_log") else None
        known[policy] = Trial(policy, record["status"], log, record.get("trial_seconds", 0.0), record.get("detail", ""))
    return known


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-flexgen"]:
        return run_child(argv[1:])
    args = build_parser().parse_args(argv)
    if Path(args.output).is_dir():
        fail(f"--output {args.output} is a directory; give a file name such as flexgen_30b.tsv")
    if args.no_compression and args.compression_only:
        fail("--no-compression and --compression-only exclude each other")
    try:
        spec = get_model(args.model)
        policy = fixed_policy(args)
    except (UnknownModelError, ValueError) as exc:
        fail(str(exc))
    extra = load_extra_metadata(args.extra_metadata)
    hw = hardware_from_args(args)
    compression = (False,) if args.no_compression else (True,) if args.compression_only else (False, True)
    writer = ResultsWriter(args.output, args.metadata)
    search_log = search_log_path(writer.metadata)
    works = [Workload(spec, p, args.new_tokens) for p in args.prompt_lengths]

    if args.dry_run:
        for work in works:
            plan = plan_search(work, hw, compression) if args.search else [(policy, estimate(policy, work, hw))]
            print(f"prompt {work.prompt_len} + {work.gen_len}: {len(plan)} policies fit "
                  f"(GPU {hw.gpu_bytes / GIB:.0f} GiB, CPU {hw.cpu_bytes / GIB:.0f} GiB)")
            for p, e in plan[:args.max_trials]:
                print(f"  {p.label}: est. {e.tokens_per_s:.1f} tok/s, GPU {e.gpu_bytes / GIB:.1f} GiB, "
                      f"CPU {e.cpu_bytes / GIB:.1f} GiB")
        return 0

    existing = [r for r in read_records(writer.metadata)
                if r.system == SYSTEM and r.model == spec.name and r.status == "ok"]
    done: Counter = Counter((r.prompt_length, r.new_tokens) for r in existing)
    chosen = {(r.prompt_length, r.new_tokens): Policy.from_dict(r.get("policy")) for r in existing}
    writer.prepare()
    repair_tail(search_log)
    run_id = args.run_id or new_run_id()
    gpu = gpu_name()
    host = environment.hostname()
    common = {
        "system": SYSTEM, "run_id": run_id, "model": spec.name, "dht_prefix": None,
        "num_gpus": 1, "num_gpus_source": "flexgen-one-gpu", "num_servers": 0,
        "server_gpus": [f"{host}/cuda:0: {gpu}"] if gpu else [], "client_host": host,
        "tokenizer": STAND_IN_TOKENIZER, "weights": "dummy (FlexGen _DUMMY_)",
        "versions": versions(), "network_profile": args.network_profile, "network": None,
        "hardware_model": {"gpu_bytes": hw.gpu_bytes, "cpu_bytes": hw.cpu_bytes}, **extra,
    }

    def trial_for(work: Workload) -> Callable[[Policy], Trial]:
        return lambda p: run_trial(p, spec.name, work.prompt_len, work.gen_len, python=args.python,
                                   timeout=args.trial_timeout)

    for work in works:
        key = (work.prompt_len, work.gen_len)
        if done[key] >= args.repeats:
            print(f"prompt {work.prompt_len}: {done[key]} repeats already in {args.output}", file=sys.stderr)
            continue
        runner = trial_for(work)
        best = chosen.get(key)
        if best is not None and not args.search and best != policy:
            fail(f"{writer.metadata} already holds prompt {work.prompt_len} measured with {best.label}, not "
                 f"{policy.label}: repeats of one configuration must share the policy; use another --output")
        if best is None and args.search:
            plan = plan_search(work, hw, compression)
            if not plan:
                fail(f"no policy fits {spec.name} prompt {work.prompt_len} in GPU {hw.gpu_bytes / GIB:.0f} GiB + "
                     f"CPU {hw.cpu_bytes / GIB:.0f} GiB by the memory model", EXIT_NO_POLICY)

            def record_trial(trial: Trial, work: Workload = work) -> None:
                append_line(search_log, json.dumps({
                    "schema": 1, "system": SYSTEM, "run_id": run_id, "model": spec.name,
                    "prompt_length": work.prompt_len, "new_tokens": work.gen_len, "policy": trial.policy.to_dict(),
                    "status": trial.status, "flexgen_log": asdict(trial.log) if trial.log else None,
                    "trial_seconds": trial.seconds, "detail": trial.detail[-1000:] if trial.status != "ok" else "",
                    "finished_at": now_iso()}, sort_keys=True) + "\n")
                print(f"  trial {trial.policy.label}: {trial.status}"
                      + (f", {trial.tokens_per_s:.1f} tok/s" if trial.log else ""), file=sys.stderr, flush=True)

            try:
                found = search(plan, runner, args.max_trials, load_search_log(search_log, spec.name, *key), record_trial)
            except TrialFailed as exc:
                fail(str(exc), EXIT_TRIAL_ERROR)
            if found.best is None:
                fail(f"every policy tried for prompt {work.prompt_len} ran out of memory "
                     f"({len(found.trials)} trials; see {search_log})", EXIT_NO_POLICY)
            best = found.best.policy
            print(f"prompt {work.prompt_len}: best {best.label}, {found.best.tokens_per_s:.1f} tok/s "
                  f"({len(found.trials)} trials, {found.skipped} skipped)", file=sys.stderr, flush=True)
        best = best or policy
        for repeat in range(done[key], args.repeats):
            started_at = now_iso()
            trial = runner(best)
            if trial.status != "ok":
                writer.append_metadata(ResultRecord.of({
                    **common, "prompt_length": work.prompt_len, "new_tokens": work.gen_len, "repeat": repeat,
                    "batch_size": best.gpu_batch_size, "num_micro_batches": best.num_gpu_batches, "num_processes": 1,
                    "policy": best.to_dict(), "started_at": started_at, "finished_at": now_iso(),
                    "status": "failed", "error": f"{trial.status}: {trial.detail[-1000:]}"}))
                fail(f"FlexGen {best.label}, prompt {work.prompt_len}, repeat {repeat}: {trial.status}\n"
                     f"{trial.detail}", EXIT_TRIAL_ERROR)
            row, record = row_and_record(trial, work, repeat, common)
            writer.append(row, ResultRecord.of({**record.to_dict(), "started_at": started_at, "finished_at": now_iso()}))
            print(f"prompt {work.prompt_len} repeat {repeat}: {row.total_throughput:.1f} tok/s "
                  f"({best.label})", file=sys.stderr, flush=True)
    print(f"wrote {args.output} and {writer.metadata}", file=sys.stderr)
    return 0
