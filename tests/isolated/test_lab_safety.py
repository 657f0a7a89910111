"""The namespace lab acts only on what is its own (root): a lab directory that another user owns, that
others may write or that is a symlink is refused before anything is written; ``down`` refuses a lab.json
naming namespaces outside the lab's prefix and never signals a process that does not carry the identity
recorded at ``up``; a real two-host lab comes up and goes down with nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_client.netem import lab as netns_lab
from bench_client.core.processes import start_ticks

pytestmark = pytest.mark.root
PREFIX = f"nbs{os.getpid() % 10000}"


def lab_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench_client.netem.lab", *argv], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NETBENCH_LAB_PREFIX": PREFIX})


@pytest.mark.parametrize("kind", ["other-owner", "group-writable", "symlink"])
def test_a_lab_directory_not_ours_is_refused_before_anything_is_written(kind, tmp_path):
    target = tmp_path / "lab"
    target.mkdir(mode=0o700)
    if kind == "other-owner":
        os.chown(target, 65534, 65534)
        lab = target
    elif kind == "group-writable":
        target.chmod(0o770)
        lab = target
    else:
        lab = tmp_path / "link"
        lab.symlink_to(target)
    result = lab_cli("up", "--dir", str(lab), "--hosts", "2")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: lab directory") and "must be ours" in result.stderr or \
        "is not a directory" in result.stderr, result.stderr
    assert list(target.iterdir()) == [], "the lab wrote into a directory that is not its own"
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith(PREFIX)]


def test_down_does_not_act_on_a_forged_lab_json(tmp_path):
    """lab.json naming a namespace outside the prefix, and a process group that is someone else's."""
    victim_ns = f"safety-victim{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", victim_ns], check=True)
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        lab = tmp_path / "lab"
        lab.mkdir(mode=0o700)
        (lab / "lab.json").write_text(json.dumps({"prefix": PREFIX, "controller": victim_ns, "hosts": []}))
        result = lab_cli("down", "--dir", str(lab))
        assert result.returncode == 2 and "outside the lab's prefix" in result.stderr, result.stderr
        assert victim_ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        # a well-formed lab.json naming someone else's process group as an sshd: not signalled
        (lab / "lab.json").write_text(json.dumps({"prefix": PREFIX, "hosts": [
            {"name": "h1", "netns": f"{PREFIX}-h1", "sshd_pgid": sleeper.pid}], "token": "0" * 32}))
        ticks = start_ticks(sleeper.pid)
        assert lab_cli("down", "--dir", str(lab)).returncode == 0
        time.sleep(0.3)
        assert start_ticks(sleeper.pid) == ticks, "down killed a process the lab did not start"
    finally:
        sleeper.kill()
        sleeper.wait()
        subprocess.run(["ip", "netns", "delete", victim_ns], check=False)


def test_a_real_lab_comes_up_private_and_goes_down_completely(tmp_path):
    lab = tmp_path / "newlab"  # does not exist: the lab creates it, 0700
    with netns_lab.lab(lab, count=2, prefix=PREFIX) as inventory:
        info = os.lstat(lab)
        assert info.st_mode & 0o777 == 0o700 and info.st_uid == os.geteuid()
        assert Path(inventory).stat().st_mode & 0o777 == 0o600
        state = json.loads((lab / "lab.json").read_text())
        sshds = [h["sshd_pgid"] for h in state["hosts"]]
        assert all(start_ticks(p) is not None for p in sshds)
    assert all(start_ticks(p) is None for p in sshds)
