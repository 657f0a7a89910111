"""Start, stop and inspect long-running processes by process group, for the Ansible roles.

    python -m bench_client.core.daemon start --pidfile P --log L [--ready-file F] [--env K=V ...] -- CMD ...
    python -m bench_client.core.daemon stop --pidfile P [--pidfile P2 ...] [--timeout S] [--remove F ...]
    python -m bench_client.core.daemon status --pidfile P
    python -m bench_client.core.daemon run --pidfile P -- CMD ...   # foreground; no leftovers

Each process is started in its own session (so it leads a new process group) and its PID, PGID,
start time and command line are recorded in a JSON pidfile. ``stop`` sends SIGTERM to the process
it started, then to whatever of its group is left, SIGKILL after a timeout, never by name, and says
which signal ended the group (``"signal"``: SIGTERM when nothing had to be killed). Each group gets a private
TMPDIR (recorded in the pidfile) that its stop, or the end of ``run``, removes: the sockets and folders
its processes' helpers make there go with it. Every call prints one JSON object with a
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

from bench_client.core.arguments import description
from bench_client.core.processes import (ProcessError, Identity, descendants, group_members, make_private_tmpdir,
                                         remove_private_tmpdir, start_ticks, terminate, write_atomically)


class DaemonError(RuntimeError):
    pass


@dataclass(frozen=True)
class Record:
    pid: int
    pgid: int
    start_ticks: int  # /proc/PID/stat field 22: guards against PID reuse
    argv: list[str]
    log: str
    boot_id: str = ""
    token: str = ""  # processes.Identity: in the environment of every process the command starts
    tmpdir: str = ""  # the group's TMPDIR (processes.make_private_tmpdir), removed when it is stopped

    @property
    def identity(self) -> Identity | None:
        return Identity(self.boot_id, self.token) if self.token else None

    @classmethod
    def load(cls, path: Path) -> Record | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["pgid"]), int(data["start_ticks"]), list(data["argv"]), data["log"],
                       str(data.get("boot_id", "")), str(data.get("token", "")), str(data.get("tmpdir", "")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    @classmethod
    def started(cls, pid: int, argv: list[str], log: str, identity: Identity, tmpdir: str = "") -> Record:
        return cls(pid, pid, start_ticks(pid) or 0, argv, log, identity.boot_id, identity.token, tmpdir)

    def remove_tmpdir(self) -> None:
        """The group's private TMPDIR, once nothing of the group runs; a pidfile without our token names
        nothing we made."""
        if self.token:
            remove_private_tmpdir(self.tmpdir)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(self.__dict__, sort_keys=True) + "\n")


def is_running(record: Record) -> bool:
    """A process we started still runs: a live process of the group carries the record's identity.
    A pidfile without an identity token proves nothing: its PID and start time may be copied from any
    live process (someone else's), so it is never taken as running, and nothing it names is signalled."""
    return record.identity is not None and bool(group_members(record.pgid, record.identity))


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
    identity, tmpdir = Identity.new(), make_private_tmpdir()
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=cwd,
                                env={**os.environ, **(env or {}), **identity.env(), "TMPDIR": tmpdir}, close_fds=True)
    record = Record.started(proc.pid, argv, str(log), identity, tmpdir)
    record.save(pidfile)
    if ready_file is not None:
        deadline = time.monotonic() + ready_timeout
        while not ready_file.exists():
            if proc.poll() is not None:
                stop(pidfile)  # its helpers, its private TMPDIR
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
        record.remove_tmpdir()  # a group that was killed leaves its TMPDIR
        pidfile.unlink(missing_ok=True)
        return {"changed": False, "running": False, "pid": record.pid}
    sig = terminate(record.pgid, timeout, identity=record.identity, leader=(record.pid, record.start_ticks))
    record.remove_tmpdir()
    pidfile.unlink(missing_ok=True)
    return {"changed": True, "running": False, "pid": record.pid, "signal": sig.name}


def stop_all(pidfiles: list[Path], timeout: float = 20.0) -> dict:
    """Stop several process groups at once (a host's servers): each stop mostly waits for its leader's
    shutdown, so one after another they would add up. One result per pidfile, in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(pidfiles))) as pool:
        results = list(pool.map(lambda path: {**stop(path, timeout), "pidfile": str(path)}, pidfiles))
    return {"changed": any(result["changed"] for result in results), "groups": results}


def remove_files(paths: list[Path]) -> list[str]:
    """The files stopped processes published (address files), once they are stopped: those that were there."""
    removed = []
    for path in paths:
        try:
            path.unlink()
            removed.append(str(path))
        except FileNotFoundError:
            pass
    return removed


def run(argv: list[str], pidfile: Path, grace: float = 5.0) -> int:
    """Run CMD in its own session in the foreground and return its exit code; afterwards stop whatever
    it left behind in its process group (p2pd daemons, worker processes), so a finished benchmark
    leaves no process of ours. While it runs, ``stop --pidfile`` (cleanup) can end it.

    One at a time per pidfile: if the pidfile names a running command (proven ours by its identity),
    the same command line, or one writing the same ``--output``, is the same run restarted (a rerun
    after Ctrl-C left the first one running, measuring into that output): it is stopped and this one
    takes over; any other command is another experiment on the same swarm, and is refused."""
    if not argv:
        raise DaemonError("no command given after --")
    previous = Record.load(pidfile)
    if previous is not None and is_running(previous):
        if not _same_run(previous.argv, argv):
            raise DaemonError(f"another benchmark runs on this swarm (pid {previous.pid}, pidfile {pidfile}): "
                              f"{' '.join(previous.argv)[:300]}; wait for it to finish or stop it "
                              "(site.yml --tags cleanup)")
        print(f"daemon: taking over from the same command still running as pid {previous.pid} "
              "(an interrupted run); stopping it", file=sys.stderr)
        terminate(previous.pgid, identity=previous.identity)
        previous.remove_tmpdir()
    _become_subreaper()  # orphans of CMD (setsid'ed helpers too) become our children, not init's
    identity, tmpdir = Identity.new(), make_private_tmpdir()
    proc = subprocess.Popen(argv, start_new_session=True, env={**os.environ, **identity.env(), "TMPDIR": tmpdir})
    record = Record.started(proc.pid, argv, "-", identity, tmpdir)
    record.save(pidfile)

    def forward(signum, frame):  # noqa: ARG001  (Ansible's async timeout or a Ctrl-C reaches us)
        # to CMD alone, which stops its own helpers (processes.stop_leader says why); the finally
        # below stops whatever it leaves
        try:
            os.kill(proc.pid, signum)
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
            terminate(proc.pid, timeout=grace, extra=leftovers, identity=identity)
        _reap()
        record.remove_tmpdir()
        current = Record.load(pidfile)
        if current is None or current.pid == proc.pid:  # a run that took over from us owns the pidfile now
            pidfile.unlink(missing_ok=True)
    return code


def _same_run(previous: list[str], argv: list[str]) -> bool:
    """The same command, or the same results file (the DHT's addresses on the command line may differ)."""
    def output(args: list[str]) -> str | None:
        return args[args.index("--output") + 1] if "--output" in args[:-1] else None

    return previous == argv or (output(argv) is not None and output(previous) == output(argv))


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
    parser = argparse.ArgumentParser(prog="python -m bench_client.core.daemon", description=description(__doc__))
    sub = parser.add_subparsers(dest="action", required=True)
    p_start = sub.add_parser("start", help="start CMD in its own session unless it already runs")
    p_start.add_argument("--pidfile", required=True, type=Path)
    p_start.add_argument("--log", required=True, type=Path)
    p_start.add_argument("--cwd", default=None)
    p_start.add_argument("--env", action="append", default=[], metavar="K=V")
    p_start.add_argument("--ready-file", type=Path, default=None, help="wait until the process writes this file")
    p_start.add_argument("--ready-timeout", type=float, default=120.0)
    p_start.add_argument("command", nargs=argparse.REMAINDER)
    p_stop = sub.add_parser("stop", help="SIGTERM the leader, then the rest of its group; SIGKILL after --timeout")
    p_stop.add_argument("--pidfile", type=Path, action="append", default=[],
                        help="repeat to stop several groups at once (then one result each under 'groups')")
    p_stop.add_argument("--timeout", type=float, default=20.0)
    p_stop.add_argument("--remove", type=Path, action="append", default=[],
                        help="a file to remove once every group is stopped (their address files); repeatable")
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
            if not args.pidfile and not args.remove:
                raise DaemonError("stop needs a --pidfile (or a file to --remove)")
            if len(args.pidfile) == 1:
                result = stop(args.pidfile[0], timeout=args.timeout)
            else:
                result = stop_all(args.pidfile, timeout=args.timeout)
            if args.remove:
                result["removed"] = remove_files(args.remove)
                result["changed"] = result["changed"] or bool(result["removed"])
        else:
            result = status(args.pidfile)
    except (DaemonError, ProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
