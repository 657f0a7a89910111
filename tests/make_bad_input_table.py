"""Write docs/bad-inputs.md: every bad input the harness is tested with, run for real, and the exact
message it shows. The cases come from the tests that check them (their parametrize lists and case
tables, not copies) plus a few of this module's own (launchers, swarm CLI, firewall role).

    .venv/bin/python tests/make_bad_input_table.py            # all cases (Ansible ones take minutes)
    .venv/bin/python tests/make_bad_input_table.py --out /tmp/bad-inputs.md

tests/processes/test_bad_input_refusals.py checks that the committed table lists every case with its expected text.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# the shared helpers, then the test modules whose cases this table lists (tests are arranged by kind)
sys.path[:0] = [str(TESTS)] + [str(TESTS / kind) for kind in ("unit", "processes", "ansible", "isolated")]
DOC = ROOT / "docs" / "bad-inputs.md"
PUBLIC_PEER = "/dns/bootstrap1.petals.dev/tcp/31337/p2p/QmedTaZXmULqwspJXz44SsPZyTNKxhnnFvYRajfH7MGhCY"


@dataclass
class Case:
    area: str
    key: str  # unique, stable: the row's id in the document
    shown: str  # the bad input as a user would type it
    expected: str  # the text the checking test asserts is in the message
    test: str  # the test that checks it
    run: Callable[[Path], tuple[int, str]]  # -> (exit code, message), in a fresh temporary directory


def _marks(function) -> list:
    (mark,) = [m for m in function.pytestmark if m.name == "parametrize"]
    return mark.args[1]


def _error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return lines[-1] if lines else text.strip().splitlines()[-1] if text.strip() else ""


def _cli(module: str, argv: list[str], timeout: float = 180) -> Callable[[Path], tuple[int, str]]:
    def run(workdir: Path) -> tuple[int, str]:
        argv_here = [a.replace("{tmp}", str(workdir)) for a in argv]
        result = subprocess.run([sys.executable, "-m", module, *argv_here], capture_output=True, text=True,
                                timeout=timeout, cwd=workdir)
        return result.returncode, _error_line(result.stderr)
    return run


def engine_cases() -> list[Case]:
    import test_engine_pure_parts as units

    cases = []
    for args, message in _marks(units.test_client_refuses_bad_input_before_connecting):
        argv = ["--initial_peers", units.PEER, "--prefix", "netbench/tiny", "--output", "{tmp}/out.tsv", *args]
        cases.append(Case("bench_client (client CLI)", "client " + " ".join(args), " ".join(args), message,
                          "test_engine_pure_parts.py::test_client_refuses_bad_input_before_connecting",
                          _cli("bench_client", argv)))
    for args, message in _marks(units.test_server_refuses_bad_input):
        base = ["--model", "netbench/tiny"] + ([] if "--initial-peers" in args else ["--initial-peers", units.PEER])
        cases.append(Case("bench_client.swarm.server", "server " + " ".join(args), " ".join(args), message,
                          "test_engine_pure_parts.py::test_server_refuses_bad_input", _cli("bench_client.swarm.server",
                                                                                      base + list(args))))
    return cases


def flexgen_cases() -> list[Case]:
    import test_flexgen_policy_and_rows as flexgen

    test = "test_flexgen_policy_and_rows.py::test_cli_bad_input_fails_before_running_anything"
    return [Case("bench_client.flexgen (FlexGen CLI)", "flexgen " + " ".join(args), " ".join(args), message, test,
                 _cli("bench_client.flexgen", ["--model", "facebook/opt-30b", "--output", "{tmp}/out.tsv", *args]))
            for args, message in _marks(flexgen.test_cli_bad_input_fails_before_running_anything)]


def own_cli_cases() -> list[Case]:
    """Refusals checked by tests/processes/test_bad_input_refusals.py itself (nothing else covers them)."""
    test = "test_bad_input_refusals.py::test_launchers_refuse"
    return [
        Case("bench_client.swarm.dht", "dht --initial-peers public", f"--initial-peers {PUBLIC_PEER}",
             "is a public Petals bootstrap peer", test,
             _cli("bench_client.swarm.dht", ["--address-file", "{tmp}/dht.maddrs", "--initial-peers", PUBLIC_PEER])),
        Case("bench_client.swarm.dht", "dht --port and --host-maddrs", "--port 31337 --host-maddrs /ip4/127.0.0.1/tcp/1",
             "use either --port or --host-maddrs", test,
             _cli("bench_client.swarm.dht", ["--address-file", "{tmp}/dht.maddrs", "--port", "31337", "--host-maddrs",
                                       "/ip4/127.0.0.1/tcp/1"])),
        Case("bench_client.swarm.blocks", "swarm info public peer", f"info --initial-peers {PUBLIC_PEER}",
             "is a public Petals bootstrap peer", test,
             _cli("bench_client.swarm.blocks", ["info", "--initial-peers", PUBLIC_PEER, "--model", "netbench/tiny"])),
        Case("bench_client.swarm.blocks", "swarm info unknown model", "info --model facebook/opt-9000",
             "unknown model 'facebook/opt-9000'", test,
             _cli("bench_client.swarm.blocks", ["info", "--initial-peers", "/ip4/127.0.0.1/tcp/9/p2p/"
                                         "12D3KooWMqGg3Zdg4XvFxZD8cojWEqgqqJevewu4hpPzEWsjPtA9",
                                         "--model", "facebook/opt-9000"])),
        Case("petals-netbench (runner CLI)", "runner --run-id ../../x", "--run-id ../../../../tmp/x",
             "run_id '../../../../tmp/x' is used as a results folder", test,
             _cli("bench_client.orchestration.runner", ["--run-id", "../../../../tmp/x"])),
        Case("petals-netbench (runner CLI)", "runner --run-id newline", "--run-id $'r1\\n'",
             "run_id 'r1\\n' is used as a results folder", test,
             _cli("bench_client.orchestration.runner", ["--run-id", "r1\n"])),
        Case("bench_client (client CLI)", "client --max-retries 0", "--max-retries 0",
             "argument --max-retries: must be >= 1, got 0", test,
             _cli("bench_client", ["--initial_peers", "/ip4/127.0.0.1/tcp/9/p2p/"
                                   "12D3KooWMqGg3Zdg4XvFxZD8cojWEqgqqJevewu4hpPzEWsjPtA9", "--prefix", "netbench/tiny",
                                   "--output", "{tmp}/out.tsv", "--max-retries", "0"])),
    ]


def variable_cases() -> list[Case]:
    """A bad value of every variable the pre-flight checks (bench_client.orchestration.variables), through the
    plan's command line with the plan input of tests/unit/test_plan.py (one host 'a')."""
    import json

    import test_plan
    from bench_client.orchestration.variables import VARIABLES

    test = "test_variables.py::test_a_bad_value_of_each_variable_is_refused_naming_it"
    return [Case("Pre-flight: every -e variable (python -m bench_client.orchestration.plan)", f"variable {name}",
                 f"-e '{json.dumps({name: spec.bad})}'", f"error: {name}", test,
                 _cli("bench_client.orchestration.plan",
                      ["--json", json.dumps(test_plan.config(variables={"a": {name: spec.bad}}))]))
            for name, spec in VARIABLES.items()]


def run_safety_cases() -> list[Case]:
    """Outputs that are not this configuration's or cannot be written, and a swarm another benchmark holds."""
    import test_run_safety as safety

    def runner(name: str) -> Callable[[Path], tuple[int, str]]:
        def run(workdir: Path) -> tuple[int, str]:
            code, message = safety.run_case(name, workdir)
            return code, message.replace(str(workdir) + "/", "")
        return run

    shown = {"resume other model": "--prefix netbench/tiny on an out.tsv measured with facebook/opt-125m",
             "resume other client dtype": "--client-dtype float32 on an out.tsv measured with bfloat16",
             "resume other profile": "--network-profile none on an out.tsv measured with paper-10ms-1gbit",
             "resume tsv without metadata": "an out.tsv without its out.jsonl",
             "output immutable": "--output on a file with chattr +i",
             "output /dev/full": "--output /dev/full",
             "swarm locked": "--lock held by another running benchmark"}
    return [Case("bench_client (client CLI): resume, outputs, one benchmark per swarm", f"client {name}", shown[name],
                 expected, "test_run_safety.py::test_refused_before_measuring", runner(name))
            for name, (_, _, expected) in safety.CASES.items()]


def lab_cases() -> list[Case]:
    """The namespace lab refuses a directory that is not its own (root: the lab needs it)."""
    def runner(mode: int, uid: int) -> Callable[[Path], tuple[int, str]]:
        def run(workdir: Path) -> tuple[int, str]:
            lab = workdir / "lab"
            lab.mkdir(mode=mode)
            lab.chmod(mode)
            os.chown(lab, uid, uid)
            code, message = _cli("bench_client.netem.lab", ["up", "--dir", str(lab), "--hosts", "2"])(workdir)
            assert list(lab.iterdir()) == [], "the lab wrote into a directory that is not its own"
            return code, message.replace(str(workdir) + "/", "")
        return run

    test = "test_lab_safety.py::test_a_lab_directory_not_ours_is_refused_before_anything_is_written"
    return [Case("bench_client.netem.lab (root)", "lab dir of another user", "up --dir DIR (owned by uid 65534)",
                 "it must be ours (uid 0) and writable by no one else", test, runner(0o700, 65534)),
            Case("bench_client.netem.lab (root)", "lab dir group-writable", "up --dir DIR (mode 0770)",
                 "it must be ours (uid 0) and writable by no one else", test, runner(0o770, 0))]


def workdir_cases() -> list[Case]:
    """A host's work directory that is not the run user's (root: chown)."""
    from bench_client.orchestration.runner import run_experiment

    def runner(kind: str) -> Callable[[Path], tuple[int, str]]:
        def run(workdir: Path) -> tuple[int, str]:
            target = workdir / "theirs"
            target.mkdir()
            if kind == "owner":
                os.chown(target, 65534, 65534)
            else:
                target.chmod(0o777)
            result = run_experiment(inventory=ROOT / "inventory" / "local" / "hosts.yml", tags="provision",
                                    out=io.StringIO(), extravars={"netbench_workdir": str(target),
                                                                  "results_dir": str(workdir / "results")})
            assert list(target.iterdir()) == [], "something was written into a directory that is not ours"
            return result.rc, " | ".join(f.message for f in result.failures).replace(str(workdir) + "/", "")
        return run

    test = "test_preflight_refusals.py::test_a_work_directory_not_ours_is_refused_and_left_alone"
    return [Case("Ansible experiment: the hosts' work directory (netbench_host role)", f"workdir {kind}",
                 f"-e netbench_workdir=DIR ({what})", "must be a directory of the run's user", test, runner(kind))
            for kind, what in (("owner", "owned by uid 65534"), ("writable", "mode 0777"))]


def report_cases() -> list[Case]:
    import test_report as report

    def runner(make) -> Callable[[Path], tuple[int, str]]:
        def run(workdir: Path) -> tuple[int, str]:
            root, _ = make(workdir / "results")
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = report.run_report(root, "--out", workdir / "report")
            return code, _error_line(err.getvalue()).replace(str(workdir) + "/", "")
        return run

    return [Case("report (TSV/JSONL handed to python -m bench_client.report)", f"report {name}", name, expected,
                 "test_report.py::test_bad_input_gets_one_line_naming_file_and_line_and_writes_nothing",
                 runner(make)) for name, (make, expected) in report.BAD_INPUTS.items()]


def preflight_cases() -> list[Case]:
    import test_preflight_refusals as preflight
    from bench_client.orchestration.runner import run_experiment

    def runner(extravars: dict, variant: str | None) -> Callable[[Path], tuple[int, str]]:
        def run(workdir: Path) -> tuple[int, str]:
            inventory = (preflight.write_inventory(workdir / "hosts.yml", variant) if variant
                         else ROOT / "inventory" / "local" / "hosts.yml")
            result = run_experiment(inventory=inventory, tags="provision", out=io.StringIO(),
                                    extravars={**extravars, "netbench_workdir": str(workdir / "work"),
                                               "results_dir": str(workdir / "results")})
            message = " | ".join(f.message for f in result.failures)
            assert not (workdir / "work").exists(), "a host was changed before the refusal"
            return result.rc, message
        return run

    cases = []
    for name, (extravars, variant, expected) in preflight.CASES.items():
        shown = (f"inventory without group {variant!r}" if variant == "servers" else
                 "inventory with an empty group 'clients'" if variant else
                 "-e '" + " ".join(f"{k}={v}" for k, v in extravars.items()) + "'")
        cases.append(Case("Ansible experiment (inventory and extra vars, site.yml pre-flight)", f"ansible {name}",
                          shown, expected, "test_preflight_refusals.py::test_refused_before_any_host_changes",
                          runner(extravars, variant)))
    return cases


def firewall_cases() -> list[Case]:
    """The swarm_firewall role's refusals, run in a throwaway network namespace (root)."""
    import test_swarm_firewall as firewall

    def runner(extra: str) -> Callable[[Path], tuple[int, str]]:
        def run(workdir: Path) -> tuple[int, str]:
            ns = f"nbbad{os.getpid() % 100000}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            try:
                rc, _, out = firewall.apply_role({"host": ns, "dir": workdir}, "present", "-e", extra)
            finally:
                subprocess.run(["ip", "netns", "del", ns], check=False)
            lines = [line.strip() for line in out.splitlines() if "swarm_firewall:" in line or "value of" in line]
            return rc, lines[0] if lines else ""
        return run

    test = "test_swarm_firewall.py::test_port_zero_and_no_allowed_address_are_refused"
    return [
        Case("swarm_firewall role (extra vars)", "firewall port 0", '-e \'{"swarm_firewall_ports": [0]}\'',
             "needs at least one TCP port in 1-65535", test, runner('{"swarm_firewall_ports": [0]}')),
        Case("swarm_firewall role (extra vars)", "firewall bad prefix",
             '-e \'{"swarm_firewall_allowed_addresses": ["10.231.1.2/99"]}\'', "Prefix length 99 is invalid", test,
             runner('{"swarm_firewall_allowed_addresses": ["10.231.1.2/99"]}')),
    ]


def all_cases(ansible: bool = True) -> list[Case]:
    cases = engine_cases() + flexgen_cases() + own_cli_cases() + variable_cases() + report_cases()
    if ansible:  # root: Ansible, namespaces, chattr
        cases += run_safety_cases() + lab_cases() + preflight_cases() + workdir_cases() + firewall_cases()
    return cases


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(none)"


def render(results: list[tuple[Case, int, str]]) -> str:
    out = [textwrap.dedent("""\
        # Bad inputs and the messages they get

        Generated by `tests/make_bad_input_table.py` from real runs (do not edit by hand): each bad input
        was given to the real command, playbook or report, and the message column is what it printed.
        Every one is refused before any host is changed or any file is written. The "checked by" test
        asserts the expected text; `tests/processes/test_bad_input_refusals.py` checks that this table is complete.
        """)]
    area = None
    for case, code, message in results:
        if case.area != area:
            area = case.area
            out.append(f"\n## {area}\n\n| id | bad input | exit | message shown | checked by |\n|---|---|---|---|---|")
        out.append(f"| `{_cell(case.key)}` | `{_cell(case.shown)}` | {code} | {_cell(message)} | {case.test} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DOC)
    p.add_argument("--no-ansible", action="store_true", help="leave out the Ansible and firewall cases (no root)")
    args = p.parse_args(argv)
    if not args.no_ansible and os.geteuid() != 0:
        p.error("the firewall cases need root (network namespaces); use --no-ansible")
    results, wrong = [], []
    for case in all_cases(ansible=not args.no_ansible):
        with tempfile.TemporaryDirectory(prefix="badinput-") as tmp:
            code, message = case.run(Path(tmp))
        print(f"{code:>3}  {case.key}: {message[:150]}", file=sys.stderr, flush=True)
        if code == 0 or case.expected not in message:
            wrong.append(f"{case.key}: exit {code}, expected {case.expected!r} in {message!r}")
        results.append((case, code, message))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results))
    for line in wrong:
        print(f"NOT REFUSED AS EXPECTED: {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
