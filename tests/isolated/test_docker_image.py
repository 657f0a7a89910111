"""The swarm image, built here without a registry, runs the swarm: DHT, two servers and the client.

- playbooks/image.yml (role swarm_image) builds the image on this machine from the debootstrapped
  base and the wheelhouse that .ci/setup.d/40-docker.sh made (the build runs with --network none,
  so nothing can come from an index); a second run changes nothing.
- The image's labels and tag carry the package version and the content hash.
- The DHT, two servers (blocks 0:2 and 2:4 of netbench/tiny, CPU) and the client run as containers
  of that image with plain `docker run --net host --ipc host` on loopback (the image alone;
  tests/isolated/test_site_docker_runtime.py runs the same through the roles); the client's TSV is checked.
- The role's remove_containers removes exactly this run's containers: another run's container and
  a foreign one started by the test survive; without a run id, only the project's go.

Wall time here (2 cores, shared): image build 3-4 min on a fresh machine (seconds when cached),
swarm ~1-2 min.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from dockerlab import (IMAGE_CACHE, PROJECT_LABEL, REPO, ansible_playbook, docker, image_playbook, labels_of,
                       remove_containers, require_docker, snapshot_source)

pytestmark = [pytest.mark.root, pytest.mark.slow]
MODEL = "netbench/tiny"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return snapshot_source(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def image(source) -> str:
    require_docker()
    run, tag = image_playbook(swarm_image_source=str(source))
    assert run.recap["localhost"]["failed"] == 0
    print(f"image {tag} ready in {run.wall_s:.0f} s")
    return tag


def test_image_rebuild_changes_nothing(image, source):
    run, tag = image_playbook(swarm_image_source=str(source))
    assert tag == image
    assert run.recap["localhost"]["changed"] == 0, run.stdout[-3000:]
    # nothing was built or shipped: the read-only check found the tag
    assert re.search(r"TASK \[swarm_image : Build the image\]", run.stdout) is None


def test_image_tag_and_labels(image, source):
    version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', (source / "pyproject.toml").read_text()).group(1)
    content_hash = (IMAGE_CACHE / "context" / "content-hash").read_text().strip()
    assert image == f"netbench-swarm:{version}-{content_hash}"
    labels = labels_of(image)
    assert labels["netbench.image.content-hash"] == content_hash
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.base.name"] == "netbench-base:bookworm"
    # built here, never pulled: no registry digest
    assert docker("image", "inspect", "--format", "{{len .RepoDigests}}", image).stdout.strip() == "0"
    # the pinned stack, offline by default
    out = docker("run", "--rm", "--network", "none", image, "python", "-c",
                 "import os, bench_client.compat as c; c.apply(); import petals, hivemind, transformers; "
                 "print(petals.__version__, hivemind.__version__, transformers.__version__, os.environ['HF_HUB_OFFLINE'])").stdout
    assert out.split()[-4:] == ["2.2.0.post1", "1.1.12", "4.34.1", "1"], out


def _container(image: str, run_id: str, role: str, name: str, volume: Path, *command: str, detach: bool = True,
               timeout: float = 120) -> str:
    """`docker run` of one swarm part, with the flags the Docker runtime uses (host network and IPC)."""
    args = ["run", "--name", name, "--net", "host", "--ipc", "host", "--init",
            "--label", f"{PROJECT_LABEL[0]}={PROJECT_LABEL[1]}", "--label", f"netbench.run-id={run_id}",
            "--label", f"netbench.role={role}", "--label", f"netbench.test={run_id}",
            "--volume", f"{volume}:/run/netbench", "--volume", f"netbench-cache-{run_id}:/cache"]
    args += ["--detach"] if detach else []
    proc = docker(*args, image, *command, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{name}: rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n" + \
        docker("logs", "--tail", "50", name, check=False).stderr
    return proc.stdout


def _remove_playbook(directory: Path) -> Path:
    path = directory / "remove.yml"
    path.write_text(textwrap.dedent("""\
        - name: Remove the experiment's containers
          hosts: localhost
          gather_facts: false
          tasks:
            - name: Remove them by label
              ansible.builtin.include_role:
                name: swarm_image
                tasks_from: remove_containers
        """))
    return path


def test_swarm_runs_in_containers_and_cleanup_removes_exactly_ours(image):
    run_id = f"t{os.getpid()}x{int(time.time())}"
    names = {part: f"nbtest-{run_id}-{part}" for part in ("dht", "server0", "server1", "wait", "client")}
    other_run = f"nbtest-{run_id}-other-run"
    foreign = f"nbtest-{run_id}-foreign"
    workdir = Path(tempfile.mkdtemp(prefix="netbench-docker-"))
    try:
        # Not ours to remove: another run of the project, and a container of someone else.
        docker("run", "--detach", "--name", other_run, "--network", "none", "--label", f"netbench.test={run_id}",
               "--label", f"{PROJECT_LABEL[0]}={PROJECT_LABEL[1]}", "--label", f"netbench.run-id=other-{run_id}",
               "netbench-base:bookworm", "sleep", "600")
        docker("run", "--detach", "--name", foreign, "--network", "none", "--label", "owner=someone-else",
               "--label", f"netbench.test={run_id}",
               "netbench-base:bookworm", "sleep", "600")

        started = time.monotonic()
        _container(image, run_id, "dht", names["dht"], workdir, "python", "-m", "bench_client.swarm.dht",
                   "--address-file", "/run/netbench/dht.maddrs", "--host-maddrs", "/ip4/127.0.0.1/tcp/0")
        maddrs = workdir / "dht.maddrs"
        deadline = time.monotonic() + 90
        while not (maddrs.exists() and maddrs.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert maddrs.exists(), docker("logs", names["dht"], check=False).stderr[-3000:]
        assert all(line.startswith("/ip4/127.0.0.1/tcp/") for line in maddrs.read_text().split()), maddrs.read_text()
        print(f"DHT up in {time.monotonic() - started:.1f} s: {maddrs.read_text().split()[0]}")

        for index, span in enumerate(("0:2", "2:4")):
            _container(image, run_id, "server", names[f"server{index}"], workdir, "python", "-m", "bench_client.swarm.server",
                       "--model", MODEL, "--initial-peers", "@/run/netbench/dht.maddrs", "--block-indices", span,
                       "--device", "cpu", "--dtype", "float32", "--num-handlers", "2",
                       "--host-maddrs", "/ip4/127.0.0.1/tcp/0")
        _container(image, run_id, "wait", names["wait"], workdir, "python", "-m", "bench_client.swarm.blocks", "wait",
                   "--initial-peers", "@/run/netbench/dht.maddrs", "--model", MODEL, "--timeout", "180",
                   detach=False, timeout=240)
        print(f"swarm served in {time.monotonic() - started:.1f} s")

        _container(image, run_id, "client", names["client"], workdir, "python", "-m", "bench_client",
                   "--initial-peers", "@/run/netbench/dht.maddrs", "--prefix", MODEL, "-b", "1",
                   "--num-micro-batches", "1", "--num-processes", "1", "--prompt-lengths", "8", "16",
                   "--new-tokens", "4", "--token-sweep", "none", "--device", "cpu", "--num-gpus", "2",
                   "--run-id", run_id, "--output", "/run/netbench/out.tsv", detach=False, timeout=600)
        print(f"client done {time.monotonic() - started:.1f} s after the DHT started")
        rows = list(csv.reader((workdir / "out.tsv").open(), delimiter="\t"))
        print("TSV:", *("\t".join(row) for row in rows), sep="\n  ")
        assert [(row[3], row[4]) for row in rows] == [("8", "4"), ("16", "4")], rows
        for row in rows:
            assert len(row) == 7 and float(row[5]) > 0 and float(row[6]) > 0, row
        assert (workdir / "out.jsonl").exists()

        # every part carries the labels and runs on the host's network and IPC namespaces
        for part, name in names.items():
            labels = labels_of(name)
            assert labels[PROJECT_LABEL[0]] == PROJECT_LABEL[1] and labels["netbench.run-id"] == run_id, labels
            mode = docker("inspect", "--format", "{{.HostConfig.NetworkMode}} {{.HostConfig.IpcMode}}", name).stdout
            assert mode.split() == ["host", "host"], (part, mode)

        # cleanup of this run: exactly its containers go
        playbook = _remove_playbook(workdir)
        env = {"ANSIBLE_ROLES_PATH": str(REPO / "roles")}
        run = ansible_playbook(playbook, extra_vars={"swarm_image_remove_run_id": run_id}, env=env).ok()
        assert run.recap["localhost"]["changed"] == 1
        for name in names.values():
            assert docker("inspect", name, check=False).returncode != 0, f"{name} survived the cleanup"
        for name in (other_run, foreign):
            assert docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true"
        # nothing left of this run: a second cleanup changes nothing
        assert ansible_playbook(playbook, extra_vars={"swarm_image_remove_run_id": run_id}, env=env).ok() \
            .recap["localhost"]["changed"] == 0
        # without a run id every container with the project's labels goes, and still only those (the
        # test's own label keeps other swarms on this machine out of it)
        labels = {PROJECT_LABEL[0]: PROJECT_LABEL[1], "netbench.test": run_id}
        ansible_playbook(playbook, extra_vars={"swarm_image_container_labels": labels}, env=env).ok()
        assert docker("inspect", other_run, check=False).returncode != 0
        assert docker("inspect", "--format", "{{.State.Running}}", foreign).stdout.strip() == "true"
    finally:
        remove_containers(*names.values(), other_run, foreign)
        docker("volume", "rm", "--force", f"netbench-cache-{run_id}", check=False)
