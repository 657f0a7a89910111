"""Processes: exit cleanly on SIGTERM, and the one way we find and stop processes (by process group
and descendants, never by name, each signal only to a process proven to be ours)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn


def exit_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so petals' own shutdown path runs."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    # Forked helpers (hivemind's DHT process) would inherit the handler and linger in a traceback
    # when their process group is signalled; they should simply die with it.
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def write_atomically(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fail(message: str, code: int = 2) -> NoReturn:
    """One-line error for users, non-zero exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


# ---- finding and stopping processes: the one implementation (daemon, lab, workers and tests use it) ----
# Every signal goes through a pidfd opened BEFORE the process is checked, so the process checked is
# the process signalled (no PID reuse in between), and only to a process whose start time is the one
# seen when it was found, and, where an Identity is given, that carries our token in its environment:
# a stale pidfile (after a reboot or kill -9) never leads to a signal to someone else's process.

TOKEN_ENV = "NETBENCH_PROCESS_TOKEN"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class ProcessError(RuntimeError):
    pass


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Identity:
    """What proves that a process is one we started: this boot, and a random token in its environment
    (inherited by every descendant, also by helpers that leave the process group)."""

    boot_id: str
    token: str

    @classmethod
    def new(cls) -> Identity:
        return cls(boot_id(), secrets.token_hex(16))

    def env(self) -> dict[str, str]:
        return {TOKEN_ENV: self.token}

    def carried_by(self, pid: int) -> bool:
        if not self.token or self.boot_id != boot_id():
            return False  # another boot: every PID in the record names someone else now
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"{TOKEN_ENV}={self.token}".encode() in environ.split(b"\0")


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start_ticks) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def start_ticks(pid: int) -> int | None:
    info = proc_stat(pid)
    return info[3] if info and info[0] not in ("Z", "X") else None


def _all_live() -> dict[int, tuple[str, int, int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := proc_stat(int(entry))) and info[0] not in ("Z", "X"):
            table[int(entry)] = info
    return table


def group_members(pgid: int, identity: Identity | None = None) -> list[int]:
    """Live (non-zombie) processes of a process group; zombies may linger where PID 1 does not reap.
    With ``identity``: only those that carry it."""
    return [pid for pid, info in _all_live().items()
            if info[2] == pgid and (identity is None or identity.carried_by(pid))]


def descendants(roots: list[int]) -> list[int]:
    """Live descendants of ``roots``: helpers that left the process group (torch_shm_manager calls setsid)."""
    children: dict[int, list[int]] = {}
    for pid, info in _all_live().items():
        children.setdefault(info[1], []).append(pid)
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def send_signal(pid: int, ticks: int, sig: signal.Signals, identity: Identity | None = None) -> bool:
    """Signal ``pid`` only if it is still the process that started at ``ticks`` (and carries ``identity``)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False  # gone
    try:
        # checked after the pidfd is open: the pidfd pins this very process, whatever happens to the PID
        if start_ticks(pid) != ticks or (identity is not None and not identity.carried_by(pid)):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def stop_processes(find: Callable[[], list[int]], timeout: float, identity: Identity | None = None) -> tuple[
        signal.Signals, list[int]]:
    """SIGTERM every process ``find`` returns (asked again each round: new helpers appear, and a process
    found once is followed even after it leaves the group), SIGKILL what is left after ``timeout``.
    Returns the last signal sent and the processes that survived SIGKILL."""
    targets: dict[int, int] = {}  # pid -> start ticks when first found
    sent: dict[int, signal.Signals] = {}
    sockets: set[str] = set()
    sig = signal.SIGTERM
    deadline = time.monotonic() + timeout
    while True:
        for pid in find():
            if pid not in targets and (ticks := start_ticks(pid)) is not None:
                if identity is None or identity.carried_by(pid):
                    targets[pid] = ticks
        alive = {pid: t for pid, t in targets.items() if start_ticks(pid) == t}
        sockets |= unix_socket_paths(alive)
        if not alive:
            remove_leftovers(targets, sockets)
            return sig, []
        for pid, ticks in alive.items():
            if sent.get(pid) != sig and send_signal(pid, ticks, sig, identity):
                sent[pid] = sig
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                return sig, sorted(alive)
            sig, deadline = signal.SIGKILL, time.monotonic() + 5.0
        time.sleep(0.1)


def stop_leader(pid: int, ticks: int, grace: float, identity: Identity | None = None) -> bool:
    """SIGTERM only the process we started and give it ``grace`` seconds to exit; True when it did.

    Signalling the whole group at once kills the helpers first (hivemind's p2pd and the DHT process
    exit at once on SIGTERM), and the leader's own shutdown then waits forever on a helper that is
    gone: every DHT and server outlived SIGTERM and was SIGKILLed after 20 s. Asked alone, the leader
    shuts its helpers down in order (petals' server also announces itself offline first)."""
    if not send_signal(pid, ticks, signal.SIGTERM, identity):
        return start_ticks(pid) != ticks  # already gone (or not ours: nothing to wait for)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if start_ticks(pid) != ticks:
            return True
        time.sleep(0.02)
    return start_ticks(pid) != ticks


# What our processes leave behind when they exit: hivemind's unix sockets (/tmp/hivemind-*.sock, bound by
# p2pd and by each P2P client; a process that exits without its shutdown never removes them) and
# torch's shared-memory segments (hivemind shares tensors through files, /dev/shm/torch_<pid>_*, which
# the creator's torch_shm_manager removes only if it outlives the creator). Both are found through
# the processes themselves, never by a name pattern alone.
SHM_DIR = Path("/dev/shm")


def unix_socket_paths(pids: dict[int, int] | list[int]) -> set[str]:
    """Paths of the unix sockets these processes hold open (listening or bound)."""
    found: set[str] = set()
    for pid in pids:
        try:
            inodes = {link[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                      if (link := _readlink(f"/proc/{pid}/fd/{fd}")).startswith("socket:[")}
            table = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]  # its own network namespace
        except OSError:
            continue
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes and fields[7].startswith("/"):
                found.add(fields[7])
    return found


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def remove_leftovers(pids: dict[int, int] | list[int], sockets: set[str]) -> list[str]:
    """Remove the socket files and torch shared-memory segments of processes that have exited: only
    files of this user, sockets that are sockets, segments named after one of ``pids``."""
    removed = []
    candidates = [Path(path) for path in sockets]
    for pid in pids:
        candidates += SHM_DIR.glob(f"torch_{pid}_*")
    for path in candidates:
        try:
            info = path.lstat()
            if info.st_uid != os.geteuid() or (path.parent != SHM_DIR and not stat.S_ISSOCK(info.st_mode)):
                continue
            path.unlink()
            removed.append(str(path))
        except OSError:
            continue
    return removed


# Every process the daemon starts gets a private temporary directory (TMPDIR): what its helpers make
# there (multiprocessing's pymp-* folders and listener sockets, torch_shm_manager's torch-shm-dir-*,
# hivemind's p2pd and client sockets: compat item 11) goes with it when the group is stopped, also
# when a process was killed and could not clean up itself.
PRIVATE_TMPDIR_PREFIX = "netbench-proc-"


def make_private_tmpdir() -> str:
    """A fresh directory under the system's temporary directory (short: unix socket paths live there)."""
    return tempfile.mkdtemp(prefix=PRIVATE_TMPDIR_PREFIX)


def remove_private_tmpdir(path: str) -> bool:
    """Remove a directory ``make_private_tmpdir`` made: only a real directory (no symlink) of this user
    whose name has our prefix; anything else a pidfile names is left alone."""
    if not path:
        return False
    tmpdir = Path(path)
    try:
        info = tmpdir.lstat()
    except OSError:
        return False
    if not (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and tmpdir.name.startswith(PRIVATE_TMPDIR_PREFIX)):
        return False
    shutil.rmtree(tmpdir, ignore_errors=True)
    return not tmpdir.exists()


def terminate(pgid: int, timeout: float = 20.0, extra: list[int] | None = None,
              identity: Identity | None = None, leader: tuple[int, int] | None = None,
              leader_grace: float = 5.0) -> signal.Signals:
    """Stop a process group and every descendant of its members (also those in other groups), plus
    ``extra``; with ``identity`` only processes that carry it. With ``leader`` (pid, start ticks), that
    process alone is asked first (``stop_leader``), then whatever it left behind. Raises ProcessError
    if any survive SIGKILL."""
    extra = list(extra or [])

    def find() -> list[int]:
        members = group_members(pgid)
        return members + descendants(members) + [p for p in extra if start_ticks(p) is not None]

    if leader is not None:
        # found while the leader still runs: its helpers in other groups are no longer its descendants
        # once it has exited, and what they hold open names the files they leave behind
        ours = [pid for pid in find() if identity is None or identity.carried_by(pid)]
        sockets = unix_socket_paths(ours)
        extra += ours
        stop_leader(*leader, leader_grace, identity)
    sig, survivors = stop_processes(find, timeout, identity)
    if leader is not None:
        remove_leftovers(ours, sockets)
    if survivors:
        raise ProcessError(f"processes {survivors} survived SIGKILL")
    return sig


def terminate_tree(pid: int, *, include_self: bool = True, timeout: float = 5.0) -> None:
    """Stop a process and all its descendants by PID (petals/hivemind start helper processes, a DHT
    process and p2pd, that outlive a parent which exits with os._exit)."""
    stop_processes(lambda: descendants([pid]) + ([pid] if include_self else []), timeout)
