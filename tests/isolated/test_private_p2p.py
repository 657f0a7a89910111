"""A private swarm sends nothing beyond its own hosts (root): a real DHT launcher runs in a fresh network
namespace that has only lo and a veth pair (both ends inside it) with a default route (where NAT port mapping's SSDP
multicast and NAT-PMP would go), every frame leaving through it is captured, and none is UDP to
port 1900 (SSDP/UPnP) or 5351 (NAT-PMP); p2pd's command line has port mapping, AutoNAT and relays off."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_client.core.processes import descendants, terminate

pytestmark = pytest.mark.root
NS = f"safetyp2p{os.getpid() % 10000}"
CAPTURE = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("d0", 0)); s.settimeout(0.5)
end, seen = time.monotonic() + float(sys.argv[1]), []
print("ready", flush=True)
while time.monotonic() < end:
    try:
        frame = s.recv(65535)
    except socket.timeout:
        continue
    if struct.unpack("!H", frame[12:14])[0] != 0x0800 or frame[23] != 17:
        continue  # IPv4 UDP only
    ihl = (frame[14] & 15) * 4
    seen.append(struct.unpack("!H", frame[14 + ihl + 2:14 + ihl + 4])[0])
print("udp-ports", *seen, flush=True)
"""


def ns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *argv]


@pytest.fixture
def namespace():
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                    ["ip", "link", "set", "d1", "up"],
                    ["ip", "addr", "add", "10.231.77.2/24", "dev", "d0"], ["ip", "link", "set", "d0", "up"],
                    ["ip", "route", "add", "default", "via", "10.231.77.1"]):
            subprocess.run(ns(*cmd), check=True)
        yield NS
    finally:
        subprocess.run(["ip", "netns", "delete", NS], check=False)


def test_dht_sends_no_nat_port_mapping_and_runs_p2pd_private(namespace, tmp_path):
    capture = subprocess.Popen(ns(sys.executable, "-c", CAPTURE, "25"), stdout=subprocess.PIPE, text=True)
    assert capture.stdout is not None and capture.stdout.readline().strip() == "ready"
    address = tmp_path / "dht.maddrs"
    dht = subprocess.Popen(ns(sys.executable, "-m", "bench_client.swarm.dht", "--address-file", str(address),
                              "--host-maddrs", "/ip4/0.0.0.0/tcp/0"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        deadline = time.monotonic() + 60
        while not address.exists() and time.monotonic() < deadline and dht.poll() is None:
            time.sleep(0.2)
        assert address.exists(), "the DHT did not come up"
        flags = [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in descendants([dht.pid])]
        p2pd = [[a.decode() for a in f] for f in flags if f and f[0].endswith(b"p2pd")]
        assert p2pd, "no p2pd under the DHT"
        for argv in p2pd:  # one, the DHT node's (petals' run_dht started two: it also ran a reachability probe)
            for off in ("-natPortMap=0", "-autonat=0", "-relay=0", "-autoRelay=0"):
                assert off in argv, (off, argv)
        out, _ = capture.communicate(timeout=60)  # the DHT's first 20+ s: port mapping starts at once
    finally:
        terminate(dht.pid, timeout=10)
        capture.kill()
    ports = [int(p) for p in out.split()[1:]]
    assert not {1900, 5351} & set(ports), f"UDP sent to {sorted(set(ports))} beyond the experiment"
