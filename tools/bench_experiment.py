"""Benchmark (not a test): where the wall time of `ansible-playbook site.yml` goes, phase by phase,
and its duty ratio (the time the benchmark client measured over the whole run's wall time).

    .venv/bin/python tools/bench_experiment.py [--runs N] [-e KEY=VALUE ...]        # local inventory, tiny model
    sudo .venv/bin/python tools/bench_experiment.py --emulated [-p none,paper-10ms-1gbit] [--hosts 3]

Each run is the plain command line (the netbench_timeline callback of ansible.cfg writes the
timeline), in fresh work and results directories, followed by the cleanup tag. --emulated runs it
in the emulated multi-host lab (bench_client.netem.lab: network namespaces with their own sshd,
needs root) instead of on this machine. Prints each run's breakdown (results/<run_id>/timeline.jsonl)
and, with several runs, the median seconds per phase and the median duty ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench_client.orchestration import timeline  # noqa: E402
from bench_client.netem.lab import controller_netns  # noqa: E402  (NETBENCH_LAB_PREFIX picks another lab)
from bench_client.orchestration.runner import new_run_id  # noqa: E402


@contextmanager
def inventory(args: argparse.Namespace, tmp: Path) -> Iterator[tuple[str, list[str]]]:
    """The inventory to run against and the command prefix that reaches it (the lab's namespace)."""
    if not args.emulated:
        yield str(PROJECT / "inventory" / "local" / "hosts.yml"), []
        return
    if os.geteuid() != 0:
        raise SystemExit("--emulated needs root (network namespaces, qdiscs): run it with sudo")
    lab = tmp / "lab"
    lab_cmd = [sys.executable, "-m", "bench_client.netem.lab"]
    subprocess.run([*lab_cmd, "up", "--dir", str(lab), "--hosts", str(args.hosts)], cwd=PROJECT, check=True)
    try:
        yield str(lab / "hosts.yml"), ["ip", "netns", "exec", controller_netns()]
    finally:
        subprocess.run([*lab_cmd, "down", "--dir", str(lab)], cwd=PROJECT, check=False)


def playbook(prefix: list[str], inv: str, extra: list[str], tags: str | None = None) -> int:
    """Run site.yml; its output is shown only when it fails (the breakdown is read from the timeline)."""
    argv = [*prefix, str(Path(sys.executable).parent / "ansible-playbook"), "-i", inv, "site.yml"]
    for item in extra:
        argv += ["-e", item]
    if tags:
        argv += ["--tags", tags]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(argv, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        print("\n".join(done.stdout.splitlines()[-30:]), file=sys.stderr)
    return done.returncode


def one_run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="netbench-bench-") as name:
        tmp = Path(name)
        run_id = new_run_id()
        extra = [f"netbench_workdir={tmp / 'work'}", f"results_dir={tmp / 'results'}", *args.extra]
        if args.profiles:
            extra.append(f"profiles={args.profiles}")
        with inventory(args, tmp) as (inv, prefix):
            started = time.monotonic()
            rc = playbook(prefix, inv, [*extra, f"run_id={run_id}"])
            wall = time.monotonic() - started
            cleanup = playbook(prefix, inv, extra, tags="cleanup")
        summary = timeline.last_summary(tmp / "results" / run_id / timeline.TIMELINE_NAME)
    if rc != 0 or cleanup != 0 or summary is None:
        raise SystemExit(f"run failed: rc {rc}, cleanup rc {cleanup}, timeline {'found' if summary else 'missing'}")
    return {"summary": summary, "outer_wall": wall}


def medians(summaries: list[dict]) -> str:
    """Median seconds per phase, wall time and duty ratio over several runs' summaries."""
    phases = sorted({p for s in summaries for p, _ in s["phases"]}, key=timeline.PHASES.index)
    lines = [f"median over {len(summaries)} runs:"]
    lines += [f"  {phase:<16} {statistics.median(dict(s['phases']).get(phase, 0.0) for s in summaries):9.1f} s"
              for phase in phases]
    lines.append(f"  wall {statistics.median(s['wall_s'] for s in summaries):.1f} s, duty ratio "
                 f"{100 * statistics.median(s['duty_ratio'] for s in summaries):.1f} %")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--emulated", action="store_true", help="the emulated multi-host lab (root)")
    parser.add_argument("--hosts", type=int, default=3, help="lab hosts with --emulated (the first: DHT + client)")
    parser.add_argument("-p", "--profiles", default=None, help="network profiles, comma-separated (default: none)")
    parser.add_argument("-e", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    summaries = []
    for i in range(args.runs):
        run = one_run(args)
        summaries.append(run["summary"])
        print(f"run {i + 1}/{args.runs} ({'emulated lab' if args.emulated else 'local inventory'}), "
              f"ansible-playbook {run['outer_wall']:.1f} s from outside:")
        print(timeline.format_summary(run["summary"]), flush=True)
    if len(summaries) > 1:
        print(medians(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
