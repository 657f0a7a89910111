"""Helpers of the container tests: the Docker CLI, ansible-playbook against this machine, the image.

Everything here talks to the local Docker engine only (started by .ci/setup.d/40-docker.sh);
containers run on the host's loopback (--net host) or on networks the tests create.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from vm import REPO, recap  # noqa: F401  (recap is re-exported for the tests)

ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
# Shared with .ci/setup.d/40-docker.sh: the wheelhouse and base made there are reused here.
IMAGE_CACHE = Path(os.environ.get("NETBENCH_IMAGE_CACHE", "/var/cache/netbench"))
PROJECT_LABEL = ("netbench.project", "petals-netbench")


def docker(*args: str, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def require_docker() -> None:
    """Skip (a failure in CI) when no Docker engine answers: .ci/setup.d/40-docker.sh starts one."""
    try:
        ok = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("no Docker engine (bash .ci/setup.d/40-docker.sh starts one)")


@dataclass
class PlaybookRun:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return recap(self.stdout)

    def ok(self) -> PlaybookRun:
        assert self.returncode == 0, f"rc={self.returncode}\n{self.stdout[-6000:]}\n{self.stderr[-3000:]}"
        return self


def ansible_playbook(playbook: Path | str, *args: str, inventory: str | Path = "localhost,",
                     extra_vars: dict | None = None, timeout: float = 900, env: dict | None = None) -> PlaybookRun:
    """ansible-playbook with the project's ansible.cfg; the default inventory is this machine."""
    cmd = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(playbook), *args]
    if str(inventory) == "localhost,":
        cmd += ["-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1",
                               "ANSIBLE_CALLBACK_RESULT_FORMAT": "json", **(env or {})})
    run = PlaybookRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    print(f"ansible-playbook {Path(playbook).name} {' '.join(args)}: rc={run.returncode} in {run.wall_s:.0f} s")
    return run


def snapshot_source(directory: Path) -> Path:
    """The package's files as they are now: the image tests build from this copy, so that edits made
    to the working tree while they run (a shared checkout) do not change the image under them."""
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, directory / name)
    shutil.copytree(REPO / "bench_client", directory / "bench_client",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return directory


def image_playbook(*args: str, **extra_vars) -> tuple[PlaybookRun, str]:
    """Run playbooks/image.yml on this machine; returns the run and the image's tag."""
    run = ansible_playbook(REPO / "playbooks" / "image.yml", *args,
                           extra_vars={"swarm_image_cache_dir": str(IMAGE_CACHE), **extra_vars}).ok()
    match = re.search(r"swarm image (\S+) \(", run.stdout)
    assert match, run.stdout[-3000:]
    return run, match.group(1)


def labels_of(container: str) -> dict[str, str]:
    return json.loads(docker("inspect", "--format", "{{json .Config.Labels}}", container).stdout)


def remove_containers(*names: str) -> None:
    """Test teardown: these containers, by name (never by a broad filter)."""
    for name in names:
        docker("rm", "--force", "--volumes", name, check=False)
