"""One experiment at a time on a swarm, through the real site.yml on the local inventory (the issue's
scenario): while a sweep runs, a second run (another run id and dtype) is refused in its pre-flight
naming the running benchmark, before it touches the swarm; the first run interrupted with Ctrl-C leaves its client measuring, and its rerun
(same run id) stops that client by its identity and resumes: every configuration measured exactly once;
a resume of that run with another dtype is refused before it changes the swarm or the run's manifest."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench_client.core.daemon import Record, is_running
from bench_client.core.results import read_metadata, read_tsv
from bench_client.orchestration.runner import run_experiment

TOKENS = 40  # the sweep: prompt 16 with 0..39 new tokens, long enough to be caught running (and to outlast
# the refused second run and the Ctrl-C on a loaded machine: with 24 the sweep had ended before them)


def test_second_run_refused_and_interrupted_run_taken_over(tmp_path):
    workdir, results = tmp_path / "work", tmp_path / "results"
    common = {"netbench_workdir": str(workdir), "results_dir": str(results), "bench_client_prompt_lengths": [16],
              "bench_client_token_sweep": f"0:{TOKENS}", "bench_client_new_tokens": 1,
              "bench_client_extra_args": ["--token-sweep-prompt-length", "16"]}
    out = results / "first" / "none" / "out.tsv"
    remote = workdir / "results" / "first" / "none" / "out.tsv"
    pidfile = workdir / "run" / "client.pid"
    first = subprocess.Popen([sys.executable, "-m", "bench_client.orchestration.runner", "--run-id", "first", "-e",
                              json.dumps(common)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not (remote.exists() and read_tsv(remote)) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.5)
        assert remote.exists() and read_tsv(remote), "the first run's sweep never started measuring"
        running = Record.load(pidfile)
        assert running is not None and is_running(running)

        servers = {p.name: Record.load(p) for p in (workdir / "run").glob("server*.pid")}
        log = io.StringIO()
        # another run, all stages, another dtype: refused in the pre-flight, before its swarm stage
        # would restart the servers under the running sweep
        second = run_experiment(extravars={**common, "dtype": "bfloat16"}, run_id="second", out=log)
        assert second.rc != 0 and "another benchmark runs on this swarm" in log.getvalue(), log.getvalue()[-3000:]
        assert is_running(running), "the refused run stopped the running benchmark"
        assert {p.name: Record.load(p) for p in (workdir / "run").glob("server*.pid")} == servers, \
            "the refused run restarted the servers"
        assert not (workdir / "results" / "second").exists() and not (results / "second").exists()

        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: Ansible stops, its async client keeps measuring
        first.communicate(timeout=120)
        assert is_running(running), "the interrupted run's client should still be measuring (the case to handle)"

        log = io.StringIO()
        again = run_experiment(extravars=common, run_id="first", tags="swarm,bench,fetch", out=log)
        assert again.ok, log.getvalue()[-5000:]
        assert not is_running(running), "the stale client still runs after the rerun took over"

        # a resume of this run with another dtype is refused before anything changes: the swarm, and
        # the run's manifest.json (which describes the rows measured)
        manifest = (results / "first" / "manifest.json").read_bytes()
        servers = {p.name: Record.load(p) for p in (workdir / "run").glob("server*.pid")}
        log = io.StringIO()
        other = run_experiment(extravars={**common, "dtype": "bfloat16"}, run_id="first", out=log)
        assert other.rc != 0 and "resumes run first" in log.getvalue(), log.getvalue()[-3000:]
        assert (results / "first" / "manifest.json").read_bytes() == manifest
        assert {p.name: Record.load(p) for p in (workdir / "run").glob("server*.pid")} == servers
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        cleanup = run_experiment(extravars=common, tags="cleanup", out=io.StringIO())
    assert cleanup.ok, cleanup.failures
    points = [(r.prompt_length, r.new_tokens) for r in read_tsv(out)]
    # each once (16 x 1 twice, as in the original: once per part of the sweep), none more often
    assert sorted(points) == sorted([(16, 1)] + [(16, n) for n in range(TOKENS)]), points
    meta = [m for m in read_metadata(Path(out).with_suffix(".jsonl")) if m["status"] == "ok"]
    assert len(meta) == len(points)
