"""Every documented -e variable is checked by the plan before any host changes (issue 24, item 1).

The list comes from the documentation itself (docs/experiment.md, the README's main variables), so a
variable documented later without a check fails here; each one's bad value (the table's own, tried by
docs/bad-inputs.md too) goes through the plan as the pre-flight's action plugin hands it over."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench_client.orchestration import variables
from bench_client.orchestration.plan import PlanError, make_plan

from test_plan import config

ROOT = Path(__file__).resolve().parents[2]
# checked by the plan against its own tables (models, profiles, dtypes, systems) under these input keys
PLAN_INPUTS = {"model": "facebook/opt-9000", "profiles": "lan-fast", "dtype": "float8", "run_id": "../x",
               "systems": "petals,vllm"}


def documented_variables() -> set[str]:
    """The -e variables docs/experiment.md and the README name: `-e name=...` anywhere, and every
    backticked name of their variables paragraphs (bench_client_{a,b} spelled out)."""
    names = set()
    for doc in (ROOT / "docs" / "experiment.md", ROOT / "README.md"):
        text = doc.read_text()
        names |= set(re.findall(r"-e\s+([a-z][a-z0-9_]*)=", text))
        for paragraph in re.findall(r"(?:\*\*Variables\*\*|Main variables) \(`-e`\):(.*?)(?:\n\n|$)", text, re.S):
            for stem, inner in re.findall(r"`([a-z][a-z0-9_]*_)\{([a-z0-9_,]+)\}`", paragraph):
                names |= {stem + part for part in inner.split(",")}
            names |= {n for n in re.findall(r"`([a-z][a-z0-9_]*)(?:=[^`]*)?`", paragraph)}
    return names - {"none", "cpu", "cuda", "process", "docker", "float16", "bfloat16", "float32"}  # values, not names


def test_the_documentation_names_the_variables_we_expect():
    documented = documented_variables()
    # a sample, so that a change of the docs' layout cannot silently empty the list
    assert {"repeats", "model", "profiles", "bench_client_token_sweep", "petals_server_wait_timeout",
            "netbench_unshape", "netbench_harness", "systems"} <= documented, documented


@pytest.mark.parametrize("name", sorted(documented_variables()))
def test_every_documented_variable_has_a_check(name):
    assert name in variables.VARIABLES or name in PLAN_INPUTS, \
        f"{name} is documented but bench_client.orchestration.variables does not check it"


@pytest.mark.parametrize("name", sorted(variables.VARIABLES))
def test_a_bad_value_of_each_variable_is_refused_naming_it(name):
    bad = variables.VARIABLES[name].bad
    with pytest.raises(PlanError) as info:
        make_plan(config(variables={"a": {name: bad}}))
    message = str(info.value)
    assert message.startswith(name) and "\n" not in message, message
    assert repr(bad) in message or str(bad) in message, message  # the value as given


@pytest.mark.parametrize("name", sorted(PLAN_INPUTS))
def test_a_bad_value_of_each_plan_input_is_refused(name):
    with pytest.raises(PlanError, match=re.escape(repr(PLAN_INPUTS[name]))):
        make_plan(config(**{name: PLAN_INPUTS[name]}))


@pytest.mark.parametrize("name, value, expected", [
    ("repeats", "3", 3),
    ("flexgen_bench_search", "False", False),
    ("netbench_unshape", "yes", True),
    ("netbench_firewall", 0, False),
    ("netbench_dht_port", "0", 0),
    ("netem_rate_achieved_fraction", "0.85", 0.85),
    ("bench_client_extra_args", ["--seed", 3], ["--seed", "3"]),
    ("bench_client_extra_args", '["--max-retries", "2"]', ["--max-retries", "2"]),
    ("flexgen_bench_environment", {"PYTHONPATH": "/opt/site"}, {"PYTHONPATH": "/opt/site"}),
    ("netbench_workdir", "/var/lib/petals-netbench", "/var/lib/petals-netbench"),
    ("netbench_servers_per_host", "", None),  # the local inventory's "{{ 2 if cpu else '' }}": not set
])
def test_good_values_are_converted(name, value, expected):
    assert variables.check_variables({name: value}).get(name) == expected


@pytest.mark.parametrize("name, value, expected", [
    ("repeats", 0, "repeats must be at least 1, got 0"),
    ("flexgen_bench_search", "ture", "flexgen_bench_search must be true or false (or yes/no, on/off, 1/0), got 'ture'"),
    ("netbench_dht_port", 70000, "netbench_dht_port must be a TCP port in 0-65535 (0: any free port), got 70000"),
    ("netem_iperf_port", 0, "netem_iperf_port must be a TCP port in 1-65535, got 0"),
    ("petals_server_throughput", "0", "petals_server_throughput must be above 0, got 0"),
    ("netem_ping_interval", "nan", "netem_ping_interval must be a number, got 'nan'"),
    ("bench_client_extra_args", ["--out", "x"], "bench_client_extra_args may not set --out (it would override the "
                                                "role's --output)"),
    ("bench_client_extra_args", ["-b", "4"], "may not set -b"),
    ("bench_client_extra_args", ["--repeats=0"], "may not set --repeats"),
    ("netbench_workdir", "work", "netbench_workdir must be an absolute path of a directory of its own (not /), got 'work'"),
    ("netbench_workdir", "/tmp/w\n", "got '/tmp/w\\n'"),
    ("results_dir", "", "results_dir must be a non-empty path, got ''"),
])
def test_refusals_say_what_is_allowed(name, value, expected):
    with pytest.raises(variables.VariableError) as info:
        variables.check_variables({name: value})
    assert expected in str(info.value)


def test_every_bad_variable_is_named_at_once_and_a_hosts_own_value_names_the_host():
    hosts = {"a": {"servers": 2, "mem_kb": 16 * 1024 * 1024, "machine_id": "m1"}, "b": {"machine_id": "m2"}}
    groups = {"dht": ["a"], "servers": ["a"], "clients": ["b"]}
    with pytest.raises(PlanError) as info:
        make_plan(config(hosts=hosts, groups=groups,
                         variables={"a": {"repeats": 0, "netem_ping_count": 0}, "b": {"repeats": 0}}))
    assert str(info.value) == "repeats must be at least 1, got 0; host a: netem_ping_count must be at least 1, got 0"


def test_the_server_ports_must_fit_below_65536():
    with pytest.raises(PlanError, match="server 1 of a host would listen on port 65536"):
        make_plan(config(server_port_base=65535))


def _argument_spec_options() -> dict[str, list[tuple[str, dict]]]:
    """Every role's documented options: name -> [(role, option spec)]."""
    import yaml

    found: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        for entry in (yaml.safe_load(path.read_text()).get("argument_specs") or {}).values():
            for name, option in (entry.get("options") or {}).items():
                found.setdefault(name, []).append((path.parts[-3], option))
    return found


def test_the_checks_agree_with_the_roles_argument_specs():
    """The plan's table and meta/argument_specs.yml (what Ansible checks when a role starts, too late
    to refuse before any host changes) say the same type and choices; 'raw' takes anything."""
    options = _argument_spec_options()
    for name, spec in variables.VARIABLES.items():
        for role, option in options.get(name, []):
            kind = option.get("type", "str")
            if kind == "raw":
                continue
            assert {"path": "str"}.get(kind, kind) == spec.check.kind, (name, role, kind, spec.check.kind)
            if option.get("choices"):  # roles/netbench documents netbench_runtime without (the plan says which)
                assert tuple(option["choices"]) == spec.check.choices, (name, role)


def test_every_checked_variable_is_read_somewhere():
    """No entry for a variable nothing reads (the table would promise a check of nothing)."""
    text = "".join(p.read_text() for pattern in ("roles/**/*.yml", "playbooks/**/*.yml", "site.yml", "inventory/**/*.yml")
                   for p in ROOT.glob(pattern))
    unread = [name for name in variables.VARIABLES if not re.search(rf"\b{name}\b", text)]
    assert not unread, unread
