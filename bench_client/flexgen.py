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
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_client.core import environment
from bench_client.core.arguments import description, positive_int
from bench_client.core.metrics import per_gpu, throughput
from bench_client.core.models import ModelSpec, UnknownModelError, get_model
from bench_client.core.processes import fail
from bench_client.core.results import (ResultRecord, ResultsWriter, TsvRow, append_line, load_extra_metadata,
                                       new_run_id, now_iso, read_metadata, read_records, repair_tail)
from bench_client.core.sweep import ORIGINAL_NEW_TOKENS, ORIGINAL_PROMPT_LENGTHS
from bench_client.systems.flexgen import SYSTEM as FLEXGEN

SYSTEM = FLEXGEN.name  # what its records' ``system`` field says

FLEXGEN_VERSION = "0.1.8"  # the release whose run_flexgen / log format this module was written against
DUMMY_PATH = "_DUMMY_"  # flex_opt.DUMMY_WEIGHT: random (all-ones) weights, nothing downloaded
GIB = 1 << 30
STAND_IN_TOKENIZER = "stand-in (pad id 1, left padding, fixed non-pad ids; FlexGen dummy weights)"
EXIT_NO_POLICY = 5
EXIT_TRIAL_ERROR = 6

# --- policy -------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Policy:
    """FlexGen's Policy fields that the benchmark's command line sets (percentages are of 100)."""

    gpu_batch_size: int
    num_gpu_batches: int
    w_gpu: int
    w_cpu: int
    c_gpu: int
    c_cpu: int
    a_gpu: int
    a_cpu: int
    compress_weight: bool = False
    compress_cache: bool = False

    @property
    def percent(self) -> tuple[int, int, int, int, int, int]:
        return (self.w_gpu, self.w_cpu, self.c_gpu, self.c_cpu, self.a_gpu, self.a_cpu)

    @property
    def num_sequences(self) -> int:
        return self.gpu_batch_size * self.num_gpu_batches

    @property
    def placement(self) -> tuple:
        """Everything but the batch: a larger batch of the same placement needs at least as much memory."""
        return (self.percent, self.compress_weight, self.compress_cache)

    def check(self) -> None:
        """FlexGen's own constraints (flex_opt.py), raised before any GPU is touched."""
        if self.gpu_batch_size < 1 or self.num_gpu_batches < 1:
            raise ValueError(f"GPU batch size and number of GPU batches must be >= 1 ({self.label})")
        for name, (gpu, cpu) in {"weights": (self.w_gpu, self.w_cpu), "cache": (self.c_gpu, self.c_cpu),
                                 "activations": (self.a_gpu, self.a_cpu)}.items():
            if min(gpu, cpu) < 0 or gpu + cpu > 100:
                raise ValueError(f"{name}: GPU {gpu}% + CPU {cpu}% must be percentages summing to <= 100 "
                                 "(the rest goes to disk)")
        if 100 not in (self.a_gpu, self.a_cpu, 100 - self.a_gpu - self.a_cpu):
            raise ValueError("activations must be 100% on one device (FlexGen raises NotImplementedError otherwise)")
        if self.compress_cache and 100 not in (self.c_gpu, self.c_cpu, 100 - self.c_gpu - self.c_cpu):
            raise ValueError("a compressed cache must be 100% on one device (FlexGen asserts it is not mixed)")

    @property
    def label(self) -> str:
        comp = "+".join(n for n, on in (("4-bit weights", self.compress_weight), ("4-bit cache", self.compress_cache))
                        if on) or "fp16"
        return (f"gbs {self.gpu_batch_size} x {self.num_gpu_batches}, percent "
                f"{' '.join(map(str, self.percent))}, {comp}")

    def to_dict(self) -> dict:
        return {**asdict(self), "percent": list(self.percent), "num_sequences": self.num_sequences}

    @classmethod
    def from_dict(cls, data: dict) -> Policy:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def parse_percent(values: list[int]) -> tuple[int, ...]:
    if len(values) != 6:
        raise ValueError(f"--percent takes six numbers (W_GPU W_CPU C_GPU C_CPU A_GPU A_CPU), got {len(values)}")
    return tuple(values)


# --- memory and cost model ----------------------------------------------------------------------------

# 4-bit group-wise compression (CompressionConfig(num_bits=4, group_size=64)): 4 bits per value plus an
# fp16 min and scale per group of 64, against 16 bits uncompressed.
COMPRESSED_FRACTION = (4 + 2 * 16 / 64) / 16


@dataclass(frozen=True)
class Hardware:
    """What the search may use (bytes) and what the cost model assumes (bytes/s, FLOP/s)."""

    gpu_bytes: float
    cpu_bytes: float
    hbm_bandwidth: float = 4.8e12  # H200
    pcie_bandwidth: float = 25e9  # effective host<->GPU copies (PCIe 5 x16 is 64 GB/s raw)
    gpu_flops: float = 400e12  # dense fp16 actually reached, well below the datasheet's peak


def h200(cpu_gib: float = 128) -> Hardware:
    """One H200 (143771 MiB = 140.4 GiB, of which ~4.4 GiB go to the CUDA context and allocator slack) in a
    host with ``cpu_gib``; the host keeps 16 GiB for the OS, the Python process and pinned-copy staging.
    GiB throughout, as FlexGen prints its sizes."""
    return Hardware(gpu_bytes=136 * GIB, cpu_bytes=(cpu_gib - 16) * GIB)


@dataclass(frozen=True)
class Workload:
    spec: ModelSpec
    prompt_len: int
    gen_len: int

    # FlexGen's own size formulas (flexgen/opt_config.py OptConfig), with our model's OPT dimensions
    @property
    def weight_bytes(self) -> float:
        h, layers, vocab = self.spec.hidden, self.spec.layers, self.spec.vocab
        per_layer = h * (3 * h + 1) + h * (h + 1) + h * (4 * h + 1) + h * 4 * (h + 1) + h * 4
        return 2 * (layers * per_layer + vocab * (h + 1))

    def cache_bytes(self, sequences: int) -> float:
        return 2 * sequences * (self.prompt_len + self.gen_len) * self.spec.layers * self.spec.hidden * 2

    def hidden_bytes(self, sequences: int) -> float:
        return sequences * (self.prompt_len + self.gen_len) * self.spec.hidden * 2

    def layer_weight_bytes(self) -> float:
        return self.weight_bytes / self.spec.layers

    def prefill_workspace(self, gpu_batch_size: int) -> float:
        """Peak temporaries of one GPU batch's prefill of one layer: attention scores (fp16, every head,
        and their softmax copy) and the MLP's 4h intermediate."""
        s = self.prompt_len
        return gpu_batch_size * (2 * self.spec.heads * s * s * 2 + s * 4 * self.spec.hidden * 2 * 2)


@dataclass(frozen=True)
class Estimate:
    gpu_bytes: float
    cpu_bytes: float
    seconds: float  # prefill + decode of all sequences
    tokens_per_s: float

    def fits(self, hw: Hardware) -> bool:
        return self.gpu_bytes <= hw.gpu_bytes and self.cpu_bytes <= hw.cpu_bytes


def estimate(policy: Policy, work: Workload, hw: Hardware) -> Estimate:
    n = policy.num_sequences
    wfrac = COMPRESSED_FRACTION if policy.compress_weight else 1.0
    cfrac = COMPRESSED_FRACTION if policy.compress_cache else 1.0
    weights = work.weight_bytes * wfrac
    cache = work.cache_bytes(n) * cfrac
    w_gpu, w_cpu = weights * policy.w_gpu / 100, weights * policy.w_cpu / 100
    c_gpu, c_cpu = cache * policy.c_gpu / 100, cache * policy.c_cpu / 100
    hidden = work.hidden_bytes(n)
    a_gpu = hidden * policy.a_gpu / 100
    a_cpu = hidden * policy.a_cpu / 100
    layer = work.layer_weight_bytes()
    # offloaded weights stream through two layer buffers (FlexGen overlaps loading the next layer);
    # compressed weights are decompressed into fp16 buffers on the GPU
    buffers = 2 * layer if (policy.w_gpu < 100 or policy.compress_weight) else 0.0
    # a cache not all on GPU is copied in one layer and one GPU batch at a time (fp16 on the GPU)
    cache_buffer = 2 * work.cache_bytes(policy.gpu_batch_size) / work.spec.layers if policy.c_gpu < 100 else 0.0
    gpu = w_gpu + c_gpu + a_gpu + buffers + cache_buffer + work.prefill_workspace(policy.gpu_batch_size)
    cpu = w_cpu + c_cpu + a_cpu

    # time: per layer, the GPU reads its weights once per GPU batch while the offloaded part crosses
    # PCIe once for all GPU batches (the paper's block schedule); compute and copies overlap
    def step(tokens_per_seq: int, cache_len: int) -> float:
        flops = 2 * (work.weight_bytes / 2) * n * tokens_per_seq
        compute = flops / hw.gpu_flops * (1.3 if policy.compress_weight else 1.0)
        hbm = (weights * policy.num_gpu_batches + work.cache_bytes(n) * cfrac * cache_len /
               (work.prompt_len + work.gen_len) * policy.c_gpu / 100) / hw.hbm_bandwidth
        # activations kept on the CPU cross PCIe twice per layer (in and out)
        acts = 2 * a_cpu * tokens_per_seq / (work.prompt_len + work.gen_len)
        pcie = (w_cpu + cache * cache_len / (work.prompt_len + work.gen_len) * policy.c_cpu / 100 + acts) / hw.pcie_bandwidth
        return max(compute, hbm, pcie)

    prefill = step(work.prompt_len, work.prompt_len)
    decode = sum(step(1, work.prompt_len + t) for t in range(1, work.gen_len))
    seconds = prefill + decode
    return Estimate(gpu, cpu, seconds, n * work.gen_len / seconds)


# The paper's benchmark suite swept these (bench_suite.py: gbs up to 64+, up to 12 GPU batches).
GPU_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)
NUM_GPU_BATCHES = (1, 2, 4, 8, 12, 16)
WEIGHT_GPU_PERCENTS = (100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 0)
CACHE_GPU_PERCENTS = (100, 50, 0)


def candidates(compression: Iterable[bool] = (False, True)) -> Iterator[Policy]:
    """Every policy of the search space that FlexGen accepts, nothing on disk (slow, and the host has RAM)."""
    for gbs, ngb, wg, cg, ag, comp in itertools.product(GPU_BATCH_SIZES, NUM_GPU_BATCHES, WEIGHT_GPU_PERCENTS,
                                                        CACHE_GPU_PERCENTS, (100, 0), compression):
        policy = Policy(gbs, ngb, wg, 100 - wg, cg, 100 - cg, ag, 100 - ag, comp, comp)
        try:
            policy.check()
        except ValueError:
            continue
        yield policy


def plan_search(work: Workload, hw: Hardware, compression: Iterable[bool] = (False, True)) -> list[tuple[Policy, Estimate]]:
    """Policies that fit ``hw`` by the memory model, best estimated throughput first."""
    fitting = [(p, e) for p in candidates(compression) if (e := estimate(p, work, hw)).fits(hw)]
    # ties: fewer sequences (less memory, shorter latency), then more on GPU
    fitting.sort(key=lambda pe: (-pe[1].tokens_per_s, pe[0].num_sequences, -pe[0].w_gpu, -pe[0].c_gpu, -pe[0].a_gpu))
    # activations are small: of two policies that differ only there, trying the second wastes a trial
    seen: set[tuple] = set()
    plan = []
    for policy, est in fitting:
        key = (policy.gpu_batch_size, policy.num_gpu_batches, policy.w_gpu, policy.c_gpu, policy.compress_weight,
               policy.compress_cache)
        if key not in seen:
            seen.add(key)
            plan.append((policy, est))
    # the cost model is rough: the first trials try the best-estimated policy of each compression
    # setting (the paper compared both), then the rest in estimated order
    firsts: list[tuple[Policy, Estimate]] = []
    for compressed in (False, True):
        best = next((pe for pe in plan if pe[0].compress_weight == compressed), None)
        if best is not None:
            firsts.append(best)
    firsts.sort(key=lambda pe: -pe[1].tokens_per_s)
    return firsts + [pe for pe in plan if pe not in firsts]


# --- FlexGen's log --------------------------------------------------------------------------------------

_LOG_PATTERN = re.compile(
    r"model size: (?P<model_gb>[\d.]+) GB\tcache size: (?P<cache_gb>[\d.]+) GB\thidden size \(p\): (?P<hidden_gb>[\d.]+) GB\n"
    r"peak gpu mem: (?P<peak_gpu_gb>[\d.]+) GB\tprojected: (?P<projected>True|False)\n"
    r"prefill latency: (?P<prefill_latency_s>[\d.]+) s\tprefill throughput: (?P<prefill_throughput>[\d.]+) token/s\n"
    r"decode latency: (?P<decode_latency_s>[\d.]+) s\tdecode throughput: (?P<decode_throughput>[\d.]+) token/s\n"
    r"total latency: (?P<total_latency_s>[\d.]+) s\ttotal throughput: (?P<total_throughput>[\d.]+) token/s"
)


class FlexGenLogError(ValueError):
    pass


@dataclass(frozen=True)
class FlexGenLog:
    """One entry of flexgen.utils.write_benchmark_log (sizes in GiB, as FlexGen prints them)."""

    model_gb: float
    cache_gb: float
    hidden_gb: float
    peak_gpu_gb: float
    projected: bool
    prefill_latency_s: float
    prefill_throughput: float
    decode_latency_s: float
    decode_throughput: float
    total_latency_s: float
    total_throughput: float


def parse_log(text: str) -> FlexGenLog:
    """The last benchmark entry in ``text`` (FlexGen appends to its log file; stdout prints the same)."""
    entries = list(_LOG_PATTERN.finditer(text.replace("\r\n", "\n")))
    if not entries:
        raise FlexGenLogError("no FlexGen benchmark result (\"total latency: ... total throughput: ...\") in the log")
    values = entries[-1].groupdict()
    projected = values.pop("projected") == "True"
    return FlexGenLog(projected=projected, **{k: float(v) for k, v in values.items()})


# --- one trial ------------------------------------------------------------------------------------------


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


# --- the child: run_flexgen with a stand-in tokenizer -------------------------------------------------


class StandInTokenizer:
    """What flex_opt.get_test_inputs needs of OPT's tokenizer: ``tok(prompts, padding="max_length",
    max_length=n).input_ids``, left-padded with OPT's pad id 1. The ids are fixed non-pad ids (BOS 2
    then a few ordinary ones): with dummy weights any ids cost the same and produce the same."""

    pad_token_id = 1
    ids = [2, 100, 200, 300, 400, 500, 600]

    def __call__(self, prompts: list[str], padding: str = "max_length", max_length: int = 0, **_kw):
        class Encoded:
            pass

        encoded = Encoded()
        body = self.ids[:max_length] if max_length else list(self.ids)
        encoded.input_ids = [[self.pad_token_id] * (max_length - len(body)) + body for _ in prompts]
        return encoded

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        return ["" for _ in ids]


class StandInAutoTokenizer:
    @staticmethod
    def from_pretrained(name: str, **_kw) -> StandInTokenizer:
        return StandInTokenizer()


def run_child(argv: list[str]) -> int:
    """``--run-flexgen FLEX_OPT_ARGS``: flex_opt's own main with the stand-in tokenizer."""
    import flexgen.flex_opt as flex_opt  # only on the GPU host

    flex_opt.AutoTokenizer = StandInAutoTokenizer
    parser = argparse.ArgumentParser(prog="flexgen.flex_opt (stand-in tokenizer)")
    flex_opt.add_parser_arguments(parser)
    args = parser.parse_args(argv)
    if len(args.percent) != 6:
        parser.error("--percent takes six numbers")
    flex_opt.run_flexgen(args)
    return 0


# --- the benchmark --------------------------------------------------------------------------------------


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


if __name__ == "__main__":
    sys.exit(main())
