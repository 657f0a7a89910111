"""Bring-up time of a whole swarm on one host, repeated: a DHT and N servers started by ``local_swarm``
(bench_client.swarm.local) until every block is served, then stopped, REPEATS times; medians printed.

    python tools/bench_bringup.py --model netbench/tiny --servers 4 --repeats 5 --output runs/bringup.jsonl
    python tools/bench_bringup.py --model facebook/opt-30b --servers 4 --device cuda --dtype float16 \
        --repeats 5 --output runs/bringup-opt30b.jsonl [--sequential]

Each repeat is one fresh ``python -m bench_client.swarm.local`` (the code on PYTHONPATH: point it at
another checkout to measure that one), so every import is paid as a user pays it. One JSON row per
repeat is appended to --output as soon as it is measured; a rerun with the same --output and
settings measures only the repeats still missing. Printed: medians (and min..max) of the seconds from
the start until the DHT wrote its address file, each server joined (wrote its own address file),
the last server joined, every block was served, and local_swarm's own wall time until then.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("model", "servers", "device", "dtype", "sequential", "local_args")


def settings_of(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in SETTINGS}


def read_rows(path: Path, settings: dict) -> list[dict]:
    """Rows of earlier runs with the same settings (a rerun resumes; other settings are kept, not counted)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row.get("settings") == settings]


def one_bringup(args: argparse.Namespace, workdir: Path) -> dict:
    """One local_swarm bring-up without a client: it exits once every block is served and the swarm stopped."""
    command = [sys.executable, "-m", "bench_client.swarm.local", "--model", args.model, "--servers", str(args.servers),
               "--device", args.device, "--dtype", args.dtype, "--workdir", str(workdir), "--timeout", str(args.timeout),
               *(["--sequential"] if args.sequential else []), *args.local_args]
    bringup = workdir / "bringup.json"
    started = time.monotonic()
    with open(workdir / "local_swarm.log", "wb") as log:
        # cwd: the repeat's folder, so that ``-m`` finds bench_client on PYTHONPATH, not in the caller's folder
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
        while process.poll() is None and not bringup.exists():
            time.sleep(0.05)
        wall = time.monotonic() - started  # until local_swarm wrote bringup.json: its own imports included
        code = process.wait(timeout=args.timeout + 120)  # it stops the swarm itself, by process group
    if code != 0 or not bringup.exists():
        tail = (workdir / "local_swarm.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"error: local_swarm exited {code} without a bring-up (logs in {workdir}):\n{tail}")
    row = json.loads(bringup.read_text())
    row["wall_seconds"] = round(wall, 2)
    joined = row.get("server_joined_seconds") or []
    row["last_joined_seconds"] = max(joined) if joined and None not in joined else None
    return row


def summary(rows: list[dict]) -> dict:
    """Median, min and max of every timing over the rows (each server's join time by its index)."""
    series: dict[str, list[float]] = {}
    for row in rows:
        for key in ("dht_seconds", "last_joined_seconds", "swarm_seconds", "wall_seconds"):
            if row.get(key) is not None:
                series.setdefault(key, []).append(row[key])
        for i, value in enumerate(row.get("server_joined_seconds") or []):
            if value is not None:
                series.setdefault(f"server-{i}_joined_seconds", []).append(value)
    return {key: {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values),
                  "n": len(values)} for key, values in series.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench_bringup.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="netbench/tiny")
    p.add_argument("--servers", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sequential", action="store_true", help="local_swarm --sequential: servers start once the DHT is up")
    p.add_argument("--timeout", type=float, default=600.0, help="one bring-up's timeout (seconds)")
    p.add_argument("--output", required=True, help="JSONL, one row per repeat, appended as measured")
    p.add_argument("--workdir", default=None, help="keep each repeat's logs here (default: a temporary folder)")
    p.add_argument("local_args", nargs="*", help="after --: more local_swarm arguments, e.g. -- --num-handlers 4")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.servers < 1:
        p.error("--repeats and --servers must be at least 1")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    rows = read_rows(output, settings)
    workroot = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-bringup-"))
    for repeat in range(len(rows), args.repeats):
        workdir = workroot / f"repeat-{repeat}"
        workdir.mkdir(parents=True, exist_ok=True)
        row = {"settings": settings, "repeat": repeat, **one_bringup(args, workdir)}
        with open(output, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"[{repeat + 1}/{args.repeats}] DHT {row['dht_seconds']} s, last server joined "
              f"{row['last_joined_seconds']} s, all blocks served {row['swarm_seconds']} s", file=sys.stderr, flush=True)
    result = {"settings": settings, "pythonpath": os.environ.get("PYTHONPATH", ""), "repeats": len(rows),
              "medians": summary(rows)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
