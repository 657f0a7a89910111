"""Bring-up order: servers and the block waiter started before their DHT (they import torch and petals
meanwhile and read its address file when it appears) join it; the DHT bootstrap peer runs without torch.
Real DHT, real Petals servers (tiny model, CPU) on loopback. Speed is measured by tools/bench_bringup.py,
not here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_client.swarm.local import bring_up

MODEL = "netbench/tiny"
REPO = Path(__file__).resolve().parents[2]


def wait_for_line(managed, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in managed.log.read_text(errors="replace"):
        assert managed.process.poll() is None, f"{managed.name} exited:\n{managed.tail()}"
        assert time.monotonic() < deadline, f"{managed.name} never printed {text!r}:\n{managed.tail()}"
        time.sleep(0.2)


def loaded_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
def test_servers_started_before_the_dht_file_exists_join_it(swarm, tmp_path):
    swarm.address_file = tmp_path / "dht.maddrs"  # no DHT yet: the servers get @FILE
    assert swarm.peer_args() == [f"@{swarm.address_file}"]
    servers = [swarm.start_server(f"server-{i}", MODEL, span, "--join-timeout", "300")
               for i, span in enumerate(["0:2", "2:4"])]
    waiter = swarm.start_waiter(MODEL, timeout=300)
    for server in servers:  # they got through their imports and now wait for the file
        wait_for_line(server, "waiting for the DHT's address file")
    dht = swarm.launch_dht()
    swarm.await_dht(dht)
    swarm.wait_served(MODEL, timeout=300, waiter=waiter)
    info = swarm.run_module(["bench_client.swarm.blocks", "info", "--initial-peers", *swarm.initial_peers,
                             "--model", MODEL])
    view = json.loads(info.stdout)
    assert view["missing_blocks"] == [] and view["num_online_servers"] == 2, info.stdout
    assert not loaded_torch(dht.process.pid), "the DHT bootstrap peer loaded torch"
    assert all(loaded_torch(server.process.pid) for server in servers)  # the check can see torch


@pytest.mark.slow
def test_bring_up_reports_when_each_part_came_up(swarm):
    timings = bring_up(swarm, MODEL, [(0, 2), (2, 4)], ["cpu", "cpu"], timeout=300)
    joined = timings["server_joined_seconds"]
    assert timings["overlap"] is True and len(joined) == 2 and None not in joined, timings
    # a server joins through the DHT, and every block is served only after both servers joined
    assert all(timings["dht_seconds"] <= t <= timings["swarm_seconds"] for t in joined), timings
    assert all(swarm.address_file.with_name(f"server-{i}.maddrs").exists() for i in range(2))


def test_a_dht_file_that_never_appears_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-dht.maddrs"
    result = subprocess.run([sys.executable, "-m", "bench_client.swarm.server", "--model", MODEL, "--block-indices",
                             "0:2", "--device", "cpu", "--dtype", "float32", "--initial-peers", f"@{missing}",
                             "--join-timeout", "1", "--model-dir", str(tmp_path / "model")],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"no DHT address file {missing} after 1 s" in result.stderr


def test_bad_literal_peer_is_refused_before_waiting_for_a_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench_client.swarm.server", "--model", MODEL, "--block-indices",
                             "0:2", "--device", "cpu", "--initial-peers", f"@{tmp_path / 'later'}", "10.0.0.1:31337"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and "is not a multiaddr" in result.stderr, result.stderr[-2000:]
    assert "waiting for the DHT" not in result.stderr


def test_dht_modules_load_without_torch():
    code = ("import sys; from bench_client import compat; compat.import_without_package_inits(); "
            "from hivemind.dht.node import DHTNode; from hivemind.p2p import P2P; "
            "from hivemind.utils import get_logger; import hivemind.utils.networking; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_a_float_server_does_not_import_bitsandbytes():
    # bitsandbytes' import costs seconds at every server start; unquantised blocks need none of it
    code = ("import sys; from bench_client import compat; compat.apply(); import petals.utils.peft, "
            "bitsandbytes; print(bitsandbytes.__version__, '|', 'bitsandbytes.functional' in sys.modules, '|', "
            "compat.bitsandbytes_error)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    from bench_client.compat import NOT_LOADED
    assert result.stdout.strip() == f"0+unavailable | False | {NOT_LOADED}"


@pytest.mark.slow
def test_bench_bringup_writes_a_row_per_repeat_and_a_rerun_resumes(tmp_path):
    output = tmp_path / "bringup.jsonl"
    command = [sys.executable, str(REPO / "tools" / "bench_bringup.py"), "--model", MODEL, "--servers", "2",
               "--repeats", "1", "--output", str(output), "--workdir", str(tmp_path / "work")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["overlap"] is True and len(rows[0]["server_joined_seconds"]) == 2, rows
    medians = json.loads(first.stdout)["medians"]
    assert {"dht_seconds", "last_joined_seconds", "swarm_seconds", "wall_seconds"} <= medians.keys(), medians
    assert medians["swarm_seconds"]["median"] == rows[0]["swarm_seconds"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 0 and "[1/1]" not in again.stderr, again.stderr[-2000:]  # nothing measured again
    assert output.read_text().count("\n") == 1 and json.loads(again.stdout)["repeats"] == 1
