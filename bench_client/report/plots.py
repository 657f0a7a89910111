"""The paper's figure from our runs: per-GPU throughput, generate() latency and decode per-token
latency vs generated tokens, one curve per network profile (human labels), one figure per (model,
dtype, GPUs, batch setting, prompt length); and the cross-model figure (ours vs the paper, per GPU
and as % of the roofline). Every figure as PNG and SVG."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bench_client.core.models import get_model  # noqa: E402
from bench_client.report.reference import PAPER_ANCHORS, roofline_tokens_per_s_per_gpu  # noqa: E402
from bench_client.report.summary import Summary, best_by, column_label, column_order, paper_anchors  # noqa: E402
from bench_client.report.table import Derived, fmt_number, natural_key  # noqa: E402

DPI = 110
FIGSIZE = (18.0, 5.4)  # inches: 1980 x 594 pixels
T4_GBPS = 320.0  # the paper's GPU, for the roofline of its numbers
PAPER_BATCH = 2  # sequences per Petals request in the paper's runs
PAPER_PETALS_DTYPE = "int8"  # the paper's Petals servers' weights


@dataclass(frozen=True)
class Plot:
    filename: str  # the PNG; the SVG beside it has the same stem
    title: str
    png: bytes
    svg: bytes = b""

    @property
    def svg_filename(self) -> str:
        return self.filename.rsplit(".", 1)[0] + ".svg"


def _save(fig) -> tuple[bytes, bytes]:
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png")
    fig.savefig(svg, format="svg", metadata={"Date": None})  # no timestamp: the same data gives the same file
    return png.getvalue(), svg.getvalue()


def _group_key(d: Derived) -> tuple:
    r = d.row
    return (
        r.model,
        r.per_server,
        r.weight_dtype,
        r.gpu_name,
        r.num_gpus,
        r.batch_size,
        r.num_micro_batches,
        r.num_processes,
        r.prompt_length,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


def _title(first: Derived) -> str:
    r = first.row
    if r.num_gpus == 0:
        where = "CPU servers"
    elif r.per_server:
        where = f"{r.num_gpus} CPU servers (no GPU)"
    else:
        count = "? (GPU count unknown)" if r.num_gpus is None else str(r.num_gpus)
        where = f"{count} × {r.gpu_name or 'unknown GPU'}"
        if r.num_servers and r.num_gpus and r.num_servers > r.num_gpus:
            # several servers on one GPU compete for its memory bandwidth: not the paper's one server per GPU
            where += f" — {r.num_servers} servers SHARE {'the GPU' if r.num_gpus == 1 else 'these GPUs'}"
    return (
        f"{r.model or 'unknown model'} ({r.weight_dtype or 'dtype unknown'}) on {where}\n"
        f"batch {r.batch_setting} (batch × micro-batches × processes), prompt {r.prompt_length} tokens"
    )


def _curves(group: list[Derived]) -> dict[str, list[Derived]]:
    """One curve per network profile; a profile measured in several runs gets one curve per run."""
    runs_per_profile: dict[str, set] = {}
    for d in group:
        runs_per_profile.setdefault(d.row.network_profile or "unknown", set()).add(d.row.run_id)
    curves: dict[str, list[Derived]] = {}
    for d in group:
        profile = d.row.network_profile or "unknown"
        human = d.row.network_text
        label = human if len(runs_per_profile[profile]) == 1 else f"{human} (run {d.row.run_id})"
        curves.setdefault(label, []).append(d)
    for points in curves.values():
        points.sort(key=lambda d: d.row.new_tokens)
    return dict(sorted(curves.items(), key=lambda item: (item[1][0].row.network_order, natural_key(item[0]))))


def _plot_curve(ax, points: list[tuple[int, float]], label: str, color: str | None = None) -> str:
    """A line through the mean at each token count, and a marker for every measurement (a sweep may
    measure a configuration twice, e.g. 32 new tokens in the prompt sweep and in the token sweep)."""
    by_x: dict[int, list[float]] = {}
    for x, y in points:
        by_x.setdefault(x, []).append(y)
    xs = sorted(by_x)
    (line,) = ax.plot(xs, [sum(by_x[x]) / len(by_x[x]) for x in xs], marker="o", markersize=4, label=label, color=color)
    repeated = [(x, y) for x in xs if len(by_x[x]) > 1 for y in by_x[x]]
    if repeated:
        ax.scatter([x for x, _ in repeated], [y for _, y in repeated], s=12, color=line.get_color(), alpha=0.6)
        ax.annotate(
            "small dots: repeated measurements; line: their mean",
            (0.99, 0.01),
            xycoords="axes fraction",
            ha="right",
            va="bottom",
            fontsize="x-small",
            color="dimgrey",
        )
    return line.get_color()


def render_group(group: list[Derived]) -> tuple[bytes, bytes]:
    first = group[0]
    per_gpu = all(d.per_gpu_throughput is not None for d in group)
    fig, (ax_tp, ax_lat, ax_tok) = plt.subplots(1, 3, figsize=FIGSIZE, dpi=DPI)
    try:
        for label, points in _curves(group).items():
            # 0 new tokens: throughput is 0 by definition, not a measurement; its latency is the prefill
            tp = [
                (d.row.new_tokens, d.per_gpu_throughput if per_gpu else d.row.total_throughput)
                for d in points
                if d.row.new_tokens > 0
            ]
            lat = [(d.row.new_tokens, d.row.mean_generate_latency_s) for d in points]
            tok = [(d.row.new_tokens, d.row.per_token_latency_s) for d in points
                   if d.row.per_token_latency_s is not None]
            color = _plot_curve(ax_tp, tp, label)
            _plot_curve(ax_lat, lat, label, color)
            if tok:
                _plot_curve(ax_tok, tok, label, color)

        anchors = [d for d in group if d.paper_petals is not None]
        if per_gpu and anchors:
            x = anchors[0].row.new_tokens
            paper_gpus = PAPER_ANCHORS[first.row.model].paper_gpus
            for value, marker, size, color, label in (
                    (anchors[0].paper_petals, "*", 160, "black", f"paper: Petals on {paper_gpus} × T4, per GPU"),
                    (anchors[0].paper_flexgen, "D", 50, "grey", "paper: FlexGen on one T4")):
                ax_tp.scatter([x], [value], marker=marker, s=size, color=color, zorder=5, label=label)

        rooflines = {d.roofline for d in group if d.roofline is not None}
        roofline_note = (
            f"\nHBM roofline: {fmt_number(max(rooflines))} tokens/s/GPU ({first.gpu_family})"
            if per_gpu and rooflines
            else ""
        )
        if per_gpu and first.row.per_server:
            ax_tp.set_title("Per-server throughput (servers without GPU)")
            ax_tp.set_ylabel("throughput per server (tokens/s/server)")
        elif per_gpu:
            ax_tp.set_title(f"Per-GPU throughput{roofline_note}")
            ax_tp.set_ylabel("throughput per GPU (tokens/s/GPU)")
        else:
            why = "CPU servers" if first.row.num_gpus == 0 else "GPU count unknown"
            ax_tp.set_title(f"Swarm throughput (not per GPU: {why})")
            ax_tp.set_ylabel("swarm throughput (tokens/s)")
        ax_lat.set_title("Latency of one generate() call\n(prefill + all new tokens)")
        ax_lat.set_ylabel("mean generate() latency (s)")
        ax_tok.set_title("Decode latency per token\n(time between new tokens after the first)")
        ax_tok.set_ylabel("per-token latency (s/token)")
        if not ax_tok.lines:
            ax_tok.text(0.5, 0.5, "no per-token latency recorded\n(results without JSONL metadata)",
                        ha="center", va="center", transform=ax_tok.transAxes, color="dimgrey")
        for ax in (ax_tp, ax_lat, ax_tok):
            ax.set_xlabel("generated tokens per request")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            show_paper = ax is ax_tp and per_gpu and anchors
            if ax.lines:
                ax.legend(title="network (delay / rate) / paper" if show_paper else "network (delay / rate)",
                          fontsize="small")
        fig.suptitle(_title(first), fontsize="medium")
        fig.tight_layout()
        return _save(fig)
    finally:
        plt.close(fig)


def render_plots(derived: list[Derived]) -> list[Plot]:
    """A figure for every group with at least two generated-token counts (a token sweep)."""
    groups: dict[tuple, list[Derived]] = {}
    for d in derived:
        groups.setdefault(_group_key(d), []).append(d)
    plots: list[Plot] = []
    used: set[str] = set()
    for group in groups.values():
        if len({d.row.new_tokens for d in group}) < 2:
            continue
        r = group[0].row
        gpus = (
            "cpu"
            if r.num_gpus == 0
            else (
                f"{r.num_gpus}cpu-servers"
                if r.per_server
                else f"{r.num_gpus if r.num_gpus is not None else 'unknown'}gpu"
            )
        )
        base = _slug(f"{r.model}_{r.weight_dtype}_{gpus}_b{r.batch_setting}_prompt{r.prompt_length}")
        name, n = f"tokens_{base}.png", 2
        while name in used:
            name, n = f"tokens_{base}_{n}.png", n + 1
        used.add(name)
        png, svg = render_group(group)
        plots.append(Plot(filename=name, title=_title(group[0]).replace("\n", ", "), png=png, svg=svg))
    return plots


def _paper_roofline_fraction(model: str) -> float | None:
    """The paper's Petals per-GPU number as a fraction of a T4's roofline (INT8 weights, batch 2)."""
    anchor = PAPER_ANCHORS.get(model)
    if anchor is None:
        return None
    return anchor.petals_per_gpu / roofline_tokens_per_s_per_gpu(get_model(model), PAPER_PETALS_DTYPE, PAPER_BATCH,
                                                                 T4_GBPS)


def render_models(summaries: list[Summary]) -> Plot | None:
    """Ours vs the paper across models at the paper's workload: per-GPU throughput (median, min-max
    bars) and the fraction of the HBM roofline; None without rows at 512 / 32."""
    best = best_by(summaries)
    if not best:
        return None
    models = sorted({m for m, _, _ in best}, key=lambda m: [*PAPER_ANCHORS, m].index(m))
    firsts = {(system, profile): s.first.row for (_, system, profile), s in best.items()}
    series = sorted(firsts, key=lambda c: column_order(firsts[c]))
    gpus = sorted({s.first.row.gpu_name for s in best.values() if s.first.row.gpu_name})
    ours = ", ".join(gpus) or "our GPUs"
    paper = [(a.label, lambda anchor, key=a.key: anchor.value(key)) for a in paper_anchors()]
    fig, (ax_tp, ax_roof) = plt.subplots(1, 2, figsize=(15.0, 5.8), dpi=DPI)
    try:
        width = 0.8 / (len(series) + len(paper))
        for i, (system, profile) in enumerate(series):
            label = f"ours: {column_label(firsts[(system, profile)])}"
            xs, ys, lows, highs, fracs = [], [], [], [], []
            for j, model in enumerate(models):
                s = best.get((model, system, profile))
                if s is None:
                    continue
                mid, low, high = s.per_gpu
                xs.append(j + i * width)
                ys.append(mid)
                lows.append(mid - low)
                highs.append(high - mid)
                fracs.append(100 * s.roofline_fraction if s.roofline_fraction is not None else float("nan"))
            bars = ax_tp.bar(xs, ys, width, yerr=[lows, highs], capsize=3, label=label)
            ax_roof.bar(xs, fracs, width, color=bars.patches[0].get_facecolor() if bars.patches else None, label=label)
        for k, (label, value) in enumerate(paper):
            xs = [j + (len(series) + k) * width for j, m in enumerate(models) if m in PAPER_ANCHORS]
            ys = [value(PAPER_ANCHORS[m]) for m in models if m in PAPER_ANCHORS]
            ax_tp.bar(xs, ys, width, hatch="//", edgecolor="black", color="lightgrey" if k else "white", label=label)
        fracs = [(j + len(series) * width, _paper_roofline_fraction(m)) for j, m in enumerate(models)]
        fracs = [(x, 100 * f) for x, f in fracs if f is not None]
        if fracs:
            ax_roof.bar([x for x, _ in fracs], [f for _, f in fracs], width, hatch="//", edgecolor="black",
                        color="white", label="paper Petals (T4, INT8, batch 2)")
        centers = [j + (len(series) + len(paper) - 1) * width / 2 for j in range(len(models))]
        for ax in (ax_tp, ax_roof):
            ax.set_xticks(centers, [m.split("/")[-1].upper() for m in models])
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize="x-small")
        ax_tp.set_yscale("log")
        ax_tp.set_ylabel("throughput per GPU (tokens/s/GPU), log scale")
        ax_tp.set_title("Per-GPU throughput: median, bars min–max over repeats")
        ax_roof.set_ylabel("% of the HBM roofline (batch × bandwidth / model bytes)")
        ax_roof.set_title("Fraction of the memory-bandwidth roofline")
        title = (f"Across models, prompt 512 / 32 new tokens: ours ({ours}) vs the paper (T4); "
                 "each system at its best measured setting")
        fig.suptitle(title, fontsize="medium")
        fig.tight_layout()
        png, svg = _save(fig)
    finally:
        plt.close(fig)
    return Plot(filename="models_per_gpu.png", title=title, png=png, svg=svg)
