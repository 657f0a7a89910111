"""Faults during a real run (real DHT, real Petals servers on loopback, the real client):

* a server killed (SIGKILL to its process group) mid-sweep while a replica holds the same blocks:
  petals reroutes and the sweep finishes with every row;
* the only server of the blocks killed mid-sweep: the configuration fails with a clear error after
  ``--max-retries``, rows already measured are kept, the JSONL records the failure, exit code 5,
  and a rerun once a server is back measures exactly the missing rows;
* the DHT node restarted (same identity, same port) after being down longer than the servers'
  update period: restarted alone it is orphaned (the servers dropped it from their routing tables,
  a new client sees no server); restarted by the petals_dht role, which joins the servers' own
  address files (server --address-file; a stale one of a dead server included), it rejoins and a new
  client finds every block; the role run again leaves the running DHT alone. The identity keys are
  private; no key or key path reaches the results.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench_client.core.results import read_metadata, read_tsv
from localswarm import LocalSwarm, Managed, group_members
from secrets_scan import key_fragments, leaks

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MODEL = "netbench/tiny"
EXIT_MEASUREMENT_FAILED = 5


class BackgroundClient:
    """The benchmark client in its own process group, so a test can break the swarm while it runs."""

    def __init__(self, swarm: LocalSwarm, output: Path, *args: str):
        self.output = output
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench_client", "--initial_peers", *swarm.initial_peers, "--prefix", MODEL,
             "--output", str(output), "--num-processes", "1", "--token-sweep", "none", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=swarm.workdir, env=swarm.env,
            start_new_session=True)

    def rows(self) -> int:
        try:
            return sum(1 for line in self.output.read_text().splitlines() if line.strip())
        except FileNotFoundError:
            return 0

    def wait_rows(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.rows() < count:
            assert self.process.poll() is None, f"client ended early:\n{self.process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"no {count} rows after {timeout} s"
            time.sleep(0.2)

    def finish(self, timeout: float) -> tuple[int, str]:
        try:
            _, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            _, stderr = self.process.communicate()
            raise AssertionError(f"client hung for {timeout} s (petals retrying forever?):\n{stderr[-3000:]}")
        deadline = time.monotonic() + 10
        while group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = group_members(self.process.pid)
        if left:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise AssertionError(f"client left processes behind: {[p.cmdline() for p in left]}")
        return self.process.returncode, stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.communicate()


def sweep_args(lengths: list[int], new_tokens: int, micro_batches: int, max_retries: int) -> list[str]:
    # a killed server's stream is only noticed when the request times out (hivemind does not surface
    # the reset): a short --request-timeout keeps the test short
    return ["--prompt-lengths", *map(str, lengths), "--new-tokens", str(new_tokens),
            "--num-micro-batches", str(micro_batches), "--max-retries", str(max_retries), "--request-timeout", "20"]


def swarm_info(swarm: LocalSwarm) -> dict:
    result = swarm.run_module(["bench_client.swarm.blocks", "info", "--initial-peers", *swarm.initial_peers,
                               "--model", MODEL, "--connect-timeout", "15"], timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    # libraries may print warnings on stdout at import (bitsandbytes on CPU hosts): the JSON comes last
    text = result.stdout
    return json.loads(text if text.startswith("{") else text[text.index("\n{") + 1:])


def wait_online_servers(swarm: LocalSwarm, count: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = swarm_info(swarm)
        if info["num_online_servers"] >= count and not info["missing_blocks"]:
            return info
        assert time.monotonic() < deadline, f"{count} servers not announced after {timeout} s: {info}"
        time.sleep(1)


def group_cpu_seconds(managed: Managed) -> float:
    total = 0.0
    for proc in group_members(managed.process.pid):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def busiest(servers: list[Managed], seconds: float = 3.0) -> tuple[Managed, dict[str, float]]:
    """The server doing the client's work right now: most CPU used over ``seconds``."""
    before = {s.name: group_cpu_seconds(s) for s in servers}
    time.sleep(seconds)
    used = {s.name: group_cpu_seconds(s) - before[s.name] for s in servers}
    return max(servers, key=lambda s: used[s.name]), used


def kill_group(managed: Managed) -> None:
    os.killpg(managed.process.pid, signal.SIGKILL)
    managed.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while group_members(managed.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_members(managed.process.pid)


def test_server_killed_mid_sweep_with_a_replica_reroutes_and_finishes(swarm, tmp_path):
    swarm.start_dht()
    servers = [swarm.start_server("server-a", MODEL, "0:4"), swarm.start_server("server-b", MODEL, "0:4")]
    wait_online_servers(swarm, 2)
    lengths = list(range(8, 8 * 11, 8))
    out = tmp_path / "reroute.tsv"
    client = BackgroundClient(swarm, out, *sweep_args(lengths, new_tokens=12, micro_batches=4, max_retries=4))
    try:
        client.wait_rows(1, timeout=240)
        victim, used = busiest(servers)
        rows_at_kill = client.rows()
        kill_group(victim)  # the server the client is talking to right now
        rc, stderr = client.finish(timeout=300)
    finally:
        client.kill()
    print(f"killed {victim.name} after {rows_at_kill} rows; server CPU s over 3 s before: {used}")
    assert rows_at_kill < len(lengths), "the sweep ended before the kill: make it longer"
    assert max(used.values()) > 2 * min(used.values()), f"cannot tell which server was in use: {used}"
    assert rc == 0, stderr[-3000:]
    assert [(r.prompt_length, r.new_tokens) for r in read_tsv(out)] == [(n, 12) for n in lengths]
    meta = read_metadata(out.with_suffix(".jsonl"))
    assert [m["status"] for m in meta] == ["ok"] * len(lengths)


def test_only_server_killed_fails_the_configuration_and_a_rerun_resumes(swarm, tmp_path):
    swarm.start_dht()
    only = swarm.start_server("server-a", MODEL, "0:4")
    wait_online_servers(swarm, 1)
    lengths = list(range(8, 8 * 9, 8))
    out = tmp_path / "failed.tsv"
    args = sweep_args(lengths, new_tokens=12, micro_batches=4, max_retries=2)
    client = BackgroundClient(swarm, out, *args)
    try:
        client.wait_rows(1, timeout=240)
        kill_group(only)
        killed_at = time.monotonic()
        rc, stderr = client.finish(timeout=240)
    finally:
        client.kill()
    failed_after = time.monotonic() - killed_at
    print(f"client failed {failed_after:.1f} s after the kill")
    assert rc == EXIT_MEASUREMENT_FAILED, stderr[-3000:]
    kept = out.read_text()
    rows = read_tsv(out)
    assert 1 <= len(rows) < len(lengths)
    failed_point = lengths[len(rows)]
    assert f"error: configuration prompt={failed_point} new_tokens=12 failed; rows measured so far are kept" in stderr
    meta = read_metadata(out.with_suffix(".jsonl"))
    assert [m["status"] for m in meta] == ["ok"] * len(rows) + ["failed"]
    failure = meta[-1]
    assert failure["prompt_length"] == failed_point and failure["new_tokens"] == 12
    assert "client process 0 failed" in failure["error"] and failure["finished_at"] >= failure["started_at"]

    # the killed server's DHT record says ONLINE for minutes: it must not count (it answers no ping)
    dead = swarm_info(swarm)
    assert dead["num_online_servers"] == 0 and dead["missing_blocks"] == [0, 1, 2, 3], dead
    assert [s["state"] for s in dead["servers"]] == ["DEAD"], dead
    # a server comes back (a new one): the swarm is that one server, the dead one's record beside it
    swarm.start_server("server-b", MODEL, "0:4")
    back = wait_online_servers(swarm, 1)
    assert back["num_online_servers"] == 1 and sorted(s["state"] for s in back["servers"]) == ["DEAD", "ONLINE"], back
    rerun = swarm.run_module(["bench_client", "--initial_peers", *swarm.initial_peers, "--prefix", MODEL,
                              "--output", str(out), "--num-processes", "1", "--token-sweep", "none",
                              *sweep_args(lengths, new_tokens=12, micro_batches=4, max_retries=4)], timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(lengths) - len(rows)} of {len(lengths)} configurations to measure" in rerun.stderr
    assert out.read_text().startswith(kept), "rows measured before the failure must stay as they were"
    assert [(r.prompt_length, r.new_tokens) for r in read_tsv(out)] == [(n, 12) for n in lengths]
    meta = read_metadata(out.with_suffix(".jsonl"))
    assert [m["status"] for m in meta] == ["ok"] * len(rows) + ["failed"] + ["ok"] * (len(lengths) - len(rows))
    assert len({m["run_id"] for m in meta}) == 2
    assert {m["num_servers"] for m in meta[len(rows) + 1:]} == {1}, "the dead server was counted"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_dht_at(swarm: LocalSwarm, port: int, identity: Path, *extra: str) -> Managed:
    swarm.address_file = swarm.workdir / "dht.maddrs"
    swarm.address_file.unlink(missing_ok=True)
    dht = swarm.start(f"dht-{len(swarm.processes)}", [
        "-m", "bench_client.swarm.dht", "--address-file", str(swarm.address_file),
        "--host-maddrs", f"/ip4/127.0.0.1/tcp/{port}", "--identity-path", str(identity), *extra])
    deadline = time.monotonic() + 90
    while not swarm.address_file.exists():
        assert dht.process.poll() is None and time.monotonic() < deadline, f"DHT did not start:\n{dht.tail()}"
        time.sleep(0.2)
    return dht


def assert_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o077 == 0, f"{path} has mode {oct(mode)}: group/others may read the identity key"


def dht_role(swarm: LocalSwarm, workdir: Path, state: str, **role_vars) -> subprocess.CompletedProcess:
    """The petals_dht role on this machine (connection local), as site.yml runs it on the DHT host."""
    play = workdir / "dht-role.yml"
    play.write_text("- name: The DHT\n  hosts: localhost\n  gather_facts: false\n  roles: [petals_dht]\n")
    extra = {"petals_dht_state": state, "petals_dht_runtime": "process", "petals_dht_python": sys.executable,
             "petals_dht_workdir": str(workdir), "petals_dht_address": "127.0.0.1",
             "ansible_python_interpreter": sys.executable, **role_vars}
    env = {**swarm.env, "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp")}
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           str(play), "-e", json.dumps(extra)], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_dht_restart_keeps_the_swarm_and_keys_stay_private(swarm, tmp_path):
    port = free_port()
    keys = tmp_path / "keys"
    keys.mkdir()
    dht_key, server_key = keys / "dht.key", keys / "server-a.key"
    host = tmp_path / "host"  # the DHT host's netbench_workdir, as the roles lay it out
    (host / "run").mkdir(parents=True)
    dht = start_dht_at(swarm, port, dht_key)
    before = swarm.initial_peers
    update = ["--", "--update_period", "10"]  # petals' default is 120 s: re-announce faster for the test
    for name, span, extra in (("server-a", "0:2", ["--identity-path", str(server_key)]), ("server-b", "2:4", [])):
        # each server publishes its own multiaddrs (petals_server_args: --address-file run/<name>.maddrs)
        swarm.start_server(name, MODEL, span, *extra, "--address-file", str(host / "run" / f"{name}.maddrs"), *update)
    wait_online_servers(swarm, 2)
    assert_private(dht_key)
    assert_private(server_key)
    server_maddr = re.search(r"Running a server on \['([^']+)'", swarm.processes[1].log.read_text()).group(1)
    assert server_maddr in (host / "run" / "server-a.maddrs").read_text().split()

    # Down longer than the servers' update period: their announces fail meanwhile, and hivemind drops
    # the DHT from their routing tables for good. Restarted alone, the DHT knows nobody: orphaned.
    swarm.stop(dht)
    time.sleep(15)
    dht = start_dht_at(swarm, port, dht_key)
    assert swarm.initial_peers == before, "same identity and port give the same multiaddr"
    orphaned = swarm_info(swarm)
    print(f"DHT restarted alone after 15 s down: {orphaned['num_online_servers']} servers visible")
    assert orphaned["num_online_servers"] == 0 and orphaned["missing_blocks"] == [0, 1, 2, 3]
    swarm.stop(dht)

    # Restarted by the petals_dht role: it gathers the servers' address files into run/servers.maddrs
    # and the DHT joins them (--join-peers-file), so a NEW client finds every block through it. A
    # server that died since it wrote its file (server-gone: a dead port) must not stop the DHT.
    dead = server_maddr.replace(f"/tcp/{server_maddr.split('/')[4]}/", f"/tcp/{free_port()}/")
    (host / "run" / "server-gone.maddrs").write_text(dead + "\n")
    servers = {"localhost": [{"name": "server-a"}, {"name": "server-b"}, {"name": "server-gone"}]}
    role_vars = {"petals_dht_port": port, "petals_dht_persistent_identity": True,
                 "petals_dht_identity_path": str(dht_key), "petals_dht_servers_by_host": servers}
    restarted_at = time.monotonic()
    try:
        started = dht_role(swarm, host, "present", **role_vars)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-2000:]
        swarm.address_file = host / "run" / "dht.maddrs"
        assert swarm.initial_peers == before
        joined = (host / "run" / "servers.maddrs").read_text().split()
        assert server_maddr in joined and dead in joined and len(joined) >= 3
        assert stat.S_IMODE((host / "run" / "servers.maddrs").stat().st_mode) == 0o600
        info = wait_online_servers(swarm, 2, timeout=90)
        found_after = time.monotonic() - restarted_at
        print(f"DHT restarted by the petals_dht role (joining the servers' address files): a new client "
              f"sees all blocks {found_after:.1f} s after the restart began")
        assert sorted((s["start_block"], s["end_block"]) for s in info["servers"]) == [(0, 2), (2, 4)]
        again = dht_role(swarm, host, "present", **role_vars)  # servers up now: the running DHT is left alone
        assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]

        out = tmp_path / "after-restart.tsv"
        result = swarm.run_module(["bench_client", "--initial_peers", *swarm.initial_peers, "--prefix", MODEL,
                                   "--output", str(out), "--prompt-lengths", "8", "--new-tokens", "2",
                                   "--token-sweep", "none", "--max-retries", "3"], timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        (meta,) = read_metadata(out.with_suffix(".jsonl"))
        assert meta["status"] == "ok" and meta["num_servers"] == 2
    finally:
        stopped = dht_role(swarm, host, "absent", **role_vars)
    assert stopped.returncode == 0, stopped.stdout[-3000:]
    assert not (host / "run" / "servers.maddrs").exists() and not (host / "run" / "dht.pid").exists()

    # the keys and where they live never reach the results; no key material in any log either
    keys_material = key_fragments(dht_key) + key_fragments(server_key)
    assert not leaks([out, out.with_suffix(".jsonl")], [str(keys), "dht.key", "server-a.key", *keys_material])
    assert not leaks([p.log for p in swarm.processes] + [host / "logs" / "dht.log"], keys_material)


def test_server_started_before_its_dht_waits_for_it(swarm, tmp_path):
    """hivemind's p2p daemon gives up at once when no initial peer answers; the server launcher tries
    again (--join-timeout): a server started while its DHT is still down joins once the DHT is up."""
    port, key = free_port(), tmp_path / "dht.key"
    swarm.stop(start_dht_at(swarm, port, key))  # learn the DHT's multiaddr (same key and port later)
    early = swarm.start_server("early", MODEL, "0:4", "--join-timeout", "60")
    time.sleep(12)  # more than one failed attempt (each one takes ~5 s here)
    assert early.process.poll() is None, f"the server gave up while the DHT was down:\n{early.tail()}"
    assert "no initial peer answers yet" in early.log.read_text()
    started = time.monotonic()
    start_dht_at(swarm, port, key)
    info = wait_online_servers(swarm, 1, timeout=90)
    print(f"server started 12 s before its DHT: serving every block {time.monotonic() - started:.1f} s after the DHT came up")
    assert info["missing_blocks"] == []
    # without retries it exits (what the launcher did before)
    swarm.stop(swarm.processes[-1])
    gone = swarm.start_server("no-retry", MODEL, "0:4", "--join-timeout", "0")
    assert gone.process.wait(timeout=60) != 0 and "failed to connect to bootstrap peers" in gone.tail()
