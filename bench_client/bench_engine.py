"""Engine benchmarks (numbers, not pass/fail):

    python -m bench_client.bench_engine tiny            # CPU: swarm start-up, tokens/s, client CPU time per token
    python -m bench_client.bench_engine blocks --model facebook/opt-30b --device cuda --blocks 12

``tiny`` starts a DHT and two servers of the tiny model on loopback, runs the client with the
seed's flags (-b 1 --num-micro-batches 2, 2 processes) and reports the client's CPU seconds per
generated token next to the decode step time: the client must never be the bottleneck.
``blocks`` times building dummy blocks on a device as the server does (OPT-30B-sized: seconds).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_tiny(args: argparse.Namespace) -> dict:
    from bench_client.local_swarm import LocalSwarm
    from bench_client.results import read_metadata

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


def bench_blocks(args: argparse.Namespace) -> dict:
    import torch

    from bench_client import compat

    compat.apply()
    import petals.server.server as petals_server
    from petals import DistributedBloomConfig

    from bench_client.models import get_model, write_model_dir
    from bench_client.server import install_dummy_weights

    spec = get_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        config = DistributedBloomConfig.from_pretrained(str(write_model_dir(spec, tmp)))
    install_dummy_weights(args.device, seed=0)
    dtype = getattr(torch, args.dtype)
    start = time.monotonic()
    blocks = [petals_server.load_pretrained_block("dummy", i, config=config, torch_dtype=dtype)
              for i in range(args.blocks)]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.monotonic() - start
    params = sum(p.numel() for b in blocks for p in b.parameters())
    return {"model": spec.name, "device": args.device, "dtype": args.dtype, "blocks": args.blocks,
            "seconds": round(elapsed, 3), "gb": round(params * dtype.itemsize / 1e9, 2),
            "finite": bool(all(torch.isfinite(p).all() for b in blocks for p in b.parameters()))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench_client.bench_engine", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny")
    tiny.add_argument("--new-tokens", type=int, default=16)
    blocks = sub.add_parser("blocks")
    blocks.add_argument("--model", default="facebook/opt-30b")
    blocks.add_argument("--device", default="cuda")
    blocks.add_argument("--dtype", default="float16")
    blocks.add_argument("--blocks", type=int, default=12)
    args = p.parse_args(argv)
    result = bench_tiny(args) if args.command == "tiny" else bench_blocks(args)
    print(json.dumps(result, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
