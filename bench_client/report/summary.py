"""Repeats summarised (median and min-max), Table 17 as the paper lays it out, and the paper's claims
checked against our numbers.

A configuration measured several times (``--repeats``, reruns) is one ``Summary``: the median of
its per-GPU throughput with the spread (min-max) and the number of measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

from bench_client.core.models import MODELS
from bench_client.report.data import ResultRow
from bench_client.report.reference import PAPER_ANCHORS, PAPER_NEW_TOKENS, PAPER_PROMPT_LENGTH
from bench_client.systems import flexgen, petals, registry
from bench_client.report.table import Derived, fmt_number, gpus_label, natural_key

# The systems the paper's claims name (the registry's declarations, never their names spelt out here)
PETALS, FLEXGEN = petals.SYSTEM.name, flexgen.SYSTEM.name


def column_label(row: ResultRow) -> str:
    """'Petals, 10 ms / 100 Mbit/s', 'FlexGen, one GPU (no network)': the declared label and the recorded network."""
    return f"{row.system_info.label}, {row.network_text}"


def column_order(row: ResultRow) -> tuple:
    """One-GPU systems first, then each swarm from its mildest recorded network to its slowest."""
    return (registry.order(row.system_info), row.network_order, natural_key(row.network_profile))


def _spread(values: list[float]) -> tuple[float, float, float] | None:
    return (median(values), min(values), max(values)) if values else None


@dataclass(frozen=True)
class Summary:
    """Every measurement of one configuration."""

    members: tuple[Derived, ...]

    @property
    def first(self) -> Derived:
        return self.members[0]

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def per_gpu(self) -> tuple[float, float, float] | None:
        return _spread([d.per_gpu_throughput for d in self.members if d.per_gpu_throughput is not None])

    @property
    def generate_latency(self) -> tuple[float, float, float] | None:
        return _spread([d.row.mean_generate_latency_s for d in self.members if d.row.mean_generate_latency_s is not None])

    @property
    def per_token_latency(self) -> tuple[float, float, float] | None:
        return _spread([d.row.per_token_latency_s for d in self.members if d.row.per_token_latency_s is not None])

    @property
    def prefill(self) -> float | None:
        """Median prefill time: generate() latency minus the decode steps (per-token latency x (tokens - 1))."""
        values = [d.row.mean_generate_latency_s - d.row.per_token_latency_s * (d.row.new_tokens - 1)
                  for d in self.members
                  if d.row.mean_generate_latency_s is not None and d.row.per_token_latency_s is not None]
        return median(values) if values else None

    @property
    def roofline_fraction(self) -> float | None:
        values = [d.roofline_fraction for d in self.members if d.roofline_fraction is not None]
        return median(values) if values else None


def config_key(d: Derived) -> tuple:
    """What makes two measurements one configuration (the medians' groups, the run comparison's rows)."""
    r = d.row
    return (r.model, r.system, r.weight_dtype, r.network_profile, r.gpu_name, r.num_gpus, r.num_servers,
            r.batch_size, r.num_micro_batches, r.num_processes, r.prompt_length, r.new_tokens)


def summarize(derived: list[Derived]) -> list[Summary]:
    groups: dict[tuple, list[Derived]] = {}
    for d in derived:
        groups.setdefault(config_key(d), []).append(d)
    return [Summary(tuple(members)) for members in groups.values()]


def fmt_spread(spread: tuple[float, float, float] | None, n: int) -> str:
    if spread is None:
        return "n/a"
    mid, low, high = spread
    if n == 1:
        return f"{fmt_number(mid)} (n=1)"
    return f"{fmt_number(mid)} [{fmt_number(low)}–{fmt_number(high)}] (n={n})"


def md_summary(summaries: list[Summary]) -> str:
    lines = ["| model | system | weights | network | GPUs | batch × micro-batches × processes | prompt / new tokens | "
             "per-GPU throughput, median [min–max] (tokens/s/GPU) | generate() latency (s) | per-token latency (s) |",
             "|---|---|---|---|---|---|---|---:|---:|---:|"]
    for s in summaries:
        r = s.first.row
        gpus = gpus_label(r)
        lines.append(f"| {r.model} | {r.system_info.label} | {r.weight_dtype or 'unknown'} | "
                     f"{r.network_text} | {gpus} | {r.batch_setting} | "
                     f"{r.prompt_length} / {r.new_tokens} | {fmt_spread(s.per_gpu, s.n)} | "
                     f"{fmt_spread(s.generate_latency, s.n)} | {fmt_spread(s.per_token_latency, s.n)} |")
    return "\n".join(lines) + "\n"


def at_paper_workload(summaries: list[Summary]) -> list[Summary]:
    return [s for s in summaries
            if s.first.row.prompt_length == PAPER_PROMPT_LENGTH and s.first.row.new_tokens == PAPER_NEW_TOKENS
            and s.per_gpu is not None]


def best_by(summaries: list[Summary]) -> dict[tuple[str, str, str], Summary]:
    """(model, system, profile) -> the configuration with the highest median per-GPU throughput
    (the paper reports each system at its best setting; every setting is in the tables below)."""
    best: dict[tuple[str, str, str], Summary] = {}
    for s in at_paper_workload(summaries):
        r = s.first.row
        # a one-GPU system's rows are one cell whatever profile they name
        profile = (r.network_profile or "none") if r.system_info.networked else ""
        key = (r.model or "unknown", r.system, profile)
        if key not in best or s.per_gpu[0] > best[key].per_gpu[0]:
            best[key] = s
    return best


def paper_anchors() -> list:
    """The paper's numbers the systems declare, in the registry's order (Table 17's last columns)."""
    return [a for system in registry.SYSTEMS.values() for a in system.anchors]


def md_paper_layout(summaries: list[Summary]) -> str:
    """Rows = models, columns = systems x network profiles, median per-GPU throughput at 512 / 32,
    ours beside the paper's (T4) numbers."""
    best = best_by(summaries)
    if not best:
        return f"No row at the paper's workload (prompt {PAPER_PROMPT_LENGTH}, {PAPER_NEW_TOKENS} new tokens).\n"
    firsts = {(system, profile): s.first.row for (_, system, profile), s in best.items()}
    columns = sorted(firsts, key=lambda c: column_order(firsts[c]))
    models = sorted({m for m, _, _ in best}, key=lambda m: list(MODELS).index(m) if m in MODELS else len(MODELS))
    header = ["model"] + [column_label(firsts[c]) for c in columns] + [a.label for a in paper_anchors()]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for model in models:
        cells = [model]
        for system, profile in columns:
            s = best.get((model, system, profile))
            if s is None:
                cells.append("–")
                continue
            r = s.first.row
            note = f"{r.batch_setting}" + (f", {r.weight_dtype}" if r.weight_dtype else "")
            if r.per_server:  # the divisor counted servers: no GPU to be per
                note += f", per server, {r.num_gpus} CPU servers (no GPU)"
            elif r.num_servers and r.num_gpus and r.num_servers > r.num_gpus:
                note += f", {r.num_servers} servers share {r.num_gpus} GPU{'s' if r.num_gpus > 1 else ''}"
            cells.append(f"{fmt_spread(s.per_gpu, s.n)}<br>{note}")
        anchor = PAPER_ANCHORS.get(model)
        cells += [fmt_number(anchor.value(a.key) if anchor else None, "–") for a in paper_anchors()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- the paper's claims ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    statement: str
    verdict: str  # "yes", "no", "no data"
    evidence: str


def _models(best: dict) -> list[str]:
    return sorted({m for m, _, _ in best}, key=lambda m: list(MODELS).index(m) if m in MODELS else len(MODELS))


def claim_flexgen_beats_petals(best: dict[tuple[str, str, str], Summary]) -> Claim:
    statement = "FlexGen beats Petals in per-GPU throughput at every network setting (§6.3, Table 17)"
    checks, evidence = [], []
    for model in _models(best):
        flex = best.get((model, FLEXGEN, ""))
        swarm = [s for (m, sys, _), s in best.items() if m == model and sys == PETALS]
        if flex is None or not swarm:
            continue
        for s in sorted(swarm, key=lambda s: s.first.row.network_order):
            ratio = flex.per_gpu[0] / s.per_gpu[0] if s.per_gpu[0] else float("inf")
            checks.append(ratio > 1)
            evidence.append(f"{model} {s.first.row.network_text}: FlexGen {fmt_number(flex.per_gpu[0])} vs Petals "
                            f"{fmt_number(s.per_gpu[0])} tokens/s/GPU (×{ratio:.2f})")
    if not checks:
        return Claim(statement, "no data", "needs FlexGen and Petals rows of one model at prompt 512 / 32")
    return Claim(statement, "yes" if all(checks) else "no", "; ".join(evidence))


def claim_petals_degrades(best: dict[tuple[str, str, str], Summary]) -> Claim:
    statement = "Petals' per-GPU throughput degrades as the network gets slower (more delay, less bandwidth)"
    checks, evidence = [], []
    for model in _models(best):
        swarm = sorted((s for (m, sys, _), s in best.items() if m == model and sys == PETALS),
                       key=lambda s: (s.first.row.network_order, -s.per_gpu[0]))
        if len(swarm) < 2:
            continue
        base = swarm[0]
        for s in swarm[1:]:
            checks.append(s.per_gpu[0] < base.per_gpu[0])
            evidence.append(f"{model}: {base.first.row.network_text} {fmt_number(base.per_gpu[0])} → "
                            f"{s.first.row.network_text} {fmt_number(s.per_gpu[0])} tokens/s/GPU")
    if not checks:
        return Claim(statement, "no data", "needs Petals rows of one model under at least two network profiles")
    return Claim(statement, "yes" if all(checks) else "no", "; ".join(evidence))


def crossover_tokens(a: Summary, b: Summary) -> float | None:
    """New tokens at which the full-latency lines of a and b cross (latency(t) = prefill + (t-1) x per-token),
    None if they are parallel or either lacks a per-token latency."""
    if a.prefill is None or b.prefill is None or a.per_token_latency is None or b.per_token_latency is None:
        return None
    slope = b.per_token_latency[0] - a.per_token_latency[0]
    if slope == 0:
        return None
    return 1 + (a.prefill - b.prefill) / slope


def claim_latency_crossover(best: dict[tuple[str, str, str], Summary]) -> Claim:
    statement = (f"With 100 ms delay the full-latency curves of FlexGen and Petals cross within "
                 f"{PAPER_NEW_TOKENS} generated tokens (§6.3's figure)")
    evidence, checks = [], []
    for model in _models(best):
        flex = best.get((model, FLEXGEN, ""))
        slow = [s for (m, sys, _), s in best.items() if m == model and sys == PETALS
                and s.first.row.network is not None and s.first.row.network.delay_ms >= 100]
        if flex is None or not slow:
            continue
        for s in slow:
            t = crossover_tokens(flex, s)
            if t is None:
                evidence.append(f"{model} {s.first.row.network_text}: no per-token latency to extrapolate")
                continue
            inside = 1 <= t <= PAPER_NEW_TOKENS
            checks.append(inside)
            evidence.append(f"{model} {s.first.row.network_text}: FlexGen prefill {fmt_number(flex.prefill)} s + "
                            f"{fmt_number(flex.per_token_latency[0])} s/token, Petals {fmt_number(s.prefill)} s + "
                            f"{fmt_number(s.per_token_latency[0])} s/token: lines cross at {t:.1f} tokens")
    if not checks:
        return Claim(statement, "no data", "; ".join(evidence) or "needs FlexGen rows and Petals rows under a 100 ms "
                     "profile of one model at prompt 512 / 32")
    return Claim(statement, "yes" if any(checks) else "no", "; ".join(evidence))


def check_claims(summaries: list[Summary]) -> list[Claim]:
    best = best_by(summaries)
    return [claim_flexgen_beats_petals(best), claim_petals_degrades(best), claim_latency_crossover(best)]


def md_claims(claims: list[Claim]) -> str:
    lines = ["| claim | holds in our runs? | our numbers (median per configuration, best setting per system) |",
             "|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.statement} | **{c.verdict}** | {c.evidence.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
