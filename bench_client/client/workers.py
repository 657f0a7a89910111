"""Client worker processes: each holds one full DistributedBloomForCausalLM (random embeddings, no
download, as in the original) and runs timed greedy generate() calls when told to.

Workers live for the whole sweep (the original started new processes per configuration; loading the
model once saves minutes on long sweeps and changes nothing that is timed). Per configuration, each
worker warms up with one 1-token generate(), reports ready, waits on a barrier with all the others
and the coordinator, then runs its micro-batches back to back.

The warm-up (Task.warmup): "each" is the original's, a 1-token generate() of the configuration's own
prompt before every configuration: a whole prefill, as long as the measured one's (seconds per
configuration under a 100 Mbit profile, most of a sweep's wall time on a GPU). "shape" does that only
the first time a process meets a (batch, prompt length) shape; later configurations of that shape
(other new-token counts, repeats, the next profiles of a client session) warm up with a 1-token
prompt, which still opens an inference session through every server of the route under the network
in effect. What is timed is the same generate() either way.
"""

from __future__ import annotations

import os
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from bench_client.core.metrics import GenerateTiming, timed_generate
from bench_client.core.sweep import DEFAULT_WARMUP
from bench_client.core.processes import descendants, stop_processes, terminate_tree


@dataclass(frozen=True)
class WorkerSpec:
    model_dir: str
    dht_prefix: str
    initial_peers: tuple[str, ...]
    vocab: int
    device: str  # "cpu" or "cuda"
    dtype: str  # client-side weights (embeddings, LM head)
    seed: int
    request_timeout: float
    max_retries: int  # petals retries forever by default; a lost block must fail the configuration instead


@dataclass(frozen=True)
class Task:
    batch_size: int
    num_micro_batches: int
    prompt_length: int
    new_tokens: int
    warmup: str = DEFAULT_WARMUP  # bench_client.core.sweep.WARMUPS


@dataclass
class Warmups:
    """The shapes one worker has warmed up with a whole prompt (Task.warmup "shape")."""
    seen: set[tuple[int, int]] = field(default_factory=set)

    def kind(self, task: Task) -> str:
        """"full" (the configuration's own prompt) or "short" (a 1-token prompt), and remember the shape."""
        shape = (task.batch_size, task.prompt_length)
        kind = "short" if task.warmup == "shape" and shape in self.seen else "full"
        self.seen.add(shape)
        return kind


def _load_model(spec: WorkerSpec, index: int):
    import torch

    from bench_client import compat

    compat.apply()  # includes the failover fixes: reroute to a replica when a server dies mid-run
    from petals import DistributedBloomConfig, DistributedBloomForCausalLM

    config = DistributedBloomConfig.from_pretrained(spec.model_dir)
    config.dht_prefix = spec.dht_prefix
    config.initial_peers = list(spec.initial_peers)
    config.request_timeout = spec.request_timeout
    config.max_retries = spec.max_retries
    config.show_route = False
    config.use_chunked_forward = False  # "auto" imports cpufeature; chunking only helps bfloat16 on CPUs without AVX512
    torch.manual_seed(spec.seed)
    model = DistributedBloomForCausalLM(config).to(getattr(torch, spec.dtype))
    if spec.device == "cuda":
        torch.cuda.set_device(index % torch.cuda.device_count())  # as the original: spread clients over GPUs
        model = model.cuda()
    model.eval()
    return model


def worker_main(index: int, spec: WorkerSpec, tasks, results, barrier) -> None:
    """Process entry point. Ends with os._exit: petals can hang at interpreter exit (see compat)."""
    code = 0
    try:
        import torch

        torch.set_num_threads(1)
        model = _load_model(spec, index)
        generator = torch.Generator().manual_seed(spec.seed + index)
        warmups = Warmups()
        results.put(("loaded", index, None))
        while True:
            task: Task | None = tasks.get()
            if task is None:
                break
            inputs = torch.randint(0, spec.vocab, (task.batch_size, task.prompt_length), generator=generator)
            if spec.device == "cuda":
                inputs = inputs.cuda()
            kind = warmups.kind(task)
            warm_start = time.monotonic()
            timed_generate(model, inputs if kind == "full" else inputs[:, :1], 1)
            results.put(("ready", index, {"kind": kind, "seconds": time.monotonic() - warm_start}))
            barrier.wait()
            timings, produced = [], []
            for _ in range(task.num_micro_batches):
                timing, count = timed_generate(model, inputs, task.new_tokens)
                timings.append(timing)
                produced.append(count)
            results.put(("done", index, (timings, produced)))
    except Exception:  # reported to the coordinator, which records the failure
        code = 1
        try:
            results.put(("error", index, traceback.format_exc(limit=8)))
            time.sleep(0.5)  # let the queue's feeder thread flush
        except Exception:
            pass
    finally:
        # os._exit skips the cleanup that would stop our DHT process and its p2pd: stop them here
        terminate_tree(os.getpid(), include_self=False, timeout=3.0)
        os._exit(code)


class WorkerError(RuntimeError):
    pass


class WorkerCancelled(Exception):
    """The configuration was given up from outside (the session's job was withdrawn); no row, no failure."""


class WorkerPool:
    """``num_processes`` client processes, started with 'spawn' in the coordinator's process group."""

    def __init__(self, spec: WorkerSpec, num_processes: int, load_timeout: float):
        import torch.multiprocessing as mp

        self._ctx = mp.get_context("spawn")
        self.num_processes = num_processes
        self.results = self._ctx.Queue()
        self.barrier = self._ctx.Barrier(num_processes + 1)
        self.task_queues = [self._ctx.Queue() for _ in range(num_processes)]
        self.processes = [
            self._ctx.Process(target=worker_main, args=(i, spec, self.task_queues[i], self.results, self.barrier),
                              name=f"bench-client-{i}")  # not daemonic: each starts a DHT process
            for i in range(num_processes)
        ]
        for process in self.processes:
            process.start()
        self._collect("loaded", load_timeout)

    def _collect(self, kind: str, timeout: float, cancelled: Callable[[], bool] | None = None) -> dict[int, object]:
        deadline = time.monotonic() + timeout
        got: dict[int, object] = {}
        while len(got) < self.num_processes:
            if cancelled is not None and cancelled():
                raise WorkerCancelled(f"given up while waiting for client processes ({kind})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"timed out after {timeout:.0f} s waiting for client processes ({kind}); "
                                  f"{len(got)}/{self.num_processes} answered")
            try:
                message, index, payload = self.results.get(timeout=min(remaining, 5.0 if cancelled is None else 0.5))
            except queue.Empty:
                dead = [p.name for p in self.processes if not p.is_alive()]
                if dead:
                    raise WorkerError(f"client processes exited unexpectedly: {', '.join(dead)}") from None
                continue
            if message == "error":
                raise WorkerError(f"client process {index} failed:\n{payload}")
            if message != kind:
                raise WorkerError(f"protocol error: expected {kind!r} from process {index}, got {message!r}")
            got[index] = payload
        return got

    def run(self, task: Task, timeout: float,
            cancelled: Callable[[], bool] | None = None) -> tuple[list[tuple[list[GenerateTiming], list[int]]], dict]:
        """Every process's (timings, tokens produced), and the warm-up: its kind(s) and longest time."""
        for q in self.task_queues:
            q.put(task)
        ready = self._collect("ready", timeout, cancelled)
        self.barrier.wait(timeout=timeout)  # every process starts its timed calls together
        done = self._collect("done", timeout, cancelled)
        warmup = {"kind": "+".join(sorted({r["kind"] for r in ready.values()})),  # type: ignore[index]
                  "seconds": max(r["seconds"] for r in ready.values())}  # type: ignore[index]
        return [done[i] for i in range(self.num_processes)], warmup  # type: ignore[misc]

    def alive(self) -> bool:
        return all(process.is_alive() for process in self.processes)

    def kill(self, timeout: float = 1.0) -> None:
        """Stop every worker and its helpers (DHT process, p2pd) now, by PID: SIGTERM, SIGKILL after
        ``timeout`` (a session told to stop, or a pool given up mid-configuration)."""
        pids = [p.pid for p in self.processes if p.pid is not None and p.is_alive()]
        stop_processes(lambda: descendants(pids) + pids, timeout)
        for process in self.processes:
            process.join(timeout=0.5)

    def close(self) -> None:
        try:
            self.barrier.abort()  # release anyone still waiting
        except Exception:
            pass
        for q in self.task_queues:
            try:
                q.put(None)
            except Exception:
                pass
        deadline = time.monotonic() + 10
        for process in self.processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive() and process.pid is not None:  # stopped by its PID, never by name
                terminate_tree(process.pid, timeout=3.0)
                process.join(timeout=5)
