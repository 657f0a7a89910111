"""playbooks/provision.yml on a Docker host the test creates: a Debian 12 container with sshd on a
Docker network of its own, reached by Ansible over real ssh. It has every capability this machine
grants (all but CAP_SYS_RESOURCE, so `--privileged` is refused here), enough for a Docker engine
to run inside it; its cgroups are read-only, so that engine cannot start containers of its own.

Runs for real: the pre-flight report (--tags preflight changes nothing), check mode on a fresh host,
and the docker_engine role: Debian's docker.io installed from Debian's mirror, the engine started
and answering inside the target; a second run changes nothing.

Needs a real GPU host, so here only in check mode: the nvidia_container_toolkit role. The test
asserts what it would do: NVIDIA's signing key and apt sources (URIs, Signed-By), the package,
the `nvidia-ctk runtime configure --runtime=docker` command line and the
`docker run --rm --gpus all IMAGE nvidia-smi -L` check; for real, that it refuses a host without
an NVIDIA driver before changing anything. Installing the toolkit, restarting Docker with the
nvidia runtime and a container listing GPUs need a GPU host with NVIDIA's driver.

Wall time here (2 cores, shared): ~2-3 minutes (the apt install of docker.io is most of it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from dockerlab import REPO, ansible_playbook, docker, remove_containers, require_docker

pytestmark = [pytest.mark.root, pytest.mark.slow]
PLAYBOOK = REPO / "playbooks" / "provision.yml"
TARGET_IMAGE = "netbench-provision-target:bookworm"
# The target: the project's registry-free base with sshd, python3-apt (Ansible's apt module) and apt
# lists, as a real host has them.
# Without CAP_SYS_RESOURCE the docker.io init script's `ulimit -n 1048576` fails; its defaults
# file (kept by dpkg as ours) makes ulimit a no-op in this test target only. Real hosts use systemd.
TARGET_DOCKERFILE = """\
FROM netbench-base:bookworm
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      openssh-server python3-apt >/dev/null && mkdir -p /run/sshd && ssh-keygen -A && \\
    printf '# test target: no CAP_SYS_RESOURCE to raise rlimits\\nulimit() { :; }\\n' >/etc/default/docker
CMD ["/usr/sbin/sshd", "-D", "-e"]
"""
NVIDIA_SOURCES = "/etc/apt/sources.list.d/nvidia-container-toolkit.sources"


class Target:
    def __init__(self, name: str, workdir: Path, inventory: Path):
        self.name, self.workdir, self.inventory = name, workdir, inventory

    def sh(self, command: str, check: bool = False) -> subprocess.CompletedProcess:
        return docker("exec", self.name, "sh", "-c", command, check=check, timeout=60)

    def play(self, *args: str, record: bool = False, **extra_vars):
        env = {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp")}
        records = self.workdir / f"record-{time.monotonic_ns()}.jsonl"
        if record:
            # beside the project's own (ansible.cfg's stdout callback lives there)
            env |= {"ANSIBLE_CALLBACK_PLUGINS": f"{REPO / 'tests' / 'callback_plugins'}:{REPO / 'playbooks' / 'callback_plugins'}",
                    "ANSIBLE_CALLBACKS_ENABLED": "record_results", "NETBENCH_RECORD": str(records)}
        run = ansible_playbook(PLAYBOOK, *args, inventory=self.inventory, extra_vars=extra_vars or None, env=env)
        run.records = [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []
        return run


@pytest.fixture(scope="module")
def target():
    require_docker()
    if docker("image", "inspect", TARGET_IMAGE, check=False).returncode != 0:
        build = Path(tempfile.mkdtemp(prefix="netbench-target-"))
        (build / "Dockerfile").write_text(TARGET_DOCKERFILE)
        docker("build", "--quiet", "--tag", TARGET_IMAGE, str(build), timeout=600, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        shutil.rmtree(build)
    name = f"nbtest-prov-{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix="netbench-provision-"))
    (workdir / "cp").mkdir()
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    docker("network", "create", "--label", "netbench.test=provision", name)
    try:
        # all capabilities granted here and its own /var/lib/docker: the engine the role installs runs inside
        docker("run", "--detach", "--name", name, "--hostname", "gpuhost", "--network", name,
               "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt", "seccomp=unconfined",
               "--security-opt", "apparmor=unconfined",
               "--label", "netbench.test=provision", "--volume", f"{name}-docker:/var/lib/docker",
               "--volume", f"{key}.pub:/root/.ssh/authorized_keys:ro", TARGET_IMAGE)
        address = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name).stdout.strip()
        inventory = workdir / "hosts.yml"
        inventory.write_text(json.dumps({"all": {"hosts": {"gpuhost": {
            "ansible_host": address, "ansible_user": "root", "ansible_ssh_private_key_file": str(key),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "netbench_runtime": "docker", "netbench_device": "cuda",
            # the swarm image is ~2 GB; the container's disk is whatever this machine has free
            "docker_engine_min_free_gb": 1,
        }}}}))
        deadline = time.monotonic() + 30
        while subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                              "-o", "ConnectTimeout=2", f"root@{address}", "true"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, docker("logs", name, check=False).stderr
            time.sleep(0.5)
        yield Target(name, workdir, inventory)
    finally:
        remove_containers(name)
        docker("volume", "rm", "--force", f"{name}-docker", check=False)
        docker("network", "rm", name, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def _lacks(run) -> str:
    lines = [line for line in run.stdout.splitlines() if "gpuhost lacks:" in line]
    assert lines, run.stdout[-3000:]
    return lines[-1]


def test_preflight_reports_and_changes_nothing(target):
    for args in (("--tags", "preflight"), ("--tags", "preflight", "--check")):
        run = target.play(*args).ok()
        assert run.recap["gpuhost"]["changed"] == 0
        lacks = _lacks(run)
        for missing in ("a running Docker engine", "an NVIDIA driver", "GPUs", "the NVIDIA container toolkit",
                        "the nvidia runtime in Docker"):
            assert missing in lacks, lacks
        assert "supported OS" not in lacks and "GB free" not in lacks, lacks
    assert target.sh("command -v dockerd").returncode != 0, "the pre-flight installed something"


def test_check_mode_on_a_fresh_host_changes_nothing(target):
    # the container-runtime play only: the first play (netbench_host) wants bench_client on the host itself
    run = target.play("--check", "--diff", "--tags", "docker,nvidia", nvidia_container_toolkit_require_driver=False).ok()
    assert run.recap["gpuhost"]["changed"] > 0  # it would install things
    assert target.sh("command -v dockerd").returncode != 0
    assert target.sh(f"test -e {NVIDIA_SOURCES} || test -e /etc/apt/keyrings/nvidia-container-toolkit.asc").returncode != 0


def test_nvidia_role_refuses_a_host_without_driver_before_any_change(target):
    run = target.play("--tags", "nvidia")
    assert run.returncode != 0
    assert "nvidia-smi does not answer" in run.stdout and "install the NVIDIA driver first" in run.stdout
    assert target.sh(f"test -e {NVIDIA_SOURCES} || test -e /etc/apt/keyrings/nvidia-container-toolkit.asc").returncode != 0


def test_docker_engine_for_real_then_idempotent(target):
    run = target.play("--tags", "docker", netbench_device="cpu").ok()
    assert run.recap["gpuhost"]["changed"] > 0
    version = target.sh("docker version --format '{{.Server.Version}}'", check=True).stdout.strip()
    assert version.startswith("20.10."), version  # Debian 12's docker.io
    assert "a running Docker engine" in _lacks(run)  # the pre-flight ran before the install
    # the engine works: it stores an image (imported there, no registry); the GPU check below uses it
    target.sh("tar -C /usr/sbin -cf /tmp/static.tar ldconfig && docker import /tmp/static.tar nbtest-static", check=True)
    assert target.sh("docker image inspect --format '{{.Id}}' nbtest-static", check=True).stdout.startswith("sha256:")
    again = target.play("--tags", "docker", netbench_device="cpu").ok()
    assert again.recap["gpuhost"]["changed"] == 0, again.stdout[-3000:]
    assert '"gpuhost lacks: nothing"' in again.stdout, _lacks(again)


def _one(records: list[dict], task: str) -> dict:
    found = [r for r in records if r["task"].split(" : ", 1)[-1] == task]  # without the "role : " prefix
    assert len(found) == 1, (task, [r["task"] for r in records])
    return found[0]


def test_nvidia_parts_in_check_mode(target):
    """What the toolkit role would do on a GPU host, read from a check-mode run's task results."""
    if target.sh("command -v dockerd").returncode != 0:
        target.play("--tags", "docker", netbench_device="cpu").ok()
    run = target.play("--check", "--diff", "--tags", "nvidia", record=True,
                      nvidia_container_toolkit_require_driver=False, nvidia_container_toolkit_check_image="nbtest-static").ok()
    records = run.records
    key = _one(records, "Say which key check mode would download")
    assert key["result"]["msg"] == ("would download https://nvidia.github.io/libnvidia-container/gpgkey"
                                    " to /etc/apt/keyrings/nvidia-container-toolkit.asc")
    assert _one(records, "Download the signing key of nvidia-container-toolkit")["status"] == "skipped"
    sources = _one(records, "Write the sources of nvidia-container-toolkit")
    after = "".join(d.get("after", "") for d in (sources["result"].get("diff") or []))
    assert "URIs: https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)\n" in after, after
    assert "Suites: /\n" in after and "Components:" not in after, after
    assert "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc\n" in after, after
    install = _one(records, "Install the toolkit")
    assert install["args"]["name"] == ["nvidia-container-toolkit"]
    configure = _one(records, "Register the nvidia runtime with docker")
    assert configure["args"]["argv"] == ["nvidia-ctk", "runtime", "configure", "--runtime=docker"]
    assert configure["status"] == "skipped" or configure["result"].get("skipped") or configure["result"].get("changed")
    check = _one(records, "List the GPUs from inside a container")
    assert check["args"]["argv"] == ["docker", "run", "--rm", "--gpus", "all", "nbtest-static", "nvidia-smi", "-L"]
    # the fingerprint the downloaded key must have is NVIDIA's
    assert "C95B321B61E88C1809C4F759DDCAE044F796ECB0" in (REPO / "roles/nvidia_container_toolkit/defaults/main.yml").read_text()
    # and nothing of it is on the host
    assert target.sh(f"test -e {NVIDIA_SOURCES} || test -e /etc/apt/keyrings/nvidia-container-toolkit.asc").returncode != 0
    assert target.sh("command -v nvidia-ctk").returncode != 0


def test_signed_repository_for_real(target):
    """The apt_repository tasks that add NVIDIA's (and Docker's) repository, run for real with a
    repository reachable here: Debian's bookworm-backports, trusted only through a key file that the
    task fetches (file://), checks by fingerprint and names in Signed-By; apt then reads the
    repository with that key. A key with another fingerprint is refused, removed, and no sources
    are written."""
    gnupg = target.workdir / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    keyring = "/usr/share/keyrings/debian-archive-bookworm-automatic.gpg"
    subprocess.run(["gpg", "--batch", "--quiet", "--import", keyring], env=env, check=True, capture_output=True)
    armored = target.workdir / "debian.asc"
    armored.write_bytes(subprocess.run(["gpg", "--batch", "--export", "--armor"], env=env, check=True,
                                       capture_output=True).stdout)
    fingerprint = next(line.split(":")[9] for line in subprocess.run(
        ["gpg", "--show-keys", "--with-colons", str(armored)], env=env, check=True, capture_output=True,
        text=True).stdout.splitlines() if line.startswith("fpr:"))
    docker("cp", str(armored), f"{target.name}:/srv/nbtest-debian.asc")
    playbook = target.workdir / "repository.yml"
    playbook.write_text(json.dumps([{
        "name": "A signed repository", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Add it", "ansible.builtin.include_role": {"name": "docker_engine", "tasks_from": "apt_repository"}}],
    }]))
    repo = {"name": "nbtest-debian", "key_url": "file:///srv/nbtest-debian.asc", "fingerprint": fingerprint,
            "uris": "http://deb.debian.org/debian", "suites": "bookworm-backports", "components": "main"}
    env = {"ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(target.workdir / "cp")}

    run = ansible_playbook(playbook, inventory=target.inventory, extra_vars={"docker_engine_repo": repo}, env=env).ok()
    assert run.recap["gpuhost"]["changed"] >= 2
    sources = target.sh("cat /etc/apt/sources.list.d/nbtest-debian.sources", check=True).stdout
    assert "Signed-By: /etc/apt/keyrings/nbtest-debian.asc\n" in sources and "Suites: bookworm-backports\n" in sources
    # apt trusts the repository through that key alone: its lists are there and verified
    policy = target.sh("apt-cache policy", check=True).stdout
    assert "bookworm-backports" in policy, policy
    again = ansible_playbook(playbook, inventory=target.inventory, extra_vars={"docker_engine_repo": repo}, env=env).ok()
    assert again.recap["gpuhost"]["changed"] == 0

    bad = {**repo, "name": "nbtest-bad", "fingerprint": "C95B321B61E88C1809C4F759DDCAE044F796ECB0"}
    refused = ansible_playbook(playbook, inventory=target.inventory, extra_vars={"docker_engine_repo": bad}, env=env)
    assert refused.returncode != 0 and "refusing the repository nbtest-bad" in refused.stdout, refused.stdout[-3000:]
    assert target.sh("ls /etc/apt/keyrings/nbtest-bad.asc /etc/apt/sources.list.d/nbtest-bad.sources").returncode != 0
    target.sh("rm -f /etc/apt/sources.list.d/nbtest-debian.sources /etc/apt/keyrings/nbtest-debian.asc", check=True)
