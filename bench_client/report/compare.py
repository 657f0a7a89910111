"""``python -m bench_client.report --compare RUN_A RUN_B``: what changed between two runs.

Every configuration measured in both (same model, system, dtype, network profile, GPUs, batch
setting and workload) with its median per-GPU throughput in each run and the delta, then the
configurations only one run has, then what differs in their manifests (git commit, versions,
extra vars, plan, hosts) where both have results/<run-id>/manifest.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench_client.orchestration.manifest import differences, read_manifest
from bench_client.report.data import Defaults, load_results
from bench_client.report.summary import Summary, config_key, fmt_spread, summarize
from bench_client.report.table import derive_all, fmt_number


def _by_config(run: Path, defaults: Defaults) -> tuple[dict[tuple, Summary], list[str]]:
    results = load_results([run], defaults)
    return {config_key(s.first): s for s in summarize(derive_all(results.rows))}, results.warnings


def _describe(s: Summary) -> str:
    r = s.first.row
    return (f"{r.model} | {r.system_info.label} | {r.weight_dtype or '?'} | {r.network_text} | "
            f"{r.batch_setting} | {r.prompt_length} / {r.new_tokens}")


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return (text if len(text) <= 80 else text[:77] + "...").replace("|", "/")


def compare(run_a: Path, run_b: Path, defaults: Defaults = Defaults()) -> str:
    a, _ = _by_config(run_a, defaults)
    b, _ = _by_config(run_b, defaults)
    md = [f"# {run_b.name} compared with {run_a.name}\n\n",
          "Median per-GPU throughput (tokens/s/GPU) [min–max] (n) in each run; delta = B - A.\n\n",
          "| model | system | weights | network | batch | prompt / new tokens | A | B | delta | delta % |\n",
          "|---|---|---|---|---|---|---:|---:|---:|---:|\n"]
    common = [k for k in a if k in b]
    for key in common:
        sa, sb = a[key], b[key]
        if sa.per_gpu is None or sb.per_gpu is None:
            delta = pct = "n/a"
        else:
            diff = sb.per_gpu[0] - sa.per_gpu[0]
            delta = f"{diff:+.3g}"
            pct = f"{100 * diff / sa.per_gpu[0]:+.1f} %" if sa.per_gpu[0] else "n/a"
        md.append(f"| {_describe(sa)} | {fmt_spread(sa.per_gpu, sa.n)} | {fmt_spread(sb.per_gpu, sb.n)} | "
                  f"{delta} | {pct} |\n")
    if not common:
        md.append("\nNo configuration was measured in both runs.\n")
    for name, only in ((run_a.name, [a[k] for k in a if k not in b]), (run_b.name, [b[k] for k in b if k not in a])):
        if only:
            md.append(f"\nOnly in {name}: " + "; ".join(f"{_describe(s)} ({fmt_number(s.per_gpu[0] if s.per_gpu else None)})"
                                                        for s in only).replace(" | ", ", ") + "\n")
    ma, mb = read_manifest(run_a), read_manifest(run_b)
    if ma is None or mb is None:
        missing = ", ".join(str(r) for r, m in ((run_a, ma), (run_b, mb)) if m is None)
        md.append(f"\nNo manifest.json in {missing}: the runs' settings cannot be compared.\n")
    else:
        diffs = differences(ma, mb)
        md.append("\n## Manifest differences\n\n")
        if diffs:
            md.append("| setting | A | B |\n|---|---|---|\n")
            md.extend(f"| {k} | {_short(va)} | {_short(vb)} |\n" for k, va, vb in diffs)
        else:
            md.append("Same commit, versions, extra vars, plan and hosts.\n")
    return "".join(md)
