"""The sweep's progress, seen from outside while it runs: the client's own ``[i/N ... ETA]`` line.

The client writes its latest progress line to a file (``--progress``). The bench_client role polls
the sweep with one small shell command (no project Python needed on the host: the Docker runtime's
hosts have none) that prints the async job's status file, MARKER, and that progress file; the
project's stdout callback (playbooks/callback_plugins/netbench.py) and the runner (petals-netbench) print the
line with :func:`from_result` instead of "FAILED - RETRYING ... (N retries left)".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench_client.core.processes import write_atomically

MARKER = "--- netbench progress ---"
STARTING = "starting the client (its processes load the model and warm up)"


def write(path: str | Path | None, line: str) -> None:
    if path:
        write_atomically(path, line.rstrip("\n") + "\n")


def from_result(result: dict[str, Any]) -> str | None:
    """The progress line in a poll's task result (its stdout after MARKER); None for other tasks."""
    stdout = result.get("stdout")
    if not isinstance(stdout, str) or MARKER not in stdout:
        return None
    return stdout.split(MARKER, 1)[1].strip() or STARTING
