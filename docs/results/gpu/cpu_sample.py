"""CPU use of every process of a local swarm over a window, by role: which part burns the cores.

    python docs/results/gpu/cpu_sample.py WORKDIR/pids.json --seconds 10 > cpu.json

pids.json is written by ``bench_client.swarm.local`` (name -> PID of each process group leader:
dht, server-N, client). Every live member of those process groups and their descendants is
sampled twice, ``--seconds`` apart; the result is percent of one core per process and per role.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psutil

from bench_client.core import daemon


def members(pids: dict[str, int]) -> dict[int, str]:
    """Each process of the swarm, with the role whose group (or descendants) it belongs to."""
    found: dict[int, str] = {}
    for role, leader in pids.items():
        group = daemon.group_members(leader)
        for pid in group + daemon.descendants(group or [leader]):
            found.setdefault(pid, role)
    return found


def cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.NoSuchProcess:
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pids", type=Path)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    roles = members(json.loads(args.pids.read_text()))
    before = {pid: cpu_seconds(pid) for pid in roles}
    time.sleep(args.seconds)
    rows, per_role = [], {}
    for pid, role in roles.items():
        after = cpu_seconds(pid)
        if after is None or before[pid] is None:
            continue
        percent = 100 * (after - before[pid]) / args.seconds
        try:
            name = " ".join(psutil.Process(pid).cmdline())[:100]
        except psutil.NoSuchProcess:
            name = "?"
        rows.append({"pid": pid, "role": role, "cpu_percent": round(percent, 1), "cmd": name})
        per_role[role] = round(per_role.get(role, 0.0) + percent, 1)
    rows.sort(key=lambda row: -row["cpu_percent"])
    print(json.dumps({"seconds": args.seconds, "cores": psutil.cpu_count(), "load_avg": psutil.getloadavg(),
                      "total_percent": round(sum(per_role.values()), 1), "per_role": per_role, "processes": rows},
                     indent=1))


if __name__ == "__main__":
    main()
