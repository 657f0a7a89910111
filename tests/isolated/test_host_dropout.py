"""A host that drops out of the inventory mid-play: the play fails loudly, the others are unshaped.

The real experiment play (playbooks/experiment.yml -> playbooks/tasks/profile.yml: any_errors_fatal,
the block that shapes and benchmarks, the always that unshapes) and the real netem role run against
two qemu VMs with a netem kernel (tests/vm, the cluster test_netem_role_vm.py uses too): both are servers, vm1 is
also the client. While the paper profile is in effect and the benchmark runs, vm2's qemu is killed
(SIGKILL: no shutdown, no FIN on the wire). The benchmark is a stand-in role (the real client needs a
swarm; tests/processes/test_faults_mid_sweep.py covers what it does when a server dies): it fails like the real client
does when its server stops answering. Checked: the play exits non-zero and names vm2 UNREACHABLE; vm1
has no qdisc of ours and no dead-man timer, seconds after the kill, long before its dead-man timer
would have fired; vm2 is booted again afterwards.

Why it matters: once a host is unreachable, any_errors_fatal marks every other host failed, which cuts
their always section short; an unshaping that ran a facts task first left the survivors shaped (found
with this test's scenario), hence profile.yml's single-task unshaping.

Wall time here (2 cores, shared, TCG): ~2-4 minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from vm import REPO, VMCluster, recap  # the fixture vm_cluster: tests/isolated/conftest.py

pytestmark = [pytest.mark.root, pytest.mark.slow]
PROFILE = "paper-10ms-100mbit"
DEADMAN_S = 900  # the survivors must be unshaped by the play, far sooner than this
SURVIVOR_UNSHAPED_WITHIN_S = 120


def _stand_in_bench_client(roles: Path, servers_answering: list[str]) -> None:
    """A bench_client role whose benchmark fails (exit 5, like the client's --max-retries) when a
    server stops answering; the same async polling as roles/bench_client."""
    tasks = roles / "bench_client" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(textwrap.dedent(f"""\
        - name: Benchmark (stand-in) until a server stops answering
          ansible.builtin.shell: |
            touch /run/nb-benchmark-running
            for i in $(seq 300); do
              for peer in {' '.join(servers_answering)}; do
                ping -c 1 -W 2 "$peer" >/dev/null || {{ echo "server $peer stopped answering" >&2; exit 5; }}
              done
              sleep 1
            done
          async: 600
          poll: 2
          changed_when: true
        """))
    (tasks / "fetch.yml").write_text("- name: Fetch (stand-in)\n  ansible.builtin.debug:\n    msg: fetched\n")


def test_server_host_killed_mid_benchmark_fails_play_and_unshapes_the_others(vm_cluster, tmp_path, capsys):
    cluster: VMCluster = vm_cluster
    survivor, victim = cluster.vms
    cluster.groups = {"servers": [survivor.name, victim.name], "clients": [survivor.name]}
    roles = tmp_path / "roles"
    _stand_in_bench_client(roles, [victim.data_ip])
    plan = {"run_id": "dropout", "profiles": [{"name": PROFILE, "netem": PROFILE, "describe": PROFILE}]}
    env = {**cluster.ansible_env(), "ANSIBLE_ROLES_PATH": f"{roles}:{REPO / 'roles'}"}  # stand-in first
    cmd = cluster.playbook_command(REPO / "playbooks" / "experiment.yml", extra_vars={
        "netbench_plan": plan, "netem_validate": False, "netem_deadman_seconds": DEADMAN_S})
    play = subprocess.Popen(cmd, cwd=cluster.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (all(cluster.our_qdiscs(vm) for vm in cluster.vms)
                   and cluster.ssh(survivor, "test -e /run/nb-benchmark-running", check=False).returncode == 0):
            assert play.poll() is None, f"play ended before the benchmark:\n{play.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "never reached the shaped benchmark"
            time.sleep(2)
        assert cluster.deadman_running(survivor)

        cluster.kill(victim)
        killed_at = time.monotonic()
        unshaped_after = None
        while play.poll() is None and time.monotonic() < killed_at + 300:
            if unshaped_after is None and not cluster.our_qdiscs(survivor):
                unshaped_after = time.monotonic() - killed_at
            time.sleep(1)
        assert play.poll() is not None, "the play hung after the host dropped out"
        ended_after = time.monotonic() - killed_at
        output = play.stdout.read()
    finally:
        if play.poll() is None:
            os.killpg(play.pid, signal.SIGKILL)
            play.wait(timeout=30)
    if unshaped_after is None:
        unshaped_after = ended_after
    with capsys.disabled():
        print(f"\n{victim.name} killed mid-benchmark: play exited rc={play.returncode} {ended_after:.0f} s later; "
              f"{survivor.name} unshaped {unshaped_after:.0f} s after the kill (dead-man timer: {DEADMAN_S} s)")

    # loud: non-zero, the lost host named as unreachable in the output and the recap
    assert play.returncode != 0, output[-4000:]
    assert f"fatal: [{victim.name}]: UNREACHABLE!" in output, output[-4000:]
    counts = recap(output)
    assert counts[victim.name]["unreachable"] == 1, counts
    # the survivor is unshaped by the play itself, not by its dead-man timer (with the former two-task
    # unshaping, measured here: the play ended at the facts task and vm1 stayed shaped)
    assert cluster.our_qdiscs(survivor) == [], f"the survivor is still shaped:\n{output[-4000:]}"
    assert not cluster.deadman_running(survivor), "the survivor's dead-man timer is still armed"
    assert unshaped_after < SURVIVOR_UNSHAPED_WITHIN_S < DEADMAN_S
    unshaping = output.partition("TASK [netem : Disarm the dead-man timer and remove the shaping]")[2]
    assert f"changed: [{survivor.name}]" in unshaping, output[-4000:]

    # the dead host comes back (fresh overlay, nothing of ours on it) for anything run after this
    back = cluster.restart(victim)
    assert cluster.our_qdiscs(back) == [] and not cluster.deadman_running(back)
    assert victim.data_ip in cluster.ssh(back, "ip -4 -o addr show dev eth1").stdout
