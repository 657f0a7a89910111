"""``python -m bench_client.report RESULTS... [--out DIR]``: Table 17 and the paper's figure from our runs.

Reads the original 7-column TSVs (and the JSONL metadata beside each), then writes into DIR:
``table17.md`` (the paper's layout, claims checked, medians over repeats, every row, notes, failed
configurations, plots), ``table17.csv`` (the rows at the table's new-token count), ``rows.csv``
(every row, token sweeps included), ``tokens_*.png|svg`` and ``models_per_gpu.png|svg``.
``--compare RUN_A RUN_B`` compares two runs instead (report_compare).
All input is checked and every output rendered in memory first: bad input gets a one-line error
naming the file and line, exit status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench_client.core.models import WEIGHT_DTYPES, UnknownModelError, get_model
from bench_client.core.arguments import non_negative_int
from bench_client.orchestration import timeline
from bench_client.report.data import Defaults, ReportInputError, Results, load_results
from bench_client.report.reference import PAPER_NEW_TOKENS, PAPER_PROMPT_LENGTH

EXIT_BAD_INPUT = 2


def _model_name(text: str) -> str:
    try:
        return get_model(text).name
    except UnknownModelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench_client.report",
        description="Table 17 (markdown + CSV) and throughput/latency-vs-tokens plots from benchmark results.",
    )
    parser.add_argument("results", nargs="*", type=Path, help="result directories (searched for *.tsv) or TSV files")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("RUN_A", "RUN_B"),
        help="compare two run directories (results/<run-id>): per-configuration deltas and manifest differences",
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default: RESULTS/report when RESULTS is one directory)"
    )
    parser.add_argument(
        "--table-new-tokens",
        type=non_negative_int,
        help=f"rows with this many new tokens form the table (default: the paper's {PAPER_NEW_TOKENS} where measured, "
        "else the largest count measured)",
    )
    parser.add_argument(
        "--metadata", type=Path, help="JSONL of the one TSV given, where it is not beside it (the client's --metadata)"
    )
    fill = parser.add_argument_group("for results without JSONL metadata (or metadata lacking the value)")
    fill.add_argument(
        "--num-gpus", type=non_negative_int, help="GPUs that served the model (per-GPU throughput divides by it)"
    )
    fill.add_argument(
        "--gpu", dest="gpu_name", help="GPU name, e.g. 'Tesla T4' or 'NVIDIA H100 80GB HBM3' (for the roofline)"
    )
    fill.add_argument(
        "--model",
        type=_model_name,
        help="model name or DHT prefix, e.g. facebook/opt-30b (for anchors and the roofline)",
    )
    fill.add_argument(
        "--weight-dtype", choices=list(WEIGHT_DTYPES), help="weight dtype of the servers (for the roofline)"
    )
    fill.add_argument("--network-profile", help="network profile name of those results")
    return parser


def table_token_count(results: Results, requested: int | None) -> tuple[int, str]:
    """The new-token count of the table's rows: the one asked for, else the paper's 32 where measured,
    else the largest measured (a short CPU test run), saying which."""
    if requested is not None:
        return requested, f"Rows with {requested} new tokens (--table-new-tokens)"
    counts = {r.new_tokens for r in results.rows}
    if PAPER_NEW_TOKENS in counts:
        return PAPER_NEW_TOKENS, f"Rows with {PAPER_NEW_TOKENS} new tokens, the paper's"
    largest = max(counts)
    return largest, f"Rows with {largest} new tokens, the most measured (no result has the paper's {PAPER_NEW_TOKENS})"


def run_timelines(paths: list[Path]) -> list[tuple[str, dict]]:
    """(run directory, its last invocation's summary) for each RESULTS directory with a timeline.jsonl."""
    found = []
    for path in paths:
        summary = timeline.last_summary(path / timeline.TIMELINE_NAME) if path.is_dir() else None
        if summary is not None:
            found.append((path.name, summary))
    return found


def md_timelines(timelines: list[tuple[str, dict]]) -> str:
    md = ["\n## Where the run's time went\n\nPhases of the last `ansible-playbook site.yml` of the run "
          "(`timeline.jsonl`); the duty ratio is the time the client measured over the wall time.\n"]
    md.extend(f"\n### {name}\n\n```\n{timeline.format_summary(summary)}\n```\n" for name, summary in timelines)
    return "".join(md)


def render(results: Results, requested_new_tokens: int | None,
           timelines: list[tuple[str, dict]] = ()) -> dict[str, bytes]:
    """Every output file, by name, in memory."""
    # imported here so that bad input is reported without paying for matplotlib's import
    from bench_client.report.plots import render_models, render_plots
    from bench_client.report.summary import check_claims, md_claims, md_paper_layout, md_summary, summarize
    from bench_client.report.table import NOTES, derive_all, md_failed, md_table, to_csv

    derived = derive_all(results.rows)
    table_new_tokens, which_rows = table_token_count(results, requested_new_tokens)
    table = [d for d in derived if d.row.new_tokens == table_new_tokens]
    plots = render_plots(derived)
    with_run = len({d.row.run_id for d in table}) > 1

    md = [
        f"# Table 17 from our runs (prompt {PAPER_PROMPT_LENGTH} / {PAPER_NEW_TOKENS} new tokens is the paper's workload)\n\n"
    ]
    summaries = summarize(derived)
    md.append(
        f"## As the paper lays it out: per-GPU throughput (tokens/s/GPU), prompt {PAPER_PROMPT_LENGTH} / "
        f"{PAPER_NEW_TOKENS} new tokens\n\nMedian [min–max] over repeats (n), each system at its best measured "
        "setting (named under the number); FlexGen runs on one GPU without a network.\n\n"
    )
    md.append(md_paper_layout(summaries))
    models_plot = render_models(summaries)
    if models_plot:
        md.append(f"\n![{models_plot.title}]({models_plot.filename}) (also [SVG]({models_plot.svg_filename}))\n")
    md.append("\n## Claims checked\n\n" + md_claims(check_claims(summaries)))
    table_summaries = [s for s in summaries if s.first.row.new_tokens == table_new_tokens]
    md.append(f"\n## Median and spread over repeats\n\n{which_rows}.\n\n")
    md.append(md_summary(table_summaries) if table_summaries else "No rows.\n")
    md.append(f"\n## Every measurement\n\n{which_rows}; every row (token sweeps too) is in `rows.csv`.\n\n")
    md.append(
        md_table(table, with_run) if table else f"No result has {table_new_tokens} new tokens (see `rows.csv`).\n"
    )
    md.append("\n" + NOTES)
    if results.failed:
        md.append(f"\n## Failed configurations ({len(results.failed)})\n\n" + md_failed(results.failed))
    md.append("\n## Throughput and latency vs generated tokens\n")
    if plots:
        md.extend(f"\n### {plot.title}\n\n![{plot.title}]({plot.filename}) (also [SVG]({plot.svg_filename}))\n"
                  for plot in plots)
    else:
        md.append("\nNo token sweep in these results (every configuration has one new-token count): no plots.\n")
    if timelines:
        md.append(md_timelines(list(timelines)))
    if results.warnings:
        md.append("\n## Input notes\n\n" + "".join(f"- {w}\n" for w in results.warnings))

    files = {
        "table17.md": "".join(md).encode(),
        "table17.csv": to_csv(table).encode(),
        "rows.csv": to_csv(derived).encode(),
    }
    for plot in plots + ([models_plot] if models_plot else []):
        files[plot.filename] = plot.png
        files[plot.svg_filename] = plot.svg
    return files


# every plot's name (report_plots): older ones that this run did not make are stale
PLOT_GLOBS = ("tokens_*.png", "tokens_*.svg", "models_*.png", "models_*.svg")


def write_outputs(out: Path, files: dict[str, bytes]) -> None:
    """Write into a sibling temporary directory, then move each file into place (os.replace is atomic).
    Plots of an earlier report in ``out`` that this one does not make are removed (the md links to
    this run's only); other files there (results, notes) are left alone."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        out.mkdir(exist_ok=True)
        for name in files:
            os.replace(staging / name, out / name)
        for stale in (p for pattern in PLOT_GLOBS for p in out.glob(pattern)):
            if stale.name not in files:
                stale.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def compare_main(args: argparse.Namespace) -> int:
    """--compare: markdown on stdout, and compare.md in --out when given."""
    from bench_client.report.compare import compare

    if args.results:
        print("report: error: --compare takes the two run directories only, no RESULTS", file=sys.stderr)
        return EXIT_BAD_INPUT
    for run in args.compare:
        if not run.is_dir():
            print(f"report: error: {run}: not a run directory", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        text = compare(*args.compare, Defaults(model=args.model, num_gpus=args.num_gpus, gpu_name=args.gpu_name,
                                               weight_dtype=args.weight_dtype, network_profile=args.network_profile))
    except (ReportInputError, ValueError, OSError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.out:
        write_outputs(args.out, {"compare.md": text.encode()})
    print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        return compare_main(args)
    if not args.results:
        parser.error("give RESULTS, or --compare RUN_A RUN_B")
    out = args.out
    if out is None:
        if len(args.results) != 1 or not args.results[0].is_dir():
            parser.error("--out is required unless RESULTS is a single directory")
        out = args.results[0] / "report"
    if out.exists() and not out.is_dir():
        print(f"report: error: {out}: --out exists and is not a directory", file=sys.stderr)
        return EXIT_BAD_INPUT
    defaults = Defaults(
        model=args.model,
        num_gpus=args.num_gpus,
        gpu_name=args.gpu_name,
        weight_dtype=args.weight_dtype,
        network_profile=args.network_profile,
    )
    try:
        results = load_results(args.results, defaults, args.metadata)
    except (ReportInputError, OSError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in results.warnings:
        print(f"report: note: {warning}", file=sys.stderr)
    files = render(results, args.table_new_tokens, run_timelines(args.results))
    write_outputs(out, files)
    print(
        f"report: {len(results.rows)} rows ({len(results.failed)} failed configurations) -> {out}: "
        + ", ".join(sorted(files))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
