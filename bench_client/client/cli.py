"""The benchmark client: the original ``run_opt_requests.py`` command line and TSV, plus metadata.

    python -m bench_client --initial_peers $INITIAL_PEER --prefix facebook/opt-30b \
        -b 1 --num-micro-batches 2 --num-processes 6 --output out_30b.tsv

Per configuration: every process warms up (one 1-token generate; --warmup says with which prompt),
all start together, each runs ``--num-micro-batches`` greedy generate() calls of ``max_tokens`` new tokens. The TSV row is the
original's; the JSON line beside it (out_30b.jsonl) holds the correctly named metrics.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench_client.core import environment, progress
from bench_client.core.arguments import description, non_negative_int, positive_int
from bench_client.core.metrics import GenerateTiming, summarize
from bench_client.core.models import UnknownModelError, get_model, write_model_dir
from bench_client.swarm.peers import PeerError, resolve_initial_peers
from bench_client.core.processes import fail
from bench_client.core.results import (SWARM_IDENTITY, ResultRecord, ResultsFileError, ResultsWriter, TsvRow,
                                       load_extra_metadata, metadata_path_for, new_run_id, now_iso)
from bench_client.swarm.server import DEFAULT_MODELS_DIR
from bench_client.systems.petals import SYSTEM as PETALS
from bench_client.core.sweep import (DEFAULT_WARMUP, WARMUPS, ORIGINAL_NEW_TOKENS, ORIGINAL_PROMPT_LENGTHS, build_sweep, parse_token_sweep, remaining,
                                     repeat_of, repeat_sweep)
from bench_client.swarm.blocks import EXIT_MISSING_BLOCKS, EXIT_UNREACHABLE, SwarmView, connect, format_ranges, inspect
from bench_client.client.workers import Task, WorkerError, WorkerPool, WorkerSpec

EXIT_MEASUREMENT_FAILED = 5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench_client", description=description(__doc__))
    # the original flags, unchanged
    p.add_argument("--initial_peers", "--initial-peers", nargs="*", help="DHT multiaddrs (or @FILE from bench_client.swarm.dht)")
    p.add_argument("--prefix", default="facebook/opt-175b", help="model name, as in the original (e.g. facebook/opt-30b)")
    p.add_argument("--batch-size", "-b", default=1, type=positive_int, help="sequences per generate() call")
    p.add_argument("--num-micro-batches", default=1, type=positive_int, help="sequential generate() calls per process")
    p.add_argument("--num-processes", default=1, type=positive_int, help="parallel client processes")
    p.add_argument("--output", required=True, help="TSV file; rows are appended, a rerun resumes")
    # beyond the original
    p.add_argument("--prompt-lengths", nargs="+", type=positive_int, default=list(ORIGINAL_PROMPT_LENGTHS),
                   help="prompt lengths measured with --new-tokens (original: 256 512 1024)")
    p.add_argument("--new-tokens", type=non_negative_int, default=ORIGINAL_NEW_TOKENS, help="original: 32")
    p.add_argument("--token-sweep", default="auto",
                   help="new-token sweep at --token-sweep-prompt-length: auto (original: 0:33 for opt-30b only), "
                        "none, or START:STOP")
    p.add_argument("--token-sweep-prompt-length", type=positive_int, default=512)
    p.add_argument("--num-gpus", type=positive_int, default=None,
                   help="GPUs in the swarm for per-GPU throughput (default: read from the DHT)")
    p.add_argument("--expect-servers", type=positive_int, default=None,
                   help="refuse to measure unless exactly this many servers are online (the plan's number)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where client processes run")
    p.add_argument("--client-dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--metadata", default=None, help="JSON lines beside the TSV (default: OUTPUT with .jsonl)")
    p.add_argument("--network-profile", default=None, help="name of the network profile in effect (recorded)")
    p.add_argument("--extra-metadata", default=None, help="JSON file merged into every metadata line")
    p.add_argument("--run-id", default=None)
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--config-timeout", type=float, default=1800.0, help="give up on one configuration after this")
    p.add_argument("--request-timeout", type=float, default=180.0, help="petals client request timeout")
    p.add_argument("--max-retries", type=positive_int, default=8,
                   help="petals client retries per request before the configuration fails (petals' default is "
                        "infinite: a swarm that lost a block would hang until --config-timeout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", choices=WARMUPS, default=DEFAULT_WARMUP,
                   help="each: before every configuration a 1-token generate() of its own prompt (the original: a "
                        "whole prefill each time); shape: that the first time a process meets a (batch, prompt "
                        "length) shape, a 1-token prompt for later configurations of that shape (default)")
    p.add_argument("--repeats", type=positive_int, default=1,
                   help="measure the whole sweep this many times (rows per repeat, 'repeat' in the JSONL)")
    p.add_argument("--progress", default=None, metavar="FILE",
                   help="also write the latest [i/N ... ETA] line to FILE (launchers show it while the sweep runs)")
    p.add_argument("--lock", default=None,
                   help="lock file of the swarm (the roles: WORKDIR/run/client.lock): one benchmark at a time")
    return p


EXIT_BUSY = 6


def build_worker_spec(args: argparse.Namespace, spec, peers: list[str], device: str) -> WorkerSpec:
    """What every client process of this command line loads (the pool is kept while this is the same)."""
    model_dir = DEFAULT_MODELS_DIR / f"client--{spec.dht_prefix.replace('/', '--')}"
    return WorkerSpec(model_dir=str(write_model_dir(spec, model_dir)), dht_prefix=spec.dht_prefix,
                      initial_peers=tuple(peers), vocab=spec.vocab, device=device, dtype=args.client_dtype,
                      seed=args.seed, request_timeout=args.request_timeout, max_retries=args.max_retries)


def hold_lock(path: str, output: str) -> int:
    """Take the swarm's lock for this process's lifetime (its worker processes inherit it), or fail
    naming the benchmark that holds it: two sweeps at once share the servers and halve each other's numbers."""
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        fail(f"--lock {path}: {exc.strerror}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
        fail(f"another benchmark runs on this swarm ({holder}); wait for it to finish or stop it "
             "(site.yml --tags cleanup)", EXIT_BUSY)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} measuring into {output}\n".encode(), 0)
    return fd


def resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        fail("--device cuda asked, but torch sees no CUDA GPU on this host")
    return choice


def check_swarm(view: SwarmView, expect_servers: int | None = None) -> None:
    if not view.servers:
        fail(f"no server in the swarm announces any block with prefix {view.dht_prefix!r} ({view.model}); "
             "check --prefix against the model the servers were started with", EXIT_MISSING_BLOCKS)
    if view.missing_blocks:
        fail(f"the swarm is missing blocks {format_ranges(view.missing_blocks)} of {view.model} "
             f"({len(view.online_servers)} online servers); wait for them (python -m bench_client.swarm wait) "
             "or start servers that hold them", EXIT_MISSING_BLOCKS)
    if expect_servers is not None and len(view.online_servers) != expect_servers:
        # a row measured so would count (and route through) servers of another run
        names = ", ".join(f"{s.public_name or s.peer_id} blocks {s.start_block}:{s.end_block}" for s in view.online_servers)
        fail(f"the swarm of {view.model} has {len(view.online_servers)} online servers, the plan {expect_servers}: "
             f"{names}; servers of another run serve in it (stop them: site.yml --tags cleanup)", EXIT_MISSING_BLOCKS)


def count_gpus(view: SwarmView, flag: int | None) -> tuple[int, str]:
    if flag:
        return flag, "flag"
    if view.gpus:
        return len(view.gpus), "dht-gpus"
    return len(view.online_servers), "dht-servers"


def describe_servers(view: SwarmView) -> dict:
    dtypes = sorted({s.torch_dtype for s in view.online_servers if s.torch_dtype})
    quants = sorted({s.quant_type for s in view.online_servers if s.quant_type})
    weight = quants[0] if quants and quants != ["none"] else (dtypes[0] if len(dtypes) == 1 else ",".join(dtypes))
    return {"num_servers": len(view.online_servers), "server_gpus": view.gpus, "weight_dtype": weight,
            "server_torch_dtypes": dtypes, "server_quant_types": quants}


class OwnPool:
    """The one-shot client's worker pool: started for this sweep, closed after it."""

    def get(self, spec: WorkerSpec, num_processes: int, load_timeout: float) -> WorkerPool:
        return WorkerPool(spec, num_processes, load_timeout=load_timeout)

    def release(self, pool: WorkerPool, healthy: bool) -> None:  # noqa: ARG002
        pool.close()


def main(argv: list[str] | None = None) -> int:
    return measure(build_parser().parse_args(argv), OwnPool())


def measure(args: argparse.Namespace, pools, cancelled: Callable[[], bool] | None = None) -> int:
    """One profile's sweep (the CLI's flags): the writer, resume checks, swarm inspection, the row loop.
    ``pools`` hands out the worker pool and takes it back (OwnPool closes it; the client session,
    bench_client.client.session, keeps it for the next profile); ``cancelled`` is asked while waiting
    on the workers. The swarm's lock (--lock) is held until this returns."""
    locks: list[int] = []
    try:
        return _measure(args, pools, cancelled, locks)
    finally:
        for fd in locks:
            os.close(fd)


def _measure(args: argparse.Namespace, pools, cancelled: Callable[[], bool] | None, locks: list[int]) -> int:
    try:
        spec = get_model(args.prefix)
        peers = resolve_initial_peers(args.initial_peers)
        token_sweep = parse_token_sweep(args.token_sweep, spec.name)
        one_pass = build_sweep(args.prompt_lengths, args.new_tokens, token_sweep, args.token_sweep_prompt_length)
        points = repeat_sweep(one_pass, args.repeats)
        writer = ResultsWriter(args.output, args.metadata)
        writer.check_writable()
        if args.lock:  # before the output is read: what is done must not change under us
            locks.append(hold_lock(args.lock, args.output))
        writer.prepare()
        # not the warm-up: untimed, and every row records it
        writer.check_identity({"model": spec.name, "dht_prefix": spec.dht_prefix, "client_dtype": args.client_dtype,
                               "network_profile": args.network_profile})
        done = writer.done(args.batch_size, args.num_micro_batches, args.num_processes)
    except (UnknownModelError, PeerError, ValueError) as exc:  # ResultsFileError is a ValueError
        fail(str(exc))
    extra = load_extra_metadata(args.extra_metadata)
    todo = remaining(points, done)
    if not todo:
        print(f"all {len(points)} configurations already in {args.output}; nothing to do", file=sys.stderr)
        return 0
    device = resolve_device(args.device)

    try:
        dht = connect(peers, args.connect_timeout)
    except PeerError as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    try:
        view = inspect(dht, spec)
    finally:
        dht.shutdown()
    check_swarm(view, args.expect_servers)
    num_gpus, gpus_source = count_gpus(view, args.num_gpus)
    servers = describe_servers(view)
    try:  # the rows already there were measured on a swarm like this one
        writer.check_identity({k: servers[k] for k in SWARM_IDENTITY})
    except ResultsFileError as exc:
        fail(str(exc))

    run_id = args.run_id or new_run_id()
    common = {
        "system": PETALS.name, "run_id": run_id, "model": spec.name, "dht_prefix": spec.dht_prefix,
        "batch_size": args.batch_size, "num_micro_batches": args.num_micro_batches,
        "num_processes": args.num_processes, "num_gpus": num_gpus, "num_gpus_source": gpus_source,
        "warmup": args.warmup,
        **servers,
        "client_host": environment.hostname(), "client_device": device,
        "client_gpu": environment.client_gpu(device), "client_dtype": args.client_dtype,
        "versions": environment.package_versions(), "network_profile": args.network_profile, "network": None,
        **extra,
    }
    worker_spec = build_worker_spec(args, spec, peers, device)
    print(f"{spec.name}: {len(todo)} of {len(points)} configurations to measure "
          f"({len(points) - len(todo)} already in {args.output}); {len(view.online_servers)} servers, "
          f"{num_gpus} GPU(s) [{gpus_source}]; metadata -> {writer.metadata}", file=sys.stderr, flush=True)

    progress.write(args.progress, f"[0/{len(todo)}] starting {args.num_processes} client processes "
                                  f"(model, warm-up), then prompt {todo[0][1].prompt_length}, {todo[0][1].new_tokens} new tokens")
    pool = None
    healthy = False  # a pool whose configuration failed is not used again
    sweep_start = time.monotonic()
    try:
        pool = pools.get(worker_spec, args.num_processes, args.config_timeout)
        for step, (index, point) in enumerate(todo, start=1):
            task = Task(args.batch_size, args.num_micro_batches, point.prompt_length, point.new_tokens, args.warmup)
            started_at = now_iso()
            try:
                per_process, warmup = pool.run(task, args.config_timeout, cancelled)
            except WorkerError as exc:
                writer.append_metadata(ResultRecord.of({
                    **common, "prompt_length": point.prompt_length, "new_tokens": point.new_tokens,
                    "sweep_index": index, "repeat": repeat_of(index, len(one_pass)),
                    "started_at": started_at, "finished_at": now_iso(), "status": "failed", "error": str(exc)}))
                print(f"error: configuration prompt={point.prompt_length} new_tokens={point.new_tokens} failed; "
                      f"rows measured so far are kept in {args.output} and a rerun resumes here.\n{exc}",
                      file=sys.stderr)
                return EXIT_MEASUREMENT_FAILED
            timings: list[GenerateTiming] = [t for ts, _ in per_process for t in ts]
            produced = sorted({n for _, ns in per_process for n in ns})
            # the time during which requests were in flight: first start to last finish, over all processes
            wall = max(t.end for t in timings) - min(t.start for t in timings)
            m = summarize(timings, batch_size=args.batch_size, num_micro_batches=args.num_micro_batches,
                          num_processes=args.num_processes, new_tokens=point.new_tokens, wall_time_s=wall,
                          num_gpus=num_gpus)
            row = TsvRow(args.batch_size, args.num_micro_batches, args.num_processes, point.prompt_length,
                         point.new_tokens, m.total_throughput, m.mean_generate_latency_s)
            writer.append(row, ResultRecord.of({
                **common, "prompt_length": point.prompt_length, "new_tokens": point.new_tokens, "sweep_index": index,
                "repeat": repeat_of(index, len(one_pass)), "total_tokens": m.total_tokens, "wall_time_s": m.wall_time_s, "total_throughput": m.total_throughput,
                "per_gpu_throughput": m.per_gpu_throughput, "mean_generate_latency_s": m.mean_generate_latency_s,
                "prefill_time_s": m.prefill_time_s, "decode_time_s": m.decode_time_s,
                "per_token_latency_s": m.per_token_latency_s, "tokens_generated_per_call": produced,
                "warmup_kind": warmup["kind"], "warmup_s": round(warmup["seconds"], 3),
                "started_at": started_at, "finished_at": now_iso(), "status": "ok", "error": None,
                "client_pids": [process.pid for process in pool.processes],  # one pool for every profile of a session
            }))
            elapsed = time.monotonic() - sweep_start
            eta = elapsed / step * (len(todo) - step)
            per_gpu = f"{m.per_gpu_throughput:.3g}" if m.per_gpu_throughput is not None else "?"
            line = (f"[{step}/{len(todo)}] prompt {point.prompt_length:>5}, {point.new_tokens:>3} new tokens: "
                    f"{m.total_throughput:.3g} tok/s swarm, {per_gpu} tok/s/GPU, generate() "
                    f"{m.mean_generate_latency_s:.3g} s, prefill {m.prefill_time_s:.3g} s"
                    f"  (elapsed {elapsed:.0f} s, ETA {eta:.0f} s)")
            print(line, file=sys.stderr, flush=True)
            progress.write(args.progress, line)
        healthy = True
    except WorkerError as exc:
        fail(f"client processes could not start: {exc}", EXIT_MEASUREMENT_FAILED)
    except ResultsFileError as exc:  # a row that could not be written (a full disk): its pair is undone
        fail(str(exc), EXIT_MEASUREMENT_FAILED)
    finally:
        if pool is not None:
            pools.release(pool, healthy)
    print(f"wrote {args.output} and {writer.metadata}", file=sys.stderr)
    return 0
