"""tools/gpu/parity.sh, the GPU parity run's exact script, on CPU with netbench/tiny: site.yml on the
local inventory through plain `python -m ansible.cli.playbook` (no runner, the project's stdout
callback), two servers on the one "device", then local_swarm with the same workload, then the
comparison. What only a GPU can show (4 servers pinned to one H200, the 5 % target) is the lead's
run of the same script; here the tolerance is wide (two shared cores) and the test checks that
every step ran, what the rows record, and what the play printed. About 2 minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench_client.core.provenance import git_state
from bench_client.core.results import read_metadata
from bench_client.orchestration.runner import PROJECT_DIR

pytestmark = pytest.mark.slow


def test_parity_script_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "MODEL": "netbench/tiny", "DEVICE": "cpu", "DTYPE": "float32", "SERVERS": "2", "BATCH": "1",
           "MICRO": "1", "PROCS": "2", "PROMPT": "16", "NEW": "4", "TOLERANCE": "100", "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable}
    env.pop("NETBENCH_GIT_COMMIT", None)
    done = subprocess.run(["bash", str(PROJECT_DIR / "tools" / "gpu" / "parity.sh"), "run", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    summary = json.loads((out / "parity.json").read_text())
    assert summary["within_tolerance"] and summary["servers"] == 2
    assert summary["workload"]["prompt_length"] == 16 and summary["workload"]["new_tokens"] == 4
    ansible_rows = read_metadata(out / "ansible" / "parity" / "none" / "out.jsonl")
    local_rows = read_metadata(out / "local_swarm" / "out.jsonl")
    assert [r["launcher"] for r in ansible_rows] == ["ansible"] and [r["launcher"] for r in local_rows] == ["local_swarm"]
    # parity.sh passes both launchers the checkout's commit: the rows say it is the launcher's word
    assert ansible_rows[0]["git"] == local_rows[0]["git"] == {**git_state(), "source": "launcher"}
    assert ansible_rows[0]["per_gpu_throughput"] > 0 and local_rows[0]["per_gpu_throughput"] > 0
    log = (out / "ansible.log").read_text()
    # plain ansible-playbook shows the client's progress line instead of Ansible's retries...
    assert "sweep [localhost]: [1/1] prompt    16,   4 new tokens:" in log and "RETRYING" not in log
    # ...and says at the end what still runs and how to stop it; the script then stopped it
    assert "the swarm of netbench/tiny still runs: DHT on localhost, 2 server(s) on localhost" in log
    assert f"stop it with: ansible-playbook -i {PROJECT_DIR}/inventory/local/hosts.yml" in log
    assert not list((tmp_path / "work" / "ansible" / "run").glob("*.pid"))
    # the comparison refuses rows of another launcher (here: the two files swapped)
    swapped = subprocess.run([sys.executable, str(PROJECT_DIR / "tools" / "gpu" / "compare_parity.py"),
                              str(out / "local_swarm" / "out.jsonl"), str(out / "ansible" / "parity" / "none" / "out.jsonl"),
                              "--servers", "2"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)})
    assert swapped.returncode == 2 and "expected ansible" in swapped.stderr
