"""The swarm stack of a bare host (bench_client.orchestration.stack, roles/netbench_host): the torch build
chosen from the driver's CUDA version (a GPU cannot be tried here), the pins read from pyproject.toml,
and the stack check the role feeds compat.py's source on stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench_client.orchestration import stack

ROOT = Path(__file__).resolve().parents[2]
BUILDS = ["cu130", "cu128", "cu126"]


@pytest.mark.parametrize("driver, build", [
    ("13.0", "cu130"), ("13.2", "cu130"), ("14.0", "cu130"), ("12.9", "cu128"), ("12.8", "cu128"),
    ("12.7", "cu126"), ("12.6", "cu126"), ("12.6.1", "cu126"),
])
def test_the_newest_build_the_driver_runs_is_taken(driver, build):
    assert stack.torch_build("auto", driver, BUILDS) == build
    assert stack.torch_build("cuda", driver, BUILDS) == build


def test_no_driver_is_the_cpu_build_unless_cuda_is_asked_for():
    assert stack.torch_build("auto", "", BUILDS) == "cpu"
    assert stack.torch_build("cpu", "13.0", BUILDS) == "cpu"
    assert stack.torch_index("auto", "", BUILDS, "https://download.pytorch.org/whl/") == "https://download.pytorch.org/whl/cpu"
    with pytest.raises(stack.StackError, match="no NVIDIA driver"):
        stack.torch_build("cuda", "", BUILDS)


@pytest.mark.parametrize("driver, message", [
    ("12.4", "older than every torch build offered \\(oldest cu126\\)"),
    ("CUDA", "cannot read the driver's CUDA version"),
])
def test_a_driver_too_old_or_unreadable_is_refused(driver, message):
    with pytest.raises(stack.StackError, match=message):
        stack.torch_build("auto", driver, BUILDS)


def test_the_pins_are_pyprojects_without_torch():
    pins = stack.requirements(ROOT / "pyproject.toml")
    assert "hivemind==1.1.12" in pins and "transformers==4.34.1" in pins
    assert not [p for p in pins if p.startswith("torch")] and "tensor_parallel==1.0.23" in pins


def test_the_stack_check_runs_from_stdin_and_names_what_is_missing(tmp_path):
    """As the role runs it: compat.py's source, then files/stack_check.py, under a Python with nothing of
    ours (-S -I: no site-packages, no PYTHONPATH). Missing pins are named, nothing is imported."""
    source = (ROOT / "bench_client" / "compat.py").read_text() + "\n" + \
        (ROOT / "roles" / "netbench_host" / "files" / "stack_check.py").read_text()
    done = subprocess.run([sys.executable, "-S", "-I", "-", json.dumps(["hivemind==1.1.12", "psutil"])], input=source,
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["ok"] is False and found["torch"] is None
    assert found["problems"] == ["hivemind is not installed"]
