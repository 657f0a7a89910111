"""The experiment's Ansible passes `ansible-playbook --syntax-check` and `ansible-lint` (production
profile); every role of the experiment has meta/argument_specs.yml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
ENV = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
       "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.parametrize("inventory", ["inventory/local/hosts.yml", "inventory/emulated/hosts.yml",
                                       "inventory/cloud.example/hosts.yml"])
def test_syntax_check(inventory):
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", inventory, "site.yml"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_role_has_an_argument_spec():
    for role in ROLES:
        assert (ROOT / "roles" / role / "meta" / "argument_specs.yml").is_file(), role


def test_ansible_lint_production_profile():
    """The whole tree: every role, playbook and inventory (only Python, docs and generated folders left out)."""
    excludes = [f"--exclude={path}" for path in [".venv", ".cache", "results", "tests", "bench_client", "docs", "tools",
                                                 "build", ".ci"]]
    proc = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--offline", "--nocolor", *excludes],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    processed = int(proc.stderr.split(" files processed")[0].rsplit(" ", 1)[-1])
    roles = sum(1 for p in (ROOT / "roles").iterdir() if p.is_dir())
    assert processed >= 10 * roles, proc.stderr[-1000:]  # it really linted every role, playbook and inventory
