"""SIGTERM to petals-netbench (bench_client.orchestration.runner) stops the ansible-playbook it runs and
every worker of it: ansible-core's workers call setsid, so a signal to ansible-playbook's process group
alone (ansible-runner's own cancel: SIGKILL to that group) left them running, re-parented to PID 1.
A real ansible-runner run of a one-task playbook (a long command), no site.yml: seconds."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

MARKER_ENV = "NETBENCH_TEST_RUNNER_MARKER"


def _carrying(marker: str) -> list[int]:
    """Live processes whose environment holds the marker (everything the runner started inherits it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{MARKER_ENV}={marker}".encode() in environ and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def test_sigterm_to_the_runner_leaves_no_ansible_process(tmp_path):
    marker = secrets.token_hex(8)
    (tmp_path / "hosts.yml").write_text(
        f"all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n")
    (tmp_path / "long.yml").write_text(
        "- name: One long task\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Sleep\n      ansible.builtin.command: sleep 300\n      changed_when: false\n")
    script = ("import sys; from bench_client.orchestration.runner import run_experiment; "
              f"r = run_experiment(inventory={str(tmp_path / 'hosts.yml')!r}, playbook='long.yml', "
              f"project_dir={str(tmp_path)!r}, run_id='sigterm'); print(r.status, r.rc); sys.exit(r.rc)")
    runner = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, MARKER_ENV: marker},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        sleeping = []
        while not sleeping and time.monotonic() < deadline and runner.poll() is None:
            time.sleep(0.2)
            sleeping = [pid for pid in _carrying(marker)
                        if _cmdline(pid)[:2] == [b"sleep", b"300"]]
        assert sleeping, "the task never started"
        started = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=60)
        assert time.monotonic() - started < 15, output
        assert "canceled" in output, output
        deadline = time.monotonic() + 5
        while (left := _carrying(marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        described = [b" ".join(_cmdline(pid))[:120] for pid in left]
        assert not left, f"left running after SIGTERM to the runner: {described}"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for pid in _carrying(marker):  # a failed run's orphans, by the PIDs found (never by name)
            os.kill(pid, signal.SIGKILL)
