"""Benchmark (not a test): wall time of `ansible-playbook site.yml` on the local default inventory,
end to end, and how much of it is Ansible's own overhead.

    .venv/bin/python tests/bench_site_local.py [--runs N] [extra runner -e VARS ...]

Runs the whole experiment through the runner (fresh work and results directories), then the cleanup
tag, and splits the wall time into the experiment's own work (the benchmark client, starting the DHT
and the servers, waiting until every block is served) and the rest: Ansible's overhead (process
start-up, module transfer and execution, fact handling, fetch). Targets on the 2-core machine:
whole run < 5 min, overhead < 1/4 of it.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_client.orchestration.runner import run_experiment  # noqa: E402

# Tasks whose time is the experiment's own work, not Ansible's (matched against "role : task").
WORK_TASKS = {
    "petals_dht : Start the DHT in its own session": "DHT start-up",
    "petals_server : Start the servers in their own sessions": "server launch",
    "petals_server : Wait until every block of the model is served": "swarm wait (servers loading)",
    "bench_client : Run the benchmark sweep": "benchmark client",
}


def classify(label: str) -> str | None:
    for prefix, name in WORK_TASKS.items():
        if label.startswith(prefix):
            return name
    return None


def one_run(extravars: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="netbench-bench-") as tmp:
        common = {**extravars, "netbench_workdir": f"{tmp}/work", "results_dir": f"{tmp}/results"}
        started = time.monotonic()
        result = run_experiment(extravars=common, out=io.StringIO())
        wall = time.monotonic() - started
        cleanup = run_experiment(extravars=common, tags="cleanup", out=io.StringIO())
        if not result.ok or not cleanup.ok:
            raise SystemExit(f"run failed: {[str(f) for f in result.failures + cleanup.failures]}")
        work: dict[str, float] = {}
        for timing in result.timings:
            label = f"{timing.role} : {timing.task}" if timing.role else timing.task
            name = classify(label)
            if name:
                work[name] = work.get(name, 0.0) + timing.duration_s
        tasks = len([t for t in result.timings if t.status != "skipped"])
        return {"wall": wall, "work": work, "tasks": tasks, "cleanup": cleanup.wall_time_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("-e", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extravars = dict(item.split("=", 1) for item in args.e)
    for i in range(args.runs):
        r = one_run(extravars)
        work = sum(r["work"].values())
        overhead = r["wall"] - work
        print(f"run {i + 1}: site.yml end to end {r['wall']:.1f} s ({r['tasks']} task results), "
              f"cleanup {r['cleanup']:.1f} s")
        for name, seconds in r["work"].items():
            print(f"  {name:<30} {seconds:6.1f} s")
        print(f"  {'experiment work':<30} {work:6.1f} s")
        print(f"  {'Ansible overhead':<30} {overhead:6.1f} s = {overhead / r['wall']:.0%} of the wall time "
              f"(target < 25%); whole run target < 300 s: {'met' if r['wall'] < 300 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
