"""bench_client.netem.profiles and the netem role's filters, without a kernel: profile parsing, safety
floors, tc command lines, idempotence against recorded `tc -j qdisc show` output, measurements.

The recorded qdisc JSON comes from real kernels: netem from the test VMs' Debian 6.1 cloud kernel
(iproute2 6.1), tbf/htb from this machine's kernel."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_client.netem import profiles as netem

ROOT = Path(__file__).resolve().parents[2]

NOQUEUE = '[{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}}]'
MQ = '[{"kind":"mq","handle":"0:","root":true,"options":{}},{"kind":"fq_codel","handle":"0:","parent":":1","options":{}}]'
# `tc -j qdisc show` on the VM kernel after `tc qdisc add dev eth1 root handle 4e54: netem delay 10ms
# rate 100mbit limit 22500`.
NETEM_10MS_100MBIT = json.dumps([{
    "kind": "netem", "handle": "4e54:", "root": True, "refcnt": 2,
    "options": {"limit": 22500, "delay": {"delay": 0.01, "jitter": 0, "correlation": 0},
                "rate": {"rate": 12500000, "packetoverhead": 0, "cellsize": 0, "celloverhead": 0},
                "ecn": False, "gap": 0}}])
# ... and after `netem delay 10ms 2ms loss random 1.5% rate 50mbit limit 1000` (same kernel).
NETEM_JITTER_LOSS = ('[{"kind":"netem","handle":"4e54:","root":true,"refcnt":2,"options":{"limit":1000,"delay":'
                     '{"delay":0.01,"jitter":0.002,"correlation":0},"loss-random":{"loss":0.015,"correlation":0},'
                     '"rate":{"rate":6250000,"packetoverhead":0,"cellsize":0,"celloverhead":0},"ecn":false,"gap":0}}]')
TBF_10MBIT = '[{"kind":"tbf","handle":"4e54:","root":true,"refcnt":3,"options":{"rate":1250000,"burst":20000,"limit":10000}}]'
HTB_BYPASS_TBF = ('[{"kind":"htb","handle":"4e54:","root":true,"refcnt":3,"options":{"r2q":10,"default":"0x2",'
                  '"direct_packets_stat":0,"direct_qlen":1000}},{"kind":"tbf","handle":"4e55:","parent":"4e54:2",'
                  '"options":{"rate":12500000,"burst":25000,"lat":58560}}]')
FOREIGN_HTB = '[{"kind":"htb","handle":"1:","root":true,"refcnt":3,"options":{"r2q":10,"default":"0x10"}}]'


def _plugin():
    path = ROOT / "roles" / "netem" / "filter_plugins" / "netem.py"
    spec = importlib.util.spec_from_file_location("netem_filter_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,us", [("10ms", 10_000), ("10 ms", 10_000), ("0.1s", 100_000), ("250us", 250),
                                     (10, 10_000), (2.5, 2_500), ("1.5sec", 1_500_000)])
def test_parse_time(text, us):
    assert netem.parse_time_us(text) == us


@pytest.mark.parametrize("text,bit", [("100mbit", 100_000_000), ("1gbit", 1_000_000_000), ("1Gbit", 10**9),
                                      ("12.5mbps", 100_000_000), ("512kbit", 512_000), ("1mibit", 2**20)])
def test_parse_rate_uses_tc_units(text, bit):
    assert netem.parse_rate_bit(text) == bit


@pytest.mark.parametrize("bad", ["100", 100, "fast", "10 mbits", "", True])
def test_parse_rate_needs_a_tc_unit(bad):
    with pytest.raises(netem.ProfileError, match="rate"):
        netem.parse_rate_bit(bad)


@pytest.mark.parametrize("bad", ["10 minutes", "ms", "-5ms", "ten"])
def test_parse_time_rejects_garbage(bad):
    with pytest.raises(netem.ProfileError, match="delay"):
        netem.parse_time_us(bad)


def test_parse_loss_and_limit():
    assert netem.parse_loss_pct("1%") == 1.0
    assert netem.parse_loss_pct(0.5) == 0.5
    with pytest.raises(netem.ProfileError, match="more than 100"):
        netem.parse_loss_pct("101%")
    assert netem.parse_limit("22500") == 22500
    for bad in ("0", "-1", "1e3", "lots"):
        with pytest.raises(netem.ProfileError, match="limit"):
            netem.parse_limit(bad)


# --- profiles --------------------------------------------------------------------------------------

def test_paper_profiles_are_the_papers_numbers():
    p = {name: netem.resolve_profile(name) for name in netem.PAPER_PROFILES}
    assert (p["paper-10ms-1gbit"].delay_us, p["paper-10ms-1gbit"].rate_bit, p["paper-10ms-1gbit"].limit) == \
        (10_000, 10**9, 225_000)
    assert (p["paper-10ms-100mbit"].delay_us, p["paper-10ms-100mbit"].rate_bit, p["paper-10ms-100mbit"].limit) == \
        (10_000, 10**8, 22_500)
    assert (p["paper-100ms-100mbit"].delay_us, p["paper-100ms-100mbit"].rate_bit,
            p["paper-100ms-100mbit"].limit) == (100_000, 10**8, 2_250_000)
    cmd = netem.plan("eth0", NOQUEUE, p["paper-100ms-100mbit"])
    assert cmd == [["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "4e54:", "netem",
                    "delay", "100ms", "rate", "100mbit", "limit", "2250000"]]


def test_custom_profile_and_none():
    p = netem.resolve_profile({"name": "lan", "delay": "5ms", "jitter": "1ms", "rate": "50mbit", "loss": "0.1%",
                               "limit": 1000})
    assert p == netem.Profile("lan", 5000, 1000, 50_000_000, 0.1, 1000)
    assert netem.shaping_qdisc(p, "netem", "4e54:", "root").args == (
        "delay", "5ms", "1ms", "loss", "random", "0.1%", "rate", "50mbit", "limit", "1000")
    assert netem.resolve_profile("none") is None
    assert netem.resolve_profile(None) is None
    assert p.describe()["rate_mbit"] == 50.0


@pytest.mark.parametrize("spec,problem", [
    ({"rate": "100kbit"}, "below the floor"),
    ({"loss": "100%"}, "loss 100.0% is above"),
    ({"delay": "300s"}, "delay 300000ms is above"),
    ({"delay": "10ms", "jitter": "20ms"}, "jitter larger"),
    ({"rate": "1gbit", "limit": 50_000_000}, "limit 50000000"),
])
def test_safety_floors_refuse_unless_forced(spec, problem):
    with pytest.raises(netem.ProfileError, match=problem) as err:
        netem.resolve_profile(spec)
    assert "\n" not in str(err.value) and "netem_force" in str(err.value)
    assert netem.resolve_profile(spec, force=True) is not None


@pytest.mark.parametrize("spec,problem", [
    ("paper-10ms-10gbit", "unknown profile"),
    ({"delay": "10ms", "bandwidth": "1gbit"}, "unknown profile keys"),
    ({"jitter": "1ms"}, "jitter needs a delay"),
    ({"limit": 100}, "shapes nothing"),
    (["10ms"], "a name or a dict"),
    # values that cannot be meant: a zero rate was applied as "no rate limit", a zero queue drops everything
    ({"name": "wan", "delay": "10ms", "rate": "0mbit"}, r"rate: '0mbit' is no rate at all \(0 bit/s would be applied "
                                                         r"as no rate limit\); leave rate out"),
    ({"delay": "10ms", "rate": "0.0000001mbit"}, "is no rate at all"),  # rounds to 0 bit/s
    ({"delay": "10ms", "rate": "0gbit"}, "is no rate at all"),
    ({"delay": "10ms", "limit": 0}, "limit: must be at least 1 packet, got 0"),
    ({"delay": "10ms", "limit": "-5"}, "limit: must be at least 1 packet, got -5"),
])
def test_bad_profiles_are_refused_even_when_forced(spec, problem):
    with pytest.raises(netem.ProfileError, match=problem):
        netem.resolve_profile(spec, force=True)


# --- plans and idempotence -------------------------------------------------------------------------

def test_same_profile_twice_changes_nothing():
    p = netem.resolve_profile("paper-10ms-100mbit")
    assert netem.plan("eth1", NETEM_10MS_100MBIT, p) == []


def test_jitter_and_loss_read_back_from_the_kernel():
    p = netem.resolve_profile({"delay": "10ms", "jitter": "2ms", "loss": "1.5%", "rate": "50mbit", "limit": 1000})
    assert netem.plan("eth1", NETEM_JITTER_LOSS, p) == []
    assert netem.plan("eth1", NETEM_JITTER_LOSS, netem.Profile("x", 10_000, 2_000, 50_000_000, 1.0, 1000)) != []


def test_different_profile_replaces_not_stacks():
    p = netem.resolve_profile("paper-100ms-100mbit")
    cmds = netem.plan("eth1", NETEM_10MS_100MBIT, p)
    assert cmds[0] == ["tc", "qdisc", "del", "dev", "eth1", "root"]
    assert [c[2] for c in cmds] == ["del", "add"]
    assert cmds[1][5:9] == ["root", "handle", "4e54:", "netem"]


def test_a_changed_limit_alone_is_a_difference():
    p = netem.Profile("x", delay_us=10_000, rate_bit=10**8, limit=1000)
    assert netem.plan("eth1", NETEM_10MS_100MBIT, p) != []


def test_kernel_default_roots_are_replaced_foreign_ones_kept():
    p = netem.resolve_profile("paper-10ms-1gbit")
    assert [c[2] for c in netem.plan("eth0", MQ, p)] == ["add"]
    with pytest.raises(netem.ForeignQdiscError, match="htb 1:"):
        netem.plan("eth0", FOREIGN_HTB, p)
    assert [c[2] for c in netem.plan("eth0", FOREIGN_HTB, p, force=True)] == ["del", "add"]


def test_removal_touches_only_our_qdisc():
    assert netem.plan("eth1", NETEM_10MS_100MBIT, None) == [["tc", "qdisc", "del", "dev", "eth1", "root"]]
    assert netem.plan("eth1", NOQUEUE, None) == []
    assert netem.plan("eth1", FOREIGN_HTB, None) == []


def test_profile_none_is_refused_over_a_foreign_root_qdisc():
    """Removal leaves a foreign qdisc alone, so "none" would be measured through it: refused (unless forced)."""
    with pytest.raises(netem.ForeignQdiscError, match="htb 1:.*profile 'none' would be measured through it"):
        netem.check_unshaped("eth1", FOREIGN_HTB)
    netem.check_unshaped("eth1", FOREIGN_HTB, force=True)
    for ok in (NETEM_10MS_100MBIT, NOQUEUE, MQ):  # ours (removed next) or the kernel's defaults
        netem.check_unshaped("eth1", ok)


def test_rate_only_profile_as_tbf():
    p = netem.resolve_profile({"rate": "10mbit", "limit": 100})
    assert netem.plan("veth0", NOQUEUE, p, "tbf") == [
        ["tc", "qdisc", "add", "dev", "veth0", "root", "handle", "4e54:", "tbf", "rate", "10mbit",
         "burst", "15140", "limit", "151400"]]
    assert netem.plan("veth0", TBF_10MBIT, p, "tbf") == []
    with pytest.raises(netem.ProfileError, match="needs netem"):
        netem.plan("veth0", NOQUEUE, netem.resolve_profile("paper-10ms-100mbit"), "tbf")


def test_ssh_bypass_tree_and_its_idempotence():
    p = netem.resolve_profile({"rate": "100mbit", "limit": 500})
    cmds = netem.plan("veth0", NOQUEUE, p, "tbf", [22])
    assert cmds[0][5:] == ["root", "handle", "4e54:", "htb", "default", "2"]
    assert [c[1] for c in cmds] == ["qdisc", "class", "class", "qdisc"] + ["filter"] * 4
    assert all(c[-2:] == ["flowid", "4e54:1"] for c in cmds if c[1] == "filter")
    assert netem.plan("veth0", HTB_BYPASS_TBF, p, "tbf", [22], filter_count=4) == []
    # filters lost (someone flushed them): rebuilt
    assert netem.plan("veth0", HTB_BYPASS_TBF, p, "tbf", [22], filter_count=0)[0][2] == "del"
    # bypass switched off: the plain root replaces the htb tree
    assert [c[2] for c in netem.plan("veth0", HTB_BYPASS_TBF, p, "tbf")] == ["del", "add"]


def test_count_filters_reads_tc_text():
    text = ("filter protocol ip pref 1 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 *flowid 4e54:1 not_in_hw\n"
            "  match 00160000/ffff0000 at 20\n"
            "filter protocol ip pref 1 u32 chain 0 fh 800::801 order 2049 key ht 800 bkt 0 *flowid 4e54:1 not_in_hw\n")
    assert netem.count_filters(text) == 2
    assert netem.count_filters("") == 0


# --- measurements ----------------------------------------------------------------------------------

PING = """PING 10.202.0.12 (10.202.0.12) 56(84) bytes of data.
64 bytes from 10.202.0.12: icmp_seq=1 ttl=64 time=31.4 ms
64 bytes from 10.202.0.12: icmp_seq=2 ttl=64 time=20.4 ms
64 bytes from 10.202.0.12: icmp_seq=3 ttl=64 time=21.0 ms

--- 10.202.0.12 ping statistics ---
10 packets transmitted, 10 received, 0% packet loss, time 1811ms
rtt min/avg/max/mdev = 20.412/20.987/22.103/0.512 ms
"""


def _iperf(bps: float) -> str:
    return json.dumps({"end": {"sum_sent": {"retransmits": 3}, "sum_received": {"bits_per_second": bps}}})


def test_parse_measurements():
    assert netem.parse_ping(PING) == {"rtt_min_ms": 20.412, "rtt_avg_ms": 20.987, "rtt_median_ms": 21.0,
                                      "rtt_max_ms": 22.103, "rtt_mdev_ms": 0.512, "ping_loss_pct": 0.0}
    assert netem.parse_ping(PING.replace("time=31.4 ms", ""))["rtt_median_ms"] == 20.7
    assert netem.parse_iperf3(_iperf(95e6)) == {"rate_mbit": 95.0, "retransmits": 3.0}
    with pytest.raises(ValueError, match="unable to connect"):
        netem.parse_iperf3('{"error": "unable to connect to server"}')
    with pytest.raises(ValueError):
        netem.parse_ping("ping: connect: Network is unreachable")


def test_judge_delay_exactly_and_rate_as_cap():
    p = netem.resolve_profile("paper-10ms-100mbit")
    ok = {"rtt_min_ms": 20.4, "rtt_median_ms": 21.0, "rtt_avg_ms": 33.0, "rate_mbit": 95.0}
    assert netem.judge(p, p, ok) == []  # one slow ping moves the average, not the verdict
    assert netem.expected_rtt_ms(p, p) == 20.0
    assert "not in effect" in netem.judge(p, p, {**ok, "rtt_min_ms": 1.1, "rtt_median_ms": 1.2})[0]  # no delay
    assert "exceeds the configured" in netem.judge(p, p, {**ok, "rtt_min_ms": 40.2, "rtt_median_ms": 40.5})[0]  # twice
    assert netem.judge(p, p, {**ok, "rtt_median_ms": 29.4}) == []  # some pings met a busy machine
    assert "exceeds the 100 Mbit/s cap" in netem.judge(p, p, {**ok, "rate_mbit": 900.0})[0]
    assert "below 85%" in netem.judge(p, p, {**ok, "rate_mbit": 50.0})[0]
    loose = netem.Tolerance(rate_achieved=0)
    assert netem.judge(p, p, {**ok, "rate_mbit": 50.0}, loose) == []  # cap only
    assert netem.judge(p, None, {"rtt_min_ms": 10.6, "rtt_median_ms": 10.8, "rate_mbit": 97.0}) == []  # unshaped peer


def test_filter_plugin_kind_choice_and_errors():
    plugin = _plugin()
    rate_only = plugin.netem_resolve({"rate": "100mbit"})
    delayed = plugin.netem_resolve("paper-10ms-100mbit")
    no_netem = {"netem": False, "tbf": True, "htb": True}
    assert plugin.netem_kind(delayed, {"netem": True, "tbf": True}) == "netem"
    assert plugin.netem_kind(rate_only, {"netem": True, "tbf": True}) == "netem"
    assert plugin.netem_kind(rate_only, no_netem) == "tbf"  # explicit fallback, reported by the role
    assert plugin.netem_kind(None, no_netem) == "none"
    unknown = {"netem": None, "tbf": None, "htb": None}  # no namespaces, no module tree: try netem, let tc say
    assert plugin.netem_kind(rate_only, unknown) == "netem" and plugin.netem_kind(delayed, unknown) == "netem"
    with pytest.raises(plugin.AnsibleFilterError, match="has no sch_netem.*refusing to run unshaped"):
        plugin.netem_kind(delayed, no_netem, "auto", "vm1", "6.18")
    with pytest.raises(plugin.AnsibleFilterError, match="has no sch_netem"):
        plugin.netem_kind(rate_only, no_netem, "netem")
    with pytest.raises(plugin.AnsibleFilterError, match="netem_profile: unknown profile"):
        plugin.netem_resolve("paper")


def test_filter_plugin_batch_text():
    plugin = _plugin()
    cmds = netem.plan("eth1", NETEM_10MS_100MBIT, netem.resolve_profile("paper-100ms-100mbit"))
    assert plugin.netem_batch(cmds) == ("qdisc del dev eth1 root\n"
                                        "qdisc add dev eth1 root handle 4e54: netem delay 100ms rate 100mbit limit 2250000")


def test_filter_plugin_measurement_record():
    plugin = _plugin()
    own = plugin.netem_resolve("paper-10ms-100mbit")
    pings = "=== 10.202.0.12\n" + PING
    iperfs = "=== 10.202.0.12\n" + _iperf(96e6)
    assert plugin.netem_sections(pings)["10.202.0.12"].strip() == PING.strip()
    out = plugin.netem_measure_all(["vm2"], ["10.202.0.12"], pings, iperfs, own, [own])
    assert out["vm2"]["rtt_median_ms"] == 21.0 and out["vm2"]["rate_mbit"] == 96.0
    assert out["vm2"]["expected_rtt_ms"] == 20.0 and out["vm2"]["problems"] == []
    failed = plugin.netem_measure_all(["vm2"], ["10.202.0.12"], "", "", own, [own])
    assert failed["vm2"]["problems"][0].startswith("measurement failed")
    assert plugin.netem_mean([20.0, 22.0]) == 21.0 and plugin.netem_mean([]) is None


# --- the role as Ansible sees it ---------------------------------------------------------------------

def _ansible_env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_shaping_playbook_syntax():
    """(ansible-lint's production profile covers this role and playbook with the whole tree: test_ansible_static.)"""
    bin_dir = Path(sys.executable).parent
    syntax = subprocess.run([str(bin_dir / "ansible-playbook"), "--syntax-check", "-i", "localhost,",
                             "playbooks/shaping.yml"], cwd=ROOT, env=_ansible_env(), capture_output=True, text=True,
                            timeout=120)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr


def test_bad_profile_fails_in_one_line_before_any_host_is_touched(tmp_path):
    """An unreachable host: the refusal must come from the controller, not from a connection."""
    bin_dir = Path(sys.executable).parent
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"nowhere": {"ansible_host": "host.invalid"}}}}))
    proc = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(inventory), "playbooks/shaping.yml",
                           "-e", json.dumps({"netem_profile": {"delay": "10ms", "rate": "10kbit"}})],
                          cwd=ROOT, env=_ansible_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "rate 10kbit is below the floor of 1mbit" in proc.stdout, proc.stdout[-2000:]
    assert "UNREACHABLE" not in proc.stdout


def test_rate_schedule_never_lets_a_host_send_and_receive_in_one_round():
    hosts = ["s1", "s2", "s3", "s4"]
    everyone = {h: [p for p in hosts if p != h] for h in hosts}
    # one peer each (the default): the ring s1->s2->s3->s4->s1 in two rounds of two flows
    assert netem.rate_schedule(everyone) == [{"s1": "s2", "s3": "s4"}, {"s2": "s3", "s4": "s1"}]
    every_pair = netem.rate_schedule(everyone, per_host=0)
    flows = [(s, r) for rnd in every_pair for s, r in rnd.items()]
    assert sorted(flows) == sorted((h, p) for h in hosts for p in everyone[h])  # each pair exactly once
    for rnd in every_pair:
        assert len(set(rnd) | set(rnd.values())) == 2 * len(rnd)  # nobody both sends and receives
    assert len(every_pair) == 6  # 12 flows, 2 at a time (one after another: 12 rounds)
    assert netem.rate_schedule(everyone, max_flows=1) == [{"s1": "s2"}, {"s2": "s3"}, {"s3": "s4"}, {"s4": "s1"}]
    # an odd ring needs a third round; a host without peers and a peer outside the role are fine
    assert netem.rate_schedule({h: [p for p in hosts[:3] if p != h] for h in hosts[:3]}) == [
        {"s1": "s2"}, {"s2": "s3"}, {"s3": "s1"}]
    assert netem.rate_schedule({"a": []}) == []
    assert netem.rate_schedule({"a": ["client"]}) == [{"a": "client"}]


def test_iperf_timing_follows_the_round_trip():
    # 10 round trips of ramp-up left out and 10 measured, at least 1 s each; explicit values win
    assert netem.iperf_timing(0.2) == (1, 1)
    assert netem.iperf_timing(20.0) == (1, 1)
    assert netem.iperf_timing(200.0) == (2, 2)
    assert netem.iperf_timing(250.0) == (3, 3)
    assert netem.iperf_timing(200.0, seconds=5, omit=0) == (5, 2)
    own = netem.profile_dict(netem.resolve_profile("paper-100ms-100mbit"))
    plugin = _plugin()
    assert plugin.netem_iperf_timing(own, own) == [2, 2] and plugin.netem_iperf_timing(None, None) == [1, 1]
