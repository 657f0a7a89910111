"""Compare the per-GPU throughput of one workload measured through site.yml and through local_swarm.

    python3 tools/gpu/compare_parity.py ANSIBLE.jsonl LOCAL_SWARM.jsonl --servers 4 --tolerance 0.05 [--out F.json]

Each file must hold ok rows of the same workload (batch, micro-batches, processes, prompt, new
tokens) written by the launcher its name says (the rows' "launcher" field), from one git commit,
and the site.yml rows must come from the expected number of servers. Prints one JSON summary and
exits 0 when the per-GPU throughputs are within the tolerance, 1 when not, 2 when the rows do not
allow the comparison (wrong launcher, other workload, missing rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench_client.core.results import read_metadata

WORKLOAD = ("model", "weight_dtype", "batch_size", "num_micro_batches", "num_processes", "prompt_length",
            "new_tokens", "num_gpus")


def ok_rows(path: Path, launcher: str) -> list[dict]:
    rows = [r for r in read_metadata(path) if r.get("status") == "ok"]
    if not rows:
        raise ValueError(f"{path}: no ok rows")
    launchers = {r.get("launcher") for r in rows}
    if launchers != {launcher}:
        raise ValueError(f"{path}: rows launched by {sorted(map(str, launchers))}, expected {launcher}")
    return rows


def workload(rows: list[dict], path: Path) -> dict:
    settings = {tuple(r.get(k) for k in WORKLOAD) for r in rows}
    if len(settings) != 1:
        raise ValueError(f"{path}: rows of {len(settings)} different workloads")
    return dict(zip(WORKLOAD, settings.pop()))


def compare(ansible: Path, local: Path, servers: int, tolerance: float) -> dict:
    a_rows, l_rows = ok_rows(ansible, "ansible"), ok_rows(local, "local_swarm")
    a_work, l_work = workload(a_rows, ansible), workload(l_rows, local)
    if a_work != l_work:
        raise ValueError(f"different workloads: site.yml {a_work}, local_swarm {l_work}")
    a_servers = {r.get("num_servers") for r in a_rows}
    if a_servers != {servers}:
        raise ValueError(f"site.yml ran {sorted(a_servers)} servers, expected {servers}")
    a_tput = statistics.median(r["per_gpu_throughput"] for r in a_rows)
    l_tput = statistics.median(r["per_gpu_throughput"] for r in l_rows)
    ratio = a_tput / l_tput if l_tput else float("inf")
    return {
        "workload": a_work, "servers": servers,
        "site_yml": {"per_gpu_throughput": a_tput, "prefill_time_s": statistics.median(r["prefill_time_s"] for r in a_rows),
                     "rows": len(a_rows), "git": a_rows[0].get("git")},
        "local_swarm": {"per_gpu_throughput": l_tput, "prefill_time_s": statistics.median(r["prefill_time_s"] for r in l_rows),
                        "rows": len(l_rows), "git": l_rows[0].get("git")},
        "ratio": round(ratio, 4), "tolerance": tolerance, "within_tolerance": abs(ratio - 1) <= tolerance,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ansible", type=Path)
    p.add_argument("local_swarm", type=Path)
    p.add_argument("--servers", type=int, required=True, help="servers site.yml must have run")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        summary = compare(args.ansible, args.local_swarm, args.servers, args.tolerance)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if summary["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
