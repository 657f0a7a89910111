"""FlexGen's policy and the search space: what a run places where, FlexGen's own constraints, a memory
model of the GPU and the host that prunes what cannot fit and a rough cost model that orders the rest
(the paper's §5: GPU batch size x GPU batches, weights / KV cache / activations on GPU vs CPU, 4-bit
compression on or off)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from bench_client.core.models import ModelSpec

GIB = 1 << 30

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
