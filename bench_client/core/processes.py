"""Processes: exit cleanly on SIGTERM, and the one way we find and stop processes (by process group
and descendants, never by name, each signal only to a process proven to be ours)."""

from __future__ import annotations

import os
import secrets
import signal
import sys
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
    sig = signal.SIGTERM
    deadline = time.monotonic() + timeout
    while True:
        for pid in find():
            if pid not in targets and (ticks := start_ticks(pid)) is not None:
                if identity is None or identity.carried_by(pid):
                    targets[pid] = ticks
        alive = {pid: t for pid, t in targets.items() if start_ticks(pid) == t}
        if not alive:
            return sig, []
        for pid, ticks in alive.items():
            if sent.get(pid) != sig and send_signal(pid, ticks, sig, identity):
                sent[pid] = sig
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                return sig, sorted(alive)
            sig, deadline = signal.SIGKILL, time.monotonic() + 5.0
        time.sleep(0.1)


def terminate(pgid: int, timeout: float = 20.0, extra: list[int] | None = None,
              identity: Identity | None = None) -> signal.Signals:
    """Stop a process group and every descendant of its members (also those in other groups), plus
    ``extra``; with ``identity`` only processes that carry it. Raises ProcessError if any survive SIGKILL."""

    def find() -> list[int]:
        members = group_members(pgid)
        return members + descendants(members) + [p for p in extra or [] if start_ticks(p) is not None]

    sig, survivors = stop_processes(find, timeout, identity)
    if survivors:
        raise ProcessError(f"processes {survivors} survived SIGKILL")
    return sig


def terminate_tree(pid: int, *, include_self: bool = True, timeout: float = 5.0) -> None:
    """Stop a process and all its descendants by PID (petals/hivemind start helper processes, a DHT
    process and p2pd, that outlive a parent which exits with os._exit)."""
    stop_processes(lambda: descendants([pid]) + ([pid] if include_self else []), timeout)
