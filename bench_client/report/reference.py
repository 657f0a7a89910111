"""Reference numbers for the report: the paper's anchors and the memory-bandwidth roofline.

The roofline (see shared/reference/paper-and-metrics.md): a decode step is memory bound and a
Petals server does not batch across client sessions, so one step of a request streams every weight
of the model once for ``batch_size`` sequences:

    tokens/s per GPU <= batch_size * HBM bandwidth / bytes of the whole model
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bench_client.core.models import ModelSpec, bytes_per_weight

# The paper's workload for Table 17 and its anchors (FlexLLMGen benchmark/petals README; T4 16 GB).
PAPER_PROMPT_LENGTH = 512
PAPER_NEW_TOKENS = 32


@dataclass(frozen=True)
class Anchor:
    petals_per_gpu: float  # Petals on 1 / 4 / 24 T4s, batch 2, 6 parallel requests, tokens/s per GPU
    flexgen: float  # FlexGen, one T4 with offloading, tokens/s
    flexgen_4bit: float  # FlexGen with 4-bit compression, tokens/s
    paper_gpus: int  # T4s the paper's Petals swarm used for this model

    def value(self, key: str) -> float:
        """The number a system's declared anchor (bench_client.systems.base.PaperAnchor.key) names."""
        return getattr(self, key)


PAPER_ANCHORS: dict[str, Anchor] = {
    "facebook/opt-6.7b": Anchor(8.25, 25.26, 29.12, paper_gpus=1),
    "facebook/opt-30b": Anchor(2.84, 7.32, 8.38, paper_gpus=4),
    "facebook/opt-175b": Anchor(0.08, 0.69, 1.12, paper_gpus=24),
}

# HBM bandwidth in GB/s (vendor datasheets), matched against torch's GPU name in order: the first
# pattern that matches wins, so the specific variants come before the family name.
GPU_BANDWIDTH_GBPS: tuple[tuple[str, str, float], ...] = (
    (r"GH200.*144|GH200.*HBM3e", "GH200 144GB", 4900.0),
    (r"GH200", "GH200 96GB", 4000.0),
    (r"H200", "H200", 4800.0),
    (r"H100.*NVL", "H100 NVL", 3900.0),
    (r"H100.*PCIe", "H100 PCIe", 2000.0),
    (r"H100|H800", "H100 SXM", 3350.0),
    (r"A100.*80\s*GB.*PCIe|A100.*PCIe.*80\s*GB", "A100 80GB PCIe", 1935.0),
    (r"A100.*80\s*GB", "A100 80GB", 2039.0),
    (r"A100|A800", "A100 40GB", 1555.0),
    (r"A10G", "A10G", 600.0),
    (r"A10\b", "A10", 600.0),
    (r"L40S|L40\b", "L40/L40S", 864.0),
    (r"L4\b", "L4", 300.0),
    (r"V100", "V100", 900.0),
    (r"\bT4\b", "T4", 320.0),
    (r"RTX\s*4090", "RTX 4090", 1008.0),
    (r"RTX\s*3090", "RTX 3090", 936.0),
)


def gpu_bandwidth_gbps(gpu_name: str | None) -> tuple[str, float] | None:
    """(matched GPU family, HBM GB/s) for a name such as torch.cuda.get_device_name(); None if unknown."""
    if not gpu_name:
        return None
    for pattern, family, gbps in GPU_BANDWIDTH_GBPS:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return family, gbps
    return None


def roofline_tokens_per_s_per_gpu(spec: ModelSpec, weight_dtype: str, batch_size: int, bandwidth_gbps: float) -> float:
    """Upper bound of per-GPU decode throughput: batch_size sequences per full read of the model."""
    bytes_per_step = spec.model_bytes(weight_dtype)
    return batch_size * bandwidth_gbps * 1e9 / bytes_per_step


def known_dtype(dtype: str | None) -> bool:
    if not dtype:
        return False
    try:
        bytes_per_weight(dtype)
    except ValueError:
        return False
    return True
