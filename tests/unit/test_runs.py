"""bench_client.orchestration.runs: a run's state in its manifest, the latest unfinished run, the resume
command, and the plan's estimate of wall time and GPU-hours. Pure functions over files in tmp_path;
the pre-flight's printing of the plan through Ansible is tests/ansible/test_plan_tag.py."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bench_client.orchestration import runner, runs, timeline
from bench_client.orchestration.plan import make_plan
from test_plan import config

RUN = "20261202T000000Z-ab12"
SLOW = "paper-10ms-100mbit"


def plan(**overrides) -> dict:
    base = {"workload": {"prompt_lengths": [16, 32], "new_tokens": 4, "num_processes": 2}, "run_id": RUN,
            "profiles": f"none,{SLOW}",
            "hosts": {"a": {"servers": 2, "mem_kb": 16 * 2**20, "machine_id": "m1", "shaping": True}}}
    return make_plan(config(**{**base, **overrides}))


def write_rows(run_dir: Path, profile: str, finished: list[float], wall: float = 1.0) -> None:
    """``len(finished)`` measured rows of ``profile`` (TSV and JSONL, as the client writes them)."""
    out = run_dir / profile
    out.mkdir(parents=True, exist_ok=True)
    with (out / "out.tsv").open("a") as tsv, (out / "out.jsonl").open("a") as jsonl:
        for i, t in enumerate(finished):
            tsv.write(f"1\t2\t2\t{16 * (i + 1)}\t4\t10.0\t{wall}\n")
            jsonl.write(json.dumps({"status": "ok", "wall_time_s": wall, "finished_at":
                                    datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")}) + "\n")


def invocation(ident: str, outcome: str, start: float = 0.0, end: float | None = 10.0) -> dict:
    return {"invocation": ident, "started_at": runs.iso(start), "finished_at": runs.iso(end), "outcome": outcome}


def test_planned_configurations_are_the_sweep_times_the_repeats():
    assert runs.planned_configurations(plan()) == 2
    assert runs.planned_configurations(plan(workload={"prompt_lengths": [16, 32], "repeats": 3, "token_sweep": "0:4"})) == 18


def test_the_run_section_records_each_invocation_its_outcome_and_what_is_done(tmp_path: Path):
    p = plan()
    run_dir = tmp_path / RUN
    write_rows(run_dir, "none", [5.0])
    state = runs.record_invocation(run_dir, p, invocation("a", runs.RUNNING, end=None))
    assert json.loads((run_dir / "manifest.json").read_text())["plan"] == p  # what a resume is checked against
    assert state["outcome"] == "running" and state["finished_at"] is None and not state["complete"]
    assert state["configurations"] == {"none": {"planned": 2, "done": 1}, SLOW: {"planned": 2, "done": 0}}
    assert runs.is_unfinished(run_dir)
    state = runs.record_invocation(run_dir, p, invocation("a", runs.FAILED, end=20.0))
    assert [i["outcome"] for i in state["invocations"]] == ["failed"]  # the same invocation, replaced
    write_rows(run_dir, "none", [30.0])
    write_rows(run_dir, SLOW, [31.0, 32.0])
    state = runs.record_invocation(run_dir, p, invocation("b", runs.SUCCESSFUL, start=25.0, end=40.0))
    assert (state["started_at"], state["finished_at"], state["outcome"], state["complete"]) == \
        (runs.iso(0.0), runs.iso(40.0), "successful", True)
    assert not runs.is_unfinished(run_dir)
    # the experiment's manifest, rewritten by a resumed run, keeps the run section
    from bench_client.orchestration import manifest

    manifest.main(["--out", str(run_dir / "manifest.json"), "--json", json.dumps({"plan": p})])
    written = json.loads((run_dir / "manifest.json").read_text())
    assert written["plan"]["run_id"] == RUN and written["run"]["outcome"] == "successful"


def test_latest_unfinished_is_the_last_started_run_not_done(tmp_path: Path):
    p = plan()
    assert runs.latest_unfinished(tmp_path) is None
    for name, start, outcome in (("old-failed", 0.0, runs.FAILED), ("newer-killed", 50.0, runs.RUNNING),
                                 ("newest-done", 90.0, runs.SUCCESSFUL)):
        write_rows(tmp_path / name, "none", [start + 1, start + 2])
        write_rows(tmp_path / name, SLOW, [start + 3, start + 4])
        runs.record_invocation(tmp_path / name, p, invocation(name, outcome, start=start, end=None))
    (tmp_path / "legacy").mkdir()  # a run older than the run section: not offered
    (tmp_path / "legacy" / "manifest.json").write_text(json.dumps({"run_id": "legacy", "plan": p}))
    assert runs.latest_unfinished(tmp_path) == "newer-killed"
    # successful but with configurations missing (e.g. --tags swarm,bench cut short): unfinished too
    (tmp_path / "newest-done" / SLOW / "out.tsv").write_text("")
    runs.record_invocation(tmp_path / "newest-done", p, invocation("x", runs.SUCCESSFUL, start=90.0))
    assert runs.latest_unfinished(tmp_path) == "newest-done"
    with pytest.raises(ValueError, match="no unfinished run to resume"):
        runs.resume_run_id(tmp_path / "nothing")


@pytest.mark.parametrize("words, flag, expected", [
    (["ansible-playbook", "-i", "inventory/cloud", "site.yml", "-e", "resume=true", "-e", "model=facebook/opt-30b"], "-e",
     "ansible-playbook -i inventory/cloud site.yml -e model=facebook/opt-30b -e run_id=R"),
    (["ansible-playbook", "site.yml", "-e", "run_id=R"], "-e", "ansible-playbook site.yml -e run_id=R"),
    (["petals-netbench", "-m", "facebook/opt-30b", "-p", "none,paper-10ms-100mbit", "--run-id", "R"], "--resume",
     "petals-netbench -m facebook/opt-30b -p none,paper-10ms-100mbit --resume R"),
    (["petals-netbench", "--resume", "-e", "repeats=3"], "--resume", "petals-netbench -e repeats=3 --resume R"),
    (["petals-netbench", "--resume", "R", "--json"], "--resume", "petals-netbench --json --resume R"),
])
def test_the_resume_command_is_the_same_command_for_this_run_id(words, flag, expected):
    assert runs.resume_command(words, "R", flag) == expected


def test_petals_netbench_resume_finds_the_run_and_its_options(tmp_path: Path):
    p = plan()
    runs.record_invocation(tmp_path / RUN, p, invocation("a", runs.FAILED))
    data = json.loads((tmp_path / RUN / "manifest.json").read_text())
    data.update(extra_vars={"model": "netbench/tiny", "profiles": f"none,{SLOW}", "repeats": 2}, inventory="/inv/cloud")
    (tmp_path / RUN / "manifest.json").write_text(json.dumps(data))
    extravars = {"results_dir": str(tmp_path)}
    args = runner.build_parser().parse_args(["--resume"])
    assert runner.resume_options(args, extravars) == RUN
    assert (args.model, args.profiles, args.inventory, extravars["repeats"]) == ("netbench/tiny", f"none,{SLOW}", "/inv/cloud", 2)
    args = runner.build_parser().parse_args(["--resume", "nope"])
    with pytest.raises(ValueError, match="no run nope to resume"):
        runner.resume_options(args, extravars)
    args = runner.build_parser().parse_args(["--resume", RUN, "--run-id", "other"])
    with pytest.raises(ValueError, match="name two runs"):
        runner.resume_options(args, extravars)


def write_history(root: Path, name: str, model_plan: dict, start: float, client_s: dict[str, float], wall: float,
                  rows: dict[str, int]) -> None:
    """An earlier run: its manifest's plan, one invocation's timeline, and the rows it measured."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"plan": model_plan}))
    intervals = [{"kind": "interval", "invocation": name, "phase": "client", "profile": prof, "seconds": s}
                 for prof, s in client_s.items()]
    records = [{"kind": "invocation", "invocation": name, "start": start}, *intervals,
               timeline.summary(name, start, start + wall, intervals, 0.0)]
    (run_dir / timeline.TIMELINE_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    for prof, count in rows.items():
        write_rows(run_dir, prof, [start + 1 + i for i in range(count)])


def test_the_estimate_from_earlier_timelines_of_the_same_model_and_profile(tmp_path: Path):
    p = plan()
    # two earlier runs of the model: 'none' cost 10 and 14 s per configuration, the overhead 40 and 60 s
    write_history(tmp_path, "e1", p, 1000.0, {"none": 20.0}, 60.0, {"none": 2})
    write_history(tmp_path, "e2", p, 2000.0, {"none": 28.0}, 88.0, {"none": 2})
    write_history(tmp_path, "other-model", {**p, "model": "facebook/opt-30b"}, 3000.0, {SLOW: 900.0}, 1000.0, {SLOW: 1})
    est = runs.estimate(p, runs.history(tmp_path))
    none, lan = est["profiles"]
    assert (none["configurations"], none["seconds"], none["source"]) == (2, 24.0, "the timelines of 2 earlier runs")
    assert lan["source"] == runs.WORKLOAD and lan["seconds"] == pytest.approx(
        runs.GUESS_PROFILE_S + 2 * runs.workload_seconds(p, p["profiles"][1]), abs=0.1)
    assert (est["overhead_s"], est["overhead_source"]) == (50.0, "the timelines of 2 earlier runs")
    assert est["wall_s"] == pytest.approx(50.0 + 24.0 + lan["seconds"], abs=0.1)
    assert est["gpu_hours"] == 0  # a CPU plan
    # a resumed run is estimated for the configurations it lacks
    left = runs.estimate(p, runs.history(tmp_path), {"none": {"planned": 2, "done": 2}, SLOW: {"planned": 2, "done": 1}})
    assert [q["configurations"] for q in left["profiles"]] == [0, 1] and left["profiles"][0]["seconds"] == 0


def test_the_workload_guess_grows_with_the_network_and_gpu_hours_with_the_gpus():
    gpu = plan(model="facebook/opt-30b", profiles="none,paper-100ms-100mbit",
               hosts={"a": {"device": "cuda", "gpus_mib": [143771] * 4, "mem_kb": 512 * 2**20, "machine_id": "m",
                            "shaping": True}})
    none, slow = (runs.workload_seconds(gpu, prof) for prof in gpu["profiles"])
    # every step (the prefill and each of the 4 new tokens) crosses 4 servers with a 200 ms round trip each
    assert slow - none > (1 + 4) * 4 * 0.2
    est = runs.estimate(gpu, [])
    assert est["gpu_hours"] == pytest.approx(est["wall_s"] * 4 / 3600, abs=0.001)
    # each GPU's headroom: one server of 12 of OPT-30B's 48 blocks + its cache + a CUDA context, and on GPUs 0
    # and 1 one of the client's 2 processes (this host is the client too)
    text = runs.format_plan(gpu)
    assert [line.split(":")[0].strip() for line in text.splitlines() if "headroom" in line and "GPU" in line] == \
        [f"a GPU {i}" for i in range(4)]
    assert "a GPU 2: 1 server(s) use 15.9 of 150.8 GB (headroom 134.8 GB)" in text, text
    assert "a GPU 0: 1 server(s) use 18.4 of 150.8 GB (headroom 132.3 GB)" in text, text


def test_the_printed_plan_names_everything_the_user_pays_for():
    p = plan()
    p["estimate"] = runs.estimate(p, [])
    hosts = {"a": {"address": "10.0.0.1", "device": "cpu", "gpus_mib": [], "mem_kb": 16 * 2**20}}
    text = runs.format_plan(p, hosts)
    for expected in (f"plan of run {RUN}: netbench/tiny in float32", "host a (dht, servers, clients): 10.0.0.1, cpu",
                     "server a/server0: blocks 0:2 on cpu", "server a/server1: blocks 2:4", "attention cache",
                     "headroom", "prompts [16, 32], 4 new tokens", f"profile {SLOW} (10 ms, 100 Mbit/s): 2 configurations",
                     "estimate: ~", "GPU-hours"):
        assert expected in text, expected


def test_petals_netbench_prints_the_plan_the_preflight_computed():
    import io

    out = io.StringIO()
    printer = runner.ProgressPrinter(out=out, now=lambda: 0.0)
    printer({"event": "runner_on_ok", "event_data": {"host": "localhost", "role": "preflight", "task": "Compute the plan",
                                                     "res": {"plan_text": "plan of run R: x\n  server a/server0: blocks 0:2"}}})
    assert "          plan of run R: x\n            server a/server0: blocks 0:2\n" in out.getvalue()


def test_petals_netbench_takes_resume_true_as_resume(tmp_path: Path, monkeypatch):
    """-e resume=true through the wrapper resumes too (it names the run id itself, which would hide it)."""
    seen = {}

    def fake_run(**kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(runner, "run_experiment", fake_run)
    runs.record_invocation(tmp_path / RUN, plan(), invocation("a", runs.FAILED))
    assert runner.main(["-e", "resume=true", "-e", f"results_dir={tmp_path}"]) == 2
    assert seen["run_id"] == RUN and "resume" not in seen["extravars"]
    assert seen["extravars"]["netbench_resume_command"].endswith(f"--resume {RUN}")
    assert runner.main(["-e", "resume=true", "-e", f"results_dir={tmp_path / 'none'}"]) == 2  # nothing to resume
