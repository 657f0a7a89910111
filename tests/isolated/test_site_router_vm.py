"""The router path through Ansible, for real: an emulated 3-host lab (network namespaces with sshd)
whose data traffic crosses the netem router VM (tools/netem-router/, Debian's cloud kernel under
qemu TCG), on this machine whose own kernel has no sch_netem, like the GPU hosts, and without sshd
as there (connection local: each host's tasks enter its namespace through a shell wrapper; the ssh
lab with the router was run by hand, docs/netem-router.md). One lab (and router boot) for both tests:
1. the runner shapes the servers with a paper profile inside the router (netem_backend: router),
   measures it from the hosts, records it (and the router's kernel, which shapes) in every row, runs
   netbench/tiny; cleanup then leaves no shaping in the router;
2. the router's qemu killed mid-sweep (SIGKILL, by the PID of its pidfile, once the client has
   written its first row) fails the play within seconds, naming the router; the rows finished
   before are in the results; cleanup and the lab's teardown leave no process (by the PIDs
   recorded), no VM, no namespace, no tap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench_client.core import daemon
from bench_client.netem import router as netem_router
from bench_client.netem import lab as netns_lab
from test_site_emulated_ssh import PREFIX, SWEEP, petals_netbench
from test_netem_router_vm import bundle

pytestmark = [pytest.mark.root, pytest.mark.slow]

PROFILE = "paper-10ms-100mbit"
# 10 pings: their minimum must not be one packet that met a busy 2-core CI machine; the router (TCG)
# adds ~1-2 ms per crossing there, hence 8 ms over the 20 ms of two shaped servers
MEASURE = [*SWEEP, "-e", "netem_ping_count=10", "-e", "netem_rtt_tolerance_ms=8"]


@pytest.fixture(scope="module")
def router_lab(tmp_path_factory: pytest.TempPathFactory):
    lab_dir = tmp_path_factory.mktemp("rlab")  # short: ssh's ControlPath must stay under 108 bytes
    with netns_lab.lab(lab_dir, count=3, python=sys.executable, prefix=PREFIX, router_bundle=bundle(),
                       connection="local") as inventory:
        router = netem_router.Router(lab_dir / "router")
        assert router.running()
        qemu = json.loads(router.pidfile.read_text())["pid"]
        yield lab_dir, inventory
    assert not router.running() and not Path(f"/proc/{qemu}").exists()


def test_swarm_through_the_router_vm_shaped_measured_and_cleaned(router_lab) -> None:
    lab_dir, inventory = router_lab
    router = netem_router.Router(lab_dir / "router")
    router_kernel = router.kernel()
    assert router_kernel == (bundle() / "kernel-version").read_text().strip() != os.uname().release
    keep = ["-e", "netbench_unshape=false"]  # leave the shaping on: cleanup must remove it
    summary, output = petals_netbench(lab_dir, inventory, "-e", json.dumps({"profiles": [PROFILE]}), *MEASURE, *keep)
    (lab_dir / "play-shaped.log").write_text(output)
    try:
        assert summary["rc"] == 0, output[-6000:]
        rows = [json.loads(x) for x in
                (Path(summary["results_dir"]) / PROFILE / "out.jsonl").read_text().splitlines()]
        assert rows and all(r["status"] == "ok" and r["num_servers"] == 2 for r in rows)
        for row in rows:
            for host, peer in (("h2", "h3"), ("h3", "h2")):
                measured = row["network"]["hosts"][host]
                assert measured["qdisc"] == "netem@router" and measured["interface"] == "eth1"
                # the netem that shaped ran in the router's kernel, not in this (the host's) one
                assert (measured["kernel"], measured["host_kernel"]) == (router_kernel, os.uname().release)
                # server to server: both directions shaped, 10 ms each
                assert 20.0 <= measured["peers"][peer]["rtt_min_ms"] <= 28.0, measured
                assert 85 <= measured["rate_mbit"] <= 105, measured
        # the shaping sits in the router, on the servers' links only (h1 is the client)
        rc, shown = router.exec(["tc", "qdisc", "show"])
        assert rc == 0 and shown.count("netem") == 2 and "ifb01" not in shown, shown
    finally:
        cleanup, output = petals_netbench(lab_dir, inventory, "--cleanup")
    assert cleanup["rc"] == 0, output[-4000:]
    rc, shown = router.exec(["tc", "qdisc", "show"])
    assert rc == 0 and "netem" not in shown and "ifb" not in shown and "ingress" not in shown, shown


def _first_row(path: Path, done: threading.Event, timeout: float = 600) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done.is_set():
        if path.exists() and path.read_text().count("\n") >= 1:
            return True
        time.sleep(0.1)
    return False


def test_router_killed_mid_run_fails_loudly_keeps_rows_leaves_nothing(router_lab) -> None:
    lab_dir, inventory = router_lab
    router = netem_router.Router(lab_dir / "router")
    qemu = daemon.Record.load(router.pidfile)
    assert qemu is not None and daemon.is_running(qemu)
    run_id = "routerkill"
    result: dict = {}
    done = threading.Event()
    # three rows of >= 32 shaped token steps each (>= 20 ms per step through two shaped servers): the
    # kill after the first row lands well inside the sweep; no measurement (the first test did it)
    sweep = [*SWEEP, "-e", "bench_client_new_tokens=32", "-e", "repeats=3", "-e", "netem_validate=false"]

    def play() -> None:
        try:
            result["summary"], result["output"] = petals_netbench(
                lab_dir, inventory, "-e", json.dumps({"profiles": [PROFILE], "run_id": run_id}), *sweep)
        finally:
            done.set()

    runner = threading.Thread(target=play)
    runner.start()
    try:
        # the client on h1 has written its first row (it writes each as measured): kill the router's qemu
        wrote = _first_row(lab_dir / "work" / "h1" / "results" / run_id / PROFILE / "out.jsonl", done)
        # what runs now (the client's pidfile goes when it stops): all of it must be gone at the end
        pids = {p.parent.parent.name + "/" + p.name: daemon.Record.load(p)
                for p in (lab_dir / "work").glob("h*/run/*.pid")}
        killed_at = time.monotonic()
        if wrote and not done.is_set():
            os.kill(qemu.pid, signal.SIGKILL)
        runner.join(timeout=300)
        noticed_s = time.monotonic() - killed_at
    finally:
        runner.join()
        cleanup, cleanup_output = petals_netbench(lab_dir, inventory, "--cleanup")
    summary, output = result["summary"], result["output"]
    (lab_dir / "play-routerkill.log").write_text(output + "\n--- cleanup ---\n" + cleanup_output)
    print(f"the play ended {noticed_s:.1f} s after the kill (log: {lab_dir / 'play-routerkill.log'}); "
          f"processes recorded: {sorted(pids)}")
    assert wrote, output[-6000:]
    # loud and quick: the wait loop looks at the router every poll (5 s), not a client timeout
    assert summary["rc"] != 0, output[-6000:]
    message = f"the netem router VM ({lab_dir / 'router'}) stopped during the sweep of {PROFILE}"
    assert message in output, output[-6000:]
    assert noticed_s < 60, output[-6000:]
    # the rows finished before the kill are kept, TSV and JSONL, fetched by the profile's always section
    profile_dir = Path(summary["results_dir"]) / PROFILE
    rows = [json.loads(x) for x in (profile_dir / "out.jsonl").read_text().splitlines()]
    assert 1 <= len(rows) < 3 and all(r["status"] == "ok" for r in rows), rows
    assert len((profile_dir / "out.tsv").read_text().splitlines()) == len(rows)  # the original client's TSV: no header
    # cleanup copes with the dead router; then the lab goes: nothing of the run is left
    assert cleanup["rc"] == 0, cleanup_output[-4000:]
    assert {"h1/dht.pid", "h1/client.pid", "h2/server0.pid", "h3/server0.pid"} <= set(pids), sorted(pids)
    netns_lab.down(lab_dir)
    running = [name for name, record in pids.items() if record is not None and daemon.is_running(record)]
    assert running == [] and not daemon.is_running(qemu) and not Path(f"/proc/{qemu.pid}").exists(), running
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert PREFIX not in namespaces, namespaces
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{PREFIX}t" not in links, links
