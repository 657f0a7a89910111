"""An emulated multi-host cluster on one machine (root): every host a network namespace with its
own address and its own sshd, all on a bridge inside a controller namespace the lab owns.

    python -m bench_client.netem.lab up --dir /tmp/netbench-lab --hosts 3     # writes DIR/hosts.yml
    ip netns exec nbl-ctl petals-netbench -i /tmp/netbench-lab/hosts.yml -p none,paper-10ms-100mbit ...
    python -m bench_client.netem.lab down --dir /tmp/netbench-lab

Ansible runs inside the controller namespace (``nbl-ctl``) and reaches the hosts over real ssh; no
traffic leaves the namespaces the lab made. The first host plays the DHT and the client, the others
are servers (inventory/emulated/hosts.yml documents the layout). ``down`` stops every sshd by its
process group and deletes the namespaces (which removes their veths, qdiscs and sockets).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench_client.core.provenance import PROJECT_DIR
from bench_client.core.processes import Identity, stop_processes, terminate
from bench_client.core.arguments import description

PREFIX = os.environ.get("NETBENCH_LAB_PREFIX", "nbl")
SUBNET = os.environ.get("NETBENCH_LAB_SUBNET", "10.213.0")  # /24 inside the lab's own namespaces only
CONTROLLER_ADDRESS = f"{SUBNET}.1"
# router mode: the data network (eth1 of every host, through the netem router VM); ssh stays on eth0
DATA_SUBNET = os.environ.get("NETBENCH_LAB_DATA_SUBNET", "10.213.1")
_SAFE_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]{0,11}")


@dataclass(frozen=True)
class LabHost:
    name: str
    netns: str
    address: str


class LabError(RuntimeError):
    pass


def secure_dir(path: Path, create: bool = True) -> Path:
    """The lab directory, created by us with mode 0700, or an existing one that we own, that is no symlink
    and that nobody else may write (root writes keys, configs and the inventory there and runs what
    they name: a directory another user controls could redirect all of that)."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise LabError(f"lab directory {path} does not exist") from None
    if not stat.S_ISDIR(info.st_mode):
        raise LabError(f"lab directory {path} is not a directory (a symlink?); give a directory of your own")
    # others may enter it (a lab whose hosts log in as a non-root user: tests/isolated/test_site_emulated_ssh.py),
    # never write it
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise LabError(f"lab directory {path} belongs to uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):o}; "
                       f"it must be ours (uid {os.geteuid()}) and writable by no one else (the lab creates it 0700): "
                       "give a new path")
    return path


def write_file(lab_dir: Path, name: str, text: str, mode: int = 0o600) -> Path:
    """Write a file in the lab directory without following a symlink planted under its name."""
    dir_fd = os.open(lab_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return lab_dir / name


def _run(*argv: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess:
    if netns:
        argv = ("ip", "netns", "exec", netns, *argv)
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def lab_hosts(count: int, prefix: str = PREFIX) -> list[LabHost]:
    return [LabHost(f"h{i}", f"{prefix}-h{i}", f"{SUBNET}.{10 + i}") for i in range(1, count + 1)]


def controller_netns(prefix: str = PREFIX) -> str:
    return f"{prefix}-ctl"


SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd-{name}.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
MaxStartups 50
"""


def data_address(host: LabHost) -> str:
    """A host's address on the router's data network (router mode)."""
    return f"{DATA_SUBNET}.{host.address.rsplit('.', 1)[1]}"


def router_vars(lab_dir: Path, python: str) -> dict:
    """Inventory variables of router mode: swarm traffic on eth1 (through the router VM), the netem
    role shaping inside the router (its control CLI on the physical host, see docs/netem-router.md)."""
    return {"netem_interface": "eth1", "netem_backend": "router", "netem_router_dir": str(lab_dir / "router"),
            "netem_router_python": python, "netem_router_pythonpath": str(PROJECT_DIR)}


NSH = """#!/bin/sh
# Ansible's shell for lab host {name} (connection local): everything it runs runs in {netns}
exec ip netns exec {netns} /bin/sh "$@"
"""


def write_shell_wrappers(lab_dir: Path, hosts: list[LabHost]) -> None:
    """connection local: one shell per host that enters its namespace (no sshd needed)."""
    for host in hosts:
        path = write_file(lab_dir, f"nsh-{host.name}", NSH.format(name=host.name, netns=host.netns))
        path.chmod(0o755)


def write_inventory(lab_dir: Path, hosts: list[LabHost], python: str, servers_per_host: int = 1,
                    router: bool = False, connection: str = "ssh") -> Path:
    """hosts.yml for the lab: h1 runs the DHT and the client, the rest are shaped servers. With
    ``connection`` local, Ansible runs in the machine's own namespace and enters each host's
    namespace through its shell (ansible_shell_executable): no sshd, no controller namespace."""
    ctl = secure_dir(lab_dir / "cp")
    ssh_args = (f"-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o ControlMaster=auto "
                f"-o ControlPersist=30s -o ControlPath={ctl}/%C -o ServerAliveInterval=5 -o ServerAliveCountMax=3")
    host_vars = {h.name: {"ansible_host": h.address, "netbench_address": data_address(h) if router else h.address}
                 for h in hosts}
    if router:
        for index, h in enumerate(hosts, start=1):
            host_vars[h.name]["netem_router_link"] = index
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(lab_dir / "id_ed25519"),
                "ansible_ssh_common_args": ssh_args,
                "ansible_python_interpreter": python,
                "netbench_python": python,
                "netbench_workdir": str(lab_dir / "work" / "{{ inventory_hostname }}"),
                "netbench_device": "cpu",
                "netbench_runtime": "process",
                "netbench_shaping": True,
                "netbench_servers_per_host": servers_per_host,
                "netem_interface": "eth0",
                # namespaces share the machine's /run: keep each host's netem state apart
                "netem_state_dir": str(lab_dir / "netem" / "{{ inventory_hostname }}"),
            },
            "hosts": host_vars,
            "children": {
                "dht": {"hosts": {hosts[0].name: None}},
                "clients": {"hosts": {hosts[0].name: None}},
                "servers": {"hosts": {h.name: None for h in hosts[1:]}},
            },
        }
    }
    if router:
        inventory["all"]["vars"].update(router_vars(lab_dir, python))
    if connection == "local":
        for name in ("ansible_user", "ansible_ssh_private_key_file", "ansible_ssh_common_args"):
            del inventory["all"]["vars"][name]
        inventory["all"]["vars"]["ansible_connection"] = "local"
        for h in hosts:
            host_vars[h.name]["ansible_shell_executable"] = str(lab_dir / f"nsh-{h.name}")
    return write_file(lab_dir, "hosts.yml",
                      "# written by python -m bench_client.netem.lab up\n" + json.dumps(inventory, indent=2) + "\n")


def up(lab_dir: Path, count: int = 3, python: str = sys.executable, servers_per_host: int = 1,
       prefix: str = PREFIX, router_bundle: Path | None = None, connection: str = "ssh", router_smp: int = 2) -> Path:
    """Create the namespaces, the bridge, one sshd per host; return the inventory path. With
    ``router_bundle`` the hosts also get eth1 on a data network through a netem router VM (qemu in
    the controller namespace), which carries the swarm's traffic and its shaping. ``connection``
    local starts no sshd (hosts without one, e.g. the GPU hosts): see write_inventory."""
    if connection not in ("ssh", "local"):
        raise ValueError(f"connection {connection!r}: ssh or local")
    if count < 2:
        raise ValueError("the lab needs at least 2 hosts (one DHT/client, one server)")
    if router_bundle is not None and not (router_bundle / "bin" / "qemu").exists():
        raise ValueError(f"{router_bundle} is not a netem router bundle (tools/netem-router/build-bundle.sh builds one)")
    secure_dir(lab_dir)
    identity = Identity.new()  # every sshd (and what runs under it) carries it; down signals only those
    state = {"prefix": prefix, "hosts": [], "created_run_sshd": False, "boot_id": identity.boot_id,
             "token": identity.token, "router": bool(router_bundle)}

    def save() -> None:
        write_file(lab_dir, "lab.json", json.dumps(state))

    save()
    if connection == "ssh" and not (lab_dir / "id_ed25519").exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(lab_dir / "id_ed25519"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(lab_dir / "ssh_host_ed25519_key"))
    if connection == "ssh":
        write_file(lab_dir, "authorized_keys", (lab_dir / "id_ed25519.pub").read_text())
    if connection == "ssh" and not Path("/run/sshd").exists():  # sshd's privilege separation directory
        Path("/run/sshd").mkdir(mode=0o755)
        state["created_run_sshd"] = True
    ctl = controller_netns(prefix)
    _run("ip", "netns", "add", ctl)
    state["controller"] = ctl
    save()
    _run("ip", "link", "set", "lo", "up", netns=ctl)
    _run("ip", "link", "add", "br0", "type", "bridge", netns=ctl)
    _run("ip", "addr", "add", f"{CONTROLLER_ADDRESS}/24", "dev", "br0", netns=ctl)
    _run("ip", "link", "set", "br0", "up", netns=ctl)
    for host in lab_hosts(count, prefix):
        _run("ip", "netns", "add", host.netns)
        state["hosts"].append({"name": host.name, "netns": host.netns, "address": host.address})
        save()
        peer = f"v{host.name}"
        # create the pair inside the controller namespace, then move one end into the host
        _run("ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", host.netns, netns=ctl)
        _run("ip", "link", "set", peer, "master", "br0", netns=ctl)
        _run("ip", "link", "set", peer, "up", netns=ctl)
        _run("ip", "link", "set", "lo", "up", netns=host.netns)
        _run("ip", "addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
        _run("ip", "link", "set", "eth0", "up", netns=host.netns)
        if connection == "local":
            continue
        config = write_file(lab_dir, f"sshd-{host.name}.conf",
                            SSHD_CONFIG.format(address=host.address, dir=lab_dir, name=host.name))
        write_file(lab_dir, f"sshd-{host.name}.log", "")
        with open(lab_dir / f"sshd-{host.name}.log", "ab") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", host.netns, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, **identity.env()})
        state["hosts"][-1]["sshd_pgid"] = proc.pid
        save()
    if router_bundle is not None:
        start_router(lab_dir, router_bundle, lab_hosts(count, prefix), ctl, prefix, router_smp)
    inventory = write_inventory(lab_dir, lab_hosts(count, prefix), python, servers_per_host, router_bundle is not None,
                                connection)
    if connection == "local":
        write_shell_wrappers(lab_dir, lab_hosts(count, prefix))
    else:
        wait_for_ssh(lab_dir, lab_hosts(count, prefix), ctl)
    return inventory


def start_router(lab_dir: Path, bundle: Path, hosts: list[LabHost], ctl: str, prefix: str, smp: int = 2) -> None:
    """Boot the router VM with one NIC per host; its tap becomes the host's eth1."""
    from bench_client.netem import router as netem_router

    links = {index: h.netns for index, h in enumerate(hosts, start=1)}
    router = netem_router.up(lab_dir / "router", bundle.resolve(), links, netns=ctl, prefix=prefix, smp=smp)
    for index, host in enumerate(hosts, start=1):
        tap = router.state()["taps"][str(index)]
        _run("ip", "link", "set", tap, "name", "eth1", netns=host.netns)
        _run("ip", "addr", "add", f"{data_address(host)}/24", "dev", "eth1", netns=host.netns)
        _run("ip", "link", "set", "eth1", "up", netns=host.netns)


def wait_for_ssh(lab_dir: Path, hosts: list[LabHost], ctl: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for host in hosts:
        while True:
            probe = _run("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                         "-o", "ConnectTimeout=3", "-i", str(lab_dir / "id_ed25519"), f"root@{host.address}", "true",
                         check=False, netns=ctl)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                log = (lab_dir / f"sshd-{host.name}.log").read_text(errors="replace")[-800:]
                raise RuntimeError(f"sshd on {host.name} ({host.address}) not reachable: {probe.stderr.strip()}\n{log}")
            time.sleep(0.3)


def namespace_pids(netns: str) -> list[int]:
    out = _run("ip", "netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def down(lab_dir: Path) -> None:
    """Undo ``up``: close ssh masters, stop sshds by process group, delete the namespaces.

    Only in a lab directory of ours (lab.json is trusted no further than its directory), and even then
    it deletes only namespaces named with the lab's prefix and signals only processes that carry the
    identity recorded at ``up``."""
    try:
        secure_dir(lab_dir, create=False)
        state = json.loads(_read_file(lab_dir, "lab.json"))
    except (OSError, ValueError):
        return
    prefix = str(state.get("prefix") or PREFIX)
    if not _SAFE_PREFIX.fullmatch(prefix):
        raise LabError(f"{lab_dir}/lab.json names prefix {prefix!r}; refusing to act on it")
    identity = Identity(str(state.get("boot_id", "")), str(state.get("token", "")))
    ctl = state.get("controller")
    named = [ctl] if ctl else []
    named += [str(h.get("netns")) for h in state.get("hosts", [])]
    foreign = [ns for ns in named if not ns.startswith(f"{prefix}-")]
    if foreign:
        raise LabError(f"{lab_dir}/lab.json names namespaces {foreign} outside the lab's prefix {prefix}-; "
                       "refusing to act on it")
    if state.get("router"):
        from bench_client.netem import router as netem_router

        netem_router.down(lab_dir / "router")  # qemu by its process group; its taps die with it
    for sock in (lab_dir / "cp").glob("*") if (lab_dir / "cp").exists() else []:
        _run("ssh", "-o", f"ControlPath={sock}", "-O", "exit", "lab", check=False)
    for host in state.get("hosts", []):
        if host.get("sshd_pgid"):
            terminate(int(host["sshd_pgid"]), timeout=10.0, identity=identity)
        # what still runs inside a namespace of the lab (its prefix, checked above) was started by the lab
        # or its tests; each is signalled with its start time checked (no PID reuse)
        stop_processes(lambda ns=host["netns"]: namespace_pids(ns), timeout=2.0)
        _run("ip", "netns", "delete", host["netns"], check=False)
    if ctl:
        _run("ip", "netns", "delete", ctl, check=False)
    if state.get("created_run_sshd"):
        try:
            Path("/run/sshd").rmdir()
        except OSError:
            pass
    (lab_dir / "lab.json").unlink(missing_ok=True)


def _read_file(lab_dir: Path, name: str, limit: int = 1 << 20) -> str:
    dir_fd = os.open(lab_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    with os.fdopen(fd) as handle:
        return handle.read(limit)


@contextmanager
def lab(lab_dir: Path, count: int = 3, python: str = sys.executable, prefix: str = PREFIX,
        router_bundle: Path | None = None, connection: str = "ssh") -> Iterator[Path]:
    """``up`` for the body of a ``with`` (yields the inventory), ``down`` after it, even on failure;
    checks that no namespace of the lab is left."""
    try:
        yield up(lab_dir, count=count, python=python, prefix=prefix, router_bundle=router_bundle,
                 connection=connection)
    finally:
        down(lab_dir)
    left = [ns for ns in _run("ip", "netns", "list").stdout.split() if ns.startswith(f"{prefix}-")]
    if left:
        raise RuntimeError(f"namespaces of the lab left behind: {left}")


# What the netem role puts on a link: its root qdisc (handle 4e54:), tbf/htb for a rate, netem.
OUR_QDISC_MARKS = ("4e54", "tbf", "htb", "netem")


def our_qdiscs(netns: str, dev: str = "eth0") -> list[str]:
    """The qdisc lines of ours on ``dev`` in ``netns`` ([] when the link is unshaped)."""
    out = _run("tc", "qdisc", "show", "dev", dev, netns=netns).stdout
    return [line for line in out.splitlines() if any(mark in line for mark in OUR_QDISC_MARKS)]


def leftovers(host: LabHost) -> tuple[dict[int, str], list[str]]:
    """What runs in a lab host besides its sshd: {pid: command line} and listening sockets but ssh's."""
    commands = {}
    for pid in namespace_pids(host.netns):
        try:
            commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
    processes = {pid: c for pid, c in commands.items() if "sshd" not in c}
    listening = [line for line in _run("ss", "-Hltun", netns=host.netns).stdout.splitlines()
                 if line.strip() and not line.split()[4].endswith(":22")]
    return processes, listening


def settled_leftovers(host: LabHost, timeout: float = 15.0) -> tuple[dict[int, str], list[str]]:
    """leftovers() once nothing is left, or after ``timeout``: Ansible's async_wrapper, the parent of a
    client's `daemon run` that a cleanup stopped, exits on its own poll (every 5 s), not at once."""
    deadline = time.monotonic() + timeout
    while (found := leftovers(host)) != ({}, []) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench_client.netem.lab", description=description(__doc__))
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, required=True, help="lab state: keys, sshd configs, hosts.yml")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--servers-per-host", type=int, default=1)
    parser.add_argument("--python", default=sys.executable, help="Python with bench_client, used on every host")
    parser.add_argument("--router-vm", type=Path, metavar="BUNDLE_DIR",
                        help="route the hosts' data traffic through a netem router VM of this bundle (docs/netem-router.md)")
    parser.add_argument("--router-smp", type=int, default=2, help="vCPUs of the router VM (multi-threaded TCG)")
    parser.add_argument("--connection", choices=["ssh", "local"], default="ssh",
                        help="local: no sshd; Ansible enters each namespace through a shell wrapper")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the lab needs root (network namespaces, sshd)", file=sys.stderr)
        return 2
    if args.action == "up":
        try:
            print(up(args.dir, args.hosts, args.python, args.servers_per_host, router_bundle=args.router_vm,
                     connection=args.connection, router_smp=args.router_smp))
        except LabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (RuntimeError, ValueError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            print(f"error: {exc} {detail}".strip(), file=sys.stderr)
            down(args.dir)
            return 2
    else:
        try:
            down(args.dir)
        except LabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
