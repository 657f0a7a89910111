"""Run the Ansible experiment (site.yml) through ansible-runner, with live progress per host and task.

    petals-netbench                                   # local inventory, tiny model, no shaping
    petals-netbench -i inventory/emulated/hosts.yml -m facebook/opt-30b -p none,paper-10ms-100mbit
    petals-netbench --cleanup                         # the cleanup tag: stop everything of ours
    petals-netbench --resume                          # the latest unfinished run, same options as it had
    petals-netbench --tags plan                       # the plan and its estimate only: nothing changes
    python -m bench_client.orchestration.runner -e bench_client_new_tokens=8 --tags swarm,bench,fetch

Prints one line per finished task and host while the play runs, every failure with its host, task
and message as it happens, and at the end where the fetched results are
(``results/<run_id>/<profile>/out.tsv``). The Python API is :func:`run_experiment`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from bench_client.core import processes, progress
from bench_client.orchestration import runs, timeline
from bench_client.core.arguments import description

PROJECT_DIR = Path(os.environ.get("NETBENCH_PROJECT_DIR", Path(__file__).resolve().parents[2]))
DEFAULT_INVENTORY = "inventory/local/hosts.yml"


@dataclass
class TaskTiming:
    host: str
    task: str
    role: str
    duration_s: float
    status: str


@dataclass
class Failure:
    host: str
    task: str
    message: str

    def __str__(self) -> str:
        return f"FAILED {self.host} | {self.task}: {self.message}"


@dataclass
class ExperimentResult:
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    run_id: str
    results_dir: Path  # <project>/results/<run_id> (or results_dir/<run_id>)
    wall_time_s: float
    failures: list[Failure] = field(default_factory=list)
    timings: list[TaskTiming] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def swarm_hosts(self) -> list[str]:
        """Hosts where this run started (or found running) the DHT or servers: they still run them."""
        return sorted({t.host for t in self.timings if t.role in ("petals_dht", "petals_server")
                       and t.task.startswith("Start ") and t.status in ("ok", "changed")})

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def profile_dirs(self) -> list[Path]:
        return sorted(p.parent for p in self.results_dir.glob("*/out.tsv"))

    def timeline_summary(self) -> dict[str, Any] | None:
        """This run's phase breakdown and duty ratio: the last summary in results/<run_id>/timeline.jsonl
        (written by the netbench_timeline callback), or None where the run wrote no timeline."""
        return timeline.last_summary(self.results_dir / timeline.TIMELINE_NAME)

    def changed(self) -> dict[str, int]:
        """Tasks reported changed per host (0 everywhere on an idempotent second run)."""
        changed = self.stats.get("changed") or {}
        return {host: int(changed.get(host, 0)) for host in (self.stats.get("processed") or {})}


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def _first_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def playbook_error(stdout: str) -> str:
    """The error ansible-playbook printed (and where), or the last lines of its output."""
    lines = [line.rstrip() for line in stdout.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith(("[ERROR]", "ERROR!")):
            origin = next((x.strip() for x in lines[i + 1 : i + 4] if x.strip().startswith("Origin:")), "")
            return _first_line(f"{line} {origin}", 1200)
    return _first_line(" | ".join(lines[-5:]), 1200)


def failure_message(res: dict[str, Any]) -> str:
    """The useful part of a failed task result: its msg, plus stderr/stdout tails for commands."""
    if res.get("results"):  # a loop: report the first item that failed
        for item in res["results"]:
            if isinstance(item, dict) and item.get("failed"):
                label = item.get("_ansible_item_label", item.get("item"))
                return f"[{_first_line(str(label), 80)}] {failure_message(item)}"
    parts = []
    msg = res.get("msg")
    if msg and msg != "non-zero return code":
        # a refusal's own message whole (the plan names every bad variable at once); output tails cut
        parts.append(_first_line(str(msg), 8000))
    for key in ("stderr", "stdout"):
        text = (res.get(key) or "").strip()
        if text:
            parts.append(_first_line(f"{key}: " + " | ".join(text.splitlines()[-6:]), 1200))
            break
    if "rc" in res and not parts:
        parts.append(f"exit code {res['rc']}")
    return " ".join(parts) or "failed (no message)"


class ProgressPrinter:
    """ansible-runner event handler: one line per finished task and host, failures as they happen."""

    def __init__(self, out: TextIO = sys.stdout, verbose: bool = False, now: Callable[[], float] = time.monotonic):
        self.out = out
        self.verbose = verbose
        self.now = now
        self.started = now()
        self.failures: list[Failure] = []
        self.timings: list[TaskTiming] = []
        self.progress: dict[str, str] = {}  # the sweep's last progress line per host

    def _print(self, text: str) -> None:
        print(f"[{self.now() - self.started:7.1f}s] {text}", file=self.out, flush=True)

    def _sweep_line(self, data: dict[str, Any]) -> None:
        host = data.get("remote_addr") or data.get("host", "?")
        line = progress.from_result(data.get("res") or {})
        if line is not None and self.progress.get(host) != line:
            self.progress[host] = line
            self._print(f"{'sweep':<8} {host:<16} {line}")

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {}) or {}
        if kind == "playbook_on_play_start":
            self._print(f"PLAY {data.get('play', '')}")
        elif kind == "runner_retry":  # the wait for the sweep: its own progress line when it changes
            self._sweep_line(data)
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"):
            self._sweep_line(data)  # the wait's last look (no retry when the sweep ended between two looks)
            host = data.get("remote_addr") or data.get("host", "?")
            task = data.get("task", "")
            role = data.get("role", "")
            label = f"{role} : {task}" if role else task
            res = data.get("res") or {}
            status = {"runner_on_ok": "changed" if res.get("changed") else "ok", "runner_on_failed": "FAILED",
                      "runner_on_unreachable": "UNREACHABLE", "runner_on_skipped": "skipped"}[kind]
            if kind == "runner_on_failed" and data.get("ignore_errors"):
                status = "ignored"
            duration = float(data.get("duration") or 0.0)
            self.timings.append(TaskTiming(host, task, role, duration, status))
            if status == "skipped" and not self.verbose:
                return True
            self._print(f"{status:<8} {host:<16} {label} ({duration:.1f}s)")
            if res.get("plan_text"):  # the pre-flight's plan (roles/preflight's netbench_plan), before any change
                print("\n".join(f"          {line}" for line in str(res["plan_text"]).splitlines()), file=self.out,
                      flush=True)
            if status in ("FAILED", "UNREACHABLE"):
                failure = Failure(host, label, failure_message(res))
                self.failures.append(failure)
                print(f"          {failure}", file=self.out, flush=True)
        return True


def keep_output(runner, run_dir: Path) -> Path | None:
    """ansible-playbook's own output of this invocation, beside the hosts' logs: results/<run_id>/logs/
    ansible-<ident>.log. Only where the run has a results folder already (a refused pre-flight gets none)."""
    if not run_dir.is_dir():
        return None
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    target = logs / f"ansible-{Path(runner.config.artifact_dir).name}.log"
    try:
        shutil.copyfile(Path(runner.config.artifact_dir) / "stdout", target)
    except OSError:
        return None
    return target


class _StopOnSignal:
    """ansible-runner's cancel callback: on SIGTERM or SIGINT, stop the ansible-playbook it runs and
    every descendant of it, then let ansible-runner finish. ansible-core's workers call setsid, so
    ansible-runner's own cancel (SIGKILL to ansible-playbook's process group) left them running,
    re-parented to PID 1. ansible-playbook is asked alone first (it passes SIGTERM on to its workers);
    only processes carrying this run's identity (in their environment) are signalled."""

    def __init__(self, identity: processes.Identity):
        self.identity = identity
        self.signalled = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum: int, frame: object) -> None:  # noqa: ARG002
        self.signalled = True

    def __call__(self) -> bool:
        if not self.signalled:
            return False
        for pid in processes.descendants([os.getpid()]):
            info = processes.proc_stat(pid)
            # ansible-playbook: our child that leads its own group (pexpect's session), started with our identity
            if info and info[1] == os.getpid() and info[2] == pid and self.identity.carried_by(pid):
                processes.terminate(pid, timeout=10.0, identity=self.identity, leader=(pid, info[3]))
        return True


def run_experiment(
    inventory: str | Path | None = None,
    model: str | None = None,
    profiles: str | list | None = None,
    extravars: dict[str, Any] | None = None,
    tags: str | list[str] | None = None,
    skip_tags: str | list[str] | None = None,
    limit: str | None = None,
    run_id: str | None = None,
    playbook: str = "site.yml",
    project_dir: str | Path = PROJECT_DIR,
    check: bool = False,
    out: TextIO = sys.stdout,
    verbose: bool = False,
    envvars: dict[str, str] | None = None,
) -> ExperimentResult:
    """Run ``playbook`` with ansible-runner and return the outcome and where the results are."""
    import ansible_runner  # imported here so `--help` and the pure helpers stay fast

    from bench_client.orchestration.plan import check_run_id

    project = Path(project_dir).resolve()
    inventory_path = Path(inventory or project / DEFAULT_INVENTORY)
    if not inventory_path.is_absolute():
        inventory_path = (Path.cwd() / inventory_path) if (Path.cwd() / inventory_path).exists() else project / inventory_path
    if not inventory_path.exists():
        raise FileNotFoundError(f"inventory {inventory_path} does not exist")
    variables: dict[str, Any] = dict(extravars or {})
    if model:
        variables["model"] = model
    if profiles:
        variables["profiles"] = profiles
    run_id = check_run_id(str(run_id or variables.get("run_id") or new_run_id()))  # before anything is written
    variables["run_id"] = run_id
    results_root = Path(variables.get("results_dir") or project / "results")
    variables["results_dir"] = str(results_root)
    # A fresh private data dir per run: ansible-runner writes env/cmdline, env/extravars... there and
    # would replay them (e.g. --check) in later runs. Artifacts (event logs) are kept for debugging.
    private = Path(tempfile.mkdtemp(prefix="netbench-runner-"))
    # how often ansible-runner asks the cancel callback (its default: every 5 s); read from this file only
    (private / "env").mkdir()
    (private / "env" / "settings").write_text("pexpect_timeout: 1\n")
    artifacts = project / ".cache" / "runner" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    printer = ProgressPrinter(out=out, verbose=verbose)
    cmdline = "--check --diff" if check else None
    # ansible-runner sets ANSIBLE_CALLBACK_PLUGINS (to add its own), which hides ansible.cfg's
    # callback_plugins: name ours here, or the timeline callback (callbacks_enabled) is not found.
    env = {"ANSIBLE_CONFIG": str(project / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CALLBACK_PLUGINS": str(project / "playbooks" / "callback_plugins"), **(envvars or {})}
    identity = processes.Identity.new()  # carried by ansible-playbook and all it starts: what a stop may signal
    env.update(identity.env())
    # The ansible-playbook of this interpreter's environment, also when the venv is not activated.
    bindir = Path(sys.executable).parent
    env.setdefault("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("VIRTUAL_ENV", str(bindir.parent))
    started = time.monotonic()
    try:
        with _StopOnSignal(identity) as stop_on_signal:
            runner = ansible_runner.run(
                private_data_dir=str(private),
                artifact_dir=str(artifacts),
                project_dir=str(project),
                playbook=playbook,
                inventory=str(inventory_path),
                extravars=variables,
                tags=",".join(tags) if isinstance(tags, list) else tags,
                skip_tags=",".join(skip_tags) if isinstance(skip_tags, list) else skip_tags,
                limit=limit,
                cmdline=cmdline,
                envvars=env,
                ident=run_id + "-" + secrets.token_hex(2),
                rotate_artifacts=20,
                event_handler=printer,
                cancel_callback=stop_on_signal,
                quiet=True,
            )
            stdout_text = runner.stdout.read() if runner.rc != 0 else ""
        keep_output(runner, results_root / run_id)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    wall = time.monotonic() - started
    if runner.rc != 0 and not printer.failures:  # e.g. a YAML error: no failed-task event, stdout says why
        printer.failures.append(Failure("controller", "ansible-playbook", playbook_error(stdout_text)))
    return ExperimentResult(status=runner.status, rc=runner.rc, run_id=run_id, results_dir=results_root / run_id,
                            wall_time_s=wall, failures=printer.failures, timings=printer.timings,
                            stats=runner.stats or {})


def _parse_extravar(text: str) -> dict[str, Any]:
    """``-e`` like ansible-playbook: KEY=VALUE, a JSON object, or @file.(json|yml)."""
    if text.startswith("@"):
        import yaml

        return yaml.safe_load(Path(text[1:]).read_text()) or {}
    if text.lstrip().startswith("{"):
        return json.loads(text)
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"-e {text!r}: use KEY=VALUE, a JSON object or @FILE")
    try:
        parsed = json.loads(value)  # numbers, lists, booleans as JSON; anything else as a string
    except ValueError:
        parsed = value
    return {key: parsed}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petals-netbench", description=description(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:7]))
    p.add_argument("-i", "--inventory", default=None, help=f"inventory (default {DEFAULT_INVENTORY})")
    p.add_argument("-m", "--model", default=None, help="model name, e.g. facebook/opt-30b")
    p.add_argument("-p", "--profiles", default=None, help="network profiles, comma-separated (default: none)")
    p.add_argument("--dtype", default=None, help="weight dtype (default float16 on CUDA, float32 on CPU)")
    p.add_argument("--run-id", default=None, help="results folder name (default: UTC timestamp)")
    p.add_argument("--resume", nargs="?", const=LATEST, default=None, metavar="RUN_ID",
                   help="resume a run (default: the latest unfinished one under the results dir) with the options "
                        "its manifest recorded where none are given: only configurations it lacks are measured")
    p.add_argument("-e", "--extra-vars", action="append", type=_parse_extravar, default=[], metavar="VARS")
    p.add_argument("-t", "--tags", default=None, help="only these stages: provision,swarm,shaping,bench,fetch; plan: print the plan and estimate, change nothing")
    p.add_argument("--skip-tags", default=None)
    p.add_argument("-l", "--limit", default=None, help="only these hosts (e.g. --cleanup of the hosts still reachable)")
    p.add_argument("--cleanup", action="store_true", help="run only the cleanup tag (stop everything, unshape)")
    p.add_argument("--check", action="store_true", help="Ansible check mode: report what would change")
    p.add_argument("-v", "--verbose", action="store_true", help="also list skipped tasks")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    return p


def cleanup_command(args: argparse.Namespace) -> str:
    """The command that stops what a run of ``args`` left running: the same inventory and -e options."""
    words = ["petals-netbench"] + (["-i", args.inventory] if args.inventory else [])
    for item in args.extra_vars:
        words += ["-e", json.dumps(item, sort_keys=True)]
    return shlex.join(words + ["--cleanup"])


LATEST = "latest"
# What the manifest's extra_vars recorded (playbooks/experiment.yml) that --resume takes where not given now.
RESUMED_OPTIONS = ("model", "profiles", "dtype", "systems", "repeats", "netbench_runtime")


def resume_options(args: argparse.Namespace, extravars: dict[str, Any]) -> str:
    """--resume: the run id it means (refused where there is no such run), with the run's recorded
    model, profiles, inventory... filled into ``args``/``extravars`` where this command gives none."""
    root = Path(extravars.get("results_dir") or PROJECT_DIR / "results")
    run_id = runs.resume_run_id(root) if args.resume == LATEST else args.resume
    if args.run_id and args.run_id != run_id:
        raise ValueError(f"--resume {run_id} and --run-id {args.run_id} name two runs; give one")
    manifest = runs.read_json(root / run_id / runs.MANIFEST_NAME)
    if manifest is None:
        raise ValueError(f"no run {run_id} to resume under {root} (no manifest.json there)")
    recorded = manifest.get("extra_vars") or {}
    if args.model is None and args.profiles is None:  # both or neither: a half-given configuration is the user's
        args.model, args.profiles = recorded.get("model"), recorded.get("profiles")
    for key in RESUMED_OPTIONS[2:]:
        if recorded.get(key) is not None:
            extravars.setdefault(key, recorded[key])
    if args.inventory is None and manifest.get("inventory"):
        args.inventory = str(manifest["inventory"])
    return run_id


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    extravars: dict[str, Any] = {}
    for item in args.extra_vars:
        extravars.update(item)
    if args.dtype:
        extravars["dtype"] = args.dtype
    if not args.resume and str(extravars.pop("resume", "")).strip().lower() in ("true", "yes", "1", "on"):
        args.resume = LATEST  # -e resume=true means what it means to site.yml (this wrapper names the run id itself)
    try:
        run_id = resume_options(args, extravars) if args.resume else args.run_id
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_id = run_id or extravars.get("run_id") or new_run_id()
    # the playbook's own output (ansible-runner's stdout artifact) names this command, not runner's ansible-playbook
    extravars.setdefault("netbench_resume_command", runs.resume_command(["petals-netbench", *argv], run_id, "--resume"))
    tags = "cleanup" if args.cleanup else args.tags
    if not args.cleanup:  # the play's last message names it (playbooks/experiment.yml)
        extravars.setdefault("netbench_cleanup_command", cleanup_command(args))
    try:
        result = run_experiment(inventory=args.inventory, model=args.model, profiles=args.profiles,
                                extravars=extravars, tags=tags, skip_tags=args.skip_tags, limit=args.limit,
                                run_id=run_id,
                                check=args.check, verbose=args.verbose)
    except (FileNotFoundError, ValueError) as exc:  # plan.PlanError (a bad run id) is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tsvs = [str(d / "out.tsv") for d in result.profile_dirs]
    # a failed run that began its experiment (it has a manifest): the exact command that resumes it
    resume = (extravars["netbench_resume_command"]
              if not result.ok and not args.cleanup and (result.results_dir / runs.MANIFEST_NAME).exists() else None)
    if args.json:
        print(json.dumps({"status": result.status, "rc": result.rc, "run_id": result.run_id,
                          "results_dir": str(result.results_dir), "tsv": tsvs, "wall_time_s": round(result.wall_time_s, 1),
                          "failures": [f.__dict__ for f in result.failures], "timeline": result.timeline_summary(),
                          "resume_command": resume}, indent=2))
    else:
        print(f"{result.status} (rc {result.rc}) in {result.wall_time_s:.0f} s")
        for failure in result.failures:
            print(failure)
        if tsvs:
            print(f"results: {result.results_dir}")
            for tsv in tsvs:
                print(f"  {tsv}")
        summary = result.timeline_summary()
        if summary is not None:
            print(timeline.format_summary(summary))
        if not args.cleanup and not args.check and result.swarm_hosts:
            print(f"the swarm still runs on {', '.join(result.swarm_hosts)}; stop it with: {cleanup_command(args)}")
        if resume:
            print(f"run {result.run_id} is unfinished; resume it with: {resume}")
    return result.rc if result.rc is not None else 1


if __name__ == "__main__":
    sys.exit(main())
