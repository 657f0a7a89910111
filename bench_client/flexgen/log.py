"""FlexGen's own benchmark log (flexgen.utils.write_benchmark_log), parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
