"""Start, stop and inspect long-running processes by process group, for the Ansible roles.

    python -m bench_client.core.daemon start --pidfile P --log L [--ready-file F] [--env K=V ...] -- CMD ...
    python -m bench_client.core.daemon stop --pidfile P [--timeout S]
    python -m bench_client.core.daemon status --pidfile P
    python -m bench_client.core.daemon run --pidfile P -- CMD ...   # foreground; no leftovers

Each process is started in its own session (so it leads a new process group) and its PID, PGID,
start time and command line are recorded in a JSON pidfile. ``stop`` signals the whole group
(SIGTERM, then SIGKILL after a timeout), never a name. Every call prints one JSON object with a
``changed`` key, so Ansible tasks can report changes honestly: ``start`` of a process that is
already running with the same command line changes nothing (idempotent second runs).
No torch or petals import here: this runs in well under a second on every host.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


class DaemonError(RuntimeError):
    pass


@dataclass(frozen=True)
class Record:
    pid: int
    pgid: int
    start_ticks: int  # /proc/PID/stat field 22: guards against PID reuse
    argv: list[str]
    log: str

    @classmethod
    def load(cls, path: Path) -> Record | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["pgid"]), int(data["start_ticks"]), list(data["argv"]), data["log"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.__dict__, sort_keys=True) + "\n")
        os.replace(tmp, path)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgid, start_ticks) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group; zombies may linger where PID 1 does not reap."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info and info[1] == pgid and info[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def descendants(roots: list[int]) -> list[int]:
    """Live descendants of ``roots``: helpers that left the process group (torch_shm_manager calls setsid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            if fields[0] not in ("Z", "X"):
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _signal_all(pgid: int, pids: list[int], sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if (info := _stat(pid)) and info[0] not in ("Z", "X")]


def is_running(record: Record) -> bool:
    """The recorded group still has live members, and its leader (if alive) is the process we started."""
    leader = _stat(record.pid)
    if leader and leader[0] not in ("Z", "X") and leader[2] != record.start_ticks:
        return False  # PID reused by an unrelated process
    return bool(group_members(record.pgid))


def status(pidfile: Path) -> dict:
    record = Record.load(pidfile)
    if record is None:
        return {"changed": False, "running": False, "pidfile": str(pidfile)}
    return {"changed": False, "running": is_running(record), "pid": record.pid, "pgid": record.pgid,
            "argv": record.argv, "log": record.log, "pidfile": str(pidfile)}


def _log_tail(log: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start(argv: list[str], pidfile: Path, log: Path, env: dict[str, str] | None = None, cwd: str | None = None,
          ready_file: Path | None = None, ready_timeout: float = 120.0) -> dict:
    if not argv:
        raise DaemonError("no command given after --")
    record = Record.load(pidfile)
    if record is not None and is_running(record):
        if record.argv == argv:
            return {"changed": False, "running": True, "pid": record.pid, "pgid": record.pgid, "log": record.log}
        stop(pidfile)  # same pidfile, other command line: the configuration changed, restart
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)  # a stale file from an earlier run must not count as ready
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=cwd, env={**os.environ, **(env or {})}, close_fds=True)
    info = _stat(proc.pid)
    record = Record(proc.pid, proc.pid, info[2] if info else 0, argv, str(log))
    record.save(pidfile)
    if ready_file is not None:
        deadline = time.monotonic() + ready_timeout
        while not ready_file.exists():
            if proc.poll() is not None:
                pidfile.unlink(missing_ok=True)
                raise DaemonError(f"{argv[0]} exited with code {proc.returncode} before it was ready; "
                                  f"last lines of {log}:\n{_log_tail(str(log))}")
            if time.monotonic() > deadline:
                stop(pidfile)
                raise DaemonError(f"{ready_file} did not appear within {ready_timeout:.0f} s; "
                                  f"last lines of {log}:\n{_log_tail(str(log))}")
            time.sleep(0.1)
    return {"changed": True, "running": True, "pid": record.pid, "pgid": record.pgid, "log": str(log)}


def stop(pidfile: Path, timeout: float = 20.0) -> dict:
    record = Record.load(pidfile)
    if record is None:
        pidfile.unlink(missing_ok=True)
        return {"changed": False, "running": False}
    if not is_running(record):
        pidfile.unlink(missing_ok=True)
        return {"changed": False, "running": False, "pid": record.pid}
    sig = terminate(record.pgid, timeout)
    pidfile.unlink(missing_ok=True)
    return {"changed": True, "running": False, "pid": record.pid, "signal": sig.name}


def terminate(pgid: int, timeout: float = 20.0, extra: list[int] | None = None) -> signal.Signals:
    """SIGTERM a process group and every descendant of its members (also those in other groups),
    then SIGKILL what is left after ``timeout``; returns the last signal sent."""
    members = group_members(pgid)
    targets = [p for p in descendants(members) + list(extra or []) if p not in members]
    sig = signal.SIGTERM
    deadline = time.monotonic() + timeout
    while group_members(pgid) or _alive(targets):
        _signal_all(pgid, _alive(targets), sig)
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                raise DaemonError(f"processes {group_members(pgid) + _alive(targets)} survived SIGKILL")
            sig, deadline = signal.SIGKILL, time.monotonic() + 5.0
        time.sleep(0.1)
        targets = list(dict.fromkeys(targets + [p for p in descendants(group_members(pgid)) if p not in targets]))
    return sig


def run(argv: list[str], pidfile: Path, grace: float = 5.0) -> int:
    """Run CMD in its own session in the foreground and return its exit code; afterwards stop whatever
    it left behind in its process group (p2pd daemons, worker processes), so a finished benchmark
    leaves no process of ours. While it runs, ``stop --pidfile`` (cleanup) can end it."""
    if not argv:
        raise DaemonError("no command given after --")
    _become_subreaper()  # orphans of CMD (setsid'ed helpers too) become our children, not init's
    proc = subprocess.Popen(argv, start_new_session=True)
    info = _stat(proc.pid)
    Record(proc.pid, proc.pid, info[2] if info else 0, argv, "-").save(pidfile)

    def forward(signum, frame):  # noqa: ARG001  (Ansible's async timeout or a Ctrl-C reaches us)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        code = proc.wait()
    finally:
        leftovers = list(dict.fromkeys(group_members(proc.pid) + descendants([os.getpid()])))
        if leftovers:
            print(f"daemon: stopping {len(leftovers)} process(es) {argv[0]} left behind: {leftovers}", file=sys.stderr)
            terminate(proc.pid, timeout=grace, extra=leftovers)
        _reap()
        pidfile.unlink(missing_ok=True)
    return code


def _become_subreaper() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # not Linux: leftovers outside the group may then escape


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench_client.core.daemon", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_start = sub.add_parser("start", help="start CMD in its own session unless it already runs")
    p_start.add_argument("--pidfile", required=True, type=Path)
    p_start.add_argument("--log", required=True, type=Path)
    p_start.add_argument("--cwd", default=None)
    p_start.add_argument("--env", action="append", default=[], metavar="K=V")
    p_start.add_argument("--ready-file", type=Path, default=None, help="wait until the process writes this file")
    p_start.add_argument("--ready-timeout", type=float, default=120.0)
    p_start.add_argument("command", nargs=argparse.REMAINDER)
    p_stop = sub.add_parser("stop", help="SIGTERM the process group, SIGKILL after --timeout")
    p_stop.add_argument("--pidfile", required=True, type=Path)
    p_stop.add_argument("--timeout", type=float, default=20.0)
    p_run = sub.add_parser("run", help="run CMD in its own session in the foreground, then stop its leftovers")
    p_run.add_argument("--pidfile", required=True, type=Path)
    p_run.add_argument("command", nargs=argparse.REMAINDER)
    p_status = sub.add_parser("status")
    p_status.add_argument("--pidfile", required=True, type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "start":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            env = dict(item.split("=", 1) for item in args.env)
            result = start(command, args.pidfile, args.log, env=env, cwd=args.cwd, ready_file=args.ready_file,
                           ready_timeout=args.ready_timeout)
        elif args.action == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            return run(command, args.pidfile)
        elif args.action == "stop":
            result = stop(args.pidfile, timeout=args.timeout)
        else:
            result = status(args.pidfile)
    except DaemonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
