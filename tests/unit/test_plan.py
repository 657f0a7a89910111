"""Unit tests of the pre-flight plan (bench_client.orchestration.plan): every refusal, spans and memory sums.
Pure functions, no Ansible; tests/ansible/test_preflight_refusals.py runs the same refusals through Ansible."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench_client.core.models import get_model
from bench_client.orchestration.plan import PlanError, make_plan, parse_profiles

GIB_KB = 1024 * 1024


def config(**overrides):
    base = {
        "model": "netbench/tiny",
        "profiles": "none",
        "run_id": "t1",
        "groups": {"dht": ["a"], "servers": ["a"], "clients": ["a"]},
        "hosts": {"a": {"servers": 2, "mem_kb": 16 * GIB_KB, "machine_id": "m1"}},
    }
    base.update(overrides)
    return base


def refusal(**overrides) -> str:
    with pytest.raises(PlanError) as info:
        make_plan(config(**overrides))
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


def test_local_plan_covers_every_block():
    plan = make_plan(config())
    assert [s["span"] for s in plan["servers"]] == ["0:2", "2:4"]
    assert plan["dtype"] == "float32" and plan["num_gpus"] == 0
    assert [p["name"] for p in plan["profiles"]] == ["none"]
    assert plan["servers_by_host"]["a"][1]["port"] == 31401


def test_spans_spread_over_hosts_and_gpus():
    hosts = {h: {"device": "cuda", "gpus_mib": [81559] * 2, "mem_kb": 64 * GIB_KB} for h in ("g1", "g2")}
    hosts["c"] = {"mem_kb": 8 * GIB_KB}
    plan = make_plan(config(model="facebook/opt-30b", groups={"dht": ["c"], "servers": ["g1", "g2"], "clients": ["c"]},
                            hosts=hosts))
    assert [(s["host"], s["device"], s["span"]) for s in plan["servers"]] == [
        ("g1", "cuda:0", "0:12"), ("g1", "cuda:1", "12:24"), ("g2", "cuda:0", "24:36"), ("g2", "cuda:1", "36:48")]
    assert plan["dtype"] == "float16" and plan["num_gpus"] == 4 and plan["gpus_by_host"]["c"] == 0
    # the container devices the Docker runtime runs (each server's container sees only its GPU)
    assert [s["container_gpus"] for s in plan["servers"]] == ["device=0", "device=1", "device=0", "device=1"]
    assert [s["container_gpus"] for s in make_plan(config())["servers"]] == ["", ""]


def test_unknown_model():
    assert "unknown model 'facebook/opt-9000'" in refusal(model="facebook/opt-9000")


@pytest.mark.parametrize("profiles, expected", [
    ("lan-fast", "unknown profile 'lan-fast'"),
    ([{"name": "x", "delay": "10 parsecs"}], "delay"),
    ([{"name": "x", "rate": "fast"}], "rate"),
    ([{"rate": "20mbit"}], "needs a name"),
    ("none,none", "listed twice"),
    ([{"name": "none", "delay": "10ms"}], "the name 'none' is reserved (no shaping)"),
    ([{"name": "paper-10ms-1gbit", "delay": "50ms", "rate": "1gbit"}], "is reserved (the paper profiles)"),
    ([{"name": "paper-mine", "delay": "50ms"}], "is reserved (the paper profiles)"),
])
def test_bad_profiles(profiles, expected):
    assert expected in refusal(profiles=profiles)


def test_profiles_as_string_list_and_dicts():
    names = [p["name"] for p in parse_profiles('["none", {"name": "r20", "rate": "20mbit"}]')]
    assert names == ["none", "r20"]
    assert parse_profiles("paper-10ms-100mbit")[0]["netem"] == "paper-10ms-100mbit"


@pytest.mark.parametrize("group", ["dht", "servers", "clients"])
def test_missing_or_empty_group(group):
    groups = {"dht": ["a"], "servers": ["a"], "clients": ["a"]}
    groups[group] = []
    assert f"inventory group '{group}' is missing or empty" in refusal(groups=groups)
    del groups[group]
    assert f"inventory group '{group}'" in refusal(groups=groups)


def test_more_spans_than_blocks():
    message = refusal(hosts={"a": {"servers": 5, "mem_kb": 16 * GIB_KB}})
    assert "5 servers" in message and "only 4 blocks" in message


def test_gpu_runtime_without_gpus():
    message = refusal(hosts={"a": {"device": "cuda", "gpus_mib": [], "mem_kb": 16 * GIB_KB}})
    assert "no NVIDIA GPU" in message and "netbench_device=cpu" in message


def test_model_too_big_says_both_sizes():
    message = refusal(model="facebook/opt-175b")
    need = get_model("facebook/opt-175b").blocks_bytes("float32") / 1e9
    assert f"needs {need:.1f} GB" in message and "have 17.2 GB" in message


def test_namespace_hosts_of_one_machine_count_its_ram_once():
    hosts = {h: {"mem_kb": 4 * GIB_KB, "machine_id": "same"} for h in ("a", "b", "c")}
    groups = {"dht": ["a"], "servers": ["b", "c"], "clients": ["a"]}
    plan = make_plan(config(hosts=hosts, groups=groups))
    assert plan["memory"]["available_gb"] == pytest.approx(4.29, abs=0.01)


def test_runtime_without_role_tasks():
    docker_host = {"a": {"runtime": "docker", "servers": 2, "mem_kb": 16 * GIB_KB, "machine_id": "m1"}}
    assert "runtime 'docker' has no tasks" in refusal(runtimes_available=["process"], hosts=docker_host)
    # with the roles' tasks/docker.yml (there now: preflight_runtimes_available finds them) it is planned
    plan = make_plan(config(runtimes_available=["process", "docker"], hosts=docker_host))
    assert [s["name"] for s in plan["servers_by_host"]["a"]] == ["server0", "server1"]


def test_quantised_dtypes_are_planned_on_cpu_hosts_at_their_size():
    # bitsandbytes 0.50.2 runs int8/nf4 on the CPU (tests/unit/test_quantised_blocks.py)
    plans = {dtype: make_plan(config(dtype=dtype)) for dtype in ("float32", "int8", "nf4")}
    assert [plans[d]["dtype"] for d in plans] == ["float32", "int8", "nf4"]
    needed = [plans[d]["memory"]["needed_bytes"] for d in plans]
    assert needed[0] == 4 * needed[1] == 8 * needed[2]  # 4, 1 and 0.5 bytes per weight


def test_shaping_profile_on_an_inventory_without_shaping():
    assert "shaping is off" in refusal(profiles="paper-10ms-100mbit")


def test_cli_prints_plan_or_one_line_error():
    ok = subprocess.run([sys.executable, "-m", "bench_client.orchestration.plan", "--json", json.dumps(config())],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["num_servers"] == 2
    bad = subprocess.run([sys.executable, "-m", "bench_client.orchestration.plan", "--json", json.dumps(config(model="x"))],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown model 'x'") and bad.stderr.count("\n") == 1


def test_systems_default_petals_and_flexgen_on_the_first_gpu_server_host():
    plan = make_plan(config())
    assert plan["systems"] == ["petals"] and plan["system_hosts"] == {} and plan["one_host_systems"] == []
    hosts = {h: {"device": "cuda", "gpus_mib": [143771], "mem_kb": 128 * GIB_KB} for h in ("g1", "g2")}
    plan = make_plan(config(model="facebook/opt-6.7b", systems="petals,flexgen,transformers", hosts=hosts,
                            groups={"dht": ["g1"], "servers": ["g1", "g2"], "clients": ["g1"]}))
    assert plan["systems"] == ["petals", "flexgen", "transformers"]
    assert plan["system_hosts"] == {"flexgen": "g1", "transformers": "g1"}
    assert plan["one_host_systems"] == [{"name": "flexgen", "role": "flexgen_bench", "host": "g1"},
                                        {"name": "transformers", "role": "transformers_bench", "host": "g1"}]


def test_transformers_runs_on_a_cpu_server_where_no_server_has_a_gpu():
    """Its tests run the tiny model on the CPU; FlexGen needs CUDA and is refused there."""
    plan = make_plan(config(systems="petals,transformers"))
    assert plan["system_hosts"] == {"transformers": plan["groups"]["servers"][0]}


@pytest.mark.parametrize("systems, expected", [("petals,vllm", "subset of petals, flexgen, transformers"), (",", "subset"),
                                                ("flexgen", "must include petals"),
                                                ("petals,flexgen", "needs a CUDA GPU")])
def test_bad_systems(systems, expected):
    assert expected in refusal(systems=systems)


PAPER_WORKLOAD = {"batch_size": 2, "num_processes": 6, "prompt_lengths": [512], "new_tokens": 32, "token_sweep": "none"}
H200_MIB, H100_MIB = 143771, 81559


def one_gpu_host(mib: int, **host) -> dict:
    return {"groups": {"dht": ["g"], "servers": ["g"], "clients": ["g"]},
            "hosts": {"g": {"device": "cuda", "gpus_mib": [mib], "mem_kb": 128 * GIB_KB, **host}}}


def test_one_gpu_runs_the_papers_four_servers_with_a_cache_for_every_session():
    """What `site.yml -e netbench_device=cuda -e model=facebook/opt-30b` plans on one H200, as
    `local_swarm --servers 4` runs it: 4 servers on cuda:0, per-GPU throughput over 1 GPU, and a cache
    of batch 2 x (6 + 1) sessions x (512 + 32) tokens per server."""
    plan = make_plan(config(model="facebook/opt-30b", workload=PAPER_WORKLOAD, **one_gpu_host(H200_MIB)))
    assert [(s["device"], s["gpu"], s["span"]) for s in plan["servers"]] == [
        ("cuda:0", 0, "0:12"), ("cuda:0", 0, "12:24"), ("cuda:0", 0, "24:36"), ("cuda:0", 0, "36:48")]
    assert plan["num_gpus"] == 1 and plan["dtype"] == "float16"
    assert plan["attn_cache_tokens"] == 2 * 7 * 544 == plan["workload"]["attn_cache_tokens"]
    # the token sweep (0..32 at prompt 512) and longer prompts grow it; an explicit value wins
    swept = make_plan(config(model="facebook/opt-30b", workload={**PAPER_WORKLOAD, "prompt_lengths": [256, 1024],
                                                                 "token_sweep": "auto"}, **one_gpu_host(H200_MIB)))
    assert swept["attn_cache_tokens"] == 2 * 7 * (1024 + 32)
    fixed = make_plan(config(model="facebook/opt-30b", workload=PAPER_WORKLOAD, attn_cache_tokens="9000",
                             **one_gpu_host(H200_MIB)))
    assert fixed["attn_cache_tokens"] == 9000


def test_servers_per_gpu_and_per_host_spread_round_robin():
    two = {"groups": {"dht": ["g"], "servers": ["g"], "clients": ["g"]},
           "hosts": {"g": {"device": "cuda", "gpus_mib": [H200_MIB] * 2, "mem_kb": 128 * GIB_KB}}}
    auto = make_plan(config(model="facebook/opt-30b", **two))  # 2 GPUs: 2 each for the paper's 4
    assert [s["device"] for s in auto["servers"]] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert auto["num_gpus"] == 2
    two["hosts"]["g"]["servers_per_gpu"] = 3
    assert make_plan(config(model="facebook/opt-30b", **two))["num_servers"] == 6
    two["hosts"]["g"]["servers"] = 1  # netbench_servers_per_host wins
    only = make_plan(config(model="facebook/opt-30b", **two))
    assert [s["device"] for s in only["servers"]] == ["cuda:0"] and only["num_gpus"] == 1


def test_servers_that_do_not_fit_one_gpu_are_refused_counting_the_cache():
    message = refusal(model="facebook/opt-30b", workload=PAPER_WORKLOAD, **one_gpu_host(H100_MIB))
    assert message.startswith("g GPU 0: 4 server(s) of facebook/opt-30b in float16 with an attention cache of 7616 tokens")
    assert "blocks 59.2 GB + attention cache 10.5 GB" in message and "the GPU has 85.5 GB" in message
    assert "lower netbench_servers_per_gpu" in message
    assert "must be at least 1" in refusal(**one_gpu_host(H200_MIB, servers_per_gpu=0))
    assert "malformed" in refusal(workload={"prompt_lengths": ["long"]})


def test_namespace_hosts_of_one_machine_share_its_gpu():
    """The emulated lab on one GPU host: every server is a network namespace (same machine id) that sees the
    machine's one GPU. Per-GPU throughput divides by that one GPU, and its memory holds all their servers."""
    names = ["h2", "h3", "h4", "h5"]
    hosts = {h: {"device": "cuda", "gpus_mib": [H200_MIB], "mem_kb": 128 * GIB_KB, "machine_id": "m1", "servers": 1}
             for h in ["h1", *names]}
    groups = {"dht": ["h1"], "servers": names, "clients": ["h1"]}
    plan = make_plan(config(model="facebook/opt-30b", workload=PAPER_WORKLOAD, hosts=hosts, groups=groups))
    assert plan["num_servers"] == 4 and plan["num_gpus"] == 1
    # four H100-sized views of one GPU: each namespace alone would fit, together they do not
    for h in hosts:
        hosts[h]["gpus_mib"] = [H100_MIB]
    message = refusal(model="facebook/opt-30b", workload=PAPER_WORKLOAD, hosts=hosts, groups=groups)
    assert "4 server(s)" in message and "client processes" in message
    # on separate machines the same inventory is four GPUs
    for i, h in enumerate(names):
        hosts[h]["machine_id"] = f"m{i + 2}"
    assert make_plan(config(model="facebook/opt-30b", workload=PAPER_WORKLOAD, hosts=hosts, groups=groups))["num_gpus"] == 4
def test_a_paper_profile_spelled_out_with_its_own_values_keeps_its_name():
    from bench_client.netem import profiles as netem

    paper = netem.PAPER_PROFILES["paper-10ms-1gbit"]
    spelled = {"name": paper.name, "delay": f"{paper.delay_us}us", "rate": f"{paper.rate_bit}bit", "limit": paper.limit}
    assert make_plan(config(profiles=[spelled], hosts={"a": {"servers": 2, "mem_kb": 16 * GIB_KB, "machine_id": "m1",
                                                              "shaping": True}}))["profiles"][0]["name"] == paper.name


@pytest.mark.parametrize("bench, expected", [
    ({"prompt_lengths": 512}, {"prompt_lengths": [512]}),  # a scalar is one prompt length, not "5 1 2"
    ({"prompt_lengths": "512"}, {"prompt_lengths": [512]}),
    ({"prompt_lengths": "256,512"}, {"prompt_lengths": [256, 512]}),
    ({"prompt_lengths": "[256, 1024]"}, {"prompt_lengths": [256, 1024]}),
    ({"batch_size": "2", "new_tokens": 0, "timeout": None}, {"batch_size": 2, "new_tokens": 0}),
    ({"extra_args": ["--seed", 3]}, {"extra_args": ["--seed", "3"]}),
])
def test_bench_settings_are_converted(bench, expected):
    assert make_plan(config(variables=extra_vars(bench)))["bench"] == expected


def extra_vars(bench: dict) -> dict:
    """The plugin's input for host a: bench_client_<name> as the user set them (None: not set)."""
    return {"a": {f"bench_client_{k}": v for k, v in bench.items()}}


@pytest.mark.parametrize("bench, expected", [
    ({"batch_size": 0}, "bench_client_batch_size must be at least 1, got 0"),
    ({"new_tokens": -3}, "bench_client_new_tokens must be at least 0, got -3"),
    ({"num_processes": 1.5}, "bench_client_num_processes must be a whole number, got 1.5"),
    ({"num_micro_batches": "abc"}, "bench_client_num_micro_batches must be a whole number, got 'abc'"),
    ({"num_processes": True}, "must be a whole number, got True"),
    ({"prompt_lengths": "256,0"}, "bench_client_prompt_lengths must be at least 1, got 0"),
    ({"prompt_lengths": []}, "must be a non-empty list"),
    ({"token_sweep": "9:3"}, "bench_client_token_sweep: --token-sweep '9:3' must be"),
    ({"extra_args": "--seed 3"}, "bench_client_extra_args must be a list of flags"),
])
def test_bad_bench_settings(bench, expected):
    assert expected in refusal(variables=extra_vars(bench))


def test_become_only_where_the_login_user_is_not_root_and_has_root_tasks():
    """Root tasks (shaping, firewall, Docker) become root where the login user is not root; the swarm and
    the client never do. A user who cannot sudo without a password is refused, naming what needs root."""
    hosts = {"a": {"servers": 1, "mem_kb": 16 * GIB_KB, "machine_id": "m1", "uid": 1000, "user": "ubuntu",
                   "sudo": "True", "shaping": True},
             "b": {"servers": 1, "mem_kb": 16 * GIB_KB, "machine_id": "m2", "uid": 0, "user": "root", "shaping": True},
             "c": {"mem_kb": 16 * GIB_KB, "machine_id": "m3", "uid": 1000, "user": "ubuntu", "sudo": False}}
    groups = {"dht": ["c"], "servers": ["a", "b"], "clients": ["c"]}
    # without shaping, firewall or Docker nobody has root tasks, so nobody becomes root (the local inventory)
    unshaped = {name: {**data, "shaping": False} for name, data in hosts.items()}
    assert make_plan(config(hosts=unshaped, groups=groups))["become"] == {"a": False, "b": False, "c": False}
    # a server that may be shaped becomes root for it, also in a run without shaping (its cleanup unshapes)
    for profiles in ("none", "none,paper-10ms-1gbit"):
        plan = make_plan(config(hosts=hosts, groups=groups, profiles=profiles))
        assert plan["become"] == {"a": True, "b": False, "c": False}  # b logs in as root, c only runs the client
    firewalled = {**hosts, "c": {**hosts["c"], "firewall": True}}
    with pytest.raises(PlanError, match=r"host c: the swarm firewall \(nftables\) must run as root, but the login user ubuntu "
                                        r"\(uid 1000\) cannot sudo without a password"):
        make_plan(config(hosts=firewalled, groups=groups))
    # a become password in the inventory is enough (sudo -n fails, Ansible gives the password)
    with_password = {**firewalled, "c": {**firewalled["c"], "become_password": "True"}}
    assert make_plan(config(hosts=with_password, groups=groups))["become"]["c"] is True
    docker_no_sudo = {**hosts, "a": {**hosts["a"], "runtime": "docker", "sudo": "False"}}
    assert "host a: shaping (tc, sch_netem), the Docker runtime (docker, its packages) must run as root" in \
        refusal(hosts=docker_no_sudo, groups=groups)
    # a work directory the login user may not create (e.g. /var/lib/...) is created as root
    system_workdir = {**hosts, "c": {**hosts["c"], "sudo": True, "workdir_writable": "false"}}
    assert make_plan(config(hosts=system_workdir, groups=groups))["become"]["c"] is True


@pytest.mark.parametrize("overrides, expected", [
    # "$" matches before a final newline: these passed as folder names
    ({"run_id": "run\n"}, "run_id 'run\\n' is used as a results folder"),
    ({"profiles": [{"name": "wan\n", "delay": "10ms"}]}, "profile name 'wan\\n' is used as a results folder"),
])
def test_names_with_a_trailing_newline_are_refused(overrides, expected):
    hosts = {"a": {"servers": 2, "mem_kb": 16 * GIB_KB, "machine_id": "m1", "shaping": True}}
    assert expected in refusal(hosts=hosts, **overrides)


def test_names_are_anchored_at_the_true_end_everywhere():
    """Every name pattern of the package refuses a trailing newline (the audit of issue 24, item 2)."""
    from bench_client.core.models import validate_dht_prefix
    from bench_client.orchestration.plan import check_run_id
    from bench_client.swarm.peers import PeerError, resolve_initial_peers

    peer = "/ip4/127.0.0.1/tcp/31337/p2p/12D3KooWMqGg3Zdg4XvFxZD8cojWEqgqqJevewu4hpPzEWsjPtA9"
    assert resolve_initial_peers([peer]) == [peer]
    with pytest.raises(PeerError, match="is not a multiaddr"):
        resolve_initial_peers([peer + "\n"])
    assert check_run_id("r1") == "r1"
    with pytest.raises(PlanError):
        check_run_id("r1\n")
    with pytest.raises(ValueError, match="whitespace"):
        validate_dht_prefix("opt6b\n")


def test_gpus_are_told_apart_by_their_uuids_not_the_machine_id():
    """Cloned images: two GPU hosts with one /etc/machine-id were planned as one GPU (per-GPU numbers
    doubled). The probe's GPU UUIDs say which GPUs are one: the lab's namespaces see the same UUID."""
    hosts = {h: {"device": "cuda", "gpus_mib": [H200_MIB], "gpus_uuid": [f"GPU-{h}"], "mem_kb": 128 * GIB_KB,
                 "machine_id": "cloned", "servers": 2} for h in ("g1", "g2")}
    groups = {"dht": ["g1"], "servers": ["g1", "g2"], "clients": ["g1"]}
    plan = make_plan(config(model="facebook/opt-30b", workload=PAPER_WORKLOAD, hosts=hosts, groups=groups))
    assert plan["num_gpus"] == 2
    for h in hosts:  # namespaces of one machine, on different machine ids even: one GPU
        hosts[h]["gpus_uuid"], hosts[h]["machine_id"] = ["GPU-same"], h
    plan = make_plan(config(model="facebook/opt-30b", workload=PAPER_WORKLOAD, hosts=hosts, groups=groups))
    assert plan["num_gpus"] == 1
