"""A server host whose Python is the machine's bare /usr/bin/python3 (no torch, no hivemind, no petals, no
venv of ours; its venv module present: .ci/setup.d/10-system.sh installs python3-venv) is provisioned
from the controller's wheelhouse alone (the one .ci/setup.d/40-docker.sh makes: copied over, pip
--no-index, no pip configuration of the host), then serves in a real swarm of the netns lab (the DHT and
client on h1, whose Python has the stack) and the play measures; the install time is printed; a second
provisioning changes nothing on any host; cleanup leaves nothing. One site run and one provision rerun,
the tiny model, no shaping: about 4 minutes on 2 cores."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench_client.netem import lab as netns_lab

from test_site_emulated_ssh import PREFIX, SWEEP, changed_per_host, petals_netbench

pytestmark = [pytest.mark.root, pytest.mark.slow]

BARE_PYTHON = "/usr/bin/python3"
WHEELHOUSE = Path("/var/cache/netbench/wheelhouse")


def bare_python() -> str:
    """The machine's own Python, checked bare: no torch, hivemind or petals; a venv module."""
    if not Path(BARE_PYTHON).exists() or not (WHEELHOUSE / ".netbench-wheelhouse").exists():
        pytest.skip(f"needs {BARE_PYTHON} and the wheelhouse {WHEELHOUSE} (.ci/setup.d/40-docker.sh makes it)")
    found = subprocess.run([BARE_PYTHON, "-I", "-c", "import venv, ensurepip\nfor m in ('torch', 'hivemind', 'petals'):\n"
                            "    try:\n        __import__(m); print(m)\n    except ImportError:\n        pass"],
                           capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        pytest.skip(f"{BARE_PYTHON} has no venv module (python3-venv: .ci/setup.d/10-system.sh)")
    assert found.stdout.split() == [], f"{BARE_PYTHON} is not bare: it imports {found.stdout.split()}"
    return BARE_PYTHON


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    python = bare_python()
    directory = tmp_path_factory.mktemp("lab")
    with netns_lab.lab(directory, count=2, python=sys.executable, prefix=PREFIX) as inventory:
        # Ansible's modules keep the venv's Python; the server host's experiment Python is the bare one
        written = Path(inventory).read_text()
        data = json.loads(written[written.index("{"):])
        data["all"]["hosts"]["h2"]["netbench_python"] = python
        Path(inventory).write_text(json.dumps(data, indent=2) + "\n")
        yield directory, inventory


def test_a_bare_server_host_is_provisioned_from_the_wheelhouse_serves_and_is_idempotent(lab):
    lab_dir, inventory = lab
    hosts = {h.name: h for h in netns_lab.lab_hosts(2, PREFIX)}
    wheelhouse = ["-e", f"netbench_host_wheelhouse={WHEELHOUSE}", "-e", "netbench_shaping=false"]
    work = lab_dir / "work"
    try:
        summary, output = petals_netbench(lab_dir, inventory, *wheelhouse, *SWEEP)
        assert summary["rc"] == 0, output[-6000:]
        run_dir = Path(summary["results_dir"])
        rows = [json.loads(x) for x in (run_dir / "none" / "out.jsonl").read_text().splitlines()]
        assert rows and all(r["status"] == "ok" and r["num_servers"] == 1 for r in rows), rows

        # h2 got the venv (from the wheelhouse, removed afterwards), h1's Python had the stack: no venv
        venv = work / "h2" / "stack"
        assert (venv / "bin" / "python").is_file() and not (work / "h2" / "wheelhouse").exists()
        assert not (work / "h1" / "stack").exists()
        assert f"exec {venv}/bin/python" in (work / "h2" / "harness" / "python").read_text()
        [log] = (run_dir / "logs").glob("ansible-*.log")
        printed = " ".join(log.read_text().split())  # ansible-playbook wraps the message
        took = re.search(r"h2: installed the swarm stack into \S+ in ([0-9.]+) s \(torch (\S+), from the wheelhouse", printed)
        assert took, printed[-4000:]
        print(f"\nh2: the swarm stack installed from the wheelhouse in {took[1]} s (torch {took[2]})")
        # the server that served the rows runs on the venv's stack: its torch is the venv's
        pid = json.loads((work / "h2" / "run" / "server0.pid").read_text())["pid"]
        assert f"{venv}/lib/" in Path(f"/proc/{pid}/maps").read_text() and "/torch/" in Path(f"/proc/{pid}/maps").read_text()

        again, output = petals_netbench(lab_dir, inventory, "-t", "provision", *wheelhouse, *SWEEP)
        assert again["rc"] == 0, output[-4000:]
        assert changed_per_host(output) == {"h1": 0, "h2": 0}, output[-4000:]
    finally:
        cleanup, output = petals_netbench(lab_dir, inventory, "--cleanup")
    assert cleanup["rc"] == 0, output[-4000:]
    for name, host in hosts.items():
        assert netns_lab.settled_leftovers(host) == ({}, []), name
