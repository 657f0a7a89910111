"""Thin Jinja filters over bench_client.netem.profiles (the pure, unit-tested logic) for the netem role.

The bridge's convention (as roles/preflight/action_plugins/netbench_plan.py): plugins of the role that
uses them, importing the package installed in ansible-playbook's Python (bench_client/install.sh
installs the controller so), plain data in and out, the package's one-line errors as the task's.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

from bench_client.netem import kernel
from bench_client.netem import profiles as netem


def _profile(data: Any) -> netem.Profile | None:
    return netem.profile_from_dict(data) if isinstance(data, dict) or data is None else None


def netem_resolve(spec: Any, force: bool = False) -> dict[str, Any] | None:
    """Profile name/dict -> a plain dict (None for 'none'); one-line error on bad input."""
    try:
        return netem.profile_dict(netem.resolve_profile(spec, force=bool(force)))
    except netem.ProfileError as exc:
        raise AnsibleFilterError(f"netem_profile: {exc}") from exc


def netem_describe(resolved: dict[str, Any] | None) -> dict[str, Any] | None:
    profile = _profile(resolved)
    return None if profile is None else profile.describe()


def netem_kind(resolved: dict[str, Any] | None, support: dict[str, bool], requested: str = "auto",
               host: str = "", kernel: str = "") -> str:
    """The shaping qdisc for this host: netem where the kernel has it; a rate-only profile may use
    tbf instead (reported as such); a profile needing netem on a kernel without it fails loudly."""
    profile = _profile(resolved)
    if profile is None:
        return "none"
    where = f"host {host} (kernel {kernel})" if host else "this host"
    # support values: True (tried and worked), False (missing), None (could not tell: try netem)
    netem_ok = support.get("netem") is not False
    if requested == "netem" or (requested == "auto" and (profile.needs_netem or netem_ok)):
        if not netem_ok:
            need = "delay/jitter/loss" if profile.needs_netem else "netem (netem_qdisc=netem)"
            raise AnsibleFilterError(
                f"{where} has no sch_netem: profile {profile.name!r} needs {need}; refusing to run unshaped "
                "(a rate-only profile can use netem_qdisc=tbf)")
        return "netem"
    if requested in ("tbf", "auto"):
        if profile.needs_netem:
            raise AnsibleFilterError(f"profile {profile.name!r} needs netem (delay, jitter or loss): tbf only limits the rate")
        if support.get("tbf") is False:
            raise AnsibleFilterError(f"{where} has neither sch_netem nor sch_tbf: cannot limit the rate")
        return "tbf"
    raise AnsibleFilterError(f"netem_qdisc: expected auto, netem or tbf, got {requested!r}")


def netem_plan(show_json: str, interface: str, resolved: dict[str, Any] | None, kind: str = "netem",
               bypass_ports: list[int] | None = None, filter_text: str = "", force: bool = False) -> list[list[str]]:
    """tc argv lists taking ``interface`` to the profile ([] when already there)."""
    try:
        return netem.plan(interface, show_json, _profile(resolved), kind if kind != "none" else "netem",
                          [int(p) for p in bypass_ports or []], netem.count_filters(filter_text or ""), bool(force))
    except (netem.ProfileError, netem.ForeignQdiscError) as exc:
        raise AnsibleFilterError(str(exc)) from exc


def netem_check_unshaped(show_json: str, interface: str, force: bool = False) -> bool:
    """True, or the refusal of a foreign root qdisc that a profile "none" would be measured through."""
    try:
        netem.check_unshaped(interface, show_json, bool(force))
    except netem.ForeignQdiscError as exc:
        raise AnsibleFilterError(str(exc)) from exc
    return True


def netem_batch(commands: list[list[str]]) -> str:
    """tc argv lists -> the text of one `tc -batch` (one command a line, without the leading tc)."""
    return "\n".join(" ".join(argv[1:] if argv[:1] == ["tc"] else argv) for argv in commands)


def netem_peer_measurement(ping_stdout: str, iperf_stdout: str, own: dict[str, Any] | None,
                           peer: dict[str, Any] | None, rtt_tolerance_ms: float = 5.0,
                           rate_cap: float = 0.05, rate_achieved: float = 0.85) -> dict[str, Any]:
    """One peer's measured RTT/rate, the expected RTT and the problems (empty: shaping in effect).
    ``iperf_stdout`` None: the rate was not measured to this peer (the schedule measured it to another)."""
    try:
        measured = {**netem.parse_ping(ping_stdout), **(netem.parse_iperf3(iperf_stdout) if iperf_stdout is not None else {})}
    except (ValueError, KeyError, TypeError) as exc:
        return {"problems": [f"measurement failed: {exc}"]}
    tol = netem.Tolerance(float(rtt_tolerance_ms), float(rate_cap), float(rate_achieved))
    problems = netem.judge(_profile(own), _profile(peer), measured, tol)
    expected = netem.expected_rtt_ms(_profile(own), _profile(peer))
    return {**{k: round(v, 3) for k, v in measured.items()}, "expected_rtt_ms": expected, "problems": problems}


def netem_sections(stdout: str) -> dict[str, str]:
    """netemctl.sh's per-peer output ("=== ADDRESS" then that peer's text) -> {address: text}."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in (stdout or "").splitlines():
        if line.startswith("=== "):
            current = line[4:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def netem_measure_all(peers: list[str], addresses: list[str], ping_stdout: str, iperf_stdout: str,
                      own: dict[str, Any] | None, peer_profiles: list[Any], rtt_tolerance_ms: float = 5.0,
                      rate_cap: float = 0.05, rate_achieved: float = 0.85,
                      rate_peers: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """{peer: netem_peer_measurement} from the outputs of netemctl.sh serve (pings) and iperf.
    ``rate_peers``: the peers whose rate was measured (None: all); a missing output for one is a problem."""
    pings, iperfs = netem_sections(ping_stdout), netem_sections(iperf_stdout)
    out = {}
    for peer, address, peer_profile in zip(peers, addresses, peer_profiles):
        measured_rate = rate_peers is None or peer in rate_peers
        out[peer] = {"address": address, "rate_measured": measured_rate,
                     **netem_peer_measurement(pings.get(address, ""), (iperfs.get(address, "") or "{}") if measured_rate else None,
                                              own, peer_profile if isinstance(peer_profile, dict) else None,
                                              rtt_tolerance_ms, rate_cap, rate_achieved)}
    return out


def netem_iperf_timing(own: dict[str, Any] | None, peer: dict[str, Any] | None, seconds: int = 0,
                       omit: int = 0) -> list[int]:
    """[-t, -O] of iperf3 towards ``peer`` (bench_client.netem.profiles.iperf_timing; 0 = from the RTT)."""
    return list(netem.iperf_timing(netem.expected_rtt_ms(_profile(own), _profile(peer)), int(seconds), int(omit)))


def netem_rate_schedule(peers: dict[str, list[str]], per_host: int = 1, max_flows: int = 0) -> list[dict[str, str]]:
    """Rounds of iperf3 flows {sender: receiver} (bench_client.netem.profiles.rate_schedule)."""
    return netem.rate_schedule({host: list(targets or []) for host, targets in peers.items()}, int(per_host), int(max_flows))


def netem_module_action(facts: dict[str, Any], host: str = "", update_index: bool = False,
                        install: bool = True) -> dict[str, Any]:
    """netemctl.sh module's facts -> {action: ok|load|install|refuse, package, refresh_index, message}."""
    return kernel.module_action(facts, host, bool(update_index), bool(install)).as_dict()


def netem_mean(values: list[float]) -> float | None:
    values = [float(v) for v in values]
    return round(sum(values) / len(values), 3) if values else None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "netem_resolve": netem_resolve,
            "netem_describe": netem_describe,
            "netem_kind": netem_kind,
            "netem_plan": netem_plan,
            "netem_check_unshaped": netem_check_unshaped,
            "netem_batch": netem_batch,
            "netem_peer_measurement": netem_peer_measurement,
            "netem_measure_all": netem_measure_all,
            "netem_rate_schedule": netem_rate_schedule,
            "netem_iperf_timing": netem_iperf_timing,
            "netem_mean": netem_mean,
            "netem_module_action": netem_module_action,
        }
