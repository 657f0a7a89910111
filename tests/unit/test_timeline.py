"""bench_client.orchestration.timeline: tasks into phases, task events into intervals, the duty ratio
from the client's JSONL rows, the breakdown printed at a run's end and shown by the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench_client.orchestration import timeline
from bench_client.orchestration.timeline import OTHER, Segmenter, classify
from test_report import record, write_run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("role", "path", "tags", "play", "phase"), [
    ("preflight", "roles/preflight/tasks/probe.yml:3", ["always"], "Pre-flight checks and the experiment plan", "preflight"),
    ("netbench_host", "roles/netbench_host/tasks/harness_fact.yml:1", ["always"], "Pre-flight checks and the experiment plan", "preflight"),
    (None, "playbooks/preflight.yml:16", ["always"], "Pre-flight checks and the experiment plan", "preflight"),
    ("netbench_host", "roles/netbench_host/tasks/main.yml:4", ["provision"], "Provision the hosts", "provision"),
    ("netem", "roles/netem/tasks/module.yml:2", ["provision", "netem_module"], "Kernel support", "provision"),
    # site.yml's import adds provision to the image play's own tag
    ("swarm_image", "roles/swarm_image/tasks/main.yml:9", ["image", "provision", "swarm", "bench"], "Swarm image", "image"),
    ("petals_dht", "roles/petals_dht/tasks/process.yml:20", ["swarm"], "Start the DHT", "swarm:dht"),
    ("petals_server", "roles/petals_server/tasks/wait.yml:5", ["swarm"], "Wait until every block is served", "swarm:servers"),
    ("netem", "/abs/roles/netem/tasks/deploy.yml:40", [], "Benchmark every network profile", "shaping:apply"),
    ("netem", "/abs/roles/netem/tasks/facts.yml:1", [], "Benchmark every network profile", "shaping:apply"),
    ("netem", "/abs/roles/netem/tasks/validate.yml:77", [], "Benchmark every network profile", "shaping:verify"),
    ("netem", "/abs/roles/netem/tasks/rate_round.yml:3", [], "Benchmark every network profile", "shaping:verify"),
    ("netem", "/abs/roles/netem/tasks/destroy.yml:3", [], "Benchmark every network profile", "shaping:remove"),
    ("bench_client", "roles/bench_client/tasks/wait.yml:8", [], "Benchmark every network profile", "client"),
    ("bench_client", "roles/bench_client/tasks/a_new_file.yml:1", [], "Benchmark every network profile", "client"),
    ("bench_client", "roles/bench_client/tasks/fetch.yml:8", [], "Benchmark every network profile", "fetch"),
    (None, "playbooks/experiment.yml:10", [], "Benchmark every network profile", OTHER),
    ("flexgen_bench", "roles/flexgen_bench/tasks/main.yml:1", ["bench", "fetch", "flexgen"], "FlexGen", "flexgen"),
    ("bench_client", "roles/bench_client/tasks/stop.yml:1", ["never", "cleanup"], "Stop the benchmark client", "cleanup"),
    ("netem", "roles/netem/tasks/stop.yml:1", ["never", "cleanup"], "Remove shaping from the servers", "cleanup"),
])
def test_tasks_are_put_in_phases_by_role_file_and_play_tags(role, path, tags, play, phase):
    assert classify(role, path, tags, play) == phase


@pytest.mark.parametrize(("action", "args", "expected"), [
    ("ansible.builtin.include_role", {"name": "netem", "tasks_from": "destroy", "apply": {"tags": ["shaping"]}},
     ("netem", "roles/netem/tasks/destroy.yml")),
    ("include_role", {"name": "bench_client"}, ("bench_client", "roles/bench_client/tasks/main.yml")),
    ("ansible.builtin.import_role", {"name": "flexgen_bench"}, ("flexgen_bench", "roles/flexgen_bench/tasks/main.yml")),
    ("ansible.builtin.include_role", {"name": "{{ which }}"}, (None, "playbooks/x.yml:3")),  # not known before it runs
    ("ansible.builtin.include_tasks", {"file": "tasks/profile.yml"}, (None, "playbooks/x.yml:3")),
])
def test_an_include_role_counts_as_the_role_it_runs(action, args, expected):
    assert timeline.task_role_and_path(None, "playbooks/x.yml:3", action, args) == expected


def test_every_role_of_the_project_has_a_phase():
    """A role added to roles/ lands in 'other' until timeline.ROLE_PHASES names it: this says so."""
    roles = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/tasks/main.yml"))
    assert "bench_client" in roles and "netem" in roles
    unmapped = [r for r in roles if classify(r, f"roles/{r}/tasks/main.yml:1") == OTHER]
    assert unmapped == []


def test_consecutive_tasks_of_one_phase_and_profile_are_one_interval():
    seg = Segmenter()
    events = [("start", "swarm:servers", None, 10.0), ("end", "h1", 12.0), ("end", "h2", 13.0),
              ("start", "swarm:servers", None, 13.5), ("end", "h1", 20.0),
              ("start", "client", "none", 21.0), ("end", "client0", 30.0),
              ("start", "client", "paper-10ms-1gbit", 30.5), ("end", "client0", 40.0)]
    closed = []
    for event in events:
        if event[0] == "start":
            closed.append(seg.task_start(*event[1:]))
        else:
            seg.task_end(*event[1:])
    closed.append(seg.close())
    intervals = [i for i in closed if i is not None]
    assert [(i.phase, i.profile, i.host, i.start, i.end) for i in intervals] == [
        ("swarm:servers", None, None, 10.0, 20.0),  # two hosts ran it: no single host
        ("client", "none", "client0", 21.0, 30.0),
        ("client", "paper-10ms-1gbit", "client0", 30.5, 40.0)]
    rec = intervals[0].record("inv1")
    assert rec == {"kind": "interval", "invocation": "inv1", "phase": "swarm:servers", "profile": None, "host": None,
                   "start": 10.0, "end": 20.0, "seconds": 10.0}
    assert seg.close() is None


def test_measured_seconds_counts_the_ok_rows_of_this_invocation(tmp_path: Path):
    run = tmp_path / "run1"
    ok = record(1, 2, 6, 128, 32, 10.0, 1.0, profile="none")
    old = {**ok, "wall_time_s": 100.0, "finished_at": "2026-11-26T06:00:00+00:00"}  # an earlier invocation's
    failed = record(1, 2, 6, 256, 32, 0.0, 0.0, profile="none", status="failed", error="lost a server")
    write_run(run / "none", [{**ok, "wall_time_s": 2.5}, old, failed])
    (run / "paper-10ms-1gbit").mkdir()
    (run / "paper-10ms-1gbit" / "out.jsonl").write_text(json.dumps({**ok, "wall_time_s": 1.5}) + "\n{\"cut")
    assert timeline.measured_seconds(run) == pytest.approx(104.0)
    since = timeline._epoch("2026-11-26T06:59:00+00:00")
    assert timeline.measured_seconds(run, since) == pytest.approx(4.0)
    assert timeline.measured_seconds(tmp_path / "missing") == 0.0


def test_summary_and_its_printed_breakdown():
    intervals = [{"phase": "client", "seconds": 50.0}, {"phase": "swarm:servers", "seconds": 30.0},
                 {"phase": "preflight", "seconds": 5.0}, {"phase": "client", "seconds": 10.0}]
    rec = timeline.summary("inv", 1000.0, 1100.0, intervals, measured_s=25.0)
    assert rec["wall_s"] == 100.0 and rec["duty_ratio"] == 0.25
    assert rec["phases"] == [["preflight", 5.0], ["swarm:servers", 30.0], ["client", 60.0]]  # the run's order
    lines = timeline.format_summary(rec).splitlines()
    assert lines[0].split() == ["phase", "seconds", "of", "wall"]
    assert lines[1:4] == ["preflight              5.0    5.0 %", "swarm:servers         30.0   30.0 %",
                          "client                60.0   60.0 %"]
    assert lines[4] == "(between tasks)        5.0    5.0 %"
    assert lines[-1] == "measured 25.0 s of 100.0 s wall: duty ratio 25.0 %"


def write_timeline(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_last_summary_of_a_resumed_and_of_an_interrupted_run(tmp_path: Path):
    path = tmp_path / "run1" / timeline.TIMELINE_NAME
    first = [{"kind": "invocation", "invocation": "a", "start": 0.0},
             {"kind": "interval", "invocation": "a", "phase": "client", "profile": "none", "host": "c",
              "start": 1.0, "end": 9.0, "seconds": 8.0},
             timeline.summary("a", 0.0, 10.0, [{"phase": "client", "seconds": 8.0}], 4.0)]
    write_timeline(path, first)
    assert timeline.last_summary(path)["invocation"] == "a"
    # a resumed run appended its own invocation, then was killed before its end: no summary of its own
    second = [{"kind": "invocation", "invocation": "b", "start": 100.0},
              {"kind": "interval", "invocation": "b", "phase": "preflight", "profile": None, "host": "c",
               "start": 100.5, "end": 102.0, "seconds": 1.5}]
    write_timeline(path, first + second)
    with path.open("a") as f:
        f.write('{"kind": "interval", "invo')  # the line the kill cut
    rec = timeline.last_summary(path)
    assert (rec["invocation"], rec["wall_s"], rec["phases"], rec["measured_s"]) == ("b", 2.0, [["preflight", 1.5]], 0.0)
    assert timeline.last_summary(tmp_path / "none.jsonl") is None


def test_the_report_shows_the_runs_breakdown(tmp_path: Path):
    from bench_client.report.cli import main

    run = tmp_path / "run1"
    write_run(run / "none", [record(1, 2, 6, 128, 32, 10.0, 1.0, profile="none")])
    write_timeline(run / timeline.TIMELINE_NAME, [
        {"kind": "invocation", "invocation": "a", "start": 0.0},
        timeline.summary("a", 0.0, 8.0, [{"phase": "client", "seconds": 4.0}], 2.0)])
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "table17.md").read_text()
    assert "## Where the run's time went" in md and "measured 2.0 s of 8.0 s wall: duty ratio 25.0 %" in md
    write_run(tmp_path / "plain" / "none", [record(1, 2, 6, 128, 32, 10.0, 1.0, profile="none")])
    assert main([str(tmp_path / "plain"), "--out", str(tmp_path / "out2")]) == 0
    assert "time went" not in (tmp_path / "out2" / "table17.md").read_text()
