"""The client host drops out mid-benchmark: the play fails promptly and the servers are unshaped.

The real `site.yml` on the emulated inventory (tests/isolated/test_site_emulated_ssh.py's lab: three network
namespaces with sshd, the DHT and the client on h1, a server on each of h2 and h3) with a rate-only
custom profile (tbf: this kernel has no netem) and a sweep far longer than the test needs. Once h2
and h3 are shaped and the client has written its first row, h1's link is set down from inside its
namespace: no FIN, no RST, the controller only hears silence, as with a host that lost its network.
Checked: ansible-playbook exits non-zero long before bench_client_timeout (2 h), naming h1
UNREACHABLE; h2 and h3 have no qdisc of ours left; then, with h1's link back, `--tags cleanup` leaves
nothing of ours on any host.

Why it matters: the client ran as an async task polled by Ansible's own `poll:`, which treats a lost
connection as a network bounce and retries until the async timeout, silently, servers shaped; hence
roles/bench_client/tasks/wait.yml (async_status + until).

Wall time here (2 cores, shared): ~2.5 minutes (150 s; 205-215 s with ansible.cfg's keepalive, below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_client.netem import lab as netns_lab
from bench_client.core.processes import terminate_tree

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PREFIX = f"nbd{os.getpid() % 10000}"
RATE_PROFILE = {"name": "rate20", "rate": "20mbit"}
# Far more than the test waits for (the first row, then the cut): 8 prompt lengths x 32 new tokens
# x 2 micro-batches, ~40 s a row here (measured: the first row, prompt 16, took 40-42 s), so the client
# has minutes left at the cut; the rows written by then are printed.
PROMPT_LENGTHS = [16, 32, 48, 64, 96, 128, 192, 256]
SWEEP = {"bench_client_prompt_lengths": PROMPT_LENGTHS, "bench_client_new_tokens": 32,
         "bench_client_num_processes": 1, "bench_client_num_micro_batches": 2,
         "netem_iperf_seconds": 2, "netem_iperf_omit_seconds": 1, "netem_ping_count": 3}
# How soon the controller hears the silence is ssh's keepalive. ansible.cfg's ssh_args (ServerAliveInterval=15
# x ServerAliveCountMax=4, for rented hosts) come first on ssh's command line, and ssh takes an option's first
# value, so they would override the lab inventory's own 5 x 3 (ansible_ssh_common_args): 60-75 s of silence
# (measured: the play exited 79-80 s after the cut). The plays here get ansible.cfg's ssh_args without the
# keepalive, so the lab's 5 x 3 holds: the same detection (ssh gives up, the host is UNREACHABLE, the
# profile's always section unshapes), ~15-20 s after the cut.
SSH_ARGS_WITHOUT_KEEPALIVE = "-o ControlMaster=auto -o ControlPersist=60s"
PLAY_EXITS_WITHIN_S = 240
SERVERS_UNSHAPED_WITHIN_S = 240


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lab")
    with netns_lab.lab(directory, count=3, python=sys.executable, prefix=PREFIX) as inventory:
        yield directory, inventory


def site(lab_dir: Path, inventory: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """ansible-playbook site.yml inside the lab's controller namespace, in its own process group; its
    output goes to a file (a pipe nobody reads would fill up and stall the play: a false hang)."""
    log = lab_dir / f"play-{time.monotonic_ns()}.log"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_SSH_ARGS": SSH_ARGS_WITHOUT_KEEPALIVE,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = ["ip", "netns", "exec", netns_lab.controller_netns(PREFIX), str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", str(inventory), "site.yml", "-e", f"results_dir={lab_dir / 'results'}", *args]
    with log.open("w") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True), log


def stop(play: subprocess.Popen) -> None:
    """Stop a play still running with all its processes, by PID: Ansible's workers call setsid, so the
    play's process group misses them (a killed play's worker went on polling the lost host)."""
    if play.poll() is None:
        terminate_tree(play.pid)
    play.wait(timeout=30)


def client_rows(lab_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in (lab_dir / "work" / "h1" / "results").glob("*/*/out.jsonl"))


def set_link(host: netns_lab.LabHost, state: str) -> None:
    # the veth end inside the lab's own namespace: nothing of the machine's is touched
    subprocess.run(["ip", "netns", "exec", host.netns, "ip", "link", "set", "eth0", state], check=True)


def test_client_host_dropout_fails_play_promptly_and_unshapes_servers(lab, capsys):
    lab_dir, inventory = lab
    h1, h2, h3 = netns_lab.lab_hosts(3, PREFIX)
    servers = (h2, h3)
    play, log = site(lab_dir, inventory, "-e", json.dumps({"profiles": [RATE_PROFILE], "run_id": "dropout", **SWEEP}))
    try:
        deadline = time.monotonic() + 600
        # shaped servers and a client that is measuring (its first row is written)
        while not (all(netns_lab.our_qdiscs(s.netns) for s in servers) and client_rows(lab_dir) >= 1):
            assert play.poll() is None, f"play ended before the benchmark:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "never reached the shaped benchmark"
            time.sleep(1)
        rows_at_cut = client_rows(lab_dir)
        assert rows_at_cut < len(PROMPT_LENGTHS), "the sweep ended before the cut: make it longer"

        set_link(h1, "down")
        cut_at = time.monotonic()
        unshaped_after: dict[str, float] = {}
        while play.poll() is None and time.monotonic() < cut_at + PLAY_EXITS_WITHIN_S:
            for s in servers:
                if s.name not in unshaped_after and not netns_lab.our_qdiscs(s.netns):
                    unshaped_after[s.name] = time.monotonic() - cut_at
            time.sleep(0.5)
        ended_after = time.monotonic() - cut_at
        hung = play.poll() is None
        # the play unshapes just before it exits, often inside the last half-second poll: a server
        # found unshaped only now was unshaped by the time the play ended
        for s in servers:
            if s.name not in unshaped_after and not netns_lab.our_qdiscs(s.netns):
                unshaped_after[s.name] = ended_after
        stop(play)  # a hung play is stopped here, and reported below
        output = log.read_text()
    finally:
        stop(play)
        set_link(h1, "up")
    shaped_left = {s.name: netns_lab.our_qdiscs(s.netns) for s in servers}
    with capsys.disabled():
        print(f"\nh1's link cut after {rows_at_cut} of {len(PROMPT_LENGTHS)} rows: play "
              f"{'still running, killed' if hung else f'exited rc={play.returncode}'} {ended_after:.0f} s later; "
              f"servers unshaped after {', '.join(f'{k} {v:.0f} s' for k, v in unshaped_after.items()) or 'never'}")

    assert not hung, f"the play hung {PLAY_EXITS_WITHIN_S} s after the client host dropped out:\n{output[-4000:]}"
    assert play.returncode != 0, output[-4000:]
    assert "fatal: [h1]: UNREACHABLE!" in output, output[-4000:]
    assert shaped_left == {"h2": [], "h3": []}, output[-4000:]
    assert max(unshaped_after.values()) < SERVERS_UNSHAPED_WITHIN_S, unshaped_after  # both found unshaped above

    # h1 is back: the cleanup stops the client left running there, the DHT and the servers
    netns_lab.wait_for_ssh(lab_dir, [h1], netns_lab.controller_netns(PREFIX))
    cleanup, log = site(lab_dir, inventory, "--tags", "cleanup")
    try:
        cleanup.wait(timeout=600)
    finally:
        stop(cleanup)
    output = log.read_text()
    assert cleanup.returncode == 0, output[-4000:]
    for host in (h1, h2, h3):
        assert netns_lab.our_qdiscs(host.netns) == [], host.name
        assert netns_lab.settled_leftovers(host) == ({}, []), host.name
