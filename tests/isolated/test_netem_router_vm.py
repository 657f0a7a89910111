"""The netem router VM (bench_client.netem.router, tools/netem-router/): its pure functions without a
kernel, then the real router (Debian's cloud kernel under qemu TCG, built by build-bundle.sh) between
two network namespaces of this machine, whose own kernel has no sch_netem: forwarding rate and RTT
unshaped, a paper profile applied and changed through the control channel while the router runs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench_client.netem import profiles as netem
from bench_client.netem import router as netem_router
from bench_client.netem.router import RouterError

ROOT = Path(__file__).resolve().parents[2]
# `tc -j qdisc show dev ifb01` in the router after shaping with paper-10ms-100mbit (recorded there).
IFB_10MS_100MBIT = json.dumps([{
    "kind": "netem", "handle": "4e54:", "root": True, "refcnt": 2,
    "options": {"limit": 22500, "delay": {"delay": 0.01, "jitter": 0, "correlation": 0},
                "rate": {"rate": 12500000, "packetoverhead": 0, "cellsize": 0, "celloverhead": 0},
                "ecn": False, "gap": 0}}])
PAPER = netem.PAPER_PROFILES


def test_names_follow_the_link_index() -> None:
    assert (netem_router.nic_name(2), netem_router.ifb_name(2), netem_router.mac(12)) == ("n02", "ifb02",
                                                                                        "52:54:00:4e:00:12")
    with pytest.raises(RouterError, match="outside"):
        netem_router.nic_name(100)
    with pytest.raises(RouterError, match="15 characters"):
        netem_router.tap_name("a-very-long-prefix", 1)


def test_first_shaping_creates_ifb_redirect_and_netem() -> None:
    commands = netem_router.shape_commands(1, PAPER["paper-10ms-1gbit"], None, ingress_present=False)
    assert commands == [
        ["ip", "link", "add", "ifb01", "type", "ifb"], ["ip", "link", "set", "ifb01", "up"],
        ["tc", "qdisc", "add", "dev", "n01", "handle", "ffff:", "ingress"],
        ["tc", "filter", "add", "dev", "n01", "parent", "ffff:", "protocol", "all", "prio", "1", "matchall",
         "action", "mirred", "egress", "redirect", "dev", "ifb01"],
        ["tc", "qdisc", "add", "dev", "ifb01", "root", "handle", "4e54:", "netem", "delay", "10ms", "rate", "1gbit",
         "limit", "225000"],
    ]


def test_changing_profile_replaces_only_the_netem_and_same_profile_is_a_no_op() -> None:
    empty_ifb = '[{"kind":"noqueue","handle":"0:","root":true,"options":{}}]'
    assert netem_router.shape_commands(3, PAPER["paper-10ms-100mbit"], empty_ifb, ingress_present=True) == [
        ["tc", "qdisc", "add", "dev", "ifb03", "root", "handle", "4e54:", "netem", "delay", "10ms", "rate",
         "100mbit", "limit", "22500"]]
    assert netem_router.shape_commands(1, PAPER["paper-10ms-100mbit"], IFB_10MS_100MBIT, True) == []
    change = netem_router.shape_commands(1, PAPER["paper-100ms-100mbit"], IFB_10MS_100MBIT, True)
    assert change[0] == ["tc", "qdisc", "del", "dev", "ifb01", "root"]
    assert change[1][-6:] == ["delay", "100ms", "rate", "100mbit", "limit", "2250000"]
    # none: the redirect and the ifb go (with the netem on it): the link is as the router booted
    assert netem_router.shape_commands(1, None, IFB_10MS_100MBIT, True) == [
        ["tc", "qdisc", "del", "dev", "n01", "handle", "ffff:", "ingress"], ["ip", "link", "del", "ifb01"]]
    assert netem_router.shape_commands(1, None, None, False) == []


def test_requests_are_checked_before_sending() -> None:
    assert netem_router.encode_request("ab12", ["tc", "qdisc", "show", "dev", "n01"]) == b"ab12 tc qdisc show dev n01\n"
    assert netem_router.encode_request("ab12", ["uname", "-r"]) == b"ab12 uname -r\n"  # the shaping kernel
    for bad in (["sh", "-c", "reboot"], ["tc", "qdisc;reboot"], ["ip", "link", "$(x)"], ["tc", ""], []):
        with pytest.raises(RouterError):
            netem_router.encode_request("ab12", bad)


def test_reply_parsing_waits_for_its_terminator_and_drops_older_replies() -> None:
    assert netem_router.parse_reply("partial output\n@@nb ab12", "ab12") is None
    assert netem_router.parse_reply("line 1\nline 2\n@@nb ab12 0\n", "ab12") == (0, "line 1\nline 2\n")
    stale = "old output\n@@nb 0000 1\nnew output\n@@nb ab12 2\n"
    assert netem_router.parse_reply(stale, "ab12") == (2, "new output\n")
    assert netem_router.parse_reply("@@nb ab12 0\n", "ab12") == (0, "")


def test_qemu_command_line_has_one_nic_per_tap(tmp_path: Path) -> None:
    argv = netem_router.qemu_argv(tmp_path, {2: "nbrt2", 1: "nbrt1"}, tmp_path / "s", tmp_path / "c", smp=4)
    joined = " ".join(argv)
    assert argv[0] == str(tmp_path / "bin" / "qemu") and "-smp 4" in joined and "thread=multi" in joined
    assert joined.index("ifname=nbrt1") < joined.index("ifname=nbrt2")
    assert f"socket,id=ctl,path={tmp_path / 's'},server=on,wait=off" in argv


def test_cli_refuses_bad_input_before_touching_anything(tmp_path: Path) -> None:
    for args, message in ((["up", "--dir", str(tmp_path)], "needs --bundle"),
                          (["up", "--dir", str(tmp_path), "--bundle", str(tmp_path), "--link", "1=x"], "not a netem router bundle"),
                          (["shape", "--dir", str(tmp_path), "--link", "1", "--profile", "paper-1ms"], "unknown profile"),
                          (["exec", "--dir", str(tmp_path), "--", "sh", "-c", "x"], "only tc, ip, uname")):
        proc = subprocess.run([sys.executable, "-m", "bench_client.netem.router", *args], capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not list(tmp_path.iterdir())


def test_module_closure_orders_dependencies_first(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("kmod_closure", ROOT / "tools" / "netem-router" / "kmod-closure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "modules.dep").write_text(
        "kernel/net/sched/sch_netem.ko:\n"
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n"
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
        "kernel/net/core/failover.ko:\n")
    assert module.closure(str(tmp_path / "modules.dep"), ["virtio_net", "sch_netem", "virtio_pci"]) == [
        "kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
        "kernel/net/sched/sch_netem.ko"]  # virtio_pci: not in modules.dep, built in


# --- the real router ----------------------------------------------------------------------------


def bundle() -> Path:
    """The router bundle, cached like the test VMs' image (.ci/setup.d/35-netem-router.sh builds it)."""
    out = Path(os.environ.get("NETBENCH_ROUTER_CACHE", "/var/cache/netbench-router")) / "bundle"
    subprocess.run(["bash", str(ROOT / "tools" / "netem-router" / "build-bundle.sh"), str(out)], check=True, timeout=900)
    return out


def _ns(name: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True, text=True, **kw)


@pytest.mark.root
@pytest.mark.slow
def test_router_forwards_fast_and_shapes_what_a_server_sends(tmp_path: Path) -> None:
    """Two namespaces through the router: unshaped it must leave 1 Gbit/s intact; a server's profile
    changes without a reboot and is measured on the right direction only."""
    b = bundle()
    prefix = f"nbr{os.getpid() % 10000}"  # engineers and CI jobs on one machine: names of this run only
    names = [f"{prefix}{n}" for n in ("q", "a", "b")]
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    rdir = tmp_path / "router"
    try:
        router = netem_router.up(rdir, b, {1: names[1], 2: names[2]}, netns=names[0], prefix=prefix)
        print("boot", router.state()["boot_s"], "s")
        # the kernel whose netem shapes (recorded in every row): the bundle's Debian cloud kernel
        assert router.kernel() == (b / "kernel-version").read_text().strip()
        for i, ns in ((1, names[1]), (2, names[2])):
            for args in (["addr", "add", f"10.215.0.{i}/24", "dev", f"{prefix}t{i}"], ["link", "set", f"{prefix}t{i}", "up"]):
                subprocess.run(["ip", "-n", ns, *args], check=True)
        plain = netem_router.measure_pair(names[1], names[2], "10.215.0.2")
        print("unshaped", plain)
        # It forwards, well above the profile shaped below (whether one TCG vCPU carries the 1 Gbit profile is a
        # number, measured by `python -m bench_client.netem.router bench`, not a pass/fail on a loaded CI machine)
        assert plain["rate_mbit"] > 100 * 2, "the router itself would cap the 100 Mbit profile"
        assert plain["rtt_median_ms"] < 10
        # host a is a server: paper-10ms-100mbit on what it sends
        router.shape(1, PAPER["paper-10ms-100mbit"])
        assert router.shape(1, PAPER["paper-10ms-100mbit"]) == []  # idempotent
        shaped = netem_router.measure_pair(names[1], names[2], "10.215.0.2")
        print("paper-10ms-100mbit", shaped)
        assert netem.judge(PAPER["paper-10ms-100mbit"], None, shaped) == []
        back = netem_router.measure_pair(names[2], names[1], "10.215.0.1")  # b is the unshaped client: its sending is fast
        assert back["rate_mbit"] > 200, back
        router.shape(1, PAPER["paper-100ms-100mbit"])  # a change while running: no reboot
        assert netem_router.Router(rdir).state()["started"] == router.state()["started"]
        slow = netem.parse_ping(_ns(names[1], "ping", "-c", "5", "-i", "0.2", "10.215.0.2", timeout=30).stdout)
        assert 100 <= slow["rtt_min_ms"] < 106, slow
        rc, out = router.exec(["tc", "-s", "qdisc", "show", "dev", "ifb01"])
        assert rc == 0 and "delay 100ms" in out
        # a router killed mid-run: every later command fails loudly, none hangs
        os.killpg(json.loads(router.pidfile.read_text())["pgid"], signal.SIGKILL)
        with pytest.raises(RouterError, match="is not running"):
            router.shape(1, PAPER["paper-10ms-1gbit"])
    finally:
        netem_router.down(rdir)
        for n in names:
            subprocess.run(["ip", "netns", "delete", n], capture_output=True)
    assert not netem_router.Router(rdir).running()


def test_lab_inventory_in_router_mode_with_local_connection(tmp_path: Path) -> None:
    """What netns_lab writes for the GPU hosts' way: data on eth1 through the router, the netem role's
    router backend, no ssh settings, one namespace-entering shell per host."""
    from bench_client.netem import lab as netns_lab

    hosts = netns_lab.lab_hosts(3, "nbx")
    inventory = json.loads((netns_lab.write_inventory(tmp_path, hosts, "/usr/bin/python3", router=True,
                                                       connection="local")).read_text().split("\n", 1)[1])
    all_vars, host_vars = inventory["all"]["vars"], inventory["all"]["hosts"]
    assert all_vars["netem_backend"] == "router" and all_vars["netem_interface"] == "eth1"
    assert all_vars["ansible_connection"] == "local" and "ansible_ssh_common_args" not in all_vars
    assert host_vars["h2"] == {"ansible_host": "10.213.0.12", "netbench_address": "10.213.1.12", "netem_router_link": 2,
                               "ansible_shell_executable": str(tmp_path / "nsh-h2")}
    netns_lab.write_shell_wrappers(tmp_path, hosts)
    assert "exec ip netns exec nbx-h2 /bin/sh" in (tmp_path / "nsh-h2").read_text()
