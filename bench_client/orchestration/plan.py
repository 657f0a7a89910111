"""The experiment plan: validate what the user asked against the inventory, before any host changes.

The Ansible pre-flight play collects the inventory (groups, per-host devices, memory, GPUs found by
a read-only probe) and the user's choices (model, dtype, profiles), and calls

    python -m bench_client.orchestration.plan --json '{...}'        # or --file plan-input.json

which prints the plan as JSON (servers with their block spans and ports, profiles, memory sums)
or exits with code 2 and ONE line ``error: <what is wrong and what to fix>``. Everything here is
a pure function, so each refusal is unit-tested without Ansible.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench_client.netem import profiles as netem
from bench_client.core.models import CUDA_ONLY_DTYPES, WEIGHT_DTYPES, UnknownModelError, get_model, split_blocks
from bench_client.core.sweep import parse_token_sweep

GROUPS = ("dht", "servers", "clients")
RUNTIMES = ("process", "docker")
DEVICES = ("cpu", "cuda")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
GB = 1e9


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
        return {"name": netem.NO_SHAPING, "netem": None, "describe": None}
    if isinstance(item, dict):
        if not item.get("name"):
            raise PlanError(f"custom network profile {item!r} needs a name (it names the results folder), "
                            "e.g. {name: wan50, delay: 50ms, rate: 100mbit}")
        spec: Any = {k: v for k, v in item.items() if v not in (None, "")}
    else:
        spec = profile.name
    return {"name": profile.name, "netem": spec, "describe": profile.describe()}


@dataclass(frozen=True)
class HostInfo:
    name: str
    device: str  # cpu | cuda
    runtime: str  # process | docker
    servers: int | None  # requested servers on this host (None: one per GPU, or 1 on CPU)
    gpus_mib: tuple[int, ...]  # memory of each GPU the probe found
    mem_bytes: int  # host RAM (MemTotal)
    shaping: bool  # may this host's links be shaped (root, tc)?
    address: str
    machine_id: str  # namespaces of one machine share /etc/machine-id, and its RAM

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> HostInfo:
        device = str(data.get("device") or "cpu")
        runtime = str(data.get("runtime") or "process")
        if device not in DEVICES:
            raise PlanError(f"host {name}: device {device!r} is not one of {', '.join(DEVICES)} (set netbench_device)")
        if runtime not in RUNTIMES:
            raise PlanError(f"host {name}: runtime {runtime!r} is not one of {', '.join(RUNTIMES)} (set netbench_runtime)")
        servers = data.get("servers")
        if servers in ("", None):
            servers = None
        else:
            try:
                servers = int(servers)
            except (TypeError, ValueError):
                raise PlanError(f"host {name}: netbench_servers_per_host must be a whole number, got {servers!r}") from None
            if servers < 1:
                raise PlanError(f"host {name}: netbench_servers_per_host must be at least 1, got {servers}")
        return cls(name=name, device=device, runtime=runtime, servers=servers,
                   gpus_mib=tuple(int(m) for m in data.get("gpus_mib") or ()),
                   mem_bytes=int(data.get("mem_kb") or 0) * 1024, shaping=bool(data.get("shaping", False)),
                   address=str(data.get("address") or "127.0.0.1"), machine_id=str(data.get("machine_id") or name))

    def server_count(self) -> int:
        if self.device == "cuda":
            if not self.gpus_mib:
                raise PlanError(
                    f"host {self.name}: GPU runtime asked (netbench_device=cuda) but no NVIDIA GPU was found there "
                    "(nvidia-smi lists none); set netbench_device=cpu for this host or remove it from 'servers'"
                )
            if self.servers is not None and self.servers > len(self.gpus_mib):
                raise PlanError(f"host {self.name}: {self.servers} servers asked but it has {len(self.gpus_mib)} GPUs "
                                "(one server per GPU); lower netbench_servers_per_host")
            return self.servers or len(self.gpus_mib)
        return self.servers or 1


def parse_profiles(value: Any) -> list[dict[str, Any]]:
    """``-e profiles=none,lan`` (a string), a list of names, or a list of custom dicts -> normalised list."""
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
        if not _SAFE_NAME.match(profile["name"]):
            raise PlanError(f"profile name {profile['name']!r} is used as a results folder: use letters, digits, '.', '_' or '-'")
        if profile["name"] in seen:
            raise PlanError(f"profile {profile['name']!r} is listed twice; give each profile its own name")
        seen.add(profile["name"])
        result.append(profile)
    return result


# The bench_client role's variables the pre-flight checks and converts: name -> smallest allowed value.
BENCH_INTS = {"batch_size": 1, "num_micro_batches": 1, "num_processes": 1, "new_tokens": 0, "timeout": 1,
              "poll_seconds": 1}


def _whole_number(name: str, value: Any, minimum: int) -> int:
    """An int from an int or a string of digits (extra vars arrive as strings); never a bool or 1.5."""
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"bench_client_{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise PlanError(f"bench_client_{name} must be at least {minimum}, got {value}")
    return value


def _int_list(name: str, value: Any, minimum: int) -> list[int]:
    """A list of ints from a list, one number (-e bench_client_prompt_lengths=512), '256,512' or a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [item for item in text.split(",") if item.strip()]
        except ValueError:
            raise PlanError(f"bench_client_{name} {text!r} is not a list; pass e.g. [256, 512] or 256,512") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise PlanError(f"bench_client_{name} must be a non-empty list of whole numbers, got {value!r}")
    return [_whole_number(name, item, minimum) for item in value]


def check_bench(bench: dict[str, Any], model: str) -> dict[str, Any]:
    """The bench_client_* variables the user set (None: the role's default), checked and converted so
    the role runs exactly what was validated: no scalar spelled out digit by digit, no 1.5 or 'abc'."""
    given = {k: v for k, v in bench.items() if v is not None}
    unknown = sorted(set(given) - set(BENCH_INTS) - {"prompt_lengths", "token_sweep", "extra_args"})
    if unknown:
        raise PlanError(f"unknown bench settings {unknown}")
    checked: dict[str, Any] = {k: _whole_number(k, v, BENCH_INTS[k]) for k, v in given.items() if k in BENCH_INTS}
    if "prompt_lengths" in given:
        checked["prompt_lengths"] = _int_list("prompt_lengths", given["prompt_lengths"], 1)
    if "token_sweep" in given:
        try:
            parse_token_sweep(str(given["token_sweep"]), model)
        except ValueError as exc:
            raise PlanError(f"bench_client_token_sweep: {exc}") from None
        checked["token_sweep"] = str(given["token_sweep"])
    if "extra_args" in given:
        extra = given["extra_args"]
        if not isinstance(extra, list) or not all(isinstance(a, (str, int, float)) for a in extra):
            raise PlanError(f"bench_client_extra_args must be a list of flags, e.g. ['--seed', '1'], got {extra!r}")
        checked["extra_args"] = [str(a) for a in extra]
    return checked


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
    if chosen in CUDA_ONLY_DTYPES:
        cpu_hosts = [h.name for h in hosts if h.device != "cuda"]
        if cpu_hosts:
            raise PlanError(f"dtype {chosen} needs CUDA (bitsandbytes) but servers on {', '.join(cpu_hosts)} run on CPU; "
                            "use float32/bfloat16 there or netbench_device=cuda")
    return chosen


def _gb(nbytes: float) -> str:
    return f"{nbytes / GB:.1f} GB"


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
        if info.device == "cuda":
            gpu = info.gpus_mib[server["index"]] * 2**20
            if span_bytes > gpu:
                raise PlanError(f"{server['host']} GPU {server['index']}: blocks {server['span']} of {model.name} need "
                                f"{_gb(span_bytes)} in {dtype} but the GPU has {_gb(gpu)}; use more GPUs or a smaller dtype")
        else:
            per_host[server["host"]] = per_host.get(server["host"], 0) + span_bytes
    for host, used in per_host.items():
        if used > hosts[host].mem_bytes:
            raise PlanError(f"{host}: its servers' blocks of {model.name} need {_gb(used)} in {dtype} but it has "
                            f"{_gb(hosts[host].mem_bytes)} RAM; move servers to other hosts or use a smaller model")
    return {"needed_bytes": needed, "available_bytes": int(available), "needed_gb": round(needed / GB, 2),
            "available_gb": round(available / GB, 2)}


def check_run_id(run_id: str) -> str:
    """A run id names a results folder (and the runner's artifacts): one plain path component."""
    if not _SAFE_NAME.match(run_id) or run_id in (".", ".."):
        raise PlanError(f"run_id {run_id!r} is used as a results folder: use letters, digits, '.', '_' or '-'")
    return run_id


def make_plan(config: dict[str, Any]) -> dict[str, Any]:
    """Validate ``config`` (see the module docstring) and return the plan, or raise PlanError."""
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

    counts = {name: info.server_count() for name, info in server_hosts.items()}
    total = sum(counts.values())
    if total > model.layers:
        detail = ", ".join(f"{h}: {n}" for h, n in counts.items())
        raise PlanError(f"{total} servers ({detail}) but {model.name} has only {model.layers} blocks, so some block "
                        "spans would be empty; lower netbench_servers_per_host or use fewer server hosts")
    spans = split_blocks(model.layers, total)
    port_base = int(config.get("server_port_base", 31400))
    servers, i = [], 0
    for host, count in counts.items():
        for index in range(count):
            start, end = spans[i]
            device = f"cuda:{index}" if server_hosts[host].device == "cuda" else "cpu"
            servers.append({"host": host, "index": index, "start": start, "end": end, "span": f"{start}:{end}",
                            "device": device, "port": port_base + index if port_base else 0, "name": f"server{index}"})
            i += 1

    shaped = [p["name"] for p in profiles if p["netem"] is not None]
    if shaped:
        unable = [h for h, info in server_hosts.items() if not info.shaping]
        if unable:
            raise PlanError(f"profile(s) {', '.join(shaped)} shape the servers' links, but shaping is off on "
                            f"{', '.join(unable)} (netbench_shaping: false, e.g. the local no-root inventory); "
                            "use profiles=none here or the emulated/cloud inventory")
    memory = check_memory(model, dtype, servers, server_hosts)
    bench = check_bench(config.get("bench") or {}, model.name)
    num_gpus = sum(1 for s in servers if s["device"].startswith("cuda"))
    return {
        "model": model.name, "dht_prefix": model.dht_prefix, "layers": model.layers, "dtype": dtype,
        "run_id": run_id, "profiles": profiles, "servers": servers,
        "servers_by_host": {h: [s for s in servers if s["host"] == h] for h in counts},
        "num_servers": len(servers), "num_gpus": num_gpus, "bench": bench,
        "gpus_by_host": {h: len((data or {}).get("gpus_mib") or ()) for h, data in host_data.items()}, "memory": memory, "groups": groups,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench_client.orchestration.plan", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", help="the plan input as a JSON string")
    source.add_argument("--file", help="the plan input as a JSON file")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.json) if args.json is not None else json.loads(open(args.file).read())
        plan = make_plan(config)
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
