"""The configurations a benchmark run measures, in the original script's order."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

ORIGINAL_PROMPT_LENGTHS = (256, 512, 1024)
ORIGINAL_NEW_TOKENS = 32
TOKEN_SWEEP_MODEL = "facebook/opt-30b"  # the original swept 0..32 new tokens for OPT-30B only
TOKEN_SWEEP_PROMPT_LENGTH = 512
ORIGINAL_TOKEN_SWEEP = range(0, 33)
# How each configuration warms up (bench_client.client.workers): "each" is the original's whole prefill
# before every configuration, "shape" that only for a shape a client process has not met yet.
WARMUPS = ("each", "shape")
DEFAULT_WARMUP = "shape"


@dataclass(frozen=True, order=True)
class SweepPoint:
    prompt_length: int
    new_tokens: int


def parse_token_sweep(text: str, model: str) -> range | None:
    """'auto' (the original: 0..32 for OPT-30B only), 'none', or START:STOP[:STEP] (STOP exclusive)."""
    if text == "none":
        return None
    if text == "auto":
        return ORIGINAL_TOKEN_SWEEP if model == TOKEN_SWEEP_MODEL else None
    match = re.fullmatch(r"(\d+):(\d+)(?::(\d+))?", text)
    if not match or int(match[1]) >= int(match[2]) or match[3] == "0":
        raise ValueError(f"--token-sweep {text!r} must be auto, none or START:STOP[:STEP] with START < STOP, "
                         "e.g. 0:33 or 0:33:4")
    return range(int(match[1]), int(match[2]), int(match[3] or 1))


def build_sweep(prompt_lengths: list[int], new_tokens: int, token_sweep: range | None,
                token_sweep_prompt_length: int = TOKEN_SWEEP_PROMPT_LENGTH) -> list[SweepPoint]:
    """Every prompt length with ``new_tokens``, then the token sweep at one prompt length.

    Like the original, a point may appear twice (512 x 32 is in both parts); it is then measured twice.
    """
    for value in prompt_lengths:
        if value < 1:
            raise ValueError(f"prompt length must be >= 1, got {value}")
    if new_tokens < 0:
        raise ValueError(f"new tokens must be >= 0, got {new_tokens}")
    points = [SweepPoint(p, new_tokens) for p in prompt_lengths]
    if token_sweep is not None:
        points += [SweepPoint(token_sweep_prompt_length, t) for t in token_sweep]
    return points


def repeat_sweep(points: list[SweepPoint], repeats: int) -> list[SweepPoint]:
    """The whole sweep ``repeats`` times over (passes, not back-to-back repeats: a drift of the
    machine over the run spreads over every configuration instead of biasing the last ones)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return points * repeats


def repeat_of(index: int, points_per_pass: int) -> int:
    """Which pass of repeat_sweep() the point at ``index`` belongs to (0-based)."""
    return index // points_per_pass


def remaining(points: list[SweepPoint], done: Counter) -> list[tuple[int, SweepPoint]]:
    """Points still to measure, with their index in the sweep. ``done`` counts finished points, so a
    point listed twice is skipped only as many times as it was already measured."""
    seen: Counter = Counter()
    todo = []
    for index, point in enumerate(points):
        seen[point] += 1
        if seen[point] > done[point]:
            todo.append((index, point))
    return todo


def attention_cache_tokens(batch_size: int, num_processes: int, prompt_lengths: list[int], new_tokens: list[int]) -> int:
    """Cache tokens one server needs so that every client session fits at once (petals makes sessions
    that do not fit wait in line, which would silently change what is measured)."""
    longest = max(prompt_lengths) + max(new_tokens)
    # +1 session: the warm-up of a process can overlap with the previous configuration's tail
    return batch_size * (num_processes + 1) * longest
