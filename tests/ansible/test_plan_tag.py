"""`ansible-playbook site.yml --tags plan` on the local inventory: the pre-flight prints the plan and its
estimate (here from an earlier run's timeline) and changes nothing: no work directory, no process, not
a byte under the results directory; `-e resume=true` plans the latest unfinished run's id. One run of
the pre-flight alone (~5 s); the estimate's arithmetic is tests/unit/test_runs.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench_client.orchestration import runs, timeline

ROOT = Path(__file__).resolve().parents[2]
EARLIER = "20261201T000000Z-0001"  # finished: its timeline is the estimate's history
UNFINISHED = "20261201T010000Z-0002"  # failed half-way: what resume=true means


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def write_earlier_runs(results: Path) -> None:
    """Two runs of the local default (netbench/tiny, profile none, 2 configurations per profile)."""
    plan = {"model": "netbench/tiny", "dtype": "float32", "run_id": EARLIER, "profiles": [{"name": "none"}],
            "workload": {"prompt_lengths": [16, 32], "new_tokens": 4, "token_sweep": "none"}}
    for run_id, rows, outcome, start in ((EARLIER, 2, runs.SUCCESSFUL, 1000.0), (UNFINISHED, 1, runs.FAILED, 5000.0)):
        run_dir = results / run_id
        (run_dir / "none").mkdir(parents=True)
        (run_dir / "manifest.json").write_text(json.dumps({"run_id": run_id, "plan": {**plan, "run_id": run_id}}))
        # the client's rows: 1 s of measurement each, finished within the invocation
        (run_dir / "none" / "out.tsv").write_text("".join(f"1\t2\t2\t{16 * (i + 1)}\t4\t10.0\t1.0\n" for i in range(rows)))
        (run_dir / "none" / "out.jsonl").write_text("".join(json.dumps(
            {"status": "ok", "wall_time_s": 1.0, "finished_at": runs.iso(start + 20 + i)}) + "\n" for i in range(rows)))
        client = {"kind": "interval", "invocation": run_id, "phase": "client", "profile": "none", "host": "localhost",
                  "start": start + 10, "end": start + 30, "seconds": 20.0}
        records = [{"kind": "invocation", "invocation": run_id, "start": start}, client,
                   timeline.summary(run_id, start, start + 50, [client], 2.0)]
        (run_dir / timeline.TIMELINE_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
        runs.record_invocation(run_dir, {**plan, "run_id": run_id}, {
            "invocation": run_id, "started_at": runs.iso(start), "finished_at": runs.iso(start + 50), "outcome": outcome})


def site(tags: str, results: Path, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "site.yml", "--tags", tags, *extra,
                           "-e", f"results_dir={results}", "-e", f"netbench_workdir={workdir}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_tags_plan_prints_the_plan_and_changes_nothing(tmp_path: Path):
    results, workdir = tmp_path / "results", tmp_path / "work"
    write_earlier_runs(results)
    before = snapshot(results)
    proc = site("plan", results, workdir, "-e", "resume=true")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert f"plan of run {UNFINISHED}: netbench/tiny in float32, 4 blocks" in out, out[-3000:]
    for expected in ("host localhost (dht, servers, clients): 127.0.0.1, cpu, no GPU",
                     "server localhost/server0: blocks 0:2 on cpu", "server localhost/server1: blocks 2:4 on cpu",
                     "attention cache", "headroom", "workload: batch 1 x 2 processes, prompts [16, 32]",
                     # the resumed run lacks 1 of its 2 configurations; 10 s each in the earlier run's timeline
                     "profile none (no shaping): 1 configuration, ~0 min 10 s from the timelines of 1 earlier run",
                     "overhead ~0 min 30 s from the timelines of 1 earlier run", "0.0 GPU-hours"):
        assert expected in out, expected
    # nothing started or written: no work directory, no task changed, no play past the pre-flight ran a task
    assert not workdir.exists()
    assert "changed=0" in out and "failed=0" in out
    after_preflight = out.split("PLAY [Provision", 1)[1]
    tasks = [line for line in after_preflight.splitlines() if line.startswith("TASK [")]
    assert tasks and all("Validating arguments against arg spec" in line for line in tasks), tasks
    assert snapshot(results) == before

