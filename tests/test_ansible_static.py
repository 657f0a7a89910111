"""The experiment's Ansible passes `ansible-playbook --syntax-check` and `ansible-lint` (production
profile); every role of the experiment has meta/argument_specs.yml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The experiment's own roles and playbooks; roles/netem, roles/swarm_image, ... are linted by their owners' tests.
OWN_ROLES = ["preflight", "netbench_host", "petals_dht", "petals_server", "bench_client", "flexgen_bench"]
OWN_PATHS = ["site.yml", "playbooks/preflight.yml", "playbooks/provision.yml", "playbooks/swarm.yml",
             "playbooks/experiment.yml", "playbooks/cleanup.yml", "playbooks/flexgen.yml", "playbooks/tasks",
             *[f"roles/{r}" for r in OWN_ROLES], "inventory"]
ENV = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
       "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.parametrize("inventory", ["inventory/local/hosts.yml", "inventory/emulated/hosts.yml",
                                       "inventory/cloud.example/hosts.yml"])
def test_syntax_check(inventory):
    proc = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", inventory, "site.yml"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_role_has_an_argument_spec():
    for role in OWN_ROLES:
        assert (ROOT / "roles" / role / "meta" / "argument_specs.yml").is_file(), role


def test_ansible_lint_production_profile():
    others = [str(p.relative_to(ROOT)) for p in (ROOT / "roles").iterdir() if p.is_dir() and p.name not in OWN_ROLES]
    others += [str(p.relative_to(ROOT)) for p in (ROOT / "playbooks").glob("*.yml") if str(p.relative_to(ROOT)) not in OWN_PATHS]
    # --exclude=PATH: the spaced form takes every following argument, the paths to lint included
    excludes = [f"--exclude={path}" for path in [*others, ".venv", ".cache", "results", "tests", "bench_client"]]
    proc = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--offline", "--nocolor", *excludes,
                           *OWN_PATHS], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    processed = int(proc.stderr.split(" files processed")[0].rsplit(" ", 1)[-1])
    assert processed >= 30, proc.stderr[-1000:]  # it really linted our playbooks, roles and inventories
