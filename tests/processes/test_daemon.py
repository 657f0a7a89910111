"""bench_client.core.daemon: the process-group start/stop the roles use (real processes, no Ansible)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_client.core.daemon import Record, group_members, is_running, start, status, stop
from bench_client.core.processes import Identity, boot_id, descendants, start_ticks, terminate


def test_start_is_idempotent_and_stop_ends_the_whole_group(tmp_path):
    pidfile, log = tmp_path / "run" / "x.pid", tmp_path / "logs" / "x.log"
    # a parent that leaves a child behind in its group, like petals servers do
    argv = ["sh", "-c", "sleep 300 & echo started; wait"]
    first = start(argv, pidfile, log)
    try:
        assert first["changed"] is True
        record = Record.load(pidfile)
        assert record is not None and record.pgid == record.pid and is_running(record)
        time.sleep(0.3)
        assert len(group_members(record.pgid)) == 2
        again = start(argv, pidfile, log)
        assert again["changed"] is False and again["pid"] == first["pid"]
        assert status(pidfile)["running"] is True
    finally:
        stopped = stop(pidfile)
    assert stopped["changed"] is True
    assert group_members(record.pgid) == []
    assert not pidfile.exists()
    assert stop(pidfile)["changed"] is False
    assert "started" in log.read_text()


def test_each_group_gets_a_private_tmpdir_that_its_stop_removes(tmp_path):
    """What a group's helpers leave in TMPDIR (a socket, a pymp-* folder) goes with the group; then one
    stop of several groups also removes the files they published (--remove), once they are stopped."""
    pidfile, log, published = tmp_path / "x.pid", tmp_path / "x.log", tmp_path / "x.maddrs"
    published.write_text("/ip4/127.0.0.1/tcp/1\n")
    start(["sh", "-c", 'mkdir "$TMPDIR/pymp-x" && echo "$TMPDIR" && sleep 300'], pidfile, log)
    time.sleep(0.3)
    tmpdir = Path(log.read_text().split()[0])
    assert tmpdir.name.startswith("netbench-proc-") and (tmpdir / "pymp-x").is_dir()
    assert Record.load(pidfile).tmpdir == str(tmpdir)
    cli = subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "stop", "--pidfile", str(pidfile),
                          "--pidfile", str(tmp_path / "none.pid"), "--remove", str(published)],
                         capture_output=True, text=True, check=True)
    result = json.loads(cli.stdout)
    assert result["changed"] and result["removed"] == [str(published)]
    assert [group["signal"] for group in result["groups"] if "signal" in group] == ["SIGTERM"]
    assert not tmpdir.exists() and not published.exists() and not pidfile.exists()
    again = subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "stop", "--remove", str(published)],
                           capture_output=True, text=True, check=True)
    assert json.loads(again.stdout)["changed"] is False


def test_changed_command_line_restarts(tmp_path):
    pidfile, log = tmp_path / "x.pid", tmp_path / "x.log"
    first = start(["sleep", "300"], pidfile, log)
    try:
        second = start(["sleep", "301"], pidfile, log)
        assert second["changed"] is True and second["pid"] != first["pid"]
        assert not group_members(first["pgid"])
    finally:
        stop(pidfile)


def test_ready_file_and_early_exit(tmp_path):
    pidfile, log, ready = tmp_path / "x.pid", tmp_path / "x.log", tmp_path / "ready"
    result = start(["sh", "-c", f"sleep 0.3; echo up > {ready}; sleep 300"], pidfile, log, ready_file=ready)
    try:
        assert result["changed"] and ready.exists()
    finally:
        stop(pidfile)
    cli = subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "start", "--pidfile", str(pidfile), "--log",
                          str(log), "--ready-file", str(ready), "--", "sh", "-c", "echo boom; exit 7"],
                         capture_output=True, text=True)
    assert cli.returncode == 2 and "exited with code 7" in cli.stderr and "boom" in cli.stderr
    assert not pidfile.exists()


def test_run_returns_the_exit_code_and_stops_leftovers(tmp_path):
    marker = f"sleep {300 + os.getpid() % 50}.5"
    cli = subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "run", "--pidfile", str(tmp_path / "c.pid"),
                          "--", "sh", "-c", f"{marker} & echo hi; exit 3"], capture_output=True, text=True)
    assert cli.returncode == 3 and cli.stdout.strip() == "hi"
    assert "left behind" in cli.stderr
    left = subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_stale_pidfile_is_not_running(tmp_path):
    pidfile = tmp_path / "x.pid"
    Record(pid=2**22 - 3, pgid=2**22 - 3, start_ticks=1, argv=["gone"], log="-").save(pidfile)
    assert status(pidfile)["running"] is False
    out = subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "stop", "--pidfile", str(pidfile)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["changed"] is False


def test_helpers_that_leave_the_group_are_stopped_too(tmp_path):
    """torch_shm_manager calls setsid: stop and run must still end it (by descent, not by name)."""
    marker = f"sleep {400 + os.getpid() % 50}.25"
    pidfile, log = tmp_path / "x.pid", tmp_path / "x.log"
    start(["sh", "-c", f"setsid {marker} & wait"], pidfile, log)
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True).returncode == 0
    stop(pidfile)
    assert subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True).returncode == 1
    cli = subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "run", "--pidfile", str(tmp_path / "r.pid"),
                          "--", "sh", "-c", f"setsid {marker} & exit 0"], capture_output=True, text=True)
    assert cli.returncode == 0
    assert subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True).returncode == 1


def _orphaned_group() -> tuple[int, int]:
    """Someone else's process group whose leader is gone: `setsid sh -c 'sleep & exit'` (the issue's repro).
    Returns (pgid, the sleeping member's pid)."""
    out = subprocess.run(["setsid", "sh", "-c", "sleep 1002 >/dev/null 2>&1 & echo $$ $!; exit 0"], capture_output=True, text=True,
                         check=True).stdout.split()
    pgid, member = int(out[0]), int(out[1])
    deadline = time.monotonic() + 5
    while not group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(pgid) == [member]
    return pgid, member


def test_stale_pidfile_never_signals_a_process_it_does_not_prove_ours(tmp_path):
    """A pidfile whose leader died (reboot, kill -9) names a process group that now holds someone else's
    process: status says not running and stop (what --tags cleanup runs) leaves that process alone,
    whether the pidfile is of the old format (no identity, even with that process's true start time)
    or names another token or another boot; `run` on such a pidfile does not take it over either."""
    pgid, member = _orphaned_group()
    try:
        ticks = start_ticks(member)
        forged = [
            Record(pid=pgid, pgid=pgid, start_ticks=1, argv=["old"], log="-"),
            Record(pid=pgid, pgid=pgid, start_ticks=1, argv=["x"], log="-", boot_id=boot_id(), token="0" * 32),
            Record(pid=member, pgid=pgid, start_ticks=ticks, argv=["x"], log="-", boot_id="another-boot",
                   token="0" * 32),
            # no identity token, but the live process's real start time and this boot: nothing proves it ours
            Record(pid=member, pgid=pgid, start_ticks=ticks, argv=["true"], log="-", boot_id=boot_id()),
            Record(pid=member, pgid=pgid, start_ticks=ticks, argv=["true"], log="-"),
        ]
        for record in forged:
            pidfile = tmp_path / "dht.pid"
            record.save(pidfile)
            assert status(pidfile)["running"] is False, record
            assert stop(pidfile, timeout=1)["changed"] is False
            assert start_ticks(member) == ticks, f"{record} killed someone else's process"
            if record.argv == ["true"]:  # the same command line: `run` would take over a run it proves ours
                record.save(pidfile)
                cli = subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "run", "--pidfile", str(pidfile),
                                      "--", "true"], capture_output=True, text=True, timeout=30)
                assert cli.returncode == 0 and "taking over" not in cli.stderr, cli.stderr
                assert start_ticks(member) == ticks, f"run on {record} killed someone else's process"
        # the low-level stop, given a group and an identity the process does not carry, signals nothing
        terminate(pgid, timeout=1, identity=Identity.new())
        assert start_ticks(member) == ticks
    finally:
        os.kill(member, 9)


def test_every_process_we_start_carries_the_identity_and_stop_ends_them_all(tmp_path):
    """The identity reaches helpers that leave the group (setsid), and stop ends them too."""
    pidfile, log = tmp_path / "x.pid", tmp_path / "x.log"
    start(["sh", "-c", "setsid sleep 301 & sleep 300"], pidfile, log)
    record = Record.load(pidfile)
    assert record is not None and record.identity is not None and record.boot_id == boot_id()
    time.sleep(0.3)
    family = set(group_members(record.pgid) + descendants(group_members(record.pgid)))
    assert len(family) == 3 and all(record.identity.carried_by(p) for p in family)
    stop(pidfile)
    assert not [p for p in family if start_ticks(p) is not None]


def test_the_leader_is_asked_first_and_several_groups_stop_at_once(tmp_path):
    """A leader that stops its own helper on SIGTERM (as the DHT and the servers do) is asked alone
    first, so its shutdown finds the helper alive; two groups stopped by one command stop together,
    each ended by SIGTERM, and one that ignores SIGTERM is reported as SIGKILL."""
    polite = 'trap \'kill $child; wait $child; echo clean >> "$0"; exit 0\' TERM; sleep 300 & child=$!; wait'
    stubborn = "trap '' TERM; sleep 300 & wait"
    pidfiles = [tmp_path / f"{name}.pid" for name in ("a", "b", "c")]
    marks = tmp_path / "marks"
    for pidfile, script in zip(pidfiles, (polite, polite, stubborn)):
        start(["sh", "-c", script, str(marks)], pidfile, tmp_path / f"{pidfile.stem}.log")
    time.sleep(0.3)
    groups = [Record.load(p).pgid for p in pidfiles]
    cli = subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "stop", "--timeout", "1",
                          *[f"--pidfile={p}" for p in pidfiles]], capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    result = json.loads(cli.stdout)
    assert result["changed"] is True
    assert [g["signal"] for g in result["groups"]] == ["SIGTERM", "SIGTERM", "SIGKILL"]
    assert [g["pidfile"] for g in result["groups"]] == [str(p) for p in pidfiles]
    assert marks.read_text().split() == ["clean", "clean"]  # both leaders ran their own shutdown
    assert all(group_members(pgid) == [] for pgid in groups)
