"""One FlexGen run of a policy as a child process (an OOM kills only that trial, the next starts on a clean
GPU), and the search: trials best-first, an OOM falls back to the next policy and rules out larger batches
of its placement."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_client.flexgen.log import FlexGenLog, FlexGenLogError, parse_log
from bench_client.flexgen.policy import Estimate, Policy

DUMMY_PATH = "_DUMMY_"  # flex_opt.DUMMY_WEIGHT: random (all-ones) weights, nothing downloaded

def flexgen_args(policy: Policy, model: str, prompt_len: int, gen_len: int, log_file: str, offload_dir: str) -> list[str]:
    """flex_opt's command line for one benchmark run (the flags of its add_parser_arguments)."""
    args = ["--model", model, "--path", DUMMY_PATH, "--offload-dir", offload_dir,
            "--percent", *map(str, policy.percent),
            "--gpu-batch-size", str(policy.gpu_batch_size), "--num-gpu-batches", str(policy.num_gpu_batches),
            "--prompt-len", str(prompt_len), "--gen-len", str(gen_len), "--log-file", log_file]
    if policy.compress_weight:
        args.append("--compress-weight")
    if policy.compress_cache:
        args.append("--compress-cache")
    return args


def trial_command(python: str, args: list[str]) -> list[str]:
    return [python, "-m", "bench_client.flexgen", "--run-flexgen", *args]


_OOM_MARKERS = ("out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC_FAILED", "Cannot allocate memory",
                "cudaErrorMemoryAllocation")


@dataclass
class Trial:
    policy: Policy
    status: str  # ok, oom, error, timeout
    log: FlexGenLog | None = None
    seconds: float = 0.0
    detail: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.log.total_throughput if self.log else 0.0


def classify(returncode: int, output: str) -> str:
    """A non-zero exit is an OOM when CUDA or the host says so (or the kernel's OOM killer sent SIGKILL)."""
    if returncode == 0:
        return "ok"
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) or any(m in output for m in _OOM_MARKERS):
        return "oom"
    return "error"


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies, however it dies (a SIGKILL from a time
    limit included), so that no orphaned FlexGen run keeps the GPU; Linux only, a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_trial(policy: Policy, model: str, prompt_len: int, gen_len: int, *, python: str = sys.executable,
              timeout: float = 1800.0, workdir: Path | None = None) -> Trial:
    """One FlexGen run in its own process group, killed by group on timeout."""
    scratch = Path(tempfile.mkdtemp(prefix="flexgen-trial-", dir=workdir))
    log_file = scratch / "benchmark.log"
    command = trial_command(python, flexgen_args(policy, model, prompt_len, gen_len, str(log_file),
                                                 str(scratch / "offload")))
    started = time.monotonic()
    # its own process group (killed as a group on timeout), dying with this process
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_die_with_parent)
    try:
        output, _ = proc.communicate(timeout=timeout)
        status = classify(proc.returncode, output)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = "timeout"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.monotonic() - started
    tail = output[-3000:]
    try:
        if status != "ok":
            return Trial(policy, status, seconds=seconds, detail=tail)
        text = log_file.read_text() if log_file.exists() else output
        try:
            return Trial(policy, "ok", parse_log(text), seconds, tail)
        except FlexGenLogError as exc:
            return Trial(policy, "error", seconds=seconds, detail=f"{exc}\n{tail}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


TrialRunner = Callable[[Policy], Trial]


@dataclass
class SearchResult:
    best: Trial | None
    trials: list[Trial] = field(default_factory=list)
    skipped: int = 0  # larger batches of an arrangement that had already run out of memory


def search(plan: list[tuple[Policy, Estimate]], runner: TrialRunner, max_trials: int,
           known: dict[Policy, Trial] | None = None, on_trial: Callable[[Trial], None] | None = None) -> SearchResult:
    """Run ``plan`` best-estimate first, at most ``max_trials`` real runs (``known`` trials, from an
    earlier interrupted search, are reused, not rerun). An OOM falls back to the next policy and rules
    out every larger batch of its arrangement; any other failure stops the search (FlexGen broken,
    not a policy that does not fit)."""
    known = dict(known or {})
    result = SearchResult(best=None)
    too_big: dict[tuple, list[tuple[int, int]]] = {}
    runs = 0
    for policy, _estimate in plan:
        if runs >= max_trials:
            break
        if any(policy.gpu_batch_size >= g and policy.num_gpu_batches >= n for g, n in too_big.get(policy.placement, [])):
            result.skipped += 1
            continue
        trial = known.get(policy)
        if trial is None:
            trial = runner(policy)
            if on_trial:
                on_trial(trial)
        runs += 1
        result.trials.append(trial)
        if trial.status in ("oom", "timeout"):
            too_big.setdefault(policy.placement, []).append((policy.gpu_batch_size, policy.num_gpu_batches))
        elif trial.status == "error":
            raise TrialFailed(trial)
        elif result.best is None or trial.tokens_per_s > result.best.tokens_per_s:
            result.best = trial
    return result


class TrialFailed(RuntimeError):
    def __init__(self, trial: Trial):
        super().__init__(f"FlexGen failed with {trial.policy.label} (not out of memory):\n{trial.detail}")
        self.trial = trial
