"""transformers on one GPU: the swarm's very model run locally through greedy generate(), no network.

    python -m bench_client.systems.transformers --model facebook/opt-30b --output out.tsv \
        [--prompt-lengths 256 512 1024] [--new-tokens 32] [--batch-sizes 2 12] [--repeats 3]

The baseline a user would pick instead of a swarm: the same BLOOM blocks with OPT dimensions and the
same dummy weights the servers build (core.models: one seed per block), with the compat fixes the
swarm runs with (compat.apply: the alibi slopes once per device), in one process on one device.
Each configuration is one greedy generate() of ``batch`` sequences, timed as the client times its
calls (core.metrics.timed_generate), after an untimed 1-token warm-up of the same shape. Row mapping
(the original 7 columns): batch_size = sequences per generate(), num_micro_batches = 1,
num_processes = 1; the default batches are the paper's: 2 (one Petals request) and 12 (its 6
processes x 2 at once).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

from bench_client.core import environment
from bench_client.core.arguments import description, positive_int
from bench_client.core.metrics import summarize, timed_generate
from bench_client.core.models import ModelSpec, UnknownModelError, dummy_block_seed, fill_dummy_weights, get_model
from bench_client.core.processes import fail
from bench_client.core.results import (ResultRecord, ResultsFileError, ResultsWriter, TsvRow, load_extra_metadata,
                                       new_run_id, now_iso)
from bench_client.core.sweep import ORIGINAL_NEW_TOKENS, ORIGINAL_PROMPT_LENGTHS, build_sweep, remaining, repeat_of, repeat_sweep
from bench_client.systems.base import Hosts, Kind, System

SYSTEM = System(name="transformers", label="transformers", kind=Kind.ONE_GPU, hosts=Hosts.FIRST_SERVER,
                role="transformers_bench")
PAPER_BATCH_SIZES = (2, 12)  # one Petals request of the paper's workload; its six processes' sequences at once
DTYPES = ("float16", "bfloat16", "float32")
EXIT_MEASUREMENT_FAILED = 5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench_client.systems.transformers", description=description(__doc__))
    p.add_argument("--model", required=True, help="e.g. facebook/opt-30b (netbench/tiny for tests)")
    p.add_argument("--output", required=True, help="TSV file; rows are appended, a rerun resumes")
    p.add_argument("--metadata", default=None, help="JSON lines beside the TSV (default: OUTPUT with .jsonl)")
    p.add_argument("--prompt-lengths", nargs="+", type=positive_int, default=list(ORIGINAL_PROMPT_LENGTHS))
    p.add_argument("--new-tokens", type=positive_int, default=ORIGINAL_NEW_TOKENS)
    p.add_argument("--batch-sizes", nargs="+", type=positive_int, default=list(PAPER_BATCH_SIZES),
                   help="sequences per generate() call, one configuration each (default: the paper's 2 and 12)")
    p.add_argument("--repeats", type=positive_int, default=1, help="measure the whole sweep this many times")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights and compute (default: float16 on CUDA, float32 on the CPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: the GPU where there is one")
    p.add_argument("--seed", type=int, default=0, help="seed of the dummy weights (a server's --seed: the same blocks)")
    p.add_argument("--network-profile", default="none", help="recorded (one process on one device: no network)")
    p.add_argument("--extra-metadata", default=None, help="JSON file merged into every metadata line")
    p.add_argument("--run-id", default=None)
    return p


def resolve_device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        fail("--device cuda asked, but torch sees no CUDA GPU on this host")
    return ("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice


def build_model(spec: ModelSpec, device: str, dtype: str, seed: int):
    """The whole model of the swarm in one process: BLOOM with ``spec``'s OPT dimensions, each block with
    the dummy weights a server of the same seed builds, the embeddings (tied LM head) and final LayerNorm
    drawn from the seed itself. Allocated in ``dtype`` on ``device`` directly (no float32 copy on the CPU)."""
    from bench_client import compat

    compat.apply()  # the fixes the swarm's processes run with (the alibi slopes once per device), before transformers
    import torch
    from accelerate import init_empty_weights
    from transformers import BloomConfig, BloomForCausalLM

    config = BloomConfig(**spec.bloom_config())
    with init_empty_weights():
        model = BloomForCausalLM(config)
    model = model.to(getattr(torch, dtype)).to_empty(device=device)
    for index, block in enumerate(model.transformer.h):
        fill_dummy_weights(block, torch.Generator(device=device).manual_seed(dummy_block_seed(seed, index)),
                           config.initializer_range)
    fill_dummy_weights(model.transformer, torch.Generator(device=device).manual_seed(seed), config.initializer_range,
                       skip="h.")
    model.tie_weights()  # to_empty() gave the LM head storage of its own
    model.eval()
    return model


def measure(model, spec: ModelSpec, batch_size: int, prompt_length: int, new_tokens: int, device: str, generator):
    """One configuration: an untimed 1-token warm-up of the shape, then the timed generate()."""
    import torch

    inputs = torch.randint(0, spec.vocab, (batch_size, prompt_length), generator=generator).to(device)
    timed_generate(model, inputs, 1)
    timing, produced = timed_generate(model, inputs, new_tokens)
    metrics = summarize([timing], batch_size=batch_size, num_micro_batches=1, num_processes=1, new_tokens=new_tokens,
                        wall_time_s=timing.latency, num_gpus=1 if device == "cuda" else None)
    return metrics, produced


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = get_model(args.model)
    except UnknownModelError as exc:
        fail(str(exc))
    device = resolve_device(args.device)
    dtype = args.dtype or ("float16" if device == "cuda" else "float32")
    one_pass = build_sweep(args.prompt_lengths, args.new_tokens, None)
    points = repeat_sweep(one_pass, args.repeats)
    writer = ResultsWriter(args.output, args.metadata)
    try:
        writer.check_writable()
        writer.prepare()
        writer.check_identity({"system": SYSTEM.name, "model": spec.name, "weight_dtype": dtype,
                               "network_profile": args.network_profile})
    except ResultsFileError as exc:
        fail(str(exc))
    todo = [(batch, index, point) for batch in args.batch_sizes
            for index, point in remaining(points, writer.done(batch, 1, 1))]
    if not todo:
        print(f"all configurations already in {args.output}; nothing to do", file=sys.stderr)
        return 0
    import torch

    gpu = environment.client_gpu(device)
    host = environment.hostname()
    common: dict[str, Any] = {
        "system": SYSTEM.name, "run_id": args.run_id or new_run_id(), "model": spec.name, "weight_dtype": dtype,
        "num_micro_batches": 1, "num_processes": 1, "num_servers": 0,
        # one device: per GPU = total on a GPU; on the CPU (tests) there is no GPU to be per
        "num_gpus": 1 if device == "cuda" else 0, "num_gpus_source": "transformers-one-device",
        "server_gpus": [f"{host}/cuda:0: {gpu}"] if gpu else [], "client_host": host,
        "versions": environment.package_versions(), "network_profile": args.network_profile, "network": None,
        "device": device, "weights": f"dummy (seed {args.seed}, the servers' blocks)",
        **load_extra_metadata(args.extra_metadata),
    }
    print(f"{spec.name} on {device} in {dtype}: {len(todo)} configurations to measure; metadata -> {writer.metadata}",
          file=sys.stderr, flush=True)
    torch.manual_seed(args.seed)
    model = build_model(spec, device, dtype, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    for batch, index, point in todo:
        started_at = now_iso()
        where = {**common, "batch_size": batch, "prompt_length": point.prompt_length, "new_tokens": point.new_tokens,
                 "repeat": repeat_of(index, len(one_pass)), "started_at": started_at}
        try:
            m, produced = measure(model, spec, batch, point.prompt_length, point.new_tokens, device, generator)
        except (RuntimeError, ValueError) as exc:  # CUDA out of memory: recorded, a rerun tries it again
            writer.append_metadata(ResultRecord.of({**where, "finished_at": now_iso(), "status": "failed",
                                                    "error": f"{type(exc).__name__}: {exc}"}))
            fail(f"batch {batch}, prompt {point.prompt_length}: {exc}", EXIT_MEASUREMENT_FAILED)
        row = TsvRow(batch, 1, 1, point.prompt_length, point.new_tokens, m.total_throughput, m.mean_generate_latency_s)
        writer.append(row, ResultRecord.of({
            **where, **asdict(m),  # the metrics (core.metrics.ConfigMetrics) are common record fields
            "tokens_generated": produced, "finished_at": now_iso(), "status": "ok", "error": None}))
        print(f"batch {batch}, prompt {point.prompt_length}, {point.new_tokens} new tokens: "
              f"{m.total_throughput:.3g} tok/s, generate() {m.mean_generate_latency_s:.3g} s", file=sys.stderr, flush=True)
    print(f"wrote {args.output} and {writer.metadata}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
