"""Helpers for processes that run until signalled: exit cleanly on SIGTERM (Ansible and tests stop
every process group we start with SIGTERM, never by name)."""

from __future__ import annotations

import os
import signal
import sys
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


def terminate_tree(pid: int, *, include_self: bool = True, timeout: float = 5.0) -> None:
    """SIGTERM a process and all its descendants by PID, SIGKILL what is left after ``timeout``.

    Needed because petals/hivemind start helper processes (a DHT process, the p2pd daemon) that
    outlive a parent which exits with os._exit.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + ([root] if include_self else [])
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
