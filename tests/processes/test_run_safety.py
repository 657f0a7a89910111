"""A run never measures into someone else's results or alongside another run (real client CLI and
daemon, real files, no swarm needed: each refusal comes before connecting):
- an output that already holds rows of another configuration (model, client dtype, profile) is refused,
  never "nothing to do"; a TSV without the metadata that says what it measured is refused;
- an output that cannot take the rows (an immutable file, a device) is refused before measuring;
- a second benchmark on a swarm meets the lock with a clear message; ``daemon run`` refuses another
  command on the same pidfile and takes over from the same command left running by an interrupted run.
``CASES`` feeds docs/bad-inputs.md (tests/make_bad_input_table.py)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from bench_client.core.daemon import Record, is_running
from bench_client.core.processes import start_ticks
from bench_client.core.results import ResultRecord, ResultsWriter, TsvRow

PEER = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWMqGg3Zdg4XvFxZD8cojWEqgqqJevewu4hpPzEWsjPtA9"
MEASURED = {"model": "netbench/tiny", "dht_prefix": "netbench/tiny", "client_dtype": "float32",
            "network_profile": "none", "batch_size": 1, "num_micro_batches": 1, "num_processes": 1,
            "prompt_length": 8, "new_tokens": 2, "status": "ok"}


def rows_of(**changes) -> Callable[[Path], None]:
    """An output with one row measured with MEASURED (plus ``changes``), written by the real writer."""
    def make(tmp: Path) -> None:
        ResultsWriter(tmp / "out.tsv").append(TsvRow(1, 1, 1, 8, 2, 1.5, 0.5), ResultRecord.of({**MEASURED, **changes}))
    return make


def tsv_only(tmp: Path) -> None:
    (tmp / "out.tsv").write_text("1\t1\t1\t8\t2\t1.5\t0.5\n")


def immutable(tmp: Path) -> None:
    (tmp / "out.tsv").write_text("")
    subprocess.run(["chattr", "+i", str(tmp / "out.tsv")], check=True)


def locked(tmp: Path) -> None:
    """Another benchmark holds the swarm's lock (a real process holding a real flock)."""
    (tmp / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(tmp / 'run' / 'client.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid 1234 measuring into a.tsv')\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    LOCK_HOLDERS.append(holder)


LOCK_HOLDERS: list[subprocess.Popen] = []
BASE = ["--initial_peers", PEER, "--prefix", "netbench/tiny", "--output", "{tmp}/out.tsv", "--prompt-lengths", "8",
        "--new-tokens", "2", "--token-sweep", "none", "-b", "1", "--num-micro-batches", "1", "--num-processes", "1",
        "--network-profile", "none"]
# name -> (what is there before, extra client arguments, expected message)
CASES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "resume other model": (rows_of(model="facebook/opt-125m", dht_prefix="facebook/opt-125m"), [],
                           "was measured with model='facebook/opt-125m', dht_prefix='facebook/opt-125m', this run has "
                           "model='netbench/tiny'"),
    "resume other client dtype": (rows_of(client_dtype="bfloat16"), [], "was measured with client_dtype='bfloat16'"),
    "resume other profile": (rows_of(network_profile="paper-10ms-1gbit"), [],
                             "was measured with network_profile='paper-10ms-1gbit'"),
    "resume tsv without metadata": (tsv_only, [], "has 1 rows but"),
    "output immutable": (immutable, [], "cannot be written (Operation not permitted)"),
    "output /dev/full": (lambda tmp: None, ["--output", "/dev/full"], "/dev/full is a character device"),
    "swarm locked": (locked, ["--lock", "{tmp}/run/client.lock"], "another benchmark runs on this swarm (pid 1234"),
}


def run_case(name: str, tmp: Path, client: tuple[str, ...] = ("-m", "bench_client")) -> tuple[int, str]:
    """Run the client on the case (checking it changed no file); returns (exit code, error line)."""
    setup, extra, _ = CASES[name]
    setup(tmp)
    before = {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file()}
    argv = [a.replace("{tmp}", str(tmp)) for a in BASE + extra]
    try:
        result = subprocess.run([sys.executable, *client, *argv], capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(tmp / "out.tsv")], capture_output=True)
        while LOCK_HOLDERS:
            holder = LOCK_HOLDERS.pop()
            holder.kill()
            holder.wait()
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    after = {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file()}
    assert after == before, "a refused run changed the output"
    return result.returncode, lines[-1] if lines else result.stderr.strip()[-300:]


@pytest.mark.parametrize("name", list(CASES))
def test_refused_before_measuring(name, tmp_path):
    if name == "output immutable" and os.geteuid() != 0:
        pytest.fail("chattr +i needs root (CI runs as root)")
    code, message = run_case(name, tmp_path)
    assert code in (2, 6) and CASES[name][2] in message, (code, message)


def test_the_client_session_refuses_as_the_one_shot_client_and_stops_at_once(tmp_path_factory):
    """The client session (bench_client.client.session, what the role runs per profile) gives each job
    the one-shot client's exit code and error line; one session serves every job; SIGTERM ends it at once."""
    home = tmp_path_factory.mktemp("session")
    control, pidfile = home / "control", home / "session.pid"
    subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "start", "--pidfile", str(pidfile), "--log",
                    str(home / "session.log"), "--", sys.executable, "-m", "bench_client.client.session", "serve",
                    "--control", str(control)], check=True, capture_output=True, timeout=60)
    session = Record.load(pidfile)
    submit = ("-m", "bench_client.client.session", "submit", "--control", str(control), "--pidfile", str(pidfile), "--")
    try:
        names = ["resume other profile", "swarm locked", "output /dev/full"]
        for name in names:
            alone, via = tmp_path_factory.mktemp("alone"), tmp_path_factory.mktemp("via")
            code, message = run_case(name, alone)
            assert run_case(name, via, submit) == (code, message.replace(str(alone), str(via))), name
            assert session is not None and is_running(session) and Record.load(pidfile) == session
        assert (home / "session.log").read_text().count("session: job") == 2 * len(names)  # taken, done
    finally:
        began = time.monotonic()
        stopped = subprocess.run([sys.executable, "-m", "bench_client.core.daemon", "stop", "--pidfile", str(pidfile)],
                                 capture_output=True, text=True, timeout=60)
    assert '"signal": "SIGTERM"' in stopped.stdout and time.monotonic() - began < 2.0, stopped.stdout


def test_same_configuration_resumes_and_the_lock_is_released(tmp_path):
    """The control: the same configuration passes the checks ("nothing to do" for what is done) and a
    lock whose holder is gone is taken without a word."""
    rows_of()(tmp_path)
    lock = tmp_path / "client.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(fd)  # the holder went away (its lock with it)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in BASE + ["--lock", str(lock)]]
    result = subprocess.run([sys.executable, "-m", "bench_client", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "nothing to do" in result.stderr, result.stderr


def _daemon_run(pidfile: Path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench_client.core.daemon", "run", "--pidfile", str(pidfile), "--",
                             *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(pidfile: Path, pid_not: int | None = None) -> Record:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = Record.load(pidfile)
        if record is not None and record.pid != pid_not and is_running(record):
            return record
        time.sleep(0.05)
    raise AssertionError(f"{pidfile} never named a running command")


def test_daemon_run_refuses_another_command_and_takes_over_the_same(tmp_path):
    pidfile = tmp_path / "client.pid"
    first = _daemon_run(pidfile, "sleep", "301")
    try:
        record = _wait_for(pidfile)
        other = _daemon_run(pidfile, "sleep", "302")
        _, err = other.communicate(timeout=30)
        assert other.returncode == 2 and "another benchmark runs on this swarm" in err, err
        assert start_ticks(record.pid) == record.start_ticks, "the refused run touched the running one"
        # an interrupted run's rerun: the same command line stops the stale one (proven ours) and runs
        # (also when only the output is the same: tests/ansible/test_one_run_per_swarm.py, through site.yml)
        again = _daemon_run(pidfile, "sleep", "301")
        new = _wait_for(pidfile, pid_not=record.pid)
        assert start_ticks(record.pid) is None and first.wait(timeout=10) is not None
        assert "taking over" in again.stderr.readline()
        assert Record.load(pidfile) == new, "the stopped run's wrapper removed the new run's pidfile"
    finally:
        for proc in (first, locals().get("again")):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=10)
    assert not pidfile.exists()


def test_rows_from_a_swarm_with_other_weights_are_not_resumed(tmp_path):
    """The check the client makes once connected: the swarm's weight dtype is the rows' (real writer)."""
    from bench_client.core.results import ResultsFileError

    rows_of(weight_dtype="float32")(tmp_path)
    writer = ResultsWriter(tmp_path / "out.tsv")
    writer.check_identity({"weight_dtype": "float32"})
    with pytest.raises(ResultsFileError, match="was measured with weight_dtype='float32', this run has "
                                               "weight_dtype='bfloat16'"):
        writer.check_identity({"weight_dtype": "bfloat16"})
