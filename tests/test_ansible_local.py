"""`ansible-playbook site.yml` on the local default inventory, end to end through the runner: a real
CPU swarm (DHT + 2 servers on loopback), the benchmark client, the TSV and JSONL fetched under
results/<run_id>/none/; a second provision+swarm run changes nothing; `--tags cleanup` stops every
process of ours and closes its ports. About 2 minutes on 2 cores."""

from __future__ import annotations

import csv
import io
import json
import secrets
import shutil
import socket
from pathlib import Path

import pytest

from bench_client.core.daemon import Record, group_members
from bench_client.orchestration.runner import PROJECT_DIR, run_experiment
from secrets_scan import leaks

pytestmark = pytest.mark.slow


def dht_port(workdir: Path) -> int:
    maddr = (workdir / "run" / "initial_peers").read_text().split()[0]
    return int(maddr.split("/tcp/")[1].split("/")[0])


def inventory_with_canaries(tmp_path: Path) -> tuple[Path, list[str]]:
    """The local inventory plus secrets no file of the run may ever contain (a become password, a
    vault-style token), as a researcher's inventory would hold them."""
    inventory = tmp_path / "inventory"
    shutil.copytree(PROJECT_DIR / "inventory" / "local", inventory)
    canaries = [f"canary-become-{secrets.token_hex(8)}", f"canary-vault-{secrets.token_hex(8)}"]
    with (inventory / "group_vars" / "all.yml").open("a") as f:
        f.write(f"ansible_become_password: {canaries[0]}\nvault_netbench_api_token: {canaries[1]}\n")
    return inventory, canaries


def test_local_site_end_to_end_idempotent_and_clean(tmp_path):
    workdir = tmp_path / "work"
    results = tmp_path / "results"
    common = {"netbench_workdir": str(workdir), "results_dir": str(results), "petals_dht_persistent_identity": True}
    inventory, canaries = inventory_with_canaries(tmp_path)
    out = io.StringIO()
    run = run_experiment(inventory=inventory, extravars=common, out=out)
    try:
        assert run.ok, out.getvalue()[-5000:]
        # progress was shown per host and task while it ran
        assert "changed  localhost        petals_dht : Start the DHT in its own session" in out.getvalue()
        profile_dir = run.results_dir / "none"
        assert run.results_dir == results / run.run_id and run.profile_dirs == [profile_dir]
        rows = list(csv.reader((profile_dir / "out.tsv").open(), delimiter="\t"))
        assert [(r[3], r[4]) for r in rows] == [("16", "4"), ("32", "4")]  # prompt lengths 16/32, 4 new tokens
        assert all(len(r) == 7 and float(r[5]) > 0 for r in rows)
        meta = [json.loads(line) for line in (profile_dir / "out.jsonl").read_text().splitlines()]
        assert [m["status"] for m in meta] == ["ok", "ok"]
        assert {m["run_id"] for m in meta} == {run.run_id}
        assert {m["network_profile"] for m in meta} == {"none"} and all(m["network"] is None for m in meta)
        assert {m["num_servers"] for m in meta} == {2}

        pidfiles = sorted(p.name for p in (workdir / "run").glob("*.pid"))
        assert pidfiles == ["dht.pid", "server0.pid", "server1.pid"]  # the client and swarm-wait left none
        records = [Record.load(workdir / "run" / name) for name in pidfiles]
        port = dht_port(workdir)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

        again = run_experiment(inventory=inventory, extravars={**common, "run_id": run.run_id}, tags="provision,swarm",
                               out=io.StringIO())
        assert again.ok and again.changed() == {"localhost": 0}, again.stats
    finally:
        cleanup = run_experiment(inventory=inventory, extravars=common, tags="cleanup", out=io.StringIO())
    assert cleanup.ok, cleanup.failures
    # the inventory's secrets reached no result, log, pid/address file, runner event log or output
    artifacts = sorted((PROJECT_DIR / ".cache" / "runner" / "artifacts").glob(f"{run.run_id}-*"))
    assert artifacts, "the runner's event logs of this run are missing: the scan would prove nothing"
    assert not leaks([results, workdir, *artifacts], canaries)
    assert not any(c in out.getvalue() for c in canaries)
    assert all(group_members(r.pgid) == [] for r in records)
    assert list((workdir / "run").glob("*.pid")) == []
    assert (workdir / "run" / "dht.key").exists()  # the persistent DHT identity outlives cleanup
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # cleanup twice is harmless and changes nothing
    assert run_experiment(extravars=common, tags="cleanup", out=io.StringIO()).changed() == {"localhost": 0}


def test_swarm_wait_times_out_naming_the_missing_blocks(tmp_path):
    """Only the server of blocks 0:2 starts: the wait fails after its timeout, naming blocks 2:4."""
    common = {"netbench_workdir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results")}
    out = io.StringIO()
    try:
        run = run_experiment(extravars={**common, "petals_server_wait_timeout": 15,
                                        "petals_server_instances": [{"name": "server0", "span": "0:2",
                                                                     "device": "cpu", "port": 0}]},
                             tags="provision,swarm", out=out)
        assert run.rc != 0
        [failure] = run.failures
        assert failure.task == "petals_server : Fail naming the missing blocks"
        assert "blocks 2:4 of netbench/tiny" in failure.message and "served by no online server" in failure.message
        assert "FAILED localhost | petals_server : Fail naming the missing blocks" in out.getvalue()  # streamed
    finally:
        assert run_experiment(extravars=common, tags="cleanup", out=io.StringIO()).ok


def test_check_mode_changes_nothing(tmp_path):
    workdir = tmp_path / "work"
    out = io.StringIO()
    run = run_experiment(extravars={"netbench_workdir": str(workdir), "results_dir": str(tmp_path / "results")},
                         check=True, out=out)
    assert run.ok, out.getvalue()[-3000:]
    assert run.changed()["localhost"] >= 1  # it says the work directory would be made...
    assert not workdir.exists() and not (tmp_path / "results").exists()  # ...and makes nothing
    # a normal run right after is not in check mode (ansible-runner keeps no state between our runs)
    provision = run_experiment(extravars={"netbench_workdir": str(workdir)}, tags="provision", out=io.StringIO())
    assert provision.ok and workdir.is_dir()
