"""A whole swarm on one host: a DHT and N Petals servers started with the project's launchers, each
in its own process group, stopped by process group. Used by the tests, by the engine benchmark and
for single-host GPU runs (several servers on one GPU emulate a multi-GPU swarm):

    python -m bench_client.swarm.local --model facebook/opt-30b --servers 4 --device cuda --dtype float16 \
        --workdir runs/opt30b -- -b 1 --num-micro-batches 2 --num-processes 6 --output runs/opt30b/out.tsv

Everything after ``--`` goes to the benchmark client (``python -m bench_client``); the initial peers
and ``--prefix`` are filled in. Bring-up time is printed and written to ``<workdir>/bringup.json``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench_client.core import processes
from bench_client.core import provenance
from bench_client.core.arguments import description

PYTHON = sys.executable
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


@dataclass
class Managed:
    name: str
    process: subprocess.Popen
    log: Path
    start_ticks: int = 0  # the leader's start time, for stopping it first (processes.stop_leader)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalSwarm:
    workdir: Path
    env: dict = field(default_factory=lambda: dict(os.environ))
    processes: list[Managed] = field(default_factory=list)
    address_file: Path | None = None
    stops: list[tuple[str, str]] = field(default_factory=list)  # (name, the signal that ended its group)

    def start(self, name: str, args: list[str]) -> Managed:
        log = self.workdir / f"{name}.log"
        handle = open(log, "wb")
        process = subprocess.Popen([PYTHON, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=self.workdir,
                                   env=self.env, start_new_session=True)  # own process group: stopped as a whole
        handle.close()
        managed = Managed(name, process, log, processes.start_ticks(process.pid) or 0)
        self.processes.append(managed)
        return managed

    def launch_dht(self) -> Managed:
        """Start the DHT without waiting for it: servers started now read its address file when it appears."""
        self.address_file = self.workdir / "dht.maddrs"
        self.address_file.unlink(missing_ok=True)  # a previous run's file names a dead peer
        return self.start("dht", ["-m", "bench_client.swarm.dht", "--address-file", str(self.address_file),
                                  "--host-maddrs", LOOPBACK])

    def await_dht(self, dht: Managed, timeout: float = 60.0) -> list[str]:
        assert self.address_file is not None
        deadline = time.monotonic() + timeout
        while not self.address_file.exists():
            if dht.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"DHT did not start:\n{dht.tail()}")
            time.sleep(0.05)
        return self.initial_peers

    def start_dht(self, timeout: float = 60.0) -> list[str]:
        return self.await_dht(self.launch_dht(), timeout)

    @property
    def initial_peers(self) -> list[str]:
        assert self.address_file is not None
        return self.address_file.read_text().split()

    def peer_args(self) -> list[str]:
        """The DHT's multiaddrs once it is up; before, its address file, which the process waits for."""
        assert self.address_file is not None
        return self.initial_peers if self.address_file.exists() else [f"@{self.address_file}"]

    def start_server(self, name: str, model: str, span: str, *extra: str, dtype: str = "float32",
                     device: str = "cpu", num_handlers: int = 2) -> Managed:
        return self.start(name, ["-m", "bench_client.swarm.server", "--model", model, "--block-indices", span,
                                 "--initial-peers", *self.peer_args(), "--dtype", dtype, "--device", device,
                                 "--host-maddrs", LOOPBACK, "--num-handlers", str(num_handlers), *extra])

    def start_waiter(self, model: str, timeout: float) -> subprocess.Popen:
        """``python -m bench_client.swarm.blocks wait`` in its own process group (see wait_served)."""
        return subprocess.Popen([PYTHON, "-m", "bench_client.swarm.blocks", "wait", "--initial-peers", *self.peer_args(),
                                 "--model", model, "--timeout", str(timeout)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=self.workdir, env=self.env,
                                start_new_session=True)

    def wait_served(self, model: str, timeout: float = 120.0, waiter: subprocess.Popen | None = None,
                    tick: Callable[[], None] | None = None, poll: float = 0.5) -> None:
        """Wait until every block is served; fail at once, with its log, if a server dies meanwhile.
        ``waiter``: one started earlier by start_waiter; ``tick``: called every ``poll`` seconds."""
        waiter = waiter or self.start_waiter(model, timeout)
        try:
            while waiter.poll() is None:
                dead = [m for m in self.processes if m.process.poll() is not None]
                if dead:
                    logs = "\n".join(f"--- {m.name} (exit {m.process.returncode})\n{m.tail()}" for m in dead)
                    raise RuntimeError(f"a swarm process exited while waiting for {model}:\n{logs}")
                if tick:
                    tick()
                time.sleep(poll)
        finally:
            if waiter.poll() is None:
                os.killpg(waiter.pid, signal.SIGKILL)
            _, stderr = waiter.communicate()
        if waiter.returncode != 0:
            logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.processes)
            raise RuntimeError(f"swarm not ready: {stderr[-2000:]}\n{logs}")

    def run_module(self, args: list[str], timeout: float = 600.0) -> subprocess.CompletedProcess:
        """Run ``python -m ...`` in its own process group and check that the group is empty afterwards:
        a command that leaves processes behind (p2pd daemons, DHT helpers) fails the test."""
        process = subprocess.Popen([PYTHON, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=self.workdir, env=self.env, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"{args[0]} timed out after {timeout} s:\n{stderr[-3000:]}")
        deadline = time.monotonic() + 10
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = group_members(process.pid)
        if left:
            names = [" ".join(p.cmdline())[:100] for p in left]
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"python -m {args[0]} left processes behind: {names}")
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def stop(self, managed: Managed, timeout: float = 15.0) -> None:
        """SIGTERM the leader, then the rest of its group (and helpers that left it), SIGKILL what is left
        after ``timeout``; ``stops`` records which signal ended it."""
        if managed.process.poll() is None:
            sig = processes.terminate(managed.process.pid, timeout=timeout,
                                      leader=(managed.process.pid, managed.start_ticks))
        else:  # the leader has exited already (a test killed it): only its helpers may be left
            sig = processes.terminate(managed.process.pid, timeout=timeout)
        self.stops.append((managed.name, sig.name))
        managed.process.wait(timeout=5)

    def stop_all(self) -> None:
        for managed in reversed(self.processes):
            self.stop(managed)

    def stop_all_checked(self) -> list[str]:
        """Stop everything; what went wrong: processes left, or a group that had to be SIGKILLed
        (every process of the swarm exits on SIGTERM)."""
        self.stop_all()
        return self.leftovers() + [f"{name} ended by {sig}" for name, sig in self.stops if sig != "SIGTERM"]

    def leftovers(self) -> list[str]:
        """Processes still alive in any group this swarm started (should be none after stop_all)."""
        return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for m in self.processes for p in group_members(m.process.pid)]


def group_members(pgid: int) -> list[psutil.Process]:
    """Live members of a process group (bench_client.core.daemon's scan), as psutil objects for the tests."""
    members = []
    for pid in processes.group_members(pgid):
        try:
            members.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return members


def bring_up(swarm: LocalSwarm, model: str, spans: list[tuple[int, int]], devices: list[str], *server_args: str,
             dtype: str = "float32", num_handlers: int = 2, timeout: float = 600.0, overlap: bool = True) -> dict:
    """Start a DHT and one server per span, return once every block is served, with when (seconds from
    the start) the DHT wrote its address file, each server joined (wrote its own) and all blocks were served.

    overlap: start the servers and the waiter right after the DHT, so their imports (most of a bring-up
    on a GPU host) run while the DHT starts; they wait for its address file. Without it, the DHT comes
    up first (the order before, kept to measure the difference)."""
    start = time.monotonic()
    dht = swarm.launch_dht()
    assert swarm.address_file is not None
    files = {"dht": swarm.address_file} | {f"server-{i}": swarm.workdir / f"server-{i}.maddrs" for i in range(len(spans))}
    for path in files.values():
        path.unlink(missing_ok=True)
    seen: dict[str, float] = {}

    def tick() -> None:
        for name, path in files.items():
            if name not in seen and path.exists():
                seen[name] = time.monotonic() - start

    if not overlap:
        swarm.await_dht(dht, timeout)
        tick()
    for i, ((a, b), device) in enumerate(zip(spans, devices)):
        swarm.start_server(f"server-{i}", model, f"{a}:{b}", "--address-file", str(files[f"server-{i}"]),
                           *server_args, dtype=dtype, device=device, num_handlers=num_handlers)
    swarm.wait_served(model, timeout=timeout, waiter=swarm.start_waiter(model, timeout), tick=tick, poll=0.05)
    served = time.monotonic() - start
    tick()
    return {"overlap": overlap, "dht_seconds": round(seen["dht"], 2),
            "server_joined_seconds": [round(seen[n], 2) if n in seen else None for n in files if n != "dht"],
            "swarm_seconds": round(served, 2)}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from bench_client.core.models import get_model, split_blocks
    from bench_client.core.sweep import attention_cache_tokens

    argv = sys.argv[1:] if argv is None else argv
    own, client_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m bench_client.swarm.local", description=description(__doc__))
    p.add_argument("--model", required=True)
    p.add_argument("--servers", type=int, default=2, help="servers, each holding a contiguous span of blocks")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (all servers on it)")
    p.add_argument("--gpus", type=int, default=1,
                   help="with --device cuda: spread the servers round-robin over cuda:0 .. cuda:GPUS-1")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--num-handlers", type=int, default=2)
    p.add_argument("--attn-cache-tokens", type=int, default=None,
                   help="per server (default: sized for 6 processes x batch 2 x (1024 + 32) tokens)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="a petals run_server argument for every server (repeat it), e.g. --server-arg=--num_handlers=16")
    p.add_argument("--workdir", required=True)
    p.add_argument("--timeout", type=float, default=600.0, help="bring-up timeout")
    p.add_argument("--sequential", action="store_true",
                   help="start the servers only once the DHT is up (the order before; for A/B bring-up timings)")
    args = p.parse_args(own)
    if args.gpus < 1 or (args.gpus > 1 and args.device != "cuda"):
        p.error("--gpus N (N >= 1) spreads servers over GPUs: it needs --device cuda")
    spec = get_model(args.model)
    spans = split_blocks(spec.layers, args.servers)
    cache = args.attn_cache_tokens or attention_cache_tokens(2, 6, [1024], [32])
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    swarm = LocalSwarm(workdir)
    try:
        devices = [f"cuda:{i % args.gpus}" if args.gpus > 1 else args.device for i in range(len(spans))]
        timings = bring_up(swarm, spec.name, spans, devices, "--attn-cache-tokens", str(cache),
                           *(["--", *args.server_arg] if args.server_arg else []), dtype=args.dtype,
                           num_handlers=args.num_handlers, timeout=args.timeout, overlap=not args.sequential)
        bringup = {"model": spec.name, "servers": args.servers, "devices": devices, "dtype": args.dtype,
                   "server_args": args.server_arg, **timings,
                   "attn_cache_tokens": cache, "spans": [f"{a}:{b}" for a, b in spans]}
        print(json.dumps(bringup), flush=True)
        (workdir / "bringup.json").write_text(json.dumps(bringup, indent=2) + "\n")
        if not client_args:
            return 0
        client = subprocess.Popen([PYTHON, "-m", "bench_client", "--initial_peers", *swarm.initial_peers,
                                   "--prefix", spec.name, *client_args], cwd=Path.cwd(), start_new_session=True,
                                  env={**os.environ, **provenance.environment("local_swarm")})
        # who is who, for profilers and per-process CPU accounting while the client runs
        pids = {m.name: m.process.pid for m in swarm.processes} | {"client": client.pid}
        (workdir / "pids.json").write_text(json.dumps(pids, indent=2) + "\n")
        return client.wait()
    finally:
        swarm.stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
