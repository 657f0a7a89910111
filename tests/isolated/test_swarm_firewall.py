"""The swarm_firewall role on a real host: three network namespaces made by the test (the swarm host
running a real DHT on a fixed port, an inventory peer, an outsider), the role applied inside the
swarm host's namespace with a local connection. The peer and loopback reach the DHT port, the
outsider does not; a second run changes nothing; state=absent removes exactly the role's table."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from localswarm import group_members

pytestmark = [pytest.mark.root, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK_BIN = Path(sys.executable).with_name("ansible-playbook")
DHT_PORT = 31337
SUBNET = "10.231"  # only inside the namespaces this test makes


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def in_ns(ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *args, **kw)


@pytest.fixture
def lab(tmp_path):
    tag = f"{os.getpid() % 100000}"
    host, peer, outsider = f"nbfw-h{tag}", f"nbfw-p{tag}", f"nbfw-o{tag}"
    made: list[str] = []
    try:
        for ns in (host, peer, outsider):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        for index, other in ((1, peer), (2, outsider)):
            sh("ip", "link", "add", f"fw{index}", "netns", host, "type", "veth", "peer", "name", "eth0", "netns", other)
            in_ns(host, "ip", "addr", "add", f"{SUBNET}.{index}.1/24", "dev", f"fw{index}")
            in_ns(host, "ip", "link", "set", f"fw{index}", "up")
            in_ns(other, "ip", "addr", "add", f"{SUBNET}.{index}.2/24", "dev", "eth0")
            in_ns(other, "ip", "link", "set", "eth0", "up")
        yield {"host": host, "peer": peer, "outsider": outsider, "dir": tmp_path}
    finally:
        for ns in made:  # deleting a namespace deletes its veths and its nftables tables
            sh("ip", "netns", "del", ns, check=False)


def start_dht(lab) -> subprocess.Popen:
    address_file = lab["dir"] / "dht.maddrs"
    log = open(lab["dir"] / "dht.log", "wb")
    dht = subprocess.Popen(["ip", "netns", "exec", lab["host"], sys.executable, "-m", "bench_client.swarm.dht",
                            "--port", str(DHT_PORT), "--address-file", str(address_file)],
                           stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 90
    while not address_file.exists():
        assert dht.poll() is None and time.monotonic() < deadline, (lab["dir"] / "dht.log").read_text()[-2000:]
        time.sleep(0.2)
    return dht


def stop(process: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 10
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_members(process.pid):
            break
    process.wait(timeout=5)


def connects(ns: str, address: str, port: int = DHT_PORT) -> bool:
    probe = ("import socket,sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
             "except OSError:\n    sys.exit(1)\n")
    return in_ns(ns, sys.executable, "-c", probe, address, str(port), check=False).returncode == 0


def apply_role(lab, state: str, *extra: str) -> tuple[int, int, str]:
    inventory = lab["dir"] / "hosts.yml"
    inventory.write_text(textwrap.dedent(f"""\
        all:
          vars:
            ansible_python_interpreter: {sys.executable}
            netbench_dht_port: {DHT_PORT}
          hosts:
            swarmhost: {{ansible_host: {SUBNET}.1.1, ansible_connection: local}}
            peer: {{ansible_host: {SUBNET}.1.2}}
        """))
    playbook = lab["dir"] / "firewall.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Swarm firewall
          hosts: swarmhost
          gather_facts: false
          roles:
            - role: swarm_firewall
        """))
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1"}
    result = subprocess.run(["ip", "netns", "exec", lab["host"], str(PLAYBOOK_BIN), "-i", str(inventory),
                             str(playbook), "-e", f"swarm_firewall_state={state}", *extra],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    recap = re.search(r"swarmhost\s*:\s*ok=(\d+)\s+changed=(\d+)", result.stdout)
    assert recap, result.stdout[-3000:] + result.stderr[-2000:]
    return result.returncode, int(recap.group(2)), result.stdout


def table_exists(lab) -> bool:
    return in_ns(lab["host"], "nft", "list", "table", "inet", "netbench", check=False).returncode == 0


def test_only_inventory_hosts_reach_the_swarm_ports(lab):
    host_on_peer, host_on_outsider = f"{SUBNET}.1.1", f"{SUBNET}.2.1"
    dht = start_dht(lab)
    try:
        # without the firewall everyone reaches the DHT: the checks below can fail
        assert connects(lab["outsider"], host_on_outsider) and connects(lab["peer"], host_on_peer)
        # other tables of the host are left alone: one of "ours" and one of "theirs"
        in_ns(lab["host"], "nft", "add", "table", "inet", "someone_else")

        rc, changed, out = apply_role(lab, "present", "--check")
        assert rc == 0 and changed == 1 and not table_exists(lab), out[-3000:]
        rc, changed, out = apply_role(lab, "present")
        assert rc == 0 and changed == 1, out[-3000:]
        rules = in_ns(lab["host"], "nft", "list", "table", "inet", "netbench").stdout
        assert f"{SUBNET}.1.2" in rules and str(DHT_PORT) in rules, rules

        assert connects(lab["peer"], host_on_peer), "an inventory host must reach the DHT"
        assert connects(lab["host"], "127.0.0.1"), "loopback must reach the DHT"
        assert not connects(lab["outsider"], host_on_outsider), "a host outside the inventory reached the DHT"
        counters = in_ns(lab["host"], "nft", "list", "chain", "inet", "netbench", "input").stdout
        assert re.search(r"counter packets [1-9]\d* bytes \d+ drop", counters), counters

        rc, changed, out = apply_role(lab, "present")
        assert rc == 0 and changed == 0, f"second run must change nothing:\n{out[-3000:]}"

        rc, changed, out = apply_role(lab, "absent")
        assert rc == 0 and changed == 1 and not table_exists(lab), out[-3000:]
        assert in_ns(lab["host"], "nft", "list", "table", "inet", "someone_else", check=False).returncode == 0
        assert connects(lab["outsider"], host_on_outsider), "after removal the port is open again"
        rc, changed, out = apply_role(lab, "absent")
        assert rc == 0 and changed == 0, out[-3000:]
    finally:
        stop(dht)
    assert dht.returncode is not None


def test_port_zero_and_no_allowed_address_are_refused(lab):
    rc, changed, out = apply_role(lab, "present", "-e", '{"swarm_firewall_ports": [0]}')
    assert rc != 0 and changed == 0 and "needs at least one TCP port in 1-65535" in out, out[-3000:]
    rc, changed, out = apply_role(lab, "present", "-e", '{"swarm_firewall_allowed_addresses": ["10.231.1.2/99"]}')
    assert rc != 0 and changed == 0 and not table_exists(lab), out[-3000:]
    assert "nft refuses the rules" in out and "Prefix length 99 is invalid" in out, out[-3000:]
