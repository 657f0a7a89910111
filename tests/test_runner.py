"""bench_client.orchestration.runner's own logic: event handling (progress and failures), -e parsing, errors.
The wrapper's real runs are in tests/test_ansible_local.py and test_ansible_emulated.py."""

from __future__ import annotations

import io

import pytest

from bench_client.orchestration.runner import ProgressPrinter, _parse_extravar, build_parser, failure_message, playbook_error


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
    assert "provision,swarm,shaping,bench,fetch" in capsys.readouterr().out
