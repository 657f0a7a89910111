"""The systems under test are declared once (bench_client.systems): nothing else compares a system's name."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bench_client.systems import registry
from bench_client.systems.base import Hosts

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bench_client"
NAME = "|".join(re.escape(name) for name in registry.SYSTEMS)
# `== "flexgen"`, `"petals" != x`, `"petals" in systems`, `x in ("petals", ...)`; a for loop over package
# names ("torch", "petals", ...) is no comparison
COMPARISONS = (re.compile(rf"""(==|!=)\s*["']({NAME})["']"""),
               re.compile(rf"""["']({NAME})["']\s*(==|!=|in\b|not\s+in\b)"""),
               re.compile(rf"""\bin\s*[(\[{{][^)\]}}]*["']({NAME})["']"""))


def comparisons(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if not line.lstrip().startswith(("for ", "#")) and any(p.search(line) for p in COMPARISONS)]


def test_the_grep_finds_what_it_looks_for():
    assert comparisons('if r.system == "flexgen":\n    x = "petals" in systems\nok = s in ("a", "transformers")')
    assert not comparisons('for package in ("torch", "petals"):\nname = "flexgen"\nif system.networked:')


def test_no_string_comparison_with_a_system_name_outside_the_registry():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if PACKAGE / "systems" in path.parents:
            continue
        hits = comparisons(path.read_text())
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert not found, found


def test_every_system_has_its_role_with_the_common_entry_points():
    for system in registry.SYSTEMS.values():
        role = ROOT / "roles" / system.role
        assert (role / "tasks" / "main.yml").is_file() and (role / "tasks" / "stop.yml").is_file(), system.role
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        assert "main" in specs, system.role


def test_one_host_systems_are_tagged_in_the_systems_play():
    """--tags NAME runs one system alone (-e systems=petals,NAME --tags NAME): the play carries each tag."""
    plays = yaml.safe_load((ROOT / "playbooks" / "systems.yml").read_text())
    tags = {tag for play in plays for tag in play.get("tags", [])}
    assert {s.name for s in registry.SYSTEMS.values() if s.hosts is not Hosts.SWARM} <= tags


def test_a_record_of_an_unknown_system_is_still_reported_under_its_name():
    assert registry.of_record(None) is registry.DEFAULT
    other = registry.of_record("vllm")
    assert (other.name, other.label, other.networked) == ("vllm", "vllm", True)


def test_cleanup_stops_every_one_host_system():
    # cleanup stops every pidfile of each host's run/ directories in one daemon stop
    # (playbooks/tasks/stop_processes.yml): each one-host system's pidfile must be in one of them
    stop = (ROOT / "playbooks" / "tasks" / "stop_processes.yml").read_text()
    for system in registry.SYSTEMS.values():
        if system.hosts is Hosts.SWARM:
            continue
        role_vars = yaml.safe_load((ROOT / "roles" / system.role / "vars" / "main.yml").read_text())
        assert role_vars[f"{system.role}_pidfile"].startswith(f"{{{{ {system.role}_workdir }}}}/run/"), system
        assert f"{system.role}_workdir | default(netbench_workdir)" in stop, system
