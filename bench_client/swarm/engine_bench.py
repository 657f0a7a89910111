"""Engine benchmarks (numbers, not pass/fail):

    python -m bench_client.swarm.engine_bench tiny            # CPU: swarm start-up, tokens/s, client CPU time per token
    python -m bench_client.swarm.engine_bench blocks --model facebook/opt-30b --device cuda --blocks 12
    python -m bench_client.swarm.engine_bench step --model facebook/opt-30b --device cuda --blocks 12 --processes 4

``tiny`` starts a DHT and two servers of the tiny model on loopback, runs the client with the
seed's flags (-b 1 --num-micro-batches 2, 2 processes) and reports the client's CPU seconds per
generated token next to the decode step time: the client must never be the bottleneck.
``blocks`` times building dummy blocks on a device as the server does (OPT-30B-sized: seconds).
``step`` times the GPU side of a server's decode step without Petals' networking: ``--blocks``
dummy blocks, a batch of ``--batch`` sequences of ``--tokens`` new tokens (1: a decode step; the
prompt with ``--past 0``: a prefill) after ``--past`` cached tokens, one step after the
other with the result copied to the host as the server does; ``--processes N`` runs N such
processes on the one GPU at once (N servers sharing a GPU). Reported: steps/s, the weight bytes
streamed per second against the device's bandwidth, and (one process) CUDA kernels per step with
their summed GPU time from torch.profiler.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from bench_client.core.arguments import description
from pathlib import Path


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_tiny(args: argparse.Namespace) -> dict:
    from bench_client.swarm.local import LocalSwarm
    from bench_client.core.results import read_metadata

    model = "netbench/tiny"
    with tempfile.TemporaryDirectory() as tmp:
        swarm = LocalSwarm(Path(tmp))
        try:
            t0 = time.monotonic()
            swarm.start_dht()
            dht_s = time.monotonic() - t0
            swarm.start_server("server-a", model, "0:2")
            swarm.start_server("server-b", model, "2:4")
            swarm.wait_served(model)
            swarm_s = time.monotonic() - t0
            runs = []
            # two runs that differ only in new tokens: the difference of their CPU time is the
            # client's marginal cost per decode step, without process start-up and model construction
            for new_tokens in (args.new_tokens, 4 * args.new_tokens):
                out = Path(tmp) / f"out-{new_tokens}.tsv"
                cpu_before, wall_before = children_cpu_seconds(), time.monotonic()
                result = swarm.run_module(["bench_client", "--initial_peers", *swarm.initial_peers, "--prefix",
                                           model, "-b", "1", "--num-micro-batches", "2", "--num-processes", "2",
                                           "--output", str(out), "--prompt-lengths", "16",
                                           "--new-tokens", str(new_tokens), "--token-sweep", "none"])
                if result.returncode != 0:
                    raise SystemExit(f"client failed:\n{result.stderr[-3000:]}")
                (meta,) = read_metadata(out.with_suffix(".jsonl"))
                runs.append((children_cpu_seconds() - cpu_before, time.monotonic() - wall_before, meta))
        finally:
            swarm.stop_all()
    (cpu_a, wall_a, meta_a), (cpu_b, _, meta_b) = runs
    calls = meta_a["num_processes"] * meta_a["num_micro_batches"]
    extra_steps = calls * (meta_b["new_tokens"] - meta_a["new_tokens"])
    marginal = (cpu_b - cpu_a) / extra_steps
    step = meta_b["per_token_latency_s"]
    return {
        "dht_startup_s": round(dht_s, 2), "swarm_startup_s": round(swarm_s, 2),
        "tokens_per_s_swarm": round(meta_b["total_throughput"], 2),
        "decode_step_s": round(step, 4),
        "client_wall_s": round(wall_a, 1), "client_cpu_s": round(cpu_a, 1),
        "client_cpu_s_per_decode_step": round(marginal, 4),
        "client_cpu_share_of_step": round(marginal / step, 3),
    }


def _dummy_blocks(model: str, device: str, dtype_name: str, count: int):
    """``count`` blocks of ``model`` with dummy weights built on ``device``, exactly as a server builds them."""
    import torch

    from bench_client import compat
    from bench_client.core.models import WEIGHT_DTYPES, get_model, write_model_dir

    compute_dtype, quant_type, _ = WEIGHT_DTYPES[dtype_name]
    compat.apply(quantisation=quant_type != "none")
    import petals.server.server as petals_server
    from petals import DistributedBloomConfig

    from bench_client.swarm.server import install_dummy_weights

    spec = get_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        config = DistributedBloomConfig.from_pretrained(str(write_model_dir(spec, tmp)))
    dtype = getattr(torch, compute_dtype)  # int8/nf4: the activations' dtype (float16)
    install_dummy_weights(device, seed=0, hand_over_on_cpu=quant_type != "none")
    blocks = [petals_server.load_pretrained_block("dummy", i, config=config, torch_dtype=dtype) for i in range(count)]
    if quant_type != "none":  # as the server does: petals quantises while moving each block to the device
        from petals.utils.convert_block import QuantType, convert_block

        blocks = [convert_block(block, i, config, [torch.device(device)], torch.device(device),
                                QuantType[quant_type.upper()]) for i, block in enumerate(blocks)]
    return spec, config, dtype, blocks


def _weight_bytes(blocks) -> int:
    """Bytes the blocks' weights occupy as stored (int8 weights and their scales for int8)."""
    import torch

    return sum(t.numel() * t.element_size() for b in blocks for t in b.state_dict().values() if torch.is_tensor(t))


def bench_blocks(args: argparse.Namespace) -> dict:
    import torch

    start = time.monotonic()
    spec, _, dtype, blocks = _dummy_blocks(args.model, args.device, args.dtype, args.blocks)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.monotonic() - start
    result = {"model": spec.name, "device": args.device, "dtype": args.dtype, "blocks": args.blocks,
              "seconds": round(elapsed, 3), "gb": round(_weight_bytes(blocks) / 1e9, 2),
              "finite": bool(all(torch.isfinite(p).all() for b in blocks for p in b.parameters()
                                 if p.is_floating_point()))}
    if args.device.startswith("cuda"):
        result["gpu_gib_allocated"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        result["gpu_gib_peak"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def _step_one_process(args: argparse.Namespace) -> dict:
    import torch

    _, config, dtype, blocks = _dummy_blocks(args.model, args.device, args.dtype, args.blocks)
    heads, head_dim = config.n_head, config.hidden_size // config.n_head
    rows = args.batch * heads
    pasts = [(torch.randn(rows, head_dim, args.past, device=args.device, dtype=dtype),
              torch.randn(rows, args.past, head_dim, device=args.device, dtype=dtype)) if args.past else None
             for _ in blocks]
    hidden = torch.randn(args.batch, args.tokens, config.hidden_size, device=args.device, dtype=dtype)

    @torch.inference_mode()
    def step() -> torch.Tensor:
        h = hidden
        for block, past in zip(blocks, pasts):
            h = block(h, layer_past=past, use_cache=True)[0]
        return h.cpu()  # the server returns each step's output to the host: a synchronisation

    for _ in range(3):
        step()
    if args.start_at:  # the other processes of this run start their window at the same moment
        time.sleep(max(0.0, args.start_at - time.time()))
    steps, start = 0, time.monotonic()
    while time.monotonic() - start < args.seconds:
        step()
        steps += 1
    elapsed = time.monotonic() - start
    weight_bytes = _weight_bytes(blocks)
    result = {"steps_per_s": round(steps / elapsed, 2), "step_ms": round(1000 * elapsed / steps, 3),
              "weight_gb": round(weight_bytes / 1e9, 2), "weight_gb_per_s": round(weight_bytes * steps / elapsed / 1e9, 1)}
    if args.kernels:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu_us = sum(e.device_time for e in kernels)  # every kernel, memcpy and memset of the 5 steps
        result |= {"cuda_events_per_step": len(kernels) // 5, "gpu_busy_ms_per_step": round(gpu_us / 5000, 3)}
    return result


def bench_step(args: argparse.Namespace) -> dict:
    common = {"model": args.model, "device": args.device, "dtype": args.dtype, "blocks": args.blocks,
              "batch": args.batch, "past": args.past, "tokens": args.tokens, "processes": args.processes,
              "upstream_alibi": os.environ.get("NETBENCH_UPSTREAM_ALIBI") == "1"}
    if args.processes == 1:
        return common | _step_one_process(args)
    # N processes, each its own CUDA context, as N servers on one GPU; the measured windows coincide
    start_at = time.time() + args.startup
    argv = [sys.executable, "-m", "bench_client.swarm.engine_bench", "step", "--model", args.model, "--device", args.device,
            "--dtype", args.dtype, "--blocks", str(args.blocks), "--batch", str(args.batch), "--past", str(args.past),
            "--tokens", str(args.tokens),
            "--seconds", str(args.seconds), "--start-at", str(start_at), "--processes", "1"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]
    each = [json.loads(proc.communicate()[0]) for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"a step process failed: {[proc.returncode for proc in procs]}")
    return common | {"per_process": [{k: e[k] for k in ("steps_per_s", "step_ms")} for e in each],
                     "weight_gb_per_s_all": round(sum(e["weight_gb_per_s"] for e in each), 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench_client.swarm.engine_bench", description=description(__doc__))
    sub = p.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny")
    tiny.add_argument("--new-tokens", type=int, default=16)
    blocks, step = sub.add_parser("blocks"), sub.add_parser("step")
    for with_blocks in (blocks, step):
        with_blocks.add_argument("--model", default="facebook/opt-30b")
        with_blocks.add_argument("--device", default="cuda")
        with_blocks.add_argument("--dtype", default="float16")
        with_blocks.add_argument("--blocks", type=int, default=12)
    step.add_argument("--batch", type=int, default=2)
    step.add_argument("--past", type=int, default=528, help="cached tokens (prompt 512 + half of 32 new)")
    step.add_argument("--tokens", type=int, default=1, help="tokens per sequence and step: 1 decodes, "
                      "the prompt length with --past 0 is a prefill")
    step.add_argument("--seconds", type=float, default=5.0, help="measured window")
    step.add_argument("--processes", type=int, default=1)
    step.add_argument("--kernels", action="store_true", help="also count CUDA kernels per step (torch.profiler)")
    step.add_argument("--startup", type=float, default=45.0, help="seconds the processes get to build their blocks")
    step.add_argument("--start-at", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.command == "step" and args.kernels and not args.device.startswith("cuda"):
        p.error("--kernels counts CUDA kernels: it needs --device cuda")
    result = {"tiny": bench_tiny, "blocks": bench_blocks, "step": bench_step}[args.command](args)
    print(json.dumps(result, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
