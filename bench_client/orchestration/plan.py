"""The experiment plan: validate what the user asked against the inventory, before any host changes.

The Ansible pre-flight play collects the inventory (groups, per-host devices, memory, GPUs found by
a read-only probe) and the user's choices (model, dtype, profiles), and passes them as one dict to
its action plugin ``netbench_plan`` (roles/preflight/action_plugins), which calls :func:`run_plan`
in the controller's ansible-playbook process and returns the plan (servers with their block spans,
ports and container devices, resolved profiles, memory sums) or fails with the PlanError's message.
By hand, the same input:

    python -m bench_client.orchestration.plan --json '{...}'        # or --file plan-input.json

prints the plan as JSON or exits with code 2 and ONE line ``error: <what is wrong and what to fix>``.
Everything here is a pure function, so each refusal is unit-tested without Ansible.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench_client.netem import profiles as netem
from bench_client.core import progress, provenance
from bench_client.orchestration import variables
from bench_client.core.models import WEIGHT_DTYPES, UnknownModelError, get_model, split_blocks
from bench_client.core.sweep import TOKEN_SWEEP_PROMPT_LENGTH, attention_cache_tokens, parse_token_sweep
from bench_client.systems import registry
from bench_client.systems.base import Hosts, System
from bench_client.core.arguments import description

GROUPS = ("dht", "servers", "clients")
RUNTIMES = ("process", "docker")
DEVICES = ("cpu", "cuda")
# a folder name: always fullmatch (a "$" anchor matches before a final newline, so "run\n" would pass)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
GB = 1e9
# The paper's swarm has 4 GPUs; with fewer GPUs in the inventory each one runs several servers, as
# `local_swarm --servers 4` emulates the 4-server swarm on one GPU.
PAPER_SERVERS = 4
# Per CUDA process (each server, each GPU client process): its CUDA context and allocator slack.
CUDA_PROCESS_BYTES = 2**30
# The bench_client role's defaults: the workload the attention cache is sized for when none is given.
DEFAULT_WORKLOAD = {"batch_size": 1, "num_processes": 6, "prompt_lengths": [256, 512, 1024], "new_tokens": 32,
                    "token_sweep": "none", "client_dtype": "float32", "repeats": 1}


class PlanError(ValueError):
    """A refusal: the message says what is wrong and what to change."""


def resolve_profile(item: Any) -> dict[str, Any]:
    """A profile name or a custom dict -> ``{"name", "netem", "describe"}``.

    ``netem`` is what the netem role takes as netem_profile (None: no shaping); bench_client.netem.profiles
    owns the profile table, the tc unit syntax and the safety floors.
    """
    try:
        profile = netem.resolve_profile(item)
    except netem.ProfileError as exc:
        raise PlanError(f"network profile {item!r}: {exc}") from None
    if profile is None:
        return {"name": netem.NO_SHAPING, "netem": None, "describe": None, "needs_netem": False}
    if isinstance(item, dict):
        if not item.get("name"):
            raise PlanError(f"custom network profile {item!r} needs a name (it names the results folder), "
                            "e.g. {name: wan50, delay: 50ms, rate: 100mbit}")
        spec: Any = {k: v for k, v in item.items() if v not in (None, "")}
    else:
        spec = profile.name
    # needs_netem: delay, jitter or loss (a rate-only profile can be shaped with tbf, without sch_netem)
    return {"name": profile.name, "netem": spec, "describe": profile.describe(), "needs_netem": profile.needs_netem}


def _flag(value: Any) -> bool:
    """A boolean from Jinja or JSON: true/false, or the strings Ansible leaves ("True", "false", "yes")."""
    return str(value).strip().lower() in ("true", "yes", "1", "on")


@dataclass(frozen=True)
class HostInfo:
    name: str
    device: str  # cpu | cuda
    runtime: str  # process | docker
    servers: int | None  # requested servers on this host (None: servers_per_gpu on each GPU, or 1 on CPU)
    servers_per_gpu: int | None  # None: enough for PAPER_SERVERS servers over the inventory's GPUs
    gpus_mib: tuple[int, ...]  # memory of each GPU the probe found
    mem_bytes: int  # host RAM (MemTotal)
    shaping: bool  # may this host's links be shaped (root, tc)?
    address: str
    machine_id: str  # namespaces of one machine share /etc/machine-id, and its RAM
    # how the host gets sch_netem (bench_client.netem.kernel.module_action, from the netem role's probe);
    # None where not probed (no shaping, the router backend)
    netem_module: dict[str, Any] | None = None
    # the login user (the probe's id -u / id -un), whether it may `sudo -n`, whether the inventory gives
    # a become password, and whether the swarm firewall is asked for: what decides become below
    uid: int = 0
    user: str = "root"
    sudo: bool = False
    become_password: bool = False
    firewall: bool = False
    workdir_writable: bool = True  # the work directory exists, or the login user may create it
    # each GPU's UUID (nvidia-smi), in the order of gpus_mib: which GPUs are one, whatever the machine id
    # (cloned images share /etc/machine-id; a lab's namespaces see the same GPUs); () where not probed
    gpus_uuid: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> HostInfo:
        device = str(data.get("device") or "cpu")
        runtime = str(data.get("runtime") or "process")
        if device not in DEVICES:
            raise PlanError(f"host {name}: device {device!r} is not one of {', '.join(DEVICES)} (set netbench_device)")
        if runtime not in RUNTIMES:
            raise PlanError(f"host {name}: runtime {runtime!r} is not one of {', '.join(RUNTIMES)} (set netbench_runtime)")
        return cls(name=name, device=device, runtime=runtime,
                   servers=_count(data.get("servers"), name, "netbench_servers_per_host"),
                   servers_per_gpu=_count(data.get("servers_per_gpu"), name, "netbench_servers_per_gpu"),
                   gpus_mib=tuple(int(m) for m in data.get("gpus_mib") or ()),
                   mem_bytes=int(data.get("mem_kb") or 0) * 1024, shaping=_flag(data.get("shaping", False)),
                   address=str(data.get("address") or "127.0.0.1"), machine_id=str(data.get("machine_id") or name),
                   netem_module=data.get("netem_module") or None, uid=int(data.get("uid") or 0),
                   user=str(data.get("user") or "root"), sudo=_flag(data.get("sudo")),
                   become_password=_flag(data.get("become_password")), firewall=_flag(data.get("firewall")),
                   workdir_writable=_flag(data.get("workdir_writable", True)),
                   gpus_uuid=tuple(str(u) for u in data.get("gpus_uuid") or ()))

    def server_count(self, inventory_gpus: int) -> int:
        """Servers on this host. On CUDA: netbench_servers_per_host if set, else netbench_servers_per_gpu
        on each GPU, whose default gives the whole inventory PAPER_SERVERS servers (4 on one GPU, 1 per
        GPU from 4 GPUs on). Whether they fit each GPU's memory is check_memory's question."""
        if self.device == "cuda":
            if not self.gpus_mib:
                raise PlanError(
                    f"host {self.name}: GPU runtime asked (netbench_device=cuda) but no NVIDIA GPU was found there "
                    "(nvidia-smi lists none); set netbench_device=cpu for this host or remove it from 'servers'"
                )
            per_gpu = self.servers_per_gpu or math.ceil(PAPER_SERVERS / max(inventory_gpus, 1))
            return self.servers or per_gpu * len(self.gpus_mib)
        return self.servers or 1


def root_needs(info: HostInfo, shapes: bool) -> list[str]:
    """What of the run needs root on this host: everything else (the harness, the DHT, the servers and
    the client of the process runtime) runs as the login user. ``shapes``: a server host whose links
    may be shaped (netbench_shaping), whatever this run's profiles: its cleanup removes qdiscs too."""
    needs = []
    if not info.workdir_writable:
        needs.append("creating the work directory (netbench_workdir) where the login user may not")
    if shapes:
        needs.append("shaping (tc, sch_netem)")
    if info.firewall:
        needs.append("the swarm firewall (nftables)")
    if info.runtime == "docker":
        needs.append("the Docker runtime (docker, its packages)")
    return needs


def plan_become(hosts: dict[str, HostInfo], shaped_servers: set[str]) -> dict[str, bool]:
    """Which hosts run their root tasks with become (sudo): those whose login user is not root and that
    have root tasks at all. A host that needs root but whose user cannot get it (no passwordless sudo
    and no become password in the inventory) is refused here, before anything changes."""
    become = {}
    for name, info in hosts.items():
        needs = root_needs(info, name in shaped_servers)
        become[name] = bool(needs) and info.uid != 0
        if become[name] and not (info.sudo or info.become_password):
            raise PlanError(f"host {name}: {', '.join(needs)} must run as root, but the login user {info.user} (uid {info.uid}) "
                            "cannot sudo without a password (sudo -n true failed); give it passwordless sudo, set "
                            "ansible_become_password (vault) or pass --ask-become-pass, or log in as root")
    return become


def check_netem_modules(needing: list[str], server_hosts: dict[str, HostInfo]) -> None:
    """Refuse a server host whose kernel lacks sch_netem and cannot get it (load or install), when a
    profile needs netem (delay, jitter, loss); provisioning loads or installs it on the others."""
    if not needing:
        return
    for info in server_hosts.values():
        if (info.netem_module or {}).get("action") == "refuse":
            raise PlanError(f"profile(s) {', '.join(needing)} need sch_netem: {info.netem_module['message']}")


def _count(value: Any, host: str, variable: str) -> int | None:
    """An optional whole number >= 1 from the inventory ('' or None: unset)."""
    if value in ("", None):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise PlanError(f"host {host}: {variable} must be a whole number, got {value!r}") from None
    if number < 1:
        raise PlanError(f"host {host}: {variable} must be at least 1, got {number}")
    return number


def resolve_workload(value: dict[str, Any] | None, model_name: str) -> dict[str, Any]:
    """The client's sweep (the bench_client role's variables), checked, with the attention cache every
    server needs so that all its sessions fit at once (petals queues the others, which would silently
    change what is measured)."""
    workload = {**DEFAULT_WORKLOAD, **{k: v for k, v in (value or {}).items() if v not in (None, "")}}
    try:
        prompts = [int(p) for p in (json.loads(workload["prompt_lengths"]) if isinstance(workload["prompt_lengths"], str)
                                    else workload["prompt_lengths"])]
        batch, processes, new_tokens, repeats = (int(workload[k]) for k in ("batch_size", "num_processes", "new_tokens",
                                                                            "repeats"))
        sweep = parse_token_sweep(str(workload["token_sweep"]), model_name)
    except (TypeError, ValueError) as exc:
        raise PlanError(f"the client's workload (bench_client_* variables) is malformed: {exc}") from None
    if not prompts or min(prompts) < 1 or batch < 1 or processes < 1 or new_tokens < 0 or repeats < 1:
        raise PlanError(f"the client's workload needs prompt lengths >= 1, batch size, processes and repeats >= 1 and new "
                        f"tokens >= 0; got {workload}")
    lengths, tokens = list(prompts), [new_tokens]
    if sweep is not None:
        lengths.append(TOKEN_SWEEP_PROMPT_LENGTH)
        tokens.append(max(sweep))
    return {"batch_size": batch, "num_processes": processes, "prompt_lengths": prompts, "new_tokens": new_tokens,
            "token_sweep": str(workload["token_sweep"]), "client_dtype": str(workload["client_dtype"]), "repeats": repeats,
            "attn_cache_tokens": attention_cache_tokens(batch, processes, lengths, tokens)}


def parse_profiles(value: Any) -> list[dict[str, Any]]:
    """``-e profiles=none,paper-10ms-100mbit`` (a string), a list of names, or a list of custom dicts -> normalised list."""
    if value in (None, "", []):
        value = ["none"]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise PlanError(f"profiles {text!r} is not a JSON list; pass e.g. profiles=none,paper-10ms-100mbit") from None
        else:
            value = [item.strip() for item in text.split(",") if item.strip()]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise PlanError(f"profiles must be a list or a comma-separated string, got {type(value).__name__}")
    result, seen = [], set()
    for item in value:
        profile = resolve_profile(item)
        if not _SAFE_NAME.fullmatch(profile["name"]):
            raise PlanError(f"profile name {profile['name']!r} is used as a results folder: use letters, digits, '.', '_' or '-'")
        if profile["name"] in seen:
            raise PlanError(f"profile {profile['name']!r} is listed twice; give each profile its own name")
        seen.add(profile["name"])
        result.append(profile)
    return result


# The bench_client role's sweep settings the role takes from the plan (netbench_plan.bench) where the user set them.
BENCH_SWEEP = ("batch_size", "num_micro_batches", "num_processes", "prompt_lengths", "new_tokens", "token_sweep",
               "extra_args", "warmup")


def check_variables(by_host: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every -e variable the user set, per host (``{host: {name: value}}``, bench_client.orchestration.variables
    knows each one's type and range) -> the converted values per host. One PlanError names every bad
    variable; a problem every host has (an extra var) is named once, without its hosts."""
    checked: dict[str, dict[str, Any]] = {}
    problems: dict[str, list[str]] = {}
    for host, values in by_host.items():
        try:
            checked[host] = variables.check_variables(values or {})
        except variables.VariableError as exc:
            for problem in exc.problems:
                problems.setdefault(problem, []).append(host)
    if problems:
        raise PlanError("; ".join(problem if len(hosts) == len(by_host) else f"host {', '.join(hosts)}: {problem}"
                                  for problem, hosts in problems.items()))
    return checked


def bench_settings(checked: dict[str, Any]) -> dict[str, Any]:
    """The client host's bench_client_* sweep settings the user set, checked and converted, by short name:
    the role runs exactly what was validated (no scalar spelled out digit by digit, no 1.5 or 'abc')."""
    return {name: checked[f"bench_client_{name}"] for name in BENCH_SWEEP if f"bench_client_{name}" in checked}


def check_groups(groups: dict[str, list[str]]) -> None:
    for group in GROUPS:
        if not groups.get(group):
            raise PlanError(f"inventory group '{group}' is missing or empty: add at least one host to it "
                            "(see inventory/local/hosts.yml for the layout: dht, servers, clients)")


def choose_dtype(dtype: str | None, hosts: list[HostInfo]) -> str:
    on_cuda = any(h.device == "cuda" for h in hosts)
    chosen = dtype or ("float16" if on_cuda else "float32")
    if chosen not in WEIGHT_DTYPES:
        raise PlanError(f"unknown dtype {chosen!r}; choose one of {', '.join(WEIGHT_DTYPES)}")
    # int8/nf4 run on CPU hosts too (the pinned bitsandbytes 0.50.2 has CPU kernels); a server whose
    # bitsandbytes cannot run them refuses at start with bitsandbytes' own error
    return chosen


def _gb(nbytes: float) -> str:
    return f"{nbytes / GB:.1f} GB"


def physical_gpu(hosts: dict[str, HostInfo], host: str, gpu: int) -> tuple[str, int | str]:
    """One GPU however many inventory hosts see it (the network namespaces of the emulated lab are hosts of
    one machine that all see its GPUs): its UUID where the probe read one, else the machine and index."""
    info = hosts[host]
    if len(info.gpus_uuid) == len(info.gpus_mib) and info.gpus_uuid[gpu]:
        return "uuid", info.gpus_uuid[gpu]
    return info.machine_id, gpu


def check_gpu_memory(model, dtype: str, servers: list[dict[str, Any]], hosts: dict[str, HostInfo],
                     workload: dict[str, Any], client_host: HostInfo) -> list[dict[str, Any]]:
    """Refuse a GPU whose servers' blocks, attention caches and CUDA contexts (plus the client processes
    when the client shares the host) do not fit the memory the probe found; else each GPU's use (the
    plan prints its headroom)."""
    used = []
    cache_tokens = workload["attn_cache_tokens"]
    by_gpu: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for server in servers:
        if server["device"].startswith("cuda"):
            by_gpu.setdefault(physical_gpu(hosts, server["host"], server["gpu"]), []).append(server)
    for on_gpu in by_gpu.values():
        host, gpu = on_gpu[0]["host"], on_gpu[0]["gpu"]
        blocks = sum(s["end"] - s["start"] for s in on_gpu)
        parts = {"blocks": model.blocks_bytes(dtype, blocks), "attention cache": model.cache_bytes(dtype, cache_tokens, blocks),
                 "CUDA contexts": len(on_gpu) * CUDA_PROCESS_BYTES}
        # the client's processes share the machine's GPUs (bench_client.client.workers spreads them)
        if client_host.machine_id == hosts[host].machine_id and client_host.device == "cuda":
            count = len(range(gpu, workload["num_processes"], len(hosts[host].gpus_mib)))
            parts["client processes"] = count * (model.embedding_bytes(workload["client_dtype"]) + CUDA_PROCESS_BYTES)
        capacity = hosts[host].gpus_mib[gpu] * 2**20
        if sum(parts.values()) > capacity:
            detail = " + ".join(f"{name} {_gb(size)}" for name, size in parts.items() if size)
            raise PlanError(
                f"{host} GPU {gpu}: {len(on_gpu)} server(s) of {model.name} in {dtype} with an attention cache of "
                f"{cache_tokens} tokens (the workload's sessions) need {_gb(sum(parts.values()))} ({detail}) but the "
                f"GPU has {_gb(capacity)}; lower netbench_servers_per_gpu, use more GPUs or a smaller dtype, or shrink "
                "the workload (bench_client_num_processes, _batch_size, _prompt_lengths)")
        used.append({"host": host, "gpu": gpu, "servers": len(on_gpu), "needed_bytes": int(sum(parts.values())),
                     "capacity_bytes": capacity})
    return used


def check_memory(model, dtype: str, servers: list[dict[str, Any]], hosts: dict[str, HostInfo]) -> dict[str, Any]:
    """Refuse a model whose blocks cannot fit the servers' memory (GPU memory on CUDA, RAM on CPU)."""
    needed = model.blocks_bytes(dtype)
    capacity: dict[str, float] = {}
    machines_seen: set[str] = set()
    for info in hosts.values():
        if info.device == "cuda":
            capacity[info.name] = sum(info.gpus_mib) * 2**20
        elif info.machine_id not in machines_seen:  # count a machine's RAM once, however many hosts it plays
            machines_seen.add(info.machine_id)
            capacity[info.name] = info.mem_bytes
    available = sum(capacity.values())
    kind = {h: ("GPU memory" if info.device == "cuda" else "RAM") for h, info in hosts.items()}
    if needed > available:
        detail = ", ".join(f"{h}: {_gb(c)} {kind[h]}" for h, c in capacity.items())
        raise PlanError(
            f"{model.name} in {dtype} needs {_gb(needed)} for its {model.layers} blocks, but the inventory's servers "
            f"have {_gb(available)} ({detail}); use a smaller model, a smaller dtype or more/larger hosts"
        )
    # per device: a GPU server's span must fit that GPU; CPU servers of one host share its RAM
    per_host: dict[str, int] = {}
    for server in servers:
        info = hosts[server["host"]]
        span_bytes = model.blocks_bytes(dtype, server["end"] - server["start"])
        if info.device != "cuda":  # GPUs: check_gpu_memory
            per_host[server["host"]] = per_host.get(server["host"], 0) + span_bytes
    for host, used in per_host.items():
        if used > hosts[host].mem_bytes:
            raise PlanError(f"{host}: its servers' blocks of {model.name} need {_gb(used)} in {dtype} but it has "
                            f"{_gb(hosts[host].mem_bytes)} RAM; move servers to other hosts or use a smaller model")
    return {"needed_bytes": needed, "available_bytes": int(available), "needed_gb": round(needed / GB, 2),
            "available_gb": round(available / GB, 2)}


def parse_systems(value: Any) -> list[System]:
    """-e systems=petals,flexgen (a comma-separated string or a list of names of bench_client.systems'
    registry); default: the registry's default system."""
    items = value if isinstance(value, list) else str(value or registry.DEFAULT.name).split(",")
    names = [str(s).strip() for s in items if str(s).strip()]
    unknown = [s for s in names if s not in registry.SYSTEMS]
    if unknown or not names:
        raise PlanError(f"systems {value!r}: expected a comma-separated subset of {', '.join(registry.SYSTEMS)}")
    systems = [registry.get(name) for name in dict.fromkeys(names)]
    swarms = [s.name for s in registry.SYSTEMS.values() if s.hosts is Hosts.SWARM]
    if not any(s.hosts is Hosts.SWARM for s in systems):
        # the swarm stages always run; a one-GPU system alone is its tag: -e systems=petals,flexgen --tags flexgen
        one = next(s.name for s in systems)
        raise PlanError(f"systems {value!r} must include {' or '.join(swarms)} (for {one} alone: "
                        f"-e systems={swarms[0]},{one} --tags {one})")
    return systems


def system_hosts(systems: list[System], servers: list[str], gpu_servers: list[str]) -> dict[str, str]:
    """The host of each system that runs on one host (the swarm's have the inventory's groups)."""
    hosts = {}
    for system in systems:
        if system.hosts is Hosts.FIRST_GPU_SERVER:
            if not gpu_servers:
                raise PlanError(f"systems includes {system.name}, which needs a CUDA GPU, but no server host has one")
            hosts[system.name] = gpu_servers[0]
        elif system.hosts is Hosts.FIRST_SERVER:  # a GPU where there is one; the CPU of a test inventory else
            hosts[system.name] = (gpu_servers or servers)[0]
    return hosts
def check_run_id(run_id: str) -> str:
    """A run id names a results folder (and the runner's artifacts): one plain path component."""
    if not _SAFE_NAME.fullmatch(run_id) or run_id in (".", ".."):
        raise PlanError(f"run_id {run_id!r} is used as a results folder: use letters, digits, '.', '_' or '-'")
    return run_id


def make_plan(config: dict[str, Any]) -> dict[str, Any]:
    """Validate ``config`` (see the module docstring) and return the plan, or raise PlanError."""
    # every variable the user set, before anything that depends on it (-e repeats=0 once passed until the client)
    checked = check_variables(config.get("variables") or {})
    try:
        model = get_model(str(config.get("model") or ""))
    except UnknownModelError as exc:
        raise PlanError(f"{exc} (pass -e model=NAME)") from None
    profiles = parse_profiles(config.get("profiles"))
    groups = {g: list(config.get("groups", {}).get(g) or []) for g in GROUPS}
    check_groups(groups)
    host_data = config.get("hosts") or {}
    missing = [h for g in GROUPS for h in groups[g] if h not in host_data]
    if missing:
        raise PlanError(f"no facts for hosts {', '.join(sorted(set(missing)))}: the pre-flight probe did not reach them")
    server_hosts = {name: HostInfo.from_dict(name, host_data[name]) for name in groups["servers"]}
    available = config.get("runtimes_available")
    if available is not None:  # a runtime is usable once the roles have its tasks/<runtime>.yml
        for info in server_hosts.values():
            if info.runtime not in available:
                raise PlanError(f"host {info.name}: runtime {info.runtime!r} has no tasks in the server and DHT roles yet "
                                f"(available: {', '.join(available) or 'none'}); set netbench_runtime=process")
    dtype = choose_dtype(config.get("dtype") or None, list(server_hosts.values()))
    run_id = check_run_id(str(config.get("run_id") or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))

    # the bench_client_* values the user set, checked and converted once: the workload that sizes the
    # servers' caches and the role's command line both use them
    bench = bench_settings(checked.get(groups["clients"][0], {}))
    workload = resolve_workload({**(config.get("workload") or {}),
                                 **{k: v for k, v in bench.items() if k in DEFAULT_WORKLOAD}}, model.name)
    cache_override = _count(config.get("attn_cache_tokens"), "(all)", "petals_server_attn_cache_tokens")
    if cache_override:
        workload["attn_cache_tokens"] = cache_override
    inventory_gpus = len({physical_gpu(server_hosts, info.name, gpu) for info in server_hosts.values()
                          if info.device == "cuda" for gpu in range(len(info.gpus_mib))})
    counts = {name: info.server_count(inventory_gpus) for name, info in server_hosts.items()}
    total = sum(counts.values())
    if total > model.layers:
        detail = ", ".join(f"{h}: {n}" for h, n in counts.items())
        raise PlanError(f"{total} servers ({detail}) but {model.name} has only {model.layers} blocks, so some block "
                        "spans would be empty; lower netbench_servers_per_host (or _per_gpu) or use fewer server hosts")
    spans = split_blocks(model.layers, total)
    port_base = int(config.get("server_port_base", 31400))
    top = max(counts.values()) - 1
    if port_base and port_base + top > 65535:
        raise PlanError(f"netbench_server_port_base {port_base}: server {top} of a host would listen on port "
                        f"{port_base + top}, above 65535; lower it (0: any free port)")
    servers, i = [], 0
    for host, count in counts.items():
        for index in range(count):
            start, end = spans[i]
            # several servers per GPU: round-robin over the host's GPUs, as local_swarm --gpus does
            gpu = index % len(server_hosts[host].gpus_mib) if server_hosts[host].device == "cuda" else None
            # container_gpus: the Docker runtime's --gpus (the server then sees its GPU as cuda:0, as the
            # process runtime's CUDA_VISIBLE_DEVICES=gpu does); empty on CPU
            servers.append({"host": host, "index": index, "start": start, "end": end, "span": f"{start}:{end}",
                            "device": "cpu" if gpu is None else f"cuda:{gpu}", "gpu": gpu,
                            "container_gpus": "" if gpu is None else f"device={gpu}",
                            "port": port_base + index if port_base else 0, "name": f"server{index}"})
            i += 1

    shaped = [p["name"] for p in profiles if p["netem"] is not None]
    if shaped:
        unable = [h for h, info in server_hosts.items() if not info.shaping]
        if unable:
            raise PlanError(f"profile(s) {', '.join(shaped)} shape the servers' links, but shaping is off on "
                            f"{', '.join(unable)} (netbench_shaping: false, e.g. the local no-root inventory); "
                            "use profiles=none here or the emulated/cloud inventory")
        check_netem_modules([p["name"] for p in profiles if p.get("needs_netem")], server_hosts)
    all_hosts = {name: server_hosts.get(name) or HostInfo.from_dict(name, data or {}) for name, data in host_data.items()}
    become = plan_become(all_hosts, {name for name, info in server_hosts.items() if info.shaping})
    memory = check_memory(model, dtype, servers, server_hosts)
    client = groups["clients"][0]
    gpu_memory = check_gpu_memory(model, dtype, servers, server_hosts, workload, all_hosts[client])
    # per-GPU throughput divides by GPUs, not servers (several servers may share one)
    num_gpus = len({physical_gpu(server_hosts, s["host"], s["gpu"]) for s in servers if s["gpu"] is not None})
    systems = parse_systems(config.get("systems"))
    gpu_servers = [h for h in groups["servers"] if (host_data[h] or {}).get("gpus_mib")]
    hosts_of = system_hosts(systems, groups["servers"], gpu_servers)
    return {
        "model": model.name, "dht_prefix": model.dht_prefix, "layers": model.layers, "dtype": dtype,
        "run_id": run_id, "profiles": profiles, "servers": servers, "workload": workload,
        "attn_cache_tokens": workload["attn_cache_tokens"], "systems": [s.name for s in systems],
        # what playbooks/systems.yml runs: each one-host system's role on its host
        "system_hosts": hosts_of,
        "one_host_systems": [{"name": s.name, "role": s.role, "host": hosts_of[s.name]} for s in systems
                             if s.name in hosts_of],
        "servers_by_host": {h: [s for s in servers if s["host"] == h] for h in counts},
        "num_servers": len(servers), "num_gpus": num_gpus, "bench": bench, "become": become,
        "gpus_by_host": {h: len((data or {}).get("gpus_mib") or ()) for h, data in host_data.items()}, "memory": memory, "groups": groups,
        "gpu_memory": gpu_memory,
        "progress_marker": progress.MARKER,  # the bench_client role's poll splits its output at it
    }


def run_plan(config: dict[str, Any]) -> dict[str, Any]:
    """The plan of a run (make_plan) with the controller's provenance: what the pre-flight publishes."""
    plan = make_plan(config)
    plan["git"] = provenance.git_state()  # the controller's checkout, recorded in every row the run writes
    plan["code_hash"] = provenance.code_hash()  # every process host must run exactly this bench_client
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench_client.orchestration.plan", description=description(__doc__))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", help="the plan input as a JSON string")
    source.add_argument("--file", help="the plan input as a JSON file")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.json) if args.json is not None else json.loads(open(args.file).read())
        plan = run_plan(config)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the plan input: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
