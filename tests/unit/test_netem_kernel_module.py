"""How a host gets sch_netem (bench_client.netem.kernel.module_action), from the facts the netem
role's read-only probe reports, and the pre-flight plan's refusal. Pure functions: no kernel here;
tests/isolated/test_netem_module_vm.py installs the module for real in a VM whose kernel lacks it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench_client.netem.kernel import module_action
from bench_client.orchestration.plan import PlanError, make_plan

REPO = Path(__file__).resolve().parents[2]
UBUNTU = {"kernel": "6.8.0-1015-aws", "loaded": False, "builtin": False, "tree": True, "on_disk": False,
          "works": None, "manager": "apt", "package": "linux-modules-extra-6.8.0-1015-aws",
          "package_state": "available", "os": "ubuntu"}


@pytest.mark.parametrize("change, action", [
    ({"loaded": True}, "ok"),
    ({"builtin": True}, "ok"),
    ({"tree": False, "on_disk": None, "works": True}, "ok"),  # a container: the kernel loads it from the host
    ({"on_disk": True}, "load"),
    ({}, "install"),
    ({"package_state": "no-index"}, "refuse"),
    ({"package_state": "missing"}, "refuse"),
    ({"package_state": "installed"}, "refuse"),
    ({"package_state": "unknown"}, "refuse"),
    ({"manager": "", "package": "", "package_state": "unknown"}, "refuse"),
    ({"tree": False, "on_disk": None, "works": False}, "refuse"),
    ({"tree": False, "on_disk": None, "works": None}, "refuse"),
])
def test_action_from_facts(change, action):
    decided = module_action({**UBUNTU, **change}, "h2")
    assert decided.action == action, decided
    assert (decided.package == UBUNTU["package"]) == (action == "install")
    assert "h2 (kernel 6.8.0-1015-aws)" in decided.message


def test_refusals_name_what_is_missing_and_the_ways_out():
    missing = module_action({**UBUNTU, "package_state": "missing"}, "h2").message
    assert "lacks sch_netem" in missing and "linux-modules-extra-6.8.0-1015-aws is not in its apt package index" in missing
    assert "netem_backend: router" in missing and "rate-only" in missing
    assert "apt-get update" in module_action({**UBUNTU, "package_state": "no-index"}, "h2").message
    container = module_action({**UBUNTU, "tree": False, "on_disk": None, "works": False}, "h2").message
    assert "no module tree /lib/modules/6.8.0-1015-aws" in container
    unknown_distro = module_action({**UBUNTU, "manager": "", "package": "", "os": "alpine"}, "h2").message
    assert "no package for it is known" in unknown_distro and "alpine" in unknown_distro


def test_index_refresh_and_install_switches():
    refreshed = module_action({**UBUNTU, "package_state": "no-index"}, "h2", update_index=True)
    assert (refreshed.action, refreshed.refresh_index) == ("install", True)
    assert module_action(UBUNTU, "h2").refresh_index is False
    no_install = module_action(UBUNTU, "h2", install=False)
    assert no_install.action == "refuse" and "netem_module_install is false" in no_install.message
    assert module_action({**UBUNTU, "on_disk": True}, "h2", install=False).action == "load"  # loading is allowed


def test_rhel_family():
    facts = {**UBUNTU, "kernel": "5.14.0-427.el9.x86_64", "manager": "dnf", "os": "rocky",
             "package": "kernel-modules-extra-5.14.0-427.el9.x86_64"}
    decided = module_action(facts, "h3")
    assert (decided.action, decided.package) == ("install", "kernel-modules-extra-5.14.0-427.el9.x86_64")


def _plan(profiles, netem_module):
    host = {"servers": 2, "mem_kb": 16 * 1024 * 1024, "machine_id": "m1", "shaping": True, "netem_module": netem_module}
    return make_plan({"model": "netbench/tiny", "profiles": profiles, "run_id": "t1",
                      "groups": {"dht": ["a"], "servers": ["a"], "clients": ["a"]}, "hosts": {"a": host}})


def test_plan_refuses_a_host_without_netem_only_for_profiles_that_need_it():
    refused = module_action({**UBUNTU, "package_state": "missing"}, "a").as_dict()
    with pytest.raises(PlanError) as info:
        _plan("none,paper-10ms-100mbit", refused)
    assert str(info.value).startswith("profile(s) paper-10ms-100mbit need sch_netem: a (kernel 6.8.0-1015-aws) lacks")
    # rate-only: tbf shapes it without netem; none: nothing shaped; not probed (router backend): no refusal
    assert _plan([{"name": "r50", "rate": "50mbit"}], refused)["profiles"][0]["needs_netem"] is False
    assert _plan("none", refused)["profiles"][0]["needs_netem"] is False
    assert _plan("paper-10ms-100mbit", None)["profiles"][0]["needs_netem"] is True
    for action in ("ok", "load", "install"):
        _plan("paper-10ms-100mbit", {**refused, "action": action})


def test_probe_on_this_machine_reports_valid_facts(tmp_path):
    """The probe's JSON on this machine's kernel, whatever it has: well-formed and decidable."""
    out = subprocess.run(["sh", str(REPO / "roles" / "netem" / "files" / "netemctl.sh"), "module", "-", str(tmp_path)],
                         capture_output=True, text=True, timeout=180, check=True).stdout
    facts = json.loads(out)
    assert facts["kernel"] == subprocess.run(["uname", "-r"], capture_output=True, text=True, check=True).stdout.strip()
    assert facts["package_state"] in ("installed", "available", "missing", "no-index", "unknown")
    assert module_action(facts, "here").action in ("ok", "load", "install", "refuse")
