"""The Table 17-style table: derived per-row numbers, and their CSV and markdown renderings."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bench_client.core.models import MODELS
from bench_client.report.data import ResultRow
from bench_client.report.reference import (
    PAPER_ANCHORS,
    PAPER_NEW_TOKENS,
    PAPER_PROMPT_LENGTH,
    gpu_bandwidth_gbps,
    known_dtype,
    roofline_tokens_per_s_per_gpu,
)


@dataclass(frozen=True)
class Derived:
    """One result row with everything the table shows (None: unknown or not applicable)."""

    row: ResultRow
    per_gpu_throughput: float | None
    gpu_family: str | None
    hbm_gbps: float | None
    roofline: float | None  # tokens/s per GPU
    roofline_fraction: float | None  # per-GPU throughput / roofline; above 1 means wrong metadata
    paper_petals: float | None
    paper_flexgen: float | None
    paper_flexgen_4bit: float | None

    @property
    def vs_paper_petals(self) -> float | None:
        if self.per_gpu_throughput is None or not self.paper_petals:
            return None
        return self.per_gpu_throughput / self.paper_petals


def derive(row: ResultRow) -> Derived:
    matched = gpu_bandwidth_gbps(row.single_gpu_model)
    family, gbps = matched if matched else (None, None)
    roofline = None
    if row.spec is not None and known_dtype(row.weight_dtype) and gbps is not None:
        roofline = roofline_tokens_per_s_per_gpu(row.spec, row.weight_dtype, row.batch_size, gbps)
    per_gpu = row.per_gpu_throughput
    fraction = None
    # with 0 new tokens throughput is 0 by definition: no fraction of anything
    if roofline and per_gpu is not None and row.new_tokens > 0:
        fraction = per_gpu / roofline
    at_paper_workload = row.prompt_length == PAPER_PROMPT_LENGTH and row.new_tokens == PAPER_NEW_TOKENS
    anchor = PAPER_ANCHORS.get(row.model or "") if at_paper_workload else None
    return Derived(
        row=row,
        per_gpu_throughput=per_gpu,
        gpu_family=family,
        hbm_gbps=gbps,
        roofline=roofline,
        roofline_fraction=fraction,
        paper_petals=anchor.petals_per_gpu if anchor else None,
        paper_flexgen=anchor.flexgen if anchor else None,
        paper_flexgen_4bit=anchor.flexgen_4bit if anchor else None,
    )


def _model_order(name: str | None) -> tuple[int, str]:
    names = list(MODELS)
    return (names.index(name), "") if name in names else (len(names), name or "")


def natural_key(text: str | None) -> tuple:
    """Numbers compare as numbers: 10ms-1gbit < 10ms-100mbit < 100ms-100mbit (the paper's order)."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text or "") if part
    )


def sort_key(d: Derived) -> tuple:
    r = d.row
    return (
        _model_order(r.model),
        r.system,
        r.weight_dtype or "",
        natural_key(r.network_profile),
        r.gpu_name or "",
        r.num_gpus if r.num_gpus is not None else -1,
        r.batch_size,
        r.num_micro_batches,
        r.num_processes,
        r.prompt_length,
        r.new_tokens,
        r.run_id or "",
    )


def derive_all(rows: Iterable[ResultRow]) -> list[Derived]:
    return sorted((derive(r) for r in rows), key=sort_key)


# (CSV column, value) in table order; units are in the names.
CSV_COLUMNS: tuple[tuple[str, Callable[[Derived], Any]], ...] = (
    ("model", lambda d: d.row.model),
    ("system", lambda d: d.row.system),
    ("weight_dtype", lambda d: d.row.weight_dtype),
    ("network_profile", lambda d: d.row.network_profile),
    ("num_servers", lambda d: d.row.num_servers),
    ("num_gpus", lambda d: d.row.num_gpus),
    ("num_gpus_source", lambda d: d.row.num_gpus_source),
    ("gpu", lambda d: d.row.gpu_name),
    ("batch_size", lambda d: d.row.batch_size),
    ("num_micro_batches", lambda d: d.row.num_micro_batches),
    ("num_processes", lambda d: d.row.num_processes),
    ("batch_setting", lambda d: d.row.batch_setting),
    ("prompt_length", lambda d: d.row.prompt_length),
    ("new_tokens", lambda d: d.row.new_tokens),
    ("total_throughput_tokens_per_s", lambda d: d.row.total_throughput),
    ("per_gpu_throughput_tokens_per_s", lambda d: d.per_gpu_throughput),
    ("mean_generate_latency_s", lambda d: d.row.mean_generate_latency_s),
    ("per_token_latency_s", lambda d: d.row.per_token_latency_s),
    ("hbm_bandwidth_gb_per_s", lambda d: d.hbm_gbps),
    ("roofline_tokens_per_s_per_gpu", lambda d: d.roofline),
    ("roofline_fraction", lambda d: d.roofline_fraction),
    ("paper_petals_tokens_per_s_per_gpu", lambda d: d.paper_petals),
    ("paper_flexgen_tokens_per_s", lambda d: d.paper_flexgen),
    ("paper_flexgen_4bit_tokens_per_s", lambda d: d.paper_flexgen_4bit),
    ("ours_vs_paper_petals", lambda d: d.vs_paper_petals),
    ("repeat", lambda d: d.row.repeat),
    ("run_id", lambda d: d.row.run_id),
    ("source", lambda d: f"{d.row.source}:{d.row.line}"),
    ("metadata", lambda d: d.row.metadata_at),
)


def to_csv(derived: list[Derived]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(name for name, _ in CSV_COLUMNS)
    for d in derived:
        writer.writerow(
            "" if (v := get(d)) is None else repr(v) if isinstance(v, float) else v for _, get in CSV_COLUMNS
        )
    return buffer.getvalue()


def fmt_number(value: float | None, missing: str = "n/a") -> str:
    if value is None:
        return missing
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _per_gpu_cell(d: Derived) -> str:
    if d.row.num_gpus is None:
        return "unknown (GPU count)"
    if d.row.num_gpus == 0:
        return "n/a (no GPU)"
    if d.row.per_server:
        return f"{fmt_number(d.per_gpu_throughput)} per server (no GPU)"
    return fmt_number(d.per_gpu_throughput)


def gpus_label(row: ResultRow) -> str:
    """What the row's divisor counted, never CPU servers called GPUs (every table and headline uses it)."""
    if row.num_gpus == 0:
        return "0 (CPU servers)"
    if row.per_server:
        return f"0 ({row.num_gpus} servers without GPU)"
    count = "?" if row.num_gpus is None else str(row.num_gpus)
    return f"{count} × {row.gpu_name or 'unknown GPU'}"


def _gpu_cell(d: Derived) -> str:
    return gpus_label(d.row)


def _fraction_cell(d: Derived) -> str:
    if d.roofline_fraction is None:
        return "n/a"
    cell = f"{100 * d.roofline_fraction:.1f} %"
    # above a physical limit: the GPU count, GPU name or dtype recorded for this run must be wrong
    return cell + " (above the limit: check GPU count, GPU and dtype)" if d.roofline_fraction > 1 else cell


# (markdown header with unit, cell) in table order.
MD_COLUMNS: tuple[tuple[str, Callable[[Derived], str]], ...] = (
    ("model", lambda d: d.row.model or "unknown"),
    ("system", lambda d: d.row.system),
    ("weights", lambda d: d.row.weight_dtype or "unknown"),
    ("network", lambda d: d.row.network_profile or "unknown"),
    ("GPUs", _gpu_cell),
    ("batch × micro-batches × processes", lambda d: d.row.batch_setting),
    ("prompt / new tokens", lambda d: f"{d.row.prompt_length} / {d.row.new_tokens}"),
    ("swarm throughput (tokens/s)", lambda d: fmt_number(d.row.total_throughput)),
    ("**per-GPU throughput (tokens/s/GPU)**", _per_gpu_cell),
    ("generate() latency (s)", lambda d: fmt_number(d.row.mean_generate_latency_s)),
    ("per-token latency (s/token)", lambda d: fmt_number(d.row.per_token_latency_s)),
    ("HBM roofline (tokens/s/GPU)", lambda d: fmt_number(d.roofline)),
    ("of roofline", _fraction_cell),
    ("paper Petals (tokens/s/GPU)", lambda d: fmt_number(d.paper_petals, "–")),
    ("paper FlexGen (tokens/s)", lambda d: fmt_number(d.paper_flexgen, "–")),
    ("paper FlexGen 4-bit (tokens/s)", lambda d: fmt_number(d.paper_flexgen_4bit, "–")),
)


def md_table(derived: list[Derived], with_run: bool = False) -> str:
    columns = list(MD_COLUMNS) + ([("run", lambda d: d.row.run_id or "")] if with_run else [])
    lines = [
        "| " + " | ".join(h for h, _ in columns) + " |",
        "|" + "|".join("---" if i < 7 else "---:" for i in range(len(columns))) + "|",
    ]
    for d in derived:
        lines.append("| " + " | ".join(cell(d).replace("|", "\\|") for _, cell in columns) + " |")
    return "\n".join(lines) + "\n"


NOTES = f"""\
How to read it:
- **per-GPU throughput** = swarm throughput (the original TSV's column 6: generated tokens of all
  processes / wall time of the run) divided by the number of GPUs that served the model, as in the
  paper. Where the GPU count is not recorded it is shown as unknown, never divided by 1; where
  the servers have no GPU (a CPU swarm) it is per server, and says so.
- **generate() latency** is the original TSV's column 7: the mean wall time of one whole
  generate() call (prefill plus every new token), although the seed README calls it "latency per
  token". **per-token latency** is the true one, from our metadata (JSONL) where recorded.
- **batch × micro-batches × processes**: the paper text uses batch 2 per request (2x1x6), the seed
  README's command `-b 1 --num-micro-batches 2` (1x2x6).
- **HBM roofline** = batch size × HBM bandwidth / bytes of the whole model (a memory-bound decode
  step streams every weight once; a Petals server does not batch across client sessions). Our
  throughput includes the prefill, so the fraction is a lower bound of the decode efficiency.
- **paper** columns: the FlexGen paper's numbers (FlexLLMGen benchmark/petals README, T4 16 GB,
  prompt {PAPER_PROMPT_LENGTH} / {PAPER_NEW_TOKENS} new tokens; Petals on 1 / 4 / 24 T4s for OPT-6.7B / 30B / 175B, INT8 weights),
  shown beside rows of that workload only. They are on T4s: compare the fraction of the roofline,
  not the raw numbers, across GPUs.
- A configuration measured more than once (e.g. 512 / 32 in both the prompt sweep and the token
  sweep, or a rerun) has one row per measurement; `rows.csv` names each one's file and line.
"""


def md_failed(failed: list[ResultRow]) -> str:
    lines = [
        "| model | network | batch × micro-batches × processes | prompt / new tokens | error | source |",
        "|---|---|---|---|---|---|",
    ]
    for r in failed:
        error = (r.error or "no error recorded").splitlines()[0][:200].replace("|", "\\|")
        lines.append(
            f"| {r.model or 'unknown'} | {r.network_profile or 'unknown'} | {r.batch_setting} | "
            f"{r.prompt_length} / {r.new_tokens} | {error} | {r.metadata_at or f'{r.source}:{r.line}'} |"
        )
    return "\n".join(lines) + "\n"
