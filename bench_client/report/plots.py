"""The paper's figure from our runs: per-GPU throughput and generate() latency vs generated tokens,
one curve per network profile, one PNG per (model, dtype, GPUs, batch setting, prompt length)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bench_client.report.reference import PAPER_ANCHORS  # noqa: E402
from bench_client.report.table import Derived, fmt_number, natural_key  # noqa: E402

DPI = 110
FIGSIZE = (13.0, 5.4)  # inches: 1430 x 594 pixels


@dataclass(frozen=True)
class Plot:
    filename: str
    title: str
    png: bytes


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
        label = profile if len(runs_per_profile[profile]) == 1 else f"{profile} (run {d.row.run_id})"
        curves.setdefault(label, []).append(d)
    for points in curves.values():
        points.sort(key=lambda d: d.row.new_tokens)
    return dict(sorted(curves.items(), key=lambda item: natural_key(item[0])))


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


def render_group(group: list[Derived]) -> bytes:
    first = group[0]
    per_gpu = all(d.per_gpu_throughput is not None for d in group)
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI)
    try:
        for label, points in _curves(group).items():
            # 0 new tokens: throughput is 0 by definition, not a measurement; its latency is the prefill
            tp = [
                (d.row.new_tokens, d.per_gpu_throughput if per_gpu else d.row.total_throughput)
                for d in points
                if d.row.new_tokens > 0
            ]
            lat = [(d.row.new_tokens, d.row.mean_generate_latency_s) for d in points]
            color = _plot_curve(ax_tp, tp, label)
            _plot_curve(ax_lat, lat, label, color)

        anchors = [d for d in group if d.paper_petals is not None]
        if per_gpu and anchors:
            x = anchors[0].row.new_tokens
            paper_gpus = PAPER_ANCHORS[first.row.model].paper_gpus
            ax_tp.scatter(
                [x],
                [anchors[0].paper_petals],
                marker="*",
                s=160,
                color="black",
                zorder=5,
                label=f"paper: Petals on {paper_gpus} × T4, per GPU",
            )
            ax_tp.scatter(
                [x],
                [anchors[0].paper_flexgen],
                marker="D",
                s=50,
                color="grey",
                zorder=5,
                label="paper: FlexGen on one T4",
            )

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
        for ax in (ax_tp, ax_lat):
            ax.set_xlabel("generated tokens per request")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            show_paper = ax is ax_tp and per_gpu and anchors
            ax.legend(title="network profile / paper" if show_paper else "network profile", fontsize="small")
        fig.suptitle(_title(first), fontsize="medium")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
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
        plots.append(Plot(filename=name, title=_title(group[0]).replace("\n", ", "), png=render_group(group)))
    return plots
