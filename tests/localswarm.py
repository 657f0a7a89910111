"""Start real DHTs and Petals servers on loopback with the project's launchers, and stop them by
process group. Used by the engine tests; every process started here is accounted for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


@dataclass
class Managed:
    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalSwarm:
    workdir: Path
    env: dict = field(default_factory=lambda: dict(os.environ))
    processes: list[Managed] = field(default_factory=list)
    address_file: Path | None = None

    def start(self, name: str, args: list[str]) -> Managed:
        log = self.workdir / f"{name}.log"
        handle = open(log, "wb")
        process = subprocess.Popen([PYTHON, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=self.workdir,
                                   env=self.env, start_new_session=True)  # own process group: stopped as a whole
        handle.close()
        managed = Managed(name, process, log)
        self.processes.append(managed)
        return managed

    def start_dht(self, timeout: float = 60.0) -> list[str]:
        self.address_file = self.workdir / "dht.maddrs"
        dht = self.start("dht", ["-m", "bench_client.dht", "--address-file", str(self.address_file),
                                 "--host-maddrs", LOOPBACK])
        deadline = time.monotonic() + timeout
        while not self.address_file.exists():
            if dht.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"DHT did not start:\n{dht.tail()}")
            time.sleep(0.2)
        return self.initial_peers

    @property
    def initial_peers(self) -> list[str]:
        assert self.address_file is not None
        return self.address_file.read_text().split()

    def start_server(self, name: str, model: str, span: str, *extra: str) -> Managed:
        return self.start(name, ["-m", "bench_client.server", "--model", model, "--block-indices", span,
                                 "--initial-peers", *self.initial_peers, "--dtype", "float32", "--device", "cpu",
                                 "--host-maddrs", LOOPBACK, "--num-handlers", "2", *extra])

    def wait_served(self, model: str, timeout: float = 120.0) -> None:
        result = self.run_module(["bench_client.swarm", "wait", "--initial-peers", *self.initial_peers,
                                  "--model", model, "--timeout", str(timeout)], timeout=timeout + 60)
        if result.returncode != 0:
            logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.processes)
            raise RuntimeError(f"swarm not ready: {result.stderr[-2000:]}\n{logs}")

    def run_module(self, args: list[str], timeout: float = 600.0) -> subprocess.CompletedProcess:
        """Run ``python -m ...`` in its own process group and check that the group is empty afterwards:
        a command that leaves processes behind (p2pd daemons, DHT helpers) fails the test."""
        process = subprocess.Popen([PYTHON, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=self.workdir, env=self.env, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"{args[0]} timed out after {timeout} s:\n{stderr[-3000:]}")
        deadline = time.monotonic() + 10
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = group_members(process.pid)
        if left:
            names = [" ".join(p.cmdline())[:100] for p in left]
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"python -m {args[0]} left processes behind: {names}")
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def stop(self, managed: Managed, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it if still there after ``timeout``."""
        pgid = managed.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and group_members(pgid):
                time.sleep(0.2)
            if not group_members(pgid):
                break
        managed.process.wait(timeout=5)

    def stop_all(self) -> None:
        for managed in reversed(self.processes):
            self.stop(managed)

    def leftovers(self) -> list[str]:
        """Processes still alive in any group this swarm started (should be none after stop_all)."""
        return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for m in self.processes for p in group_members(m.process.pid)]


def group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return members


def descendants_matching(marker: str) -> list[psutil.Process]:
    """Processes whose command line mentions ``marker`` (used only to ASSERT nothing is left, never to kill)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found
