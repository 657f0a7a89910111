"""bench_client.orchestration.runner's own logic: event handling (progress and failures), -e parsing, errors.
The wrapper's real runs are in tests/ansible/test_site_local.py and test_site_emulated_ssh.py."""

from __future__ import annotations

import io

import pytest

from bench_client.netem.profiles import resolve_profile
from bench_client.core.progress import MARKER
from bench_client.orchestration.runner import (ProgressPrinter, _parse_extravar, build_parser, cleanup_command, failure_message,
                                 playbook_error)


def event(kind, **data):
    return {"event": kind, "event_data": data}


def test_progress_lines_and_streamed_failures():
    out = io.StringIO()
    clock = iter(range(100))
    printer = ProgressPrinter(out=out, now=lambda: float(next(clock)))
    printer(event("playbook_on_play_start", play="Start the servers"))
    printer(event("runner_on_ok", host="h2", task="Start the servers", role="petals_server",
                  res={"changed": True}, duration=1.5))
    printer(event("runner_on_skipped", host="h1", task="Skip me", res={}))
    printer(event("runner_on_failed", host="h1", task="Wait until every block is served", role="petals_server",
                  res={"msg": "the swarm is incomplete: blocks 2:4 missing", "rc": 3}, duration=600))
    printer(event("runner_on_unreachable", host="h3", task="Probe", role="preflight",
                  res={"msg": "ssh: connect to host 10.0.0.3 port 22: No route to host"}))
    text = out.getvalue()
    assert "PLAY Start the servers" in text
    assert "changed  h2" in text and "petals_server : Start the servers (1.5s)" in text
    assert "Skip me" not in text
    assert "FAILED h1 | petals_server : Wait until every block is served: the swarm is incomplete: blocks 2:4 missing" in text
    assert "UNREACHABLE" in text and "No route to host" in text
    assert [f.host for f in printer.failures] == ["h1", "h3"]
    assert [t.status for t in printer.timings] == ["changed", "skipped", "FAILED", "UNREACHABLE"]


def test_failure_message_of_a_loop_and_of_a_command():
    loop = {"msg": "One or more items failed", "results": [
        {"failed": False, "item": "server0"},
        {"failed": True, "_ansible_item_label": "server1 blocks 2:4", "msg": "non-zero return code", "rc": 2,
         "stderr": "Traceback...\nerror: --device cuda:1 asked, but this host has no usable CUDA GPU"}]}
    message = failure_message(loop)
    assert message.startswith("[server1 blocks 2:4]") and "no usable CUDA GPU" in message
    assert failure_message({"rc": 1}) == "exit code 1"


def test_playbook_error_names_the_file():
    stdout = "PLAY [x]\n[ERROR]: YAML parsing failed: Colons in unquoted values\nOrigin: /r/roles/netem/tasks/v.yml:5:34\n\nmore"
    assert playbook_error(stdout) == "[ERROR]: YAML parsing failed: Colons in unquoted values Origin: /r/roles/netem/tasks/v.yml:5:34"


def test_extravars_like_ansible_playbook(tmp_path):
    assert _parse_extravar("bench_client_new_tokens=8") == {"bench_client_new_tokens": 8}
    assert _parse_extravar("model=facebook/opt-30b") == {"model": "facebook/opt-30b"}
    assert _parse_extravar('{"profiles": ["none", {"name": "r", "rate": "20mbit"}]}')["profiles"][1]["rate"] == "20mbit"
    path = tmp_path / "vars.yml"
    path.write_text("bench_client_prompt_lengths: [16, 32]\n")
    assert _parse_extravar(f"@{path}") == {"bench_client_prompt_lengths": [16, 32]}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-e", "novalue"])


def test_cli_help_is_fast_and_lists_the_stages(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "provision,swarm,shaping,bench,fetch" in text
    # every profile name the help shows as an example is one the plan accepts
    examples = [name for line in text.splitlines() if "petals-netbench " in line and " -p " in line for name in line.split(" -p ")[1].split()[0].split(",")]
    assert examples and all(resolve_profile(name) is not None or name == "none" for name in examples)


def test_the_sweeps_own_progress_line_replaces_the_retries():
    """The wait for the sweep is a retried poll whose stdout ends with the client's progress line:
    shown once per change, and other retries stay quiet."""
    out = io.StringIO()
    printer = ProgressPrinter(out=out, now=lambda: 0.0)
    job = '{"started": 1, "finished": 0}'
    for line in ("", "[1/3] prompt 16: ... ETA 20 s", "[1/3] prompt 16: ... ETA 20 s", "[2/3] prompt 32: ... ETA 9 s"):
        printer(event("runner_retry", host="h1", task="Wait for the sweep of none", role="bench_client",
                      res={"stdout": f"{job}\n{MARKER}\n{line}", "attempts": 1, "retries": 1440}))
    printer(event("runner_retry", host="h1", task="Wait until the DHT is up", res={"stdout": "x"}))
    lines = out.getvalue().splitlines()
    assert [line.split("h1", 1)[1].strip() for line in lines] == [
        "starting the client (its processes load the model and warm up)", "[1/3] prompt 16: ... ETA 20 s",
        "[2/3] prompt 32: ... ETA 9 s"]


def test_cleanup_command_repeats_the_inventory_and_variables():
    args = build_parser().parse_args(["-i", "inv/cloud", "-m", "facebook/opt-30b", "-e", "netbench_workdir=/tmp/w x"])
    assert cleanup_command(args) == "petals-netbench -i inv/cloud -e '{\"netbench_workdir\": \"/tmp/w x\"}' --cleanup"
