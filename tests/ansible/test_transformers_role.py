"""The transformers system through site.yml on the local inventory: -e systems=petals,transformers
--tags transformers runs the pre-flight and the one-host systems' play alone (no swarm), the model on
this machine's CPU (the tiny model, really run), the rows fetched to results/<run_id>/transformers/;
`--tags cleanup` then stops whatever of it still runs (its pidfile is in run/, which cleanup's one
daemon stop per host covers: playbooks/tasks/stop_processes.yml)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bench_client.core.daemon import Record, is_running
from bench_client.orchestration.runner import run_experiment

pytestmark = pytest.mark.slow


def test_site_runs_transformers_alone_and_cleanup_stops_it(tmp_path: Path):
    common = {"netbench_workdir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results"),
              "systems": "petals,transformers", "transformers_bench_batch_sizes": [2], "repeats": 1}
    out = io.StringIO()
    run = run_experiment(extravars=common, tags="transformers", out=out)
    assert run.ok, out.getvalue()[-5000:]
    fetched = tmp_path / "results" / run.run_id / "transformers"
    rows = [line.split("\t") for line in (fetched / "out.tsv").read_text().splitlines()]
    assert [r[:5] for r in rows] == [["2", "1", "1", "16", "4"], ["2", "1", "1", "32", "4"]]
    meta = [json.loads(line) for line in (fetched / "out.jsonl").read_text().splitlines()]
    assert {(m["system"], m["run_id"], m["model"], m["status"]) for m in meta} == {
        ("transformers", run.run_id, "netbench/tiny", "ok")}
    assert not (tmp_path / "work" / "run" / "initial_peers").exists()  # no swarm was started for it

    cleanup = io.StringIO()
    stopped = run_experiment(extravars=common, tags="cleanup", out=cleanup)
    assert stopped.ok, cleanup.getvalue()[-5000:]
    assert "Find this host's pidfiles and address files" in cleanup.getvalue()
    pidfile = tmp_path / "work" / "run" / "transformers.pid"
    record = Record.load(pidfile) if pidfile.exists() else None
    assert record is None or not is_running(record)
