"""`ansible-playbook site.yml -e netbench_runtime=docker` on this machine: the roles run the swarm in
containers of the swarm image (built here from a snapshot of the source, no registry).

- The DHT and two servers (netbench/tiny, CPU) run as containers with the project's labels, the
  host's network and IPC namespaces and the work directory mounted at the same path; the client
  runs in a one-shot container and its TSV is fetched to results_dir and checked.
- A second run of the provision and swarm stages, with a new run id, changes nothing: the
  running containers are found by name and configuration and left alone.
- `--tags cleanup` removes exactly this swarm's containers: another netbench run's container and a
  foreign one, both started by the test, survive; no process of ours is left; a second cleanup
  changes nothing.
- GPU servers (no GPU here: a recording `docker` on PATH): each container gets only its GPU,
  `--gpus device=N`, and the server inside uses cuda:0.

The Docker engine role is skipped (--skip-tags docker): dockerd here is started by
.ci/setup.d/40-docker.sh, not by a service manager; tests/isolated/test_provision_docker_host.py tests that role.
Wall time here (2 cores, shared): ~1 min with the image cached (a cold image build adds ~5 min).
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest

from dockerlab import (IMAGE_CACHE, PROJECT_LABEL, REPO, ansible_playbook, docker, labels_of, remove_containers,
                       require_docker, snapshot_source)

pytestmark = [pytest.mark.root, pytest.mark.slow]
SITE = REPO / "site.yml"
INVENTORY = REPO / "inventory" / "local"


def ours(run_id: str | None = None, **labels: str) -> list[str]:
    """Names of the project's containers with these labels (and run id), running or not."""
    wanted = {PROJECT_LABEL[0]: PROJECT_LABEL[1], **labels, **({"netbench.run-id": run_id} if run_id else {})}
    filters = [arg for key, value in wanted.items() for arg in ("--filter", f"label={key}={value}")]
    return sorted(docker("ps", "--all", "--format", "{{.Names}}", *filters).stdout.split())


def processes_mentioning(text: str) -> list[str]:
    """Command lines of this machine's processes that mention ``text`` (containers' processes included)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_site_in_containers_idempotent_and_clean(tmp_path):
    require_docker()
    (tmp_path / "source").mkdir()
    source = snapshot_source((tmp_path / "source").resolve())
    workdir = (tmp_path / "work").resolve()
    results = (tmp_path / "results").resolve()
    run_id = f"dockerrt{os.getpid()}x{int(time.time())}"
    common = {"netbench_runtime": "docker", "netbench_workdir": str(workdir), "results_dir": str(results),
              "swarm_image_source": str(source), "swarm_image_cache_dir": str(IMAGE_CACHE)}
    other_run, foreign = f"nbtest-{run_id}-other-run", f"nbtest-{run_id}-foreign"
    swarm: list[str] = []
    try:
        # Not ours to remove: a container of another netbench run, and one of someone else.
        docker("run", "--detach", "--name", other_run, "--network", "none", "--label", f"{PROJECT_LABEL[0]}={PROJECT_LABEL[1]}",
               "--label", f"netbench.run-id=other-{run_id}", "--label", "netbench.role=server",
               "netbench-base:bookworm", "sleep", "900")
        docker("run", "--detach", "--name", foreign, "--network", "none", "--label", "owner=someone-else",
               "netbench-base:bookworm", "sleep", "900")

        run = ansible_playbook(SITE, "--skip-tags", "docker", inventory=INVENTORY, extra_vars={**common, "run_id": run_id},
                               timeout=1800).ok()
        print(f"site.yml (docker runtime, image included) in {run.wall_s:.0f} s")
        assert run.recap["localhost"]["failed"] == 0

        # the swarm: a DHT and two servers, labelled, on the host's network and IPC, the work directory at its path
        swarm = ours(run_id)
        roles = {name: labels_of(name) for name in swarm}
        assert sorted(labels["netbench.role"] for labels in roles.values()) == ["dht", "server", "server"], roles
        assert len({labels["netbench.swarm"] for labels in roles.values()}) == 1, roles
        for name in swarm:
            state = json.loads(docker("inspect", "--format", "{{json .}}", name).stdout)
            assert state["State"]["Running"], (name, state["State"])
            assert (state["HostConfig"]["NetworkMode"], state["HostConfig"]["IpcMode"]) == ("host", "host"), name
            assert state["HostConfig"]["Init"] is True, name
            assert {"Source": str(workdir), "Destination": str(workdir)}.items() <= \
                next(m for m in state["Mounts"] if m["Destination"] == str(workdir)).items(), state["Mounts"]
            assert state["HostConfig"]["DeviceRequests"] is None, name  # CPU host: no --gpus
            assert state["Config"]["Cmd"][:3] == ["python", "-m", "bench_client.swarm.dht" if "dht" in name else "bench_client.swarm.server"]
        # the one-shot containers (the wait for the swarm, the client) are gone
        assert ours(run_id, **{"netbench.role": "client"}) == [] and ours(run_id, **{"netbench.role": "wait"}) == []

        tsv = results / run_id / "none" / "out.tsv"
        rows = list(csv.reader(tsv.open(), delimiter="\t"))
        print("TSV:", *("\t".join(row) for row in rows), sep="\n  ")
        assert [(row[3], row[4]) for row in rows] == [("16", "4"), ("32", "4")], rows  # the local inventory's sweep
        for row in rows:
            assert len(row) == 7 and all(float(value) > 0 for value in row), row
        meta = [json.loads(line) for line in tsv.with_suffix(".jsonl").read_text().splitlines()]
        assert [m["status"] for m in meta] == ["ok", "ok"] and {m["num_servers"] for m in meta} == {2}, meta

        # a second run of the swarm stage, with a new run id: the running containers are found and kept
        ids = {name: docker("inspect", "--format", "{{.Id}}", name).stdout.strip() for name in swarm}
        again = ansible_playbook(SITE, "--skip-tags", "docker", "--tags", "provision,swarm", inventory=INVENTORY,
                                 extra_vars={**common, "run_id": f"{run_id}-again"}).ok()
        print(f"second provision+swarm run in {again.wall_s:.0f} s")
        assert again.recap["localhost"]["changed"] == 0, again.stdout[-4000:]
        assert {name: docker("inspect", "--format", "{{.Id}}", name).stdout.strip() for name in swarm} == ids
        assert ours(f"{run_id}-again") == []  # nothing started under the new run id

        # cleanup (no run id given, as a user would): exactly this swarm's containers go
        cleanup = ansible_playbook(SITE, "--tags", "cleanup", inventory=INVENTORY, extra_vars=common).ok()
        print(f"cleanup in {cleanup.wall_s:.0f} s")
        assert cleanup.recap["localhost"]["changed"] >= 2
        for name in swarm:
            assert docker("inspect", name, check=False).returncode != 0, f"{name} survived the cleanup"
        for name in (other_run, foreign):
            assert docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", name
        assert processes_mentioning(str(workdir)) == []
        assert not (workdir / "run" / "dht.maddrs").exists()
        again = ansible_playbook(SITE, "--tags", "cleanup", inventory=INVENTORY, extra_vars=common).ok()
        assert again.recap["localhost"]["changed"] == 0, again.stdout[-3000:]
    finally:
        remove_containers(*swarm, other_run, foreign)


def test_gpu_servers_are_pinned_to_their_gpu(tmp_path):
    """No GPU here: the petals_server role runs against a recording `docker` on PATH, with a plan of two
    GPU servers. Each container gets only its GPU (--gpus device=N) and the server inside uses cuda:0."""
    log = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    # records every call; `container inspect` finds nothing, so each server container is started
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\n'
                    '[ "$1 $2" = "container inspect" ] && { echo "Error: No such container: $5" >&2; exit 1; }\nexit 0\n')
    fake.chmod(0o755)
    workdir = tmp_path / "work"
    (workdir / "run").mkdir(parents=True)
    plan = {"model": "facebook/opt-30b", "dtype": "float16", "num_gpus": 2, "run_id": "gpu1",
            "servers_by_host": {"localhost": [
                {"name": "server0", "span": "0:24", "device": "cuda:0", "gpu": 0, "container_gpus": "device=0", "port": 31400},
                {"name": "server1", "span": "24:48", "device": "cuda:1", "gpu": 1, "container_gpus": "device=1",
                 "port": 31401}]}}
    playbook = tmp_path / "servers.yml"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  roles: [petals_server]\n")
    ansible_playbook(playbook, extra_vars={
        "netbench_runtime": "docker", "netbench_workdir": str(workdir), "swarm_image_ref": "netbench-swarm:test",
        "netbench_plan": plan, "petals_server_initial_peers": ["/ip4/127.0.0.1/tcp/31337/p2p/QmTest"]},
        env={"PATH": f"{fake.parent}:{os.environ['PATH']}", "ANSIBLE_ROLES_PATH": str(REPO / "roles")}).ok()
    runs = [line.split() for line in log.read_text().splitlines() if line.startswith("run --detach")]
    assert len(runs) == 2, log.read_text()
    for argv, gpu in zip(runs, ("0", "1")):
        assert argv[argv.index("--gpus") + 1] == f"device={gpu}", argv
        assert argv[argv.index("--device") + 1] == "cuda:0", argv  # the one GPU the container sees
        assert "--label=netbench.run-id=gpu1" in argv and "--label=netbench.role=server" in argv, argv
        assert argv[argv.index("--net") + 1] == "host" and argv[argv.index("--ipc") + 1] == "host", argv
