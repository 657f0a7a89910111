"""The router path through Ansible, for real: an emulated 3-host lab (network namespaces with sshd)
whose data traffic crosses the netem router VM (tools/netem-router/, Debian's cloud kernel under
qemu TCG), on this machine whose own kernel has no sch_netem, like the GPU hosts, and without sshd
as there (connection local: each host's tasks enter its namespace through a shell wrapper; the ssh
lab with the router was run by hand, docs/netem-router.md). The runner shapes
the servers with a paper profile inside the router (netem_backend: router), measures it from the
hosts, records it in every row, runs netbench/tiny; cleanup then leaves no shaping in the router,
and the lab's teardown no VM, no namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench_client.netem import router as netem_router
from bench_client.netem import lab as netns_lab
from test_site_emulated_ssh import PREFIX, SWEEP, petals_netbench
from test_netem_router_vm import bundle

pytestmark = [pytest.mark.root, pytest.mark.slow]

PROFILE = "paper-10ms-100mbit"


def test_swarm_through_the_router_vm_shaped_measured_and_cleaned(tmp_path_factory: pytest.TempPathFactory) -> None:
    b = bundle()
    lab_dir = tmp_path_factory.mktemp("rlab")  # short: ssh's ControlPath must stay under 108 bytes
    with netns_lab.lab(lab_dir, count=3, python=sys.executable, prefix=PREFIX, router_bundle=b,
                        connection="local") as inventory:
        router = netem_router.Router(lab_dir / "router")
        assert router.running()
        # 10 pings: the median must not be one packet that met a busy 2-core CI machine; the router
        # (TCG) adds ~1-2 ms per crossing there, hence 8 ms over the 20 ms of two shaped servers
        measure = [*SWEEP, "-e", "netem_ping_count=10", "-e", "netem_rtt_tolerance_ms=8",
                   "-e", "netbench_unshape=false"]  # leave the shaping on: cleanup must remove it
        summary, output = petals_netbench(lab_dir, inventory, "-e", json.dumps({"profiles": [PROFILE]}), *measure)
        try:
            assert summary["rc"] == 0, output[-6000:]
            rows = [json.loads(x) for x in
                    (Path(summary["results_dir"]) / PROFILE / "out.jsonl").read_text().splitlines()]
            assert rows and all(r["status"] == "ok" and r["num_servers"] == 2 for r in rows)
            for row in rows:
                for host, peer in (("h2", "h3"), ("h3", "h2")):
                    measured = row["network"]["hosts"][host]
                    assert measured["qdisc"] == "netem@router" and measured["interface"] == "eth1"
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
        pid = json.loads(router.pidfile.read_text())["pid"]
    assert not router.running() and not Path(f"/proc/{pid}").exists()
