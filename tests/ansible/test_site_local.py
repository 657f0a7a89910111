"""`ansible-playbook site.yml` on the local default inventory, end to end through the runner: a real
CPU swarm (DHT + 2 servers on loopback), the benchmark client, the TSV and JSONL fetched under
results/<run_id>/none/; a second provision+swarm run changes nothing; a rerun whose client host lost
its rows resumes from the controller's copy; `--tags cleanup` stops every
process of ours and closes its ports. About 2 minutes on 2 cores."""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from bench_client.core.daemon import Record, group_members
from bench_client.core.provenance import git_state
from bench_client.orchestration import runs
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


def with_unreachable_server(tmp_path: Path, inventory: Path) -> Path:
    """``inventory`` plus a server host nobody answers for (ssh to a closed port)."""
    ghost = tmp_path / "inventory-ghost"
    shutil.copytree(inventory, ghost)
    hosts = yaml.safe_load((ghost / "hosts.yml").read_text())
    hosts["all"]["children"]["servers"]["hosts"]["ghost"] = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1",
                                                              "ansible_port": 9}
    (ghost / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return ghost


def shared_memory_files() -> set[str]:
    """torch's segments and multiprocessing's semaphores: what killed swarm processes leave behind."""
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(("torch_", "sem.mp-"))}


# What our processes and Ansible would make in /tmp whatever TMPDIR says: hivemind's unix sockets
# (hivemind-p2pd-*.sock, hivemind-p2pclient-*.sock; compat item 11 moves them), Ansible's temporary
# folders. The rest (multiprocessing's pymp-*, torch_shm_manager's torch-shm-dir-*, the daemon's
# netbench-proc-* TMPDIRs, Ansible's module payloads) follows TMPDIR: the test's own, checked whole.
TEMPORARY_PATTERNS = ("hivemind-", "ansible-tmp-", "ansible-local-")


def temporary_files(root: Path = Path("/tmp")) -> set[str]:
    """``root``'s entries of those kinds (other tools' files there are no business of this test)."""
    return {p.name for p in root.iterdir() if p.name.startswith(TEMPORARY_PATTERNS)}


def lasting(new: set[str], root: Path = Path("/tmp"), wait: float = 10.0) -> set[str]:
    """Those of ``new`` still there after ``wait`` seconds: another tool's file in use (a module payload
    of another Ansible, a socket of another test's process) goes away, a leftover stays."""
    deadline = time.monotonic() + wait
    while new and time.monotonic() < deadline:
        time.sleep(0.5)
        new = {name for name in new if (root / name).exists()}
    return new


def stop_signals(run_id: str) -> list[str]:
    """The signal that ended each process group stopped by a run (bench_client.core.daemon stop's JSON),
    read from the runner's event logs of that run."""
    signals = []
    for events in (PROJECT_DIR / ".cache" / "runner" / "artifacts").glob(f"{run_id}-*/job_events"):
        for path in sorted(events.glob("*.json"), key=lambda p: int(p.name.split("-")[0])):
            data = json.loads(path.read_text())
            res = data.get("event_data", {}).get("res", {})
            if data.get("event") != "runner_on_ok" or "bench_client.core.daemon" not in str(res.get("cmd", "")):
                continue
            if "stop" not in res["cmd"] or not res.get("stdout", "").startswith("{"):
                continue
            result = json.loads(res["stdout"])
            signals += [group["signal"] for group in result.get("groups", [result]) if "signal" in group]
    return signals


def test_local_site_end_to_end_idempotent_and_clean(tmp_path, monkeypatch):
    # every process of the runs (ansible-playbook, its modules, all they start) gets a TMPDIR of this
    # test's own: what is left there is ours, whatever else runs on the machine; /tmp is watched too, for
    # what ignores TMPDIR (short: unix socket paths are made under it). Before the daemon's private
    # TMPDIRs a run and its cleanup left 10 pymp-* and 3 torch-shm-dir-* folders in it
    private_tmp = Path(tempfile.mkdtemp(prefix="netbench-test-"))
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    workdir = tmp_path / "work"
    results = tmp_path / "results"
    common = {"netbench_workdir": str(workdir), "results_dir": str(results), "petals_dht_persistent_identity": True}
    inventory, canaries = inventory_with_canaries(tmp_path)
    shm_before, tmp_before = shared_memory_files(), temporary_files()
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
        manifest = json.loads((run.results_dir / "manifest.json").read_text())  # written by the experiment playbook
        assert manifest["run_id"] == run.run_id and manifest["plan"]["run_id"] == run.run_id
        assert len(manifest["git"]["commit"]) == 40 and "localhost" in manifest["hosts"]
        assert manifest["extra_vars"]["systems"] is None and manifest["plan"]["systems"] == ["petals"]
        # its run section (the timeline callback): one invocation, successful, every configuration done
        assert (manifest["run"]["outcome"], manifest["run"]["complete"], len(manifest["run"]["invocations"])) == \
            ("successful", True, 1)
        assert manifest["run"]["configurations"] == {"none": {"planned": 2, "done": 2}}
        # what launched the rows and from which commit (the controller's checkout, through the plan)
        assert {m["launcher"] for m in meta} == {"ansible"}
        assert {m["git"]["commit"] for m in meta} == {git_state()["commit"]} and git_state()["commit"]
        # the wait showed the client's own progress line, not Ansible's retries; the end, the cleanup command
        assert "sweep    localhost        [2/2] prompt    32,   4 new tokens:" in out.getvalue()
        assert "FAILED - RETRYING" not in out.getvalue()
        assert run.swarm_hosts == ["localhost"]

        # the timeline (netbench_timeline callback, loaded under ansible-runner too): every phase of the run
        events = [json.loads(line) for line in (run.results_dir / "timeline.jsonl").read_text().splitlines()]
        assert events[0]["kind"] == "invocation" and events[-1]["kind"] == "summary"
        intervals = [r for r in events if r["kind"] == "interval"]
        assert {"preflight", "provision", "swarm:dht", "swarm:servers", "client", "fetch"} <= {r["phase"] for r in intervals}
        # (the client session is stopped after the last profile: that stretch belongs to no profile)
        assert {r["profile"] for r in intervals if r["phase"] in ("client", "fetch")} - {None} == {"none"}
        assert all(r["end"] >= r["start"] and r["seconds"] >= 0 for r in intervals)
        summary = run.timeline_summary()
        assert summary == events[-1] and 0 < summary["measured_s"] < summary["wall_s"]
        assert summary["measured_s"] == pytest.approx(sum(m["wall_time_s"] for m in meta), abs=1e-3)
        client = sum(s for p, s in summary["phases"] if p == "client")
        assert summary["measured_s"] <= client <= summary["wall_s"]

        # every host's logs came home beside the rows, with ansible-playbook's own output
        logs = run.results_dir / "logs"
        assert {"dht.log", "server0.log", "server1.log", "client-session.log"} <= {p.name for p in (logs / "localhost").iterdir()}
        assert "session: job" in (logs / "localhost" / "client-session.log").read_text()
        assert any("PLAY RECAP" in p.read_text() for p in logs.glob("ansible-*.log"))
        pidfiles = sorted(p.name for p in (workdir / "run").glob("*.pid"))
        assert pidfiles == ["dht.pid", "server0.pid", "server1.pid"]  # the client and swarm-wait left none
        records = [Record.load(workdir / "run" / name) for name in pidfiles]
        port = dht_port(workdir)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

        again = run_experiment(inventory=inventory, extravars={**common, "run_id": run.run_id}, tags="provision,swarm",
                               out=io.StringIO())
        assert again.ok and again.changed() == {"localhost": 0}, again.stats

        # a replaced client host (its copy of the rows gone) resumes from the controller's: nothing remeasured;
        # two more profiles (shaped on paper: only the bench tag runs here) are measured by one client
        # session, whose client processes started once for both
        host_rows = workdir / "results" / run.run_id / "none"
        shutil.rmtree(host_rows)
        more = [{"name": name, "rate": "100gbit"} for name in ("lan-a", "lan-b")]
        resumed = run_experiment(inventory=inventory, extravars={**common, "run_id": run.run_id, "netbench_shaping": True,
                                                                 "netem_measurement": {},  # no shaping ran
                                                                 "profiles": ["none", *more]}, tags="bench,fetch",
                                 out=io.StringIO())
        assert resumed.ok, resumed.failures
        assert (host_rows / "out.tsv").read_text() == (profile_dir / "out.tsv").read_text()
        assert len((profile_dir / "out.tsv").read_text().splitlines()) == 2
        assert len((profile_dir / "out.jsonl").read_text().splitlines()) == 2
        pools = {}
        for name in ("none", "lan-a", "lan-b"):
            rows = [json.loads(line) for line in (run.results_dir / name / "out.jsonl").read_text().splitlines()]
            assert [(m["status"], m["network_profile"]) for m in rows] == [("ok", name)] * 2
            pools[name] = {tuple(m["system_fields"]["client_pids"]) for m in rows}  # the client's own fields
        assert len(pools["lan-a"]) == 1 and pools["lan-a"] == pools["lan-b"] != pools["none"], pools
        # the warm-up (--warmup shape): a whole prompt the first time a pool meets a shape (prompt 16, 32),
        # a 1-token prompt at the next profile of the same session
        warmups = {name: [(m["system_fields"]["warmup"], m["system_fields"]["warmup_kind"]) for m in map(json.loads, (run.results_dir / name / "out.jsonl")
                                                                        .read_text().splitlines())]
                   for name in ("none", "lan-a", "lan-b")}
        assert warmups == {"none": [("shape", "full")] * 2, "lan-a": [("shape", "full")] * 2,
                           "lan-b": [("shape", "short")] * 2}, warmups
        session_log = (workdir / "run" / "client-session.log").read_text()
        # two runs, two sessions (each stopped after its last profile), the second pool used twice; the full
        # run's session was started right after the DHT and loaded its processes before the first profile
        assert session_log.count("session: starting") == 2 and session_log.count("session: reusing") == 2, session_log
        assert session_log.count("session: client processes loaded ahead of the first job") == 1, session_log
        assert not (workdir / "run" / "client-session.pid").exists()
        # the two later runs of this run id appended their own invocations; the resumed one measured nothing
        invocations = [json.loads(line) for line in (run.results_dir / "timeline.jsonl").read_text().splitlines()]
        assert len({r["invocation"] for r in invocations}) == 3
        # (the resumed one counted only the two new profiles' rows: "none" was not measured again)
        new_rows = [json.loads(line) for name in ("lan-a", "lan-b")
                    for line in (run.results_dir / name / "out.jsonl").read_text().splitlines()]
        assert resumed.timeline_summary()["measured_s"] == pytest.approx(sum(m["wall_time_s"] for m in new_rows), abs=1e-3)
        # the manifest, rewritten by the resumed run, kept the run section: three invocations, nothing left to resume
        state = json.loads((run.results_dir / "manifest.json").read_text())["run"]
        assert [i["outcome"] for i in state["invocations"]] == ["successful"] * 3 and state["complete"]
        assert state["configurations"] == {name: {"planned": 2, "done": 2} for name in ("none", "lan-a", "lan-b")}
        assert runs.latest_unfinished(results) is None
        # ansible-playbook's own output (the runner's stdout of each invocation) ends with the breakdown
        for stdout in sorted((PROJECT_DIR / ".cache" / "runner" / "artifacts").glob(f"{run.run_id}-*/stdout")):
            assert re.search(r"^measured [\d.]+ s of [\d.]+ s wall: duty ratio [\d.]+ %$", stdout.read_text(), re.M), stdout

        # a later run planned with one server: the earlier plan's second server is stopped by the swarm
        # stage, not measured beside this plan's (a stale swarm counted as the measured one)
        fewer = run_experiment(inventory=inventory, extravars={**common, "netbench_servers_per_host": 1,
                                                               "bench_client_prompt_lengths": [16],
                                                               "bench_client_new_tokens": 1},
                               tags="swarm,bench,fetch", out=io.StringIO())
        assert fewer.ok, fewer.failures
        assert sorted(p.name for p in (workdir / "run").glob("server*.pid")) == ["server0.pid"]
        assert group_members(records[2].pgid) == [], "the earlier plan's server1 still runs"
        rows = [json.loads(line) for line in (fewer.results_dir / "none" / "out.jsonl").read_text().splitlines()]
        assert [(m["status"], m["num_servers"]) for m in rows] == [("ok", 1)], rows
    finally:
        # cleanup stops what it reaches: with a server host unreachable, and -e netbench_device=cuda on
        # this host whose GPU (none) the plan of a normal run would refuse
        ghost = with_unreachable_server(tmp_path, inventory)
        cleanup = run_experiment(inventory=ghost, extravars={**common, "netbench_device": "cuda"}, tags="cleanup",
                                 out=io.StringIO())
    assert {(f.host, f.task) for f in cleanup.failures} == {("ghost", "preflight : Probe RAM, machine id and NVIDIA GPUs "
                                                             "(read-only)")}, cleanup.failures
    # --limit to the hosts still reachable: no plan asked of the others, nothing left to change
    limited = run_experiment(inventory=ghost, extravars=common, tags="cleanup", limit="localhost", out=io.StringIO())
    assert limited.ok and limited.changed() == {"localhost": 0}, limited.failures
    # a cleanup alone (its own fresh run id) is no run: no results folder that --resume would take for one
    assert not (results / cleanup.run_id).exists() and not (results / limited.run_id).exists()
    # every process of the swarm ended on SIGTERM (none was killed) and left nothing in /tmp (TMPDIR or not:
    # no socket, multiprocessing or torch folder, daemon TMPDIR, Ansible payload) ...
    assert stop_signals(cleanup.run_id) == ["SIGTERM"] * 2  # the DHT and the one server left (the client had ended)
    assert sorted(private_tmp.iterdir()) == [] and lasting(temporary_files() - tmp_before) == set()
    private_tmp.rmdir()
    # ... nor in /dev/shm (a container's processes, --ipc host, would show here too: CI runs this test alone)
    assert shared_memory_files() - shm_before == set()
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
                                                                     "device": "cpu", "gpu": None,
                                                                     "container_gpus": "", "port": 0}]},
                             tags="provision,swarm", out=out)
        assert run.rc != 0
        # the role's failure, rescued to bring the hosts' logs home, then the play's, which points at them
        failure, rethrown = run.failures[0], run.failures[-1]
        assert len(run.failures) == 2, run.failures
        assert failure.task == "petals_server : Fail naming the missing blocks"
        assert "blocks 2:4 of netbench/tiny" in failure.message and "served by no online server" in failure.message
        assert "FAILED localhost | petals_server : Fail naming the missing blocks" in out.getvalue()  # streamed
        logs = run.results_dir / "logs"
        assert rethrown.task == "Fail as the wait did" and "blocks 2:4" in rethrown.message and str(logs) in rethrown.message
        assert {"dht.log", "server0.log"} <= {p.name for p in (logs / "localhost").iterdir()}
        assert (logs / "localhost" / "server0.log").stat().st_size > 0
        assert list(logs.glob("ansible-*.log")), "the controller's own output is kept beside the hosts' logs"
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


def test_gpu_servers_share_a_gpu_pinned_with_the_plans_cache(tmp_path):
    """No GPU here: the petals_server role (process runtime) runs the plan of a one-H200 host with the
    paper's workload against a recording stand-in for the host's python. Each of the 4 servers is
    started with only GPU 0 visible, as cuda:0, with the cache the plan sized for 6 sessions x batch 2."""
    from bench_client.orchestration.plan import make_plan
    from dockerlab import ansible_playbook

    plan = make_plan({"model": "facebook/opt-30b", "run_id": "gpu1",
                      "workload": {"batch_size": 2, "num_processes": 6, "prompt_lengths": [512], "new_tokens": 32},
                      "groups": {"dht": ["localhost"], "servers": ["localhost"], "clients": ["localhost"]},
                      "hosts": {"localhost": {"device": "cuda", "gpus_mib": [143771], "mem_kb": 2**27}}})
    log, fake = tmp_path / "python.log", tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\necho \'{{"changed": true}}\'\n')
    fake.chmod(0o755)
    workdir = tmp_path / "work"
    (workdir / "run").mkdir(parents=True)
    playbook = tmp_path / "servers.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [petals_server]\n")
    run = ansible_playbook(playbook, extra_vars={
        "netbench_workdir": str(workdir), "netbench_python": str(fake), "netbench_plan": plan,
        "petals_server_initial_peers": ["/ip4/127.0.0.1/tcp/31337/p2p/QmTest"]})
    assert run.returncode == 0, run.stdout[-3000:]
    starts = [line.split() for line in log.read_text().splitlines() if line.startswith("-m bench_client.core.daemon start")]
    assert len(starts) == 4, log.read_text()
    for argv, span in zip(starts, ("0:12", "12:24", "24:36", "36:48")):
        assert argv[argv.index("--env") + 1] == "CUDA_VISIBLE_DEVICES=0", argv
        assert argv[argv.index("--device") + 1] == "cuda:0" and argv[argv.index("--block-indices") + 1] == span, argv
        assert argv[argv.index("--attn-cache-tokens") + 1] == str(2 * 7 * 544), argv
        assert argv[argv.index("--num-handlers") + 1] == "4", argv


def test_a_host_with_another_bench_client_gets_the_controllers_or_is_refused(tmp_path):
    """The host's Python imports a copy of bench_client with one file changed (another version of the
    harness). With netbench_harness=false provisioning refuses it, naming both code digests; by
    default it installs the controller's (a wheel built here, pip --target on the host, a wrapper
    that becomes netbench_python), and a second run finds it and changes nothing."""
    import sys

    from bench_client.core.provenance import code_hash

    copy = tmp_path / "site"
    shutil.copytree(PROJECT_DIR / "bench_client", copy / "bench_client", ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "bench_client" / "sweep.py").open("a") as f:
        f.write("# another version\n")
    workdir = tmp_path / "work"
    site = workdir / "harness" / "site"
    # this host's Python: its own packages hold the other version; like a remote host's, it does not
    # see the controller's PYTHONPATH, only what the harness wrapper puts first
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "${{PYTHONPATH:-}}" in {site}*) p={site}:{copy};; *) p={copy};; esac\n'
                      f'PYTHONPATH=$p exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    common = {"netbench_workdir": str(workdir), "results_dir": str(tmp_path / "results"), "netbench_python": str(python)}
    run = run_experiment(extravars={**common, "netbench_harness": False}, tags="provision", out=io.StringIO())
    assert run.rc != 0
    [failure] = run.failures
    assert failure.task == "netbench_host : Refuse a host whose bench_client differs from the controller's"
    assert f"the controller's is {code_hash()}" in failure.message and str(copy / "bench_client") in failure.message

    out = io.StringIO()
    run = run_experiment(extravars=common, tags="provision", out=out)
    assert run.ok, out.getvalue()[-3000:]
    wrapper = workdir / "harness" / "python"
    found = subprocess.run([str(wrapper), "-c", "import bench_client.core.provenance as p; print(p.code_hash(), p.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert found == [code_hash(), str(site / "bench_client" / "core" / "provenance.py")]
    again = run_experiment(extravars=common, tags="provision", out=io.StringIO())
    assert again.ok and again.changed() == {"localhost": 0}, again.stats


def test_a_host_that_cannot_get_the_swarm_stack_is_refused_before_any_change(tmp_path):
    """A host whose Python has no stack and nothing to install one with: Python 3.9 without its venv
    module, too little free disk, CUDA torch asked for without an NVIDIA driver. Provisioning names every
    reason in one refusal, before the work directory is made (bench_client.orchestration.stack and
    roles/netbench_host tasks/stack_check.yml)."""
    python = tmp_path / "python3.9"
    python.write_text("#!/bin/sh\n# a Python 3.9 without venv: it answers the probe's questions only\n"
                      "case \"$2\" in *'%d.%d.%d'*) echo 3.9.2;; *'cp%d%d'*) echo cp39;; *) exit 1;; esac\n")
    python.chmod(0o755)
    workdir = tmp_path / "work"
    run = run_experiment(extravars={"netbench_workdir": str(workdir), "results_dir": str(tmp_path / "results"),
                                    "netbench_python": str(python), "netbench_host_torch": "cuda",
                                    "netbench_host_stack_min_free_mib": 1 << 40},
                         tags="provision", out=io.StringIO())
    assert run.rc != 0
    [failure] = run.failures
    assert failure.task == "netbench_host : Refuse a host that lacks the stack and what it needs to install one"
    reasons = ["its Python is 3.9.2, the stack needs 3.10 or newer", "has no venv module (install python3-venv",
               f"MiB are free for {workdir}/stack, the stack needs {1 << 40}", "nothing was changed"]
    if not shutil.which("nvidia-smi"):  # a GPU machine has the driver
        reasons.append("but the host has no NVIDIA driver")
    for reason in reasons:
        assert reason in failure.message, failure.message
    assert not workdir.exists()
