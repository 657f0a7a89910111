"""The timeline of a run: which phase ran when, and how much of the wall time measured something.

The Ansible callback ``netbench_timeline`` (playbooks/callback_plugins) appends one JSON object per
line to ``results/<run_id>/timeline.jsonl`` as the run goes:

- ``{"kind": "invocation", "invocation": ID, "start": T, ...}`` when a playbook run begins (a resumed
  run, same run id, appends another one);
- ``{"kind": "interval", "invocation": ID, "phase": P, "profile": NAME|null, "host": H|null,
  "start": T, "end": T, "seconds": S}`` for each stretch of consecutive tasks of one phase;
- ``{"kind": "summary", "invocation": ID, "start": T, "end": T, "wall_s": S, "measured_s": S,
  "duty_ratio": R, "phases": [[P, S], ...]}`` at the playbook's end.

The duty ratio is the time the benchmark measured (the JSONL field ``wall_time_s`` of the rows with
status ok that this invocation produced) over the invocation's wall time. Pure functions only: the
callback, ``petals-netbench`` and the report share them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from bench_client.systems import registry

TIMELINE_NAME = "timeline.jsonl"
OTHER = "other"
# Each system that runs on one host is a phase of its own, named as the system, after the swarm's profiles.
ONE_HOST_SYSTEMS = {s.role: s.name for s in registry.SYSTEMS.values() if not s.networked}
# The order of a run, which is also the order of the breakdown table.
PHASES = ("preflight", "provision", "image", "swarm:dht", "swarm:servers", "shaping:apply", "shaping:verify",
          "client", "fetch", "shaping:remove", *ONE_HOST_SYSTEMS.values(), "cleanup", OTHER)
# Roles whose phase does not depend on the tasks file that runs.
ROLE_PHASES = {"preflight": "preflight", "netbench_host": "provision", "swarm_firewall": "provision",
               "docker_engine": "provision", "nvidia_container_toolkit": "provision", "swarm_image": "image",
               "petals_dht": "swarm:dht", "petals_server": "swarm:servers", **ONE_HOST_SYSTEMS}
# Play tags that fix the phase of every task in the play (tags, not play names: names get reworded).
# In this order: site.yml also tags the image play provision (an imported play inherits the tags).
PLAY_TAG_PHASES = (("cleanup", "cleanup"), ("image", "image"), ("provision", "provision"))


def task_file(path: str | None) -> str:
    """'roles/netem/tasks/validate.yml:12' -> 'validate.yml' (the tasks file, robust against task renames)."""
    return PurePosixPath((path or "").rsplit(":", 1)[0]).name


INCLUDE_ROLE_ACTIONS = ("include_role", "import_role", "ansible.builtin.include_role", "ansible.builtin.import_role")


def task_role_and_path(role: str | None, path: str | None, action: str, args: dict[str, Any]) -> tuple[str | None, str | None]:
    """The role and tasks file a task stands for: an include_role counts as the role it runs (so that
    the include itself is not an 'other' stretch between two of the role's own)."""
    name = args.get("name")
    if action in INCLUDE_ROLE_ACTIONS and isinstance(name, str) and "{" not in name:
        tasks_from = str(args.get("tasks_from") or "main")
        return name, f"roles/{name}/tasks/{tasks_from if tasks_from.endswith('.yml') else tasks_from + '.yml'}"
    return role, path


def classify(role: str | None, path: str | None, play_tags: Iterable[str] = (), play_name: str = "") -> str:
    """The phase of one task, from its role, its tasks file and its play's tags (never its own name)."""
    tags = set(play_tags)
    for tag, phase in PLAY_TAG_PHASES:
        if tag in tags:
            return phase
    if play_name.lower().startswith("pre-flight"):  # its play is tagged always: its role's handlers and tasks too
        return "preflight"
    name = task_file(path)
    if role == "netem":
        if name in ("validate.yml", "rate_round.yml"):  # rate_round.yml: one round of validate's iperf3 schedule
            return "shaping:verify"
        return "shaping:remove" if name in ("destroy.yml", "stop.yml") else "shaping:apply"
    if role == "bench_client":
        if name == "fetch.yml":
            return "fetch"
        return "cleanup" if name == "stop.yml" else "client"
    return ROLE_PHASES.get(role or "", OTHER)


@dataclass
class Interval:
    phase: str
    profile: str | None
    host: str | None
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)

    def record(self, invocation: str) -> dict[str, Any]:
        return {"kind": "interval", "invocation": invocation, "phase": self.phase, "profile": self.profile,
                "host": self.host, "start": round(self.start, 3), "end": round(self.end, 3),
                "seconds": round(self.seconds, 3)}


class Segmenter:
    """Folds task events into intervals: one per run of consecutive tasks with the same phase and profile.

    ``task_start`` opens (or continues) a stretch; ``task_end`` moves its end and notes the host;
    a task of another phase closes it. Closed intervals come back from ``task_start`` and ``close``.
    """

    def __init__(self) -> None:
        self.current: Interval | None = None
        self.hosts: set[str] = set()

    def task_start(self, phase: str, profile: str | None, now: float) -> Interval | None:
        if self.current is not None and (self.current.phase, self.current.profile) == (phase, profile):
            return None
        closed = self.close()
        self.current = Interval(phase, profile, None, now, now)
        return closed

    def task_end(self, host: str, now: float) -> None:
        if self.current is not None:
            self.current.end = max(self.current.end, now)
            self.hosts.add(host)

    def close(self) -> Interval | None:
        """The open interval, finished (host set when exactly one host ran its tasks); None if none is open."""
        closed, self.current = self.current, None
        if closed is not None:
            closed.host = next(iter(self.hosts)) if len(self.hosts) == 1 else None
        self.hosts = set()
        return closed


def phase_totals(intervals: Iterable[dict[str, Any]]) -> list[tuple[str, float]]:
    """Seconds per phase over interval records, in the run's order (phases it never ran left out)."""
    totals: dict[str, float] = {}
    for rec in intervals:
        totals[rec["phase"]] = totals.get(rec["phase"], 0.0) + float(rec["seconds"])
    order = {phase: i for i, phase in enumerate(PHASES)}
    return sorted(totals.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def measured_seconds(run_dir: Path, since: float | None = None) -> float:
    """Sum of ``wall_time_s`` of the status-ok rows under ``run_dir/*/out.jsonl``; with ``since`` only
    the rows finished from then on (a resumed run does not count the rows of an earlier one)."""
    total = 0.0
    for path in sorted(Path(run_dir).glob("*/out.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a row cut by a crash: the client's own reader says so elsewhere
                continue
            if not isinstance(row, dict) or row.get("status") != "ok" or row.get("wall_time_s") is None:
                continue
            finished = _epoch(row.get("finished_at"))
            # finished_at has whole seconds: a row finished in the invocation's first second still counts
            if since is not None and finished is not None and finished < int(since):
                continue
            total += float(row["wall_time_s"])
    return total


def summary(invocation: str, start: float, end: float, intervals: list[dict[str, Any]],
            measured_s: float) -> dict[str, Any]:
    wall = max(0.0, end - start)
    return {"kind": "summary", "invocation": invocation, "start": round(start, 3), "end": round(end, 3),
            "wall_s": round(wall, 3), "measured_s": round(measured_s, 3),
            "duty_ratio": round(measured_s / wall, 6) if wall > 0 else None,
            "phases": [[phase, round(seconds, 3)] for phase, seconds in phase_totals(intervals)]}


def format_summary(rec: dict[str, Any]) -> str:
    """The breakdown table and the duty-ratio line, as printed at the end of a run."""
    wall = float(rec["wall_s"])
    share = (lambda s: f"{100 * s / wall:5.1f} %") if wall > 0 else (lambda s: "    - ")
    lines = [f"{'phase':<16} {'seconds':>9} {'of wall':>8}"]
    phases = [(str(p), float(s)) for p, s in rec["phases"]]
    for phase, seconds in phases:
        lines.append(f"{phase:<16} {seconds:9.1f} {share(seconds):>8}")
    # what no task covered: forking, templating and includes between tasks, plays starting
    between = wall - sum(s for _, s in phases)
    lines.append(f"{'(between tasks)':<16} {between:9.1f} {share(between):>8}")
    ratio = rec.get("duty_ratio")
    ratio_text = f"{100 * ratio:.1f} %" if ratio is not None else "n/a"
    lines.append(f"measured {float(rec['measured_s']):.1f} s of {wall:.1f} s wall: duty ratio {ratio_text}")
    return "\n".join(lines)


def read(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a timeline file; a line cut by an interrupted write is skipped."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


def last_summary(path: Path) -> dict[str, Any] | None:
    """The summary of the file's last invocation; computed from its intervals where it has none
    (a run interrupted before its end: wall time up to its last interval, nothing measured counted)."""
    records = list(read(path))
    invocations = [r for r in records if r.get("kind") == "invocation"]
    if not invocations:
        return None
    last = invocations[-1]
    ident = last.get("invocation")
    done = [r for r in records if r.get("kind") == "summary" and r.get("invocation") == ident]
    if done:
        return done[-1]
    intervals = [r for r in records if r.get("kind") == "interval" and r.get("invocation") == ident]
    end = max([float(r["end"]) for r in intervals], default=float(last["start"]))
    return summary(ident, float(last["start"]), end, intervals, measured_seconds(path.parent, float(last["start"])))
