"""Every ``-e`` variable of the experiment that the roles and the client read: its type and range.

The pre-flight's action plugin (roles/preflight/action_plugins/netbench_plan.py) hands the plan the
value of each name below that the user set (extra vars, inventory) on any host, and the plan
refuses a bad one before any host changes, naming the variable, the value and what is allowed.
Without this, ``-e repeats=0`` passed the pre-flight, the swarm was started, and only the client
refused it; ``-e flexgen_bench_search=ture`` was a truthy string.

The model, profiles, dtype, run id and systems have checks of their own in the plan (they resolve
against tables); everything else is here, one entry a variable, each with the check its consumer
needs (the client's argparse, a role's ``| int`` or ``| bool``). Pure functions, no Ansible.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable

from bench_client.core.sweep import WARMUPS

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


class VariableError(ValueError):
    """A refusal: ``<name> must be <what is allowed>, got <value>``, one such line per bad variable."""

    def __init__(self, *problems: str):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Spec:
    """How one variable is checked: ``check(name, value)`` returns the converted value or raises."""
    check: Callable[[str, Any], Any]
    bad: Any  # a value that must be refused (the tests and docs/bad-inputs.md try it)
    # '' is "not set" (the inventory's "{{ 2 if cpu else '' }}"), except where the role would use it as is
    blank_unset: bool = True


def _got(value: Any) -> str:
    return repr(value)


def _typed(kind: str, check: Callable[[str, Any], Any], choices: tuple[str, ...] = ()) -> Callable[[str, Any], Any]:
    """Tag a check with the argument-spec type it checks (roles' meta/argument_specs.yml must agree: a test)."""
    check.kind, check.choices = kind, choices  # type: ignore[attr-defined]
    return check


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str, Any], int]:
    """An int from an int or a string of digits (extra vars arrive as strings); never a bool or 1.5."""
    def check(name: str, value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise VariableError(f"{name} must be a whole number, got {_got(value)}")
        if value < minimum:
            raise VariableError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise VariableError(f"{name} must be at most {maximum}, got {value}")
        return value
    return _typed("int", check)


def number(minimum: float, maximum: float | None = None, above: bool = False) -> Callable[[str, Any], float]:
    """A finite number; ``above``: strictly greater than ``minimum`` (a zero that cannot be meant)."""
    def check(name: str, value: Any) -> float:
        try:
            result = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            result = math.nan
        if not math.isfinite(result):
            raise VariableError(f"{name} must be a number, got {_got(value)}")
        if result < minimum or (above and result == minimum):
            raise VariableError(f"{name} must be {'above' if above else 'at least'} {minimum:g}, got {value}")
        if maximum is not None and result > maximum:
            raise VariableError(f"{name} must be at most {maximum:g}, got {value}")
        return result
    return _typed("float", check)


def _boolean(name: str, value: Any) -> bool:
    """true/false as YAML, JSON or -e key=value spell it; 'ture' is a typo, not false."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS or text in FALSE_WORDS:
        return text in TRUE_WORDS
    raise VariableError(f"{name} must be true or false (or yes/no, on/off, 1/0), got {_got(value)}")


boolean = _typed("bool", _boolean)


def choice(*allowed: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise VariableError(f"{name} must be one of {', '.join(allowed)}, got {_got(value)}")
        return value
    return _typed("str", check, allowed)


def port(free: bool) -> Callable[[str, Any], int]:
    """A TCP port; ``free``: 0 asks for any free port."""
    low = 0 if free else 1
    inner = whole_number(low, 65535)

    def check(name: str, value: Any) -> int:
        try:
            return inner(name, value)
        except VariableError:
            zero = " (0: any free port)" if free else ""
            raise VariableError(f"{name} must be a TCP port in {low}-65535{zero}, got {_got(value)}") from None
    return _typed("int", check)


def number_list(minimum: int) -> Callable[[str, Any], list[int]]:
    """A list of ints from a list, one number (-e x=512), '256,512' or a JSON list."""
    item = whole_number(minimum)

    def check(name: str, value: Any) -> list[int]:
        given = value
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else [part for part in text.split(",") if part.strip()]
            except ValueError:
                raise VariableError(f"{name} {text!r} is not a list; pass e.g. [256, 512] or 256,512") from None
        elif isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            raise VariableError(f"{name} must be a non-empty list of whole numbers, got {_got(value)}")
        try:
            return [item(name, part) for part in value]
        except VariableError as exc:
            raise VariableError(f"{exc} (in {_got(given)})") from None
    return _typed("list", check)


def flags(*owned: str) -> Callable[[str, Any], list[str]]:
    """Extra command-line flags: a list, none of them one the role sets itself (``owned``; argparse also
    takes any unambiguous prefix, so --out would silently replace the role's --output)."""
    def check(name: str, value: Any) -> list[str]:
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if not isinstance(value, list) or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool)
                                                  for a in value):
            raise VariableError(f"{name} must be a list of flags, e.g. ['--seed', '1'], got {_got(value)}")
        args = [str(a) for a in value]
        for arg in args:
            flag = arg.split("=", 1)[0]
            clash = [o for o in owned if flag == o or (flag.startswith("--") and len(flag) > 2 and o.startswith(flag))]
            if clash:
                raise VariableError(f"{name} may not set {flag} (it would override the role's {clash[0]}): set the "
                                    f"variable the role builds it from instead, got {_got(value)}")
        return args
    return _typed("list", check)


def path(absolute: bool) -> Callable[[str, Any], str]:
    """A path; ``absolute``: a host's work directory (relative would depend on each login's cwd) that is
    a directory of its own, never / (its run/ and logs/ would be the system's)."""
    def check(name: str, value: Any) -> str:
        text = value if isinstance(value, str) else ""
        pure = PurePosixPath(text)
        if not text.strip() or any(c in text for c in "\n\r\0") or (absolute and (not pure.is_absolute()
                                                                                  or pure == PurePosixPath("/"))):
            allowed = "an absolute path of a directory of its own (not /)" if absolute else "a non-empty path"
            raise VariableError(f"{name} must be {allowed}, got {_got(value)}")
        return text
    return _typed("str", check)


def _token_sweep(name: str, value: Any) -> str:
    from bench_client.core.sweep import parse_token_sweep

    try:
        parse_token_sweep(str(value), None)
    except ValueError as exc:
        raise VariableError(f"{name}: {exc}") from None
    return str(value)


token_sweep = _typed("str", _token_sweep)


def _string_map(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float))
                                              for k, v in value.items()):
        raise VariableError(f"{name} must be a mapping of names to strings, e.g. {{PYTHONPATH: /opt/site}}, "
                            f"got {_got(value)}")
    return {k: str(v) for k, v in value.items()}


string_map = _typed("dict", _string_map)


# The flags the bench_client, flexgen_bench and transformers_bench roles put on the command line themselves
# (their vars/main.yml).
CLIENT_FLAGS = ("--prefix", "-b", "--batch-size", "--num-micro-batches", "--num-processes", "--output",
                "--prompt-lengths", "--new-tokens", "--token-sweep", "--repeats", "--device", "--run-id",
                "--network-profile", "--extra-metadata", "--progress", "--lock", "--initial_peers", "--num-gpus",
                "--metadata", "--warmup")
FLEXGEN_FLAGS = ("--model", "--output", "--new-tokens", "--repeats", "--max-trials", "--run-id", "--prompt-lengths",
                 "--metadata")
TRANSFORMERS_FLAGS = ("--model", "--output", "--new-tokens", "--repeats", "--run-id", "--device", "--prompt-lengths",
                      "--batch-sizes", "--dtype", "--metadata")

_POSITIVE, _COUNT = whole_number(1), whole_number(0)
_BOOL = Spec(boolean, "ture")

VARIABLES: dict[str, Spec] = {
    # shared (roles/netbench and the inventory)
    "repeats": Spec(_POSITIVE, 0),
    "resume": _BOOL,  # the latest unfinished run's id (bench_client.orchestration.runs)
    "results_dir": Spec(path(absolute=False), "", blank_unset=False),
    "netbench_workdir": Spec(path(absolute=True), "/", blank_unset=False),
    "netbench_device": Spec(choice("cpu", "cuda"), "gpu"),
    "netbench_runtime": Spec(choice("process", "docker"), "podman"),
    "netbench_servers_per_host": Spec(_POSITIVE, 0),
    "netbench_servers_per_gpu": Spec(_POSITIVE, 0),
    "netbench_dht_port": Spec(port(free=True), 70000),
    "netbench_server_port_base": Spec(port(free=True), -1),
    "netbench_firewall": _BOOL,
    "netbench_shaping": _BOOL,
    "netbench_unshape": _BOOL,
    "netbench_harness": _BOOL,
    # the swarm stack on a bare host (roles/netbench_host, bench_client.orchestration.stack)
    "netbench_host_stack": _BOOL,
    "netbench_host_stack_min_free_mib": Spec(_COUNT, -1),
    "netbench_host_wheelhouse": Spec(path(absolute=True), "wheels"),
    "netbench_host_torch": Spec(choice("auto", "cpu", "cuda"), "rocm"),
    # the swarm
    "petals_dht_persistent_identity": _BOOL,
    "petals_dht_ready_timeout": Spec(_POSITIVE, 0),
    "petals_server_wait_timeout": Spec(_POSITIVE, 0),
    "petals_server_attn_cache_tokens": Spec(_POSITIVE, 0),
    "petals_server_num_handlers": Spec(_POSITIVE, 0),
    "petals_server_throughput": Spec(number(0, above=True), 0),
    "petals_server_weights": Spec(choice("dummy", "pretrained"), "random"),
    "petals_server_extra_args": Spec(flags(), "--num_blocks 2"),
    # the client (python -m bench_client's argparse: -b >= 1, --new-tokens >= 0, ...)
    "bench_client_batch_size": Spec(_POSITIVE, 0),
    "bench_client_num_micro_batches": Spec(_POSITIVE, 0),
    "bench_client_num_processes": Spec(_POSITIVE, 0),
    "bench_client_prompt_lengths": Spec(number_list(1), "512,0"),
    "bench_client_new_tokens": Spec(_COUNT, -1),
    "bench_client_token_sweep": Spec(token_sweep, "9:3"),
    "bench_client_warmup": Spec(choice(*WARMUPS), "twice"),
    "bench_client_repeats": Spec(_POSITIVE, 0),
    "bench_client_extra_args": Spec(flags(*CLIENT_FLAGS), ["--repeats", "0"]),
    "bench_client_timeout": Spec(_POSITIVE, 0),
    "bench_client_poll_seconds": Spec(_POSITIVE, 0),
    "bench_client_session_enabled": _BOOL,
    "bench_client_device": Spec(choice("cpu", "cuda"), "gpu"),
    # FlexGen (python -m bench_client.flexgen: --new-tokens >= 1)
    "flexgen_bench_prompt_lengths": Spec(number_list(1), [0]),
    "flexgen_bench_new_tokens": Spec(_POSITIVE, 0),
    "flexgen_bench_repeats": Spec(_POSITIVE, 0),
    "flexgen_bench_search": _BOOL,
    "flexgen_bench_max_trials": Spec(_POSITIVE, 0),
    "flexgen_bench_extra_args": Spec(flags(*FLEXGEN_FLAGS), ["--out", "x.tsv"]),
    "flexgen_bench_environment": Spec(string_map, "PYTHONPATH=/opt"),
    "flexgen_bench_timeout": Spec(_POSITIVE, 0),
    "flexgen_bench_poll_seconds": Spec(_POSITIVE, 0),
    # transformers on one host (python -m bench_client.systems.transformers)
    "transformers_bench_prompt_lengths": Spec(number_list(1), [0]),
    "transformers_bench_new_tokens": Spec(_POSITIVE, 0),
    "transformers_bench_batch_sizes": Spec(number_list(1), [0]),
    "transformers_bench_repeats": Spec(_POSITIVE, 0),
    "transformers_bench_device": Spec(choice("cpu", "cuda"), "gpu"),
    "transformers_bench_dtype": Spec(choice("float16", "bfloat16", "float32"), "int8"),
    "transformers_bench_extra_args": Spec(flags(*TRANSFORMERS_FLAGS), ["--batch-sizes", "4"]),
    "transformers_bench_timeout": Spec(_POSITIVE, 0),
    "transformers_bench_poll_seconds": Spec(_POSITIVE, 0),
    # shaping and its measurement (the netem role)
    "netem_validate": _BOOL,
    "netem_force": _BOOL,
    "netem_keep_ssh_unshaped": _BOOL,
    "netem_qdisc": Spec(choice("auto", "netem", "tbf"), "htb"),
    "netem_backend": Spec(choice("host", "router"), "vm"),
    "netem_deadman_seconds": Spec(_COUNT, -1),
    "netem_ping_count": Spec(_POSITIVE, 0),
    "netem_ping_interval": Spec(number(0, above=True), 0),
    "netem_iperf_seconds": Spec(_COUNT, -1),
    "netem_iperf_omit_seconds": Spec(_COUNT, -1),
    "netem_iperf_port": Spec(port(free=False), 0),
    "netem_rate_peers": Spec(_COUNT, -1),
    "netem_measure_max_flows": Spec(_COUNT, -1),
    "netem_rtt_tolerance_ms": Spec(number(0), -1),
    "netem_rate_cap_tolerance": Spec(number(0), -0.1),
    "netem_rate_achieved_fraction": Spec(number(0, 1), 1.5),
}


def check_variables(values: dict[str, Any]) -> dict[str, Any]:
    """``{name: value}`` of the variables the user set (None: not set) -> the converted values.
    Raises VariableError naming every bad one at once (one line), so a run is fixed in one go."""
    checked, problems = {}, []
    for name, value in values.items():
        spec = VARIABLES.get(name)
        if spec is None or value is None or (value == "" and spec.blank_unset):
            continue
        try:
            checked[name] = spec.check(name, value)
        except VariableError as exc:
            problems.append(str(exc))
    if problems:
        raise VariableError(*problems)
    return checked
