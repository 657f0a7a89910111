"""Benchmark (not a test): time of the bench_client role per profile, with the client session
(bench_client_session_enabled, the default) and without it (a one-shot client per profile, as before).

    .venv/bin/python tests/bench_client_session.py [--profiles N] [extra runner -e VARS as JSON]

Brings the local swarm up once (tags provision,swarm), then runs the bench and fetch tags twice, each
a fresh run id measuring N profiles: "none" and N-1 rate-only profiles (netbench_shaping true on paper:
the shaping tag does not run, the local inventory cannot shape), first one-shot, then with the session;
then the cleanup tag. Prints, per profile, the seconds from the role's first task to its last (the
runner's event log), and the client's own time in them (the wait for the sweep).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_client.orchestration.runner import PROJECT_DIR, run_experiment  # noqa: E402

FIRST, LAST = "Create the profile's results directory", "Remove the finished job's status file"


def per_profile(run_id: str) -> list[tuple[float, float]]:
    """(role seconds, wait seconds) per profile, in order, from the run's event log."""
    events = []
    for artifacts in sorted((PROJECT_DIR / ".cache" / "runner" / "artifacts").glob(f"{run_id}-*")):
        for path in (artifacts / "job_events").glob("*.json"):
            event = json.loads(path.read_text())
            data = event.get("event_data", {})
            if event.get("event") in ("runner_on_ok", "runner_on_failed") and data.get("role") == "bench_client":
                events.append((data["start"], data["end"], data["task"]))
    events.sort()
    rows, start, wait = [], None, 0.0
    for began, ended, task in events:
        if task == FIRST:
            start, wait = datetime.fromisoformat(began), 0.0
        elif task.startswith("Wait for the sweep"):
            wait = (datetime.fromisoformat(ended) - datetime.fromisoformat(began)).total_seconds()
        elif task == LAST and start is not None:
            rows.append(((datetime.fromisoformat(ended) - start).total_seconds(), wait))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", type=int, default=3)
    p.add_argument("extra", nargs="*", help="JSON objects of extra vars")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="netbench-session-bench-"))
    common = {"netbench_workdir": str(tmp / "work"), "results_dir": str(tmp / "results")}
    for extra in args.extra:
        common.update(json.loads(extra))
    profiles = ["none"] + [{"name": f"fast{i}", "rate": "100gbit"} for i in range(1, args.profiles)]
    try:
        up = run_experiment(extravars=common, tags="provision,swarm", out=io.StringIO())
        assert up.ok, up.failures
        for label, session in (("one-shot", False), ("session", True)):
            run = run_experiment(extravars={**common, "netbench_shaping": True, "netem_measurement": {}, "profiles": profiles,
                                            "bench_client_session_enabled": session}, tags="bench,fetch",
                                 out=io.StringIO())
            assert run.ok, run.failures
            for name, (role, wait) in zip([p if isinstance(p, str) else p["name"] for p in profiles],
                                          per_profile(run.run_id)):
                print(f"{label:9} {name:6} bench_client role {role:6.1f} s, of which the wait for the sweep {wait:6.1f} s",
                      flush=True)
    finally:
        run_experiment(extravars=common, tags="cleanup", out=io.StringIO())
    return 0


if __name__ == "__main__":
    sys.exit(main())
