"""The run's timeline: results/<run_id>/timeline.jsonl, and the breakdown with the duty ratio at the end.

An aggregate callback (enabled in ansible.cfg: callbacks_enabled), so it runs beside any stdout
callback, ansible-runner's included. It only listens: no task is added to the run. Each task is put
in a phase by its role, its tasks file and its play's tags (bench_client.orchestration.timeline), and
in a profile by the loop variable of playbooks/tasks/profile.yml's include (netbench_profile).
Events are kept in memory until the pre-flight's plan names the run id, then appended line by line,
so an interrupted run keeps what it had.

It also keeps the run section of results/<run_id>/manifest.json (bench_client.orchestration.runs):
the invocation recorded as running when its first experiment task starts, and its end, outcome and
the configurations done when the playbook ends; a failed one ends with the command that resumes it.
`--tags plan` (the pre-flight alone, printing the plan) writes nothing.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from ansible import context
from ansible.plugins.callback import CallbackBase

try:
    from bench_client.orchestration import runs, timeline
except ImportError:  # bench_client not importable by this ansible-playbook: no timeline
    runs = timeline = None

DOCUMENTATION = """
    name: netbench_timeline
    type: aggregate
    short_description: the run's phases in results/<run_id>/timeline.jsonl, their breakdown and the duty ratio
    description:
        - Records when each phase of the experiment started and ended, and prints the breakdown at the end.
    requirements:
      - enabled in ansible.cfg (callbacks_enabled = netbench_timeline)
"""

# playbooks/callback_plugins/ -> the project, whose results/ the experiment writes by default
PROJECT_DIR = Path(__file__).resolve().parents[2]
# Phases that alone are no experiment: a run of only these writes no timeline into a new results folder.
QUIET_PHASES = ("preflight", "cleanup", "other")
# Tasks that every play runs under any tag (a role's argument checks): they start no experiment either.
ARGUMENT_CHECKS = ("validate_argument_spec", "ansible.builtin.validate_argument_spec")


def _profile_of(task: Any) -> str | None:
    """The profile this task runs for: the include's loop variable, found up the task's parents."""
    try:
        value = task.get_vars().get("netbench_profile")
    except Exception:  # a parent that cannot give its vars: no profile rather than no timeline
        return None
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"]
    return None


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "netbench_timeline"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # check mode and the plan alone write nothing
        self.enabled = (timeline is not None and not context.CLIARGS.get("check", False)
                        and list(context.CLIARGS.get("tags") or []) != ["plan"])
        self.invocation = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        self.started = time.time()
        self.segments = timeline.Segmenter() if timeline else None
        self.play_tags: list[str] = []
        self.play_name = ""
        self.results_root: Path | None = None
        self._extra_vars: dict[str, Any] = {}
        self.path: Path | None = None  # results/<run_id>/timeline.jsonl once the plan names the run
        self.pending: list[dict[str, Any]] = [{"kind": "invocation", "invocation": self.invocation,
                                               "start": round(self.started, 3)}]
        self.intervals: list[dict[str, Any]] = []
        self.plan: dict[str, Any] | None = None
        self.experiment = False  # a task of an experiment phase started (not only pre-flight, cleanup, checks)
        self.recorded = False  # this invocation is in the manifest's run section (it ran an experiment task)

    def _emit(self, rec: dict[str, Any]) -> None:
        self.pending.append(rec)
        if rec.get("kind") == "interval":
            self.intervals.append(rec)
        self._flush()

    def _flush(self) -> None:
        if self.path is None or not self.pending:
            return
        # `--tags cleanup` alone (a fresh run id each time) would leave a results folder holding only this
        if not self.path.parent.exists() and not self.experiment:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # one write per record: a crash cuts at most the last line
            for rec in self.pending:
                f.write(json.dumps(rec) + "\n")
        self.pending = []

    def _close(self) -> None:
        closed = self.segments.close()
        if closed is not None:
            self._emit(closed.record(self.invocation))

    def v2_playbook_on_play_start(self, play: Any) -> None:
        if not self.enabled:
            return
        self._close()  # a play boundary ends a stretch (the next play starts its own hosts)
        self.play_tags = list(play.tags or [])
        self.play_name = str(play.get_name() or "")
        if self.results_root is None:
            self._extra_vars = play.get_variable_manager().extra_vars
            self.results_root = Path(self._extra_vars.get("results_dir") or PROJECT_DIR / "results")

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        if not self.enabled:
            return
        role, path = timeline.task_role_and_path(task._role.get_name() if task._role else None, task.get_path(),
                                                 task.action, task.args or {})
        phase = timeline.classify(role, path, self.play_tags, self.play_name)
        if phase not in QUIET_PHASES and task.action not in ARGUMENT_CHECKS:
            self.experiment = True
            if not self.recorded and self.path is not None:
                self._record(runs.RUNNING, None)
        closed = self.segments.task_start(phase, _profile_of(task), time.time())
        if closed is not None:
            self._emit(closed.record(self.invocation))

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self.v2_playbook_on_task_start(task, False)

    def _task_end(self, result: Any) -> None:
        if not self.enabled:
            return
        self.segments.task_end(result._host.get_name(), time.time())
        plan = (result._result.get("ansible_facts") or {}).get("netbench_plan")
        if self.path is None and isinstance(plan, dict) and plan.get("run_id"):
            self.plan = plan
            self.path = self.results_root / str(plan["run_id"]) / timeline.TIMELINE_NAME
            self._flush()

    def v2_runner_on_ok(self, result: Any) -> None:
        self._task_end(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._task_end(result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._task_end(result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._task_end(result)

    def _record(self, outcome: str, end: float | None) -> None:
        """This invocation in the manifest's run section (start, end, outcome, configurations done)."""
        self.recorded = True
        runs.record_invocation(self.path.parent, self.plan, {
            "invocation": self.invocation, "started_at": runs.iso(self.started), "finished_at": runs.iso(end),
            "outcome": outcome, "tags": list(context.CLIARGS.get("tags") or [])})

    def _resume_hint(self) -> str:
        """The command that resumes this run: petals-netbench's own (it passes it), else this command line."""
        given = self._extra_vars.get("netbench_resume_command")
        return str(given) if given else runs.resume_command(list(sys.argv), str(self.plan["run_id"]), "-e")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if not self.enabled:
            return
        self._close()
        end = time.time()
        failed = any(stats.failures.get(h) or stats.dark.get(h) for h in stats.processed)
        if self.recorded:
            self._record(runs.FAILED if failed else runs.SUCCESSFUL, end)
        measured = timeline.measured_seconds(self.path.parent, self.started) if self.path else 0.0
        rec = timeline.summary(self.invocation, self.started, end, self.intervals, measured)
        self._emit(rec)
        self._display.banner("TIMELINE")
        self._display.display(timeline.format_summary(rec))
        if self.path is not None:
            self._display.display(f"timeline: {self.path}")
        # a run that failed after its experiment began (now or in an earlier invocation of this run id)
        if failed and self.path is not None and (self.path.parent / runs.MANIFEST_NAME).exists():
            self._display.display(f"run {self.plan['run_id']} is unfinished; resume it with: {self._resume_hint()}",
                                  color="bright red")
