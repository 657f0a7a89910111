"""Metric arithmetic, kept apart from measuring so it can be checked by hand.

Names follow the traps in the paper's artifact: the original TSV's column 6 is the whole swarm's
throughput (the paper divides it by the number of GPUs) and column 7 is the mean wall time of one
whole generate() call (prefill plus all new tokens), not a per-token latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from statistics import mean


@dataclass(frozen=True)
class GenerateTiming:
    """One generate() call, timed on the client (seconds, monotonic clock)."""

    start: float
    first_token: float | None  # when the prefill step returned (None for 0 new tokens with no step)
    end: float
    new_tokens: int

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def prefill(self) -> float:
        return (self.first_token if self.first_token is not None else self.end) - self.start

    @property
    def decode(self) -> float:
        return self.end - self.first_token if self.first_token is not None else 0.0


@dataclass(frozen=True)
class ConfigMetrics:
    total_tokens: int
    wall_time_s: float
    total_throughput: float  # TSV column 6: tokens/s of the whole swarm
    mean_generate_latency_s: float  # TSV column 7
    prefill_time_s: float
    decode_time_s: float
    per_token_latency_s: float | None  # decode time per token after the first; None if < 2 new tokens
    per_gpu_throughput: float | None


def total_tokens(batch_size: int, num_micro_batches: int, num_processes: int, new_tokens: int) -> int:
    return batch_size * num_micro_batches * num_processes * new_tokens


def throughput(tokens: int, wall_time_s: float) -> float:
    """tokens / second; 0 new tokens is 0 by definition (never a division by it)."""
    if tokens == 0:
        return 0.0
    if wall_time_s <= 0:
        raise ValueError(f"wall time must be positive, got {wall_time_s}")
    return tokens / wall_time_s


def per_gpu(total: float, num_gpus: int | None) -> float | None:
    if not num_gpus:
        return None
    return total / num_gpus


def per_token_latency(timings: list[GenerateTiming]) -> float | None:
    """Mean time between consecutive new tokens after the first (the decode step latency)."""
    steps = [(t.decode, t.new_tokens - 1) for t in timings if t.new_tokens >= 2 and t.first_token is not None]
    if not steps:
        return None
    return sum(d for d, _ in steps) / sum(n for _, n in steps)


def summarize(timings: list[GenerateTiming], *, batch_size: int, num_micro_batches: int, num_processes: int,
              new_tokens: int, wall_time_s: float, num_gpus: int | None) -> ConfigMetrics:
    if len(timings) != num_micro_batches * num_processes:
        raise ValueError(f"expected {num_micro_batches * num_processes} timed generate() calls, got {len(timings)}")
    tokens = total_tokens(batch_size, num_micro_batches, num_processes, new_tokens)
    total = throughput(tokens, wall_time_s)
    return ConfigMetrics(
        total_tokens=tokens,
        wall_time_s=wall_time_s,
        total_throughput=total,
        mean_generate_latency_s=mean(t.latency for t in timings),
        prefill_time_s=mean(t.prefill for t in timings),
        decode_time_s=mean(t.decode for t in timings),
        per_token_latency_s=per_token_latency(timings),
        per_gpu_throughput=per_gpu(total, num_gpus),
    )


def timed_generate(model, inputs, new_tokens: int) -> tuple[GenerateTiming, int]:
    """One greedy generate() of ``new_tokens`` tokens, timed (its prefill too) and the tokens it produced.
    The client's workers and the transformers system time every call this one way."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        """Called once per decoding step, right after its forward pass: the first call marks the end of prefill."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores):
            self.stamps.append(time.monotonic())
            return scores

    clock = StepClock()
    with torch.inference_mode():
        start = time.monotonic()
        # an explicit all-ones mask: transformers would otherwise mask random ids equal to the pad id,
        # and petals refuses custom attention masks
        output = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new_tokens,
                                do_sample=False, logits_processor=LogitsProcessorList([clock]))
        if output.is_cuda:
            torch.cuda.synchronize()
        end = time.monotonic()
    first = clock.stamps[0] if clock.stamps and new_tokens > 0 else None
    produced = output.shape[1] - inputs.shape[1]  # transformers still runs one step for max_new_tokens=0
    return GenerateTiming(start=start, first_token=first, end=end, new_tokens=new_tokens), produced
