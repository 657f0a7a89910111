"""Debian VMs with a real netem kernel, as Ansible hosts reached over real ssh, for tests.

Each cluster lives in a network namespace the test creates (its traffic cannot leave it): a
management bridge (10.201.0.0/24, the controller is .1, ssh and Ansible go there, never shaped)
and a data bridge (10.202.0.0/24, VM to VM only: the interface the tests shape, eth1 in the VMs).
The VMs boot the image of build-image.sh under qemu TCG (this machine has no KVM) from throwaway
qcow2 overlays. Everything started here is stopped by PID: qemu processes by process group, ssh
control masters by `ssh -O exit`.

Use from a test module: the fixture `vm_cluster` (tests/isolated/conftest.py), a 2-VM VMCluster booted
once for every module that asks for it (each module gets it whole: a VM a test killed is booted again),
or a VMCluster of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("NETBENCH_VM_CACHE", "/var/cache/netbench-vm"))
MGMT_NET, DATA_NET = "10.201.0", "10.202.0"
DATA_INTERFACE = "eth1"  # in the guest: eth0 = management (ssh), eth1 = data
QEMU = "qemu-system-x86_64"


def build_image() -> Path:
    """The cached VM base (built by build-image.sh, minutes the first time, instant afterwards)."""
    subprocess.run(["bash", str(REPO / "tests" / "vm" / "build-image.sh")], check=True, timeout=1200)
    return CACHE


@dataclass
class VM:
    name: str
    index: int
    proc: subprocess.Popen
    console: Path

    @property
    def mgmt_ip(self) -> str:
        return f"{MGMT_NET}.{10 + self.index}"

    @property
    def data_ip(self) -> str:
        return f"{DATA_NET}.{10 + self.index}"


class VMCluster:
    _made = 0  # clusters of this process: each gets its own namespace (the shared one may still run)

    def __init__(self, count: int = 2, memory_mb: int = 512, workdir: Path | None = None) -> None:
        self.count = count
        self.memory_mb = memory_mb
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="netbench-vm-"))
        VMCluster._made += 1
        self.netns = f"nbvm{os.getpid()}-{VMCluster._made}"
        self.control_dir = self.workdir / "cp"  # fresh per cluster: stale masters hung runs before
        self.vms: list[VM] = []
        # extra inventory groups, e.g. {"servers": ["vm1", "vm2"], "clients": ["vm1"]} for site.yml's plays
        self.groups: dict[str, list[str]] = {}
        self._netns_made = False

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self, boot_timeout: float = 180) -> VMCluster:
        self.control_dir.mkdir(parents=True, exist_ok=True)
        self._network()
        for i in range(1, self.count + 1):
            self.vms.append(self._boot(i))
        deadline = time.monotonic() + boot_timeout
        for vm in self.vms:
            self._wait_ssh(vm, deadline)
        return self

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.netns, *args], check=True, timeout=30)

    def _network(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=30)
        self._netns_made = True
        self._ip("link", "set", "lo", "up")
        for bridge, addr in (("nbmgmt", f"{MGMT_NET}.1/24"), ("nbdata", None)):
            self._ip("link", "add", bridge, "type", "bridge")
            if addr:
                self._ip("addr", "add", addr, "dev", bridge)
            self._ip("link", "set", bridge, "up")
        for i in range(1, self.count + 1):
            for tap, bridge in ((f"tapm{i}", "nbmgmt"), (f"tapd{i}", "nbdata")):
                self._ip("tuntap", "add", "dev", tap, "mode", "tap")
                self._ip("link", "set", tap, "master", bridge)
                self._ip("link", "set", tap, "up")

    def _boot(self, i: int) -> VM:
        name = f"vm{i}"
        overlay = self.workdir / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(CACHE / "base.img"),
                        str(overlay)], check=True, timeout=60)
        console = self.workdir / f"{name}.console"
        append = (f"console=ttyS0 quiet panic=-1 nb.hostname={name} nb.eth0={MGMT_NET}.{10 + i}/24 "
                  f"nb.eth1={DATA_NET}.{10 + i}/24")
        cmd = [
            "ip", "netns", "exec", self.netns, QEMU,
            "-accel", "tcg,thread=multi,tb-size=256", "-smp", "1", "-m", str(self.memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot", "-bios", "/usr/share/qemu/qboot.rom",
            "-serial", f"file:{console}",
            "-kernel", str(CACHE / "vmlinuz"), "-initrd", str(CACHE / "initrd.img"), "-append", append,
            "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
            "-netdev", f"tap,id=m,ifname=tapm{i},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=m,mac=52:54:00:01:00:{i:02x},romfile=,addr=0x3",
            "-netdev", f"tap,id=d,ifname=tapd{i},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=d,mac=52:54:00:02:00:{i:02x},romfile=,addr=0x4",
        ]
        log = open(self.workdir / f"{name}.qemu.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        return VM(name, i, proc, console)

    def _wait_ssh(self, vm: VM, deadline: float) -> None:
        while time.monotonic() < deadline:
            if vm.proc.poll() is not None:
                raise RuntimeError(f"{vm.name}: qemu exited ({vm.proc.returncode}): {self.console_tail(vm)}")
            if self.ssh(vm, "true", timeout=15, check=False).returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError(f"{vm.name}: no ssh at {vm.mgmt_ip} in time: {self.console_tail(vm)}")

    def console_tail(self, vm: VM, chars: int = 1500) -> str:
        try:
            return vm.console.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no console output)"

    def _close_masters(self) -> None:
        for sock in self.control_dir.glob("*"):
            subprocess.run(["ip", "netns", "exec", self.netns, "ssh", "-o", f"ControlPath={sock}", "-O", "exit",
                            "dummy"], capture_output=True, timeout=15, check=False)

    @staticmethod
    def _stop(vm: VM, sig: signal.Signals = signal.SIGTERM) -> None:
        if vm.proc.poll() is None:
            os.killpg(vm.proc.pid, sig)
            try:
                vm.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(vm.proc.pid, signal.SIGKILL)
                vm.proc.wait(timeout=10)

    def kill(self, vm: VM) -> None:
        """The host vanishes: qemu killed by its process group, no shutdown, no goodbye on the wire."""
        self._stop(vm, signal.SIGKILL)

    def restart(self, vm: VM, boot_timeout: float = 180) -> VM:
        """Boot ``vm`` again from a fresh overlay (after kill()), so later tests get a whole cluster."""
        self._stop(vm)
        self._close_masters()  # a master to the dead VM would hang the next ssh
        fresh = self._boot(vm.index)
        self.vms[self.vms.index(vm)] = fresh
        self._wait_ssh(fresh, time.monotonic() + boot_timeout)
        return fresh

    def make_whole(self, boot_timeout: float = 180) -> list[str]:
        """Boot again every VM whose qemu is gone or whose ssh no longer answers (a test that killed one
        and failed before its own restart); returns their names. The extra groups are reset."""
        self.groups = {}
        rebooted = []
        for vm in list(self.vms):
            if vm.proc.poll() is None and self.ssh(vm, "true", timeout=15, check=False).returncode == 0:
                continue
            self.kill(vm)
            self.restart(vm, boot_timeout)
            rebooted.append(vm.name)
        return rebooted

    def close(self) -> None:
        # Control masters first (a master to a killed VM hangs the next run), then the VMs.
        self._close_masters()
        for vm in self.vms:
            self._stop(vm)
        if self._netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], timeout=30, check=False)
            self._netns_made = False
        for overlay in self.workdir.glob("*.qcow2"):
            overlay.unlink()

    # --- access ---------------------------------------------------------------------------------
    def ssh_options(self) -> list[str]:
        return ["-i", str(CACHE / "id_ed25519"), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "BatchMode=yes",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                "-o", "ControlMaster=auto", "-o", "ControlPersist=300",
                "-o", f"ControlPath={self.control_dir}/t-%r@%h:%p"]

    def ssh(self, vm: VM, command: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ip", "netns", "exec", self.netns, "ssh", *self.ssh_options(), f"root@{vm.mgmt_ip}",
                               command], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{vm.name}: `{command}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def qdiscs(self, vm: VM, interface: str = DATA_INTERFACE) -> list[dict]:
        return json.loads(self.ssh(vm, f"tc -j qdisc show dev {interface}").stdout)

    def our_qdiscs(self, vm: VM, interface: str = DATA_INTERFACE) -> list[dict]:
        """The netem role's qdiscs (root handle 4e54:, its ssh-bypass child 4e55:)."""
        return [q for q in self.qdiscs(vm, interface) if q.get("handle") in ("4e54:", "4e55:")]

    def deadman_running(self, vm: VM, interface: str = DATA_INTERFACE) -> bool:
        out = self.ssh(vm, f"pid=$(cat /run/netem/deadman-{interface}.pid 2>/dev/null) && "
                           "grep -qs netem-deadman /proc/$pid/cmdline && echo yes || echo no").stdout
        return out.strip() == "yes"

    def inventory(self, extra_vars: dict | None = None) -> Path:
        """An Ansible inventory of the VMs (JSON is YAML): group `vms`, the data NIC as netem_interface."""
        hosts = {vm.name: {"ansible_host": vm.mgmt_ip} for vm in self.vms}
        groups = {name: {"hosts": {h: None for h in members}} for name, members in self.groups.items()}
        data = {"all": {"children": {"vms": {"hosts": hosts}, **groups}, "vars": {
            "ansible_user": "root", "ansible_ssh_private_key_file": str(CACHE / "id_ed25519"),
            "ansible_python_interpreter": "/usr/bin/python3", "netem_interface": DATA_INTERFACE,
            **(extra_vars or {})}}}
        path = self.workdir / "inventory.yml"
        path.write_text(json.dumps(data, indent=1))
        return path

    def ansible_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=120s -o ServerAliveInterval=5 "
                                "-o ServerAliveCountMax=3 -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
        })
        return env

    def playbook_command(self, playbook: Path | str, *args: str, extra_vars: dict | None = None) -> list[str]:
        bin_dir = Path(sys.executable).parent
        cmd = ["ip", "netns", "exec", self.netns, str(bin_dir / "ansible-playbook"), "-i", str(self.inventory()),
               str(playbook), *args]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        return cmd

    def ansible_playbook(self, playbook: Path | str, *args: str, extra_vars: dict | None = None,
                         timeout: float = 400) -> subprocess.CompletedProcess:
        """Run a playbook against the VMs from inside the namespace; output kept for the assertions."""
        started = time.monotonic()
        proc = subprocess.run(self.playbook_command(playbook, *args, extra_vars=extra_vars), cwd=self.workdir,
                              env=self.ansible_env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)
        proc.wall_s = time.monotonic() - started  # type: ignore[attr-defined]
        return proc


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host: {'vm1': {'ok': 12, 'changed': 0, 'failed': 0, ...}}."""
    counts: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap and ":" in line and "=" in line:
            host, _, rest = line.partition(":")
            counts[host.strip()] = {k: int(v) for k, v in (kv.split("=") for kv in rest.split())}
    return counts
