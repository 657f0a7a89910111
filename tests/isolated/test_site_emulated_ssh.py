"""The emulated inventory over real ssh: three network namespaces made by this test (bridge inside a
namespace it owns, sshd in each), the DHT and client on h1, one server each on h2 and h3, two
profiles in one run (unshaped, then a rate-only 20 Mbit/s custom profile: this kernel has tbf but no
netem). The test logs in as a non-root user with passwordless sudo, as on rented hosts: the shaping
becomes root, the harness, the swarm and the client run as that user. The hosts start without the
harness (their Python has petals and torch but no bench_client): provisioning installs the
controller's. Checks that the shaping was measurably in effect, that a second provision+shaping run
changes nothing, then `--tags cleanup` and that nothing of ours is left: no qdisc, no process but the
test's own sshd, no listening port but ssh. About 4 minutes on 2 cores."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_client.netem import lab as netns_lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PREFIX = f"nbt{os.getpid() % 10000}"
RATE_MBIT = 20
SWEEP = ["-e", "bench_client_prompt_lengths=[16]", "-e", "bench_client_new_tokens=4",
         "-e", "bench_client_num_processes=1", "-e", "bench_client_num_micro_batches=1",
         "-e", "netem_iperf_seconds=2", "-e", "netem_iperf_omit_seconds=1", "-e", "netem_ping_count=3"]
RATE_PROFILE = {"name": "rate20", "rate": f"{RATE_MBIT}mbit"}


def bare_python(directory: Path) -> Path:
    """A host's Python without the harness: this venv's packages (petals, torch) on its path, but not its
    editable install of bench_client (-S: no .pth file runs, so the editable finder is never installed)."""
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "petals").is_dir())
    python = directory / "bare-python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site_packages}" exec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    found = subprocess.run([str(python), "-c", "import torch, hivemind; import bench_client"], cwd=directory,
                           capture_output=True, text=True, timeout=120)
    assert "No module named 'bench_client'" in found.stderr, found  # the hosts really start bare
    return python


@contextlib.contextmanager
def traversable_by_others(paths: list[Path]):
    """o+x (enter, not list) on the given directories and their parents that lack it, as long as the
    test runs, restored afterwards exactly as found: pytest's base temp directory is 0700, and the
    venv's interpreter may live in root's home (pyenv under /root, 0700)."""
    changed: dict[Path, int] = {}
    for path in paths:
        for directory in [path, *path.parents]:
            mode = directory.stat().st_mode
            if directory not in changed and not mode & stat.S_IXOTH:
                changed[directory] = stat.S_IMODE(mode)
                directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for directory, mode in changed.items():
            directory.chmod(mode)


@contextlib.contextmanager
def login_user(home: Path):
    """A non-root login user with passwordless sudo, as on a rented host (ubuntu@...): the run must
    become root for the root tasks only (shaping), and run the harness and the swarm as this user.
    The account (and its sudoers entry) exists only while the test runs."""
    if not shutil.which("sudo"):
        pytest.skip("sudo is not installed (.ci/setup.d/10-system.sh installs it)")
    name = f"nbu{os.getpid() % 10000}"
    subprocess.run(["useradd", "--system", "--home-dir", str(home), "--create-home", "--shell", "/bin/sh", name],
                   check=True)
    sudoers = Path("/etc/sudoers.d") / name
    try:
        # no password, but not locked: the lab's sshd runs without PAM and refuses a locked account
        subprocess.run(["usermod", "--password", "*", name], check=True)
        sudoers.write_text(f"{name} ALL=(ALL:ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        yield name
    finally:
        sudoers.unlink(missing_ok=True)
        subprocess.run(["userdel", "--force", name], check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lab")
    # the lab goes down (its sshd and the user's sessions with it) before the user is removed
    with (traversable_by_others([directory, Path(sys.executable).parent, Path(os.path.realpath(sys.executable)).parent]),
          login_user(directory / "home") as user,
          netns_lab.lab(directory, count=3, python=sys.executable, prefix=PREFIX) as inventory):
        (directory / "authorized_keys").chmod(0o644)  # sshd reads it as the user who logs in
        # Ansible's modules keep the venv's Python; the experiment's own (netbench_python) is bare
        written = Path(inventory).read_text()
        data = json.loads(written[written.index("{"):])
        data["all"]["vars"]["netbench_python"] = str(bare_python(directory))
        data["all"]["vars"]["ansible_user"] = user
        Path(inventory).write_text(json.dumps(data, indent=2) + "\n")
        yield directory, inventory, user


def petals_netbench(lab_dir: Path, inventory: Path, *args: str, timeout: float = 900) -> tuple[dict, str]:
    """The runner's CLI inside the lab's controller namespace; returns its --json summary and output."""
    proc = subprocess.run(["ip", "netns", "exec", netns_lab.controller_netns(PREFIX), sys.executable, "-m",
                           "bench_client.orchestration.runner", "-i", str(inventory), "--json",
                           "-e", f"results_dir={lab_dir / 'results'}", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    start = proc.stdout.rfind("\n{\n")
    assert start >= 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[start:]), proc.stdout


def in_ns(host: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", f"{PREFIX}-{host}", *argv], capture_output=True, text=True,
                          check=True).stdout


def changed_per_host(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in output.splitlines():
        parts = line.split("]", 1)[-1].split()
        if len(parts) >= 2 and parts[0] in ("changed", "ok"):
            counts[parts[1]] = counts.get(parts[1], 0) + (parts[0] == "changed")
    return counts


def own_iperf_mbit(server: str, client: str, address: str) -> float:
    """The test's own measurement: iperf3 from ``client`` to ``server`` (both lab hosts)."""
    proc = subprocess.Popen(["ip", "netns", "exec", f"{PREFIX}-{server}", "iperf3", "-s", "-1", "-B", address,
                             "-p", "5299"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        time.sleep(0.5)
        report = json.loads(in_ns(client, "iperf3", "-J", "-c", address, "-p", "5299", "-t", "3", "-O", "1"))
        return report["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def test_emulated_swarm_shaped_idempotent_and_cleaned(lab):
    lab_dir, inventory, user = lab
    hosts = {h.name: h for h in netns_lab.lab_hosts(3, PREFIX)}
    try:
        profiles = json.dumps({"profiles": ["none", RATE_PROFILE]})
        summary, output = petals_netbench(lab_dir, inventory, "-e", profiles, *SWEEP)
        assert summary["rc"] == 0, output[-6000:]
        run_dir = Path(summary["results_dir"])
        assert sorted(p.parent.name for p in run_dir.glob("*/out.tsv")) == ["none", "rate20"]

        # every host got the controller's harness (a wheel, pip --target, a wrapper) and ran with it
        work = lab_dir / "work"
        for host in ("h1", "h2", "h3"):
            assert (work / host / "harness" / "python").is_file(), host
            assert list((work / host / "harness" / "site").glob("petals_netbench-*.dist-info")), host
        # the swarm was spread: the DHT and client on h1, one server on each of h2 and h3
        assert sorted(p.name for p in (work / "h1" / "run").glob("*.pid")) == ["dht.pid"]
        assert [p.name for p in (work / "h2" / "run").glob("*.pid")] == ["server0.pid"]
        assert [p.name for p in (work / "h3" / "run").glob("*.pid")] == ["server0.pid"]
        # ... and runs as the login user, not root (only the shaping became root), in its own work directories
        uid = pwd.getpwnam(user).pw_uid
        for pidfile in [work / "h1" / "run" / "dht.pid", work / "h2" / "run" / "server0.pid"]:
            pid = json.loads(pidfile.read_text())["pid"]
            assert Path(f"/proc/{pid}").stat().st_uid == uid, (pidfile, pid)
        assert all((work / host).stat().st_uid == uid for host in ("h1", "h2", "h3"))
        unshaped = [json.loads(x) for x in (run_dir / "none" / "out.jsonl").read_text().splitlines()]
        shaped = [json.loads(x) for x in (run_dir / "rate20" / "out.jsonl").read_text().splitlines()]
        assert all(r["status"] == "ok" and r["num_servers"] == 2 for r in unshaped + shaped)
        assert all(r["network"] is None for r in unshaped)
        # measured by the netem role (iperf3 between the shaped servers) and recorded with every row
        for row in shaped:
            assert row["network_profile"] == "rate20"
            for host in ("h2", "h3"):
                measured = row["network"]["hosts"][host]
                assert measured["qdisc"] == "tbf"
                assert 0.8 * RATE_MBIT <= measured["rate_mbit"] <= 1.05 * RATE_MBIT, measured

        # provisioning and shaping again: the first run shapes (and leaves the shaping on), the second
        # changes nothing; meanwhile our own iperf3 sees the limit (the role's own check ran above)
        keep = ["-t", "provision,shaping", "-e", json.dumps({"profiles": [RATE_PROFILE]}),
                "-e", "netbench_unshape=false", "-e", "netem_validate=false", *SWEEP]
        first, output = petals_netbench(lab_dir, inventory, *keep)
        assert first["rc"] == 0, output[-4000:]
        assert changed_per_host(output).get("h2", 0) > 0
        second, output = petals_netbench(lab_dir, inventory, *keep)
        assert second["rc"] == 0, output[-4000:]
        assert changed_per_host(output) == {"h1": 0, "h2": 0, "h3": 0}, output[-4000:]
        assert "tbf" in in_ns("h2", "tc", "qdisc", "show", "dev", "eth0")
        mbit = own_iperf_mbit("h1", "h2", hosts["h1"].address)
        assert 0.8 * RATE_MBIT <= mbit <= 1.05 * RATE_MBIT, mbit
        assert own_iperf_mbit("h2", "h1", hosts["h2"].address) > 5 * RATE_MBIT  # h1 is not shaped
    finally:
        cleanup, output = petals_netbench(lab_dir, inventory, "--cleanup")
    assert cleanup["rc"] == 0, output[-4000:]

    for name, host in hosts.items():
        assert netns_lab.our_qdiscs(host.netns) == [], name
        assert netns_lab.settled_leftovers(host) == ({}, []), name
