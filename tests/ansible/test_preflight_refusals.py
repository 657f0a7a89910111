"""Every pre-flight refusal through the real playbook (site.yml on the local inventory, through the
runner): the run fails in the pre-flight play with a message saying what to fix, and no host was
changed (no work directory, no process). The GPU refusal is real: this machine has no NVIDIA GPU."""

from __future__ import annotations

import io
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from bench_client.orchestration.runner import run_experiment

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "unknown-model": ({"model": "facebook/opt-9000"}, None, "unknown model 'facebook/opt-9000'"),
    "unknown-profile": ({"profiles": "lan-fast"}, None, "unknown profile 'lan-fast'"),
    "malformed-delay": ({"profiles": [{"name": "wan", "delay": "10 parsecs", "rate": "100mbit"}]}, None,
                        "delay: expected a time such as 10ms"),
    "malformed-rate": ({"profiles": [{"name": "wan", "delay": "10ms", "rate": "100 megabits"}]}, None,
                       "rate: expected a tc rate"),
    "more-spans-than-blocks": ({"netbench_servers_per_host": 5}, None, "5 servers (localhost: 5) but netbench/tiny has only 4 blocks"),
    "gpu-without-gpus": ({"netbench_device": "cuda"}, None, "GPU runtime asked (netbench_device=cuda) but no NVIDIA GPU"),
    "model-does-not-fit": ({"model": "facebook/opt-175b"}, None, "facebook/opt-175b in float32 needs 695.8 GB"),
    "shaping-on-local": ({"profiles": "paper-10ms-100mbit"}, None, "shaping is off on localhost"),
    # docker is implemented by the roles now (tests/isolated/test_site_docker_runtime.py runs it); a runtime without tasks
    # is refused too (tests/unit/test_plan.py::test_runtime_without_role_tasks)
    "unknown-runtime": ({"netbench_runtime": "podman"}, None, "netbench_runtime must be one of process, docker, got 'podman'"),
    "unknown-system": ({"systems": "petals,vllm"}, None, "expected a comma-separated subset of petals, flexgen, transformers"),
    "flexgen-without-gpu": ({"systems": "petals,flexgen"}, None, "flexgen, which needs a CUDA GPU"),
    # custom profiles may not pass for the unshaped or the paper's rows
    "reserved-profile-none": ({"profiles": [{"name": "none", "delay": "10ms"}]}, None,
                              "the name 'none' is reserved (no shaping)"),
    "reserved-profile-paper": ({"profiles": [{"name": "paper-10ms-1gbit", "delay": "50ms", "rate": "1gbit"}]}, None,
                               "the name 'paper-10ms-1gbit' is reserved (the paper profiles)"),
    # the bench_client role's variables, checked in the pre-flight (formerly after the swarm started)
    "bench-batch-zero": ({"bench_client_batch_size": 0}, None, "bench_client_batch_size must be at least 1, got 0"),
    "bench-tokens-negative": ({"bench_client_new_tokens": -3}, None, "bench_client_new_tokens must be at least 0"),
    "bench-processes-fraction": ({"bench_client_num_processes": 1.5}, None,
                                 "bench_client_num_processes must be a whole number, got 1.5"),
    "bench-micro-batches-word": ({"bench_client_num_micro_batches": "abc"}, None,
                                 "bench_client_num_micro_batches must be a whole number, got 'abc'"),
    "bench-prompt-zero": ({"bench_client_prompt_lengths": "512,0"}, None,
                          "bench_client_prompt_lengths must be at least 1, got 0"),
    "bench-token-sweep": ({"bench_client_token_sweep": "9:3"}, None, "bench_client_token_sweep: --token-sweep '9:3'"),
    # values that cannot be meant: a zero rate was applied as "no rate limit"
    "zero-rate": ({"profiles": [{"name": "wan", "delay": "10ms", "rate": "0mbit"}]}, None,
                  "rate: '0mbit' is no rate at all"),
    "profile-name-newline": ({"profiles": [{"name": "wan\n", "delay": "10ms"}]}, None,
                             "profile name 'wan\\n' is used as a results folder"),
    "repeats-zero": ({"repeats": 0}, None, "repeats must be at least 1, got 0"),
    "unknown-dtype": ({"dtype": "float8"}, None, "unknown dtype 'float8'; choose one of"),
    "boolean-typo": ({"flexgen_bench_search": "ture"}, None, "flexgen_bench_search must be true or false"),
    "missing-group": ({}, "servers", "inventory group 'servers' is missing or empty"),
    "empty-group": ({}, "clients-empty", "inventory group 'clients' is missing or empty"),
}


def write_inventory(path: Path, variant: str | None) -> Path:
    groups = {"dht": "localhost:", "servers": "localhost:", "clients": "localhost:"}
    if variant == "servers":
        del groups["servers"]
    elif variant == "clients-empty":
        groups["clients"] = ""
    children = "".join(f"    {g}:\n" + (f"      hosts:\n        {h}\n" if h else "      hosts: {}\n")
                       for g, h in groups.items())
    path.write_text(textwrap.dedent("""\
        all:
          vars:
            ansible_connection: local
            ansible_python_interpreter: "{{ ansible_playbook_python }}"
            netbench_python: "{{ ansible_playbook_python }}"
            model: netbench/tiny
            netbench_servers_per_host: 2
            netbench_dht_port: 0
            netbench_server_port_base: 0
          children:
        """) + children)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_any_host_changes(case, tmp_path):
    extravars, variant, expected = CASES[case]
    workdir = tmp_path / "work"
    inventory = (write_inventory(tmp_path / "hosts.yml", variant) if variant
                 else ROOT / "inventory" / "local" / "hosts.yml")
    out = io.StringIO()
    result = run_experiment(inventory=inventory, tags="provision", out=out,
                            extravars={**extravars, "netbench_workdir": str(workdir),
                                       "results_dir": str(tmp_path / "results")})
    assert result.rc != 0, out.getvalue()
    messages = " ".join(f.message for f in result.failures)
    assert expected in messages, out.getvalue()
    assert all(f.task.startswith("preflight") for f in result.failures), result.failures
    assert not workdir.exists(), "a host was changed before the refusal"
    assert not any(t.status == "changed" for t in result.timings)


def test_the_client_runs_the_settings_the_preflight_converted(tmp_path):
    """-e bench_client_prompt_lengths=512 (a scalar, as -e key=value gives it) reaches the client's command
    line as one prompt length, through the real pre-flight and the bench_client role's own variables."""
    import subprocess
    import sys

    play = tmp_path / "render.yml"
    play.write_text(textwrap.dedent(f"""\
        - name: Pre-flight
          ansible.builtin.import_playbook: {ROOT}/playbooks/preflight.yml
        - name: Render the client's command line as the bench_client role would
          hosts: clients
          gather_facts: false
          vars_files: [{ROOT}/roles/bench_client/defaults/main.yml, {ROOT}/roles/bench_client/vars/main.yml]
          vars:
            bench_client_initial_peers: []
          tasks:
            - name: Write it
              ansible.builtin.copy:
                content: "{{{{ bench_client_args | to_json }}}}"
                dest: {tmp_path / "args.json"}
                mode: "0600"
        """))
    result = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                             str(ROOT / "inventory" / "local" / "hosts.yml"), str(play), "-e",
                             "bench_client_prompt_lengths=512", "-e", "bench_client_batch_size=2", "-e",
                             f"netbench_workdir={tmp_path / 'work'}"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    args = json.loads((tmp_path / "args.json").read_text())
    at = args.index("--prompt-lengths")
    assert args[at + 1:at + 3] == ["512", "--new-tokens"], args
    assert args[args.index("-b") + 1] == "2"


@pytest.mark.parametrize("kind", ["other-owner", "world-writable", "symlink"])
def test_a_work_directory_not_ours_is_refused_and_left_alone(kind, tmp_path):
    """The host's work directory (pidfiles root then acts on) must be the run user's, writable by no one else."""
    import os

    target = tmp_path / "theirs"
    target.mkdir()
    workdir = target
    if kind == "other-owner":
        os.chown(target, 65534, 65534)
    elif kind == "world-writable":
        target.chmod(0o777)
    else:
        workdir = tmp_path / "link"
        workdir.symlink_to(target)
    out = io.StringIO()
    result = run_experiment(inventory=ROOT / "inventory" / "local" / "hosts.yml", tags="provision", out=out,
                            extravars={"netbench_workdir": str(workdir), "results_dir": str(tmp_path / "results")})
    assert result.rc != 0, out.getvalue()
    messages = " ".join(f.message for f in result.failures)
    assert f"work directory {workdir} must be a directory of the run's user" in messages, out.getvalue()
    assert list(target.iterdir()) == [], "something was written into a directory that is not ours"


@pytest.mark.root
def test_probe_names_one_machine_the_same_from_every_namespace_even_without_machine_id(tmp_path):
    """The pre-flight probe's machine id decides which hosts share a GPU (the emulated lab's namespaces on one
    GPU host). The GPU hosts' image has no /etc/machine-id: the probe must then still give every namespace of
    the machine the same id (the kernel's boot id), or 4 namespace servers on one GPU count as 4 GPUs."""
    import yaml

    probe = yaml.safe_load((ROOT / "roles/preflight/tasks/probe.yml").read_text())[0]["ansible.builtin.shell"]["cmd"]
    script = tmp_path / "probe.sh"
    script.write_text(probe)
    empty = tmp_path / "empty"
    empty.write_text("")
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    ids = []
    for hide in (False, True):
        mount = f"mount --bind {empty} /etc/machine-id && " if hide else ""
        # a private mount namespace (the bind mount stays in it) and a fresh network namespace, as a lab host
        out = subprocess.run(["unshare", "--mount", "--net", "sh", "-c", f"{mount}sh {script}"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        probed = json.loads(out)  # one JSON object (the role reads it with from_json)
        assert probed["mem_kb"] > 0 and probed["gpus_mib"] == [], probed  # no NVIDIA GPU on this machine
        ids.append(probed["machine_id"])
    machine_id = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
    assert ids[0] == (machine_id or f"boot-{boot_id}")
    assert ids[1] == f"boot-{boot_id}"


def test_every_variable_is_checked_in_the_preflight_before_any_host_changes(tmp_path):
    """One real site.yml with a bad value of every variable the plan knows (bench_client.orchestration.variables):
    the pre-flight refuses them all in one message, each by name, and nothing ran past it. One run, not
    one per variable: the values reach the plan through the same hostvars whatever the variable."""
    from bench_client.orchestration.variables import VARIABLES

    bad = {name: spec.bad for name, spec in VARIABLES.items() if name != "results_dir"}  # results: where this test looks
    out = io.StringIO()
    result = run_experiment(inventory=ROOT / "inventory" / "local" / "hosts.yml", tags="provision", out=out,
                            extravars={**bad, "results_dir": str(tmp_path / "results")})
    assert result.rc != 0, out.getvalue()
    assert all(f.task.startswith("preflight") for f in result.failures), result.failures
    message = " ".join(f.message for f in result.failures)
    unnamed = [name for name in bad if f"{name} " not in message and f"{name}:" not in message]
    assert not unnamed, (unnamed, message)
    assert not any(t.status == "changed" for t in result.timings)
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["results"]), list(tmp_path.iterdir())


def test_an_existing_work_directory_keeps_its_mode(tmp_path):
    """Provisioning chmod'ed whatever it was given to 0700: `-e netbench_workdir=/` locked / and /run, a
    shared 0755 directory was locked to its owner. Only a directory it creates gets a mode (and / is
    refused by the plan, test_variables). One run: the shared directory kept, the run/ made in it 0700."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    out = io.StringIO()
    result = run_experiment(inventory=ROOT / "inventory" / "local" / "hosts.yml", tags="provision", out=out,
                            extravars={"netbench_workdir": str(shared), "results_dir": str(tmp_path / "results")})
    assert result.rc == 0, out.getvalue()
    assert (shared.stat().st_mode & 0o777, (shared / "run").stat().st_mode & 0o777) == (0o755, 0o700)
