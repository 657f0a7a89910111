"""The client session: one long-lived client process that keeps its worker processes (torch, petals,
the model's embeddings and LM head, their DHT) from one network profile to the next.

    python -m bench_client.client.session serve --control DIR      # started once: daemon start
    python -m bench_client.client.session submit --control DIR --pidfile P -- CLIENT-FLAGS...

``serve`` takes jobs from DIR, one at a time: each is the one-shot client's command line
(``python -m bench_client`` flags), measured by the same code (bench_client.client.cli.measure),
so every job re-reads the swarm (servers, GPUs), takes the swarm's lock (--lock) for the job, checks
and resumes its output and writes each row as it is measured; every generate() still opens its own
inference sessions and every configuration still warms up first. Only the worker pool is kept, while
the next job asks for the same processes (model, peers, device, count); a pool whose configuration
failed is stopped. SIGTERM stops the session and its workers at once (well under 2 s).

``submit`` (no torch, no petals: it starts in a blink) is what the bench_client role runs per profile,
under ``daemon run`` like the one-shot client (so one benchmark per swarm and the takeover of an
interrupted run are unchanged): it writes the job atomically, waits for its done file and exits with
the job's exit code, its messages on stderr. Killed (a rerun taking over), it withdraws the job; where
no session runs, or the session dies before the job is done, it measures the job itself, in this
process, exactly as ``python -m bench_client`` (which resumes after the rows already written).

The control directory: ``job.json`` (written by submit, renamed to ``running.json`` when the session
takes it), ``cancel`` (the id of a withdrawn job), ``done-<id>.json`` ({"code", "stderr"}), and
``prestart.json`` ({"argv": CLIENT-FLAGS}), read once when the session starts: it loads the pool those
flags ask for at once, so that the client processes import torch and petals and build the model while
the servers are still starting (the bench_client role starts the session right after the DHT). The
first job asking for the same processes finds them loaded; one asking for others replaces them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import time
import uuid
from pathlib import Path

from bench_client.core.processes import descendants, exit_on_sigterm, start_ticks, stop_processes, write_atomically
from bench_client.core.provenance import COMMIT_ENV, DIRTY_ENV, LAUNCHER_ENV
from bench_client.core.arguments import description

JOB, RUNNING, CANCEL, PRESTART = "job.json", "running.json", "cancel", "prestart.json"
JOB_ENV = (LAUNCHER_ENV, COMMIT_ENV, DIRTY_ENV)  # what launched the rows: per job, the session may outlive a run
CANCELLED = 143  # the job was withdrawn (its submitter was stopped)
POLL = 0.2


def done_path(control: Path, job_id: str) -> Path:
    return control / f"done-{job_id}.json"


# ---- serve ----

class KeptPools:
    """Worker pools kept between jobs: the one for the last spec, while it is healthy."""

    def __init__(self) -> None:
        self.pool = None
        self.key = None

    def get(self, spec, num_processes: int, load_timeout: float):
        from bench_client.client.workers import WorkerPool

        key = (spec, num_processes)
        if self.pool is not None and (self.key != key or not self.pool.alive()):
            self.drop()
        if self.pool is None:
            print(f"session: starting {num_processes} client processes", file=sys.stderr, flush=True)
            self.pool, self.key = WorkerPool(spec, num_processes, load_timeout=load_timeout), key
        else:
            print(f"session: reusing {num_processes} client processes (pids {self.pids()})", file=sys.stderr,
                  flush=True)
        return self.pool

    def release(self, pool, healthy: bool) -> None:
        if not healthy:
            self.drop()

    def pids(self) -> list[int]:
        return [p.pid for p in self.pool.processes] if self.pool is not None else []

    def drop(self) -> None:
        if self.pool is not None:
            pool, self.pool, self.key = self.pool, None, None
            pool.kill()


def _stderr_size() -> int | None:
    """Where the session's stderr (its log, a regular file) ends now; None where it is no file."""
    try:
        info = os.fstat(2)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _stderr_since(offset: int | None, limit: int = 256 * 1024) -> str:
    """What the session and its client processes wrote to stderr since ``offset``: the job's messages,
    as the one-shot client's stderr held them (sys.stderr is left alone: libraries wrap its fd)."""
    sys.stderr.flush()
    if offset is None:
        return ""
    try:
        with open("/proc/self/fd/2", "rb") as log:
            log.seek(offset)
            data = log.read()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")


def _cancelled(control: Path, job: dict):
    def check() -> bool:
        try:
            if (control / CANCEL).read_text().strip() == job["id"]:
                return True
        except OSError:
            pass
        return start_ticks(job["submitter_pid"]) != job["submitter_ticks"]  # killed without a word
    return check


def run_job(job: dict, pools: KeptPools, control: Path) -> tuple[int, str]:
    """One job: the one-shot client's code on the job's flags. Returns its exit code and its stderr."""
    from bench_client.client import cli
    from bench_client.client.workers import WorkerCancelled

    offset = _stderr_size()
    saved_env = {key: os.environ.get(key) for key in JOB_ENV}
    for key in JOB_ENV:
        os.environ.pop(key, None)
    os.environ.update({k: v for k, v in job.get("env", {}).items() if k in JOB_ENV})
    cwd = os.getcwd()
    try:
        os.chdir(job.get("cwd") or cwd)
        try:
            code = cli.measure(cli.build_parser().parse_args(job["argv"]), pools, _cancelled(control, job))
        except SystemExit as exc:  # fail() and argparse: their message is on stderr already
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except WorkerCancelled as exc:
            pools.drop()
            print(f"session: job withdrawn ({exc}); its client processes were stopped", file=sys.stderr)
            code = CANCELLED
        except Exception as exc:  # noqa: BLE001  (a bug must fail the job, not the session)
            import traceback

            pools.drop()
            traceback.print_exc()
            print(f"error: the client session failed on this job: {exc}", file=sys.stderr)
            code = 1
    finally:
        os.chdir(cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return int(code), _stderr_since(offset)


def prestart(control: Path, pools: KeptPools) -> None:
    """Load the pool of ``prestart.json``'s flags, if there is one (it is removed: read once). A failure
    (the DHT not answering yet, a bad flag) only costs the head start: the first job starts its pool."""
    from bench_client.client import cli
    from bench_client.core.models import get_model
    from bench_client.swarm.peers import resolve_initial_peers

    try:
        argv = json.loads((control / PRESTART).read_text())["argv"]
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"session: unreadable {PRESTART} ignored: {exc}", file=sys.stderr, flush=True)
        (control / PRESTART).unlink(missing_ok=True)
        return
    (control / PRESTART).unlink(missing_ok=True)
    began = time.monotonic()
    try:
        args = cli.build_parser().parse_args(argv)
        spec = cli.build_worker_spec(args, get_model(args.prefix), resolve_initial_peers(args.initial_peers),
                                     cli.resolve_device(args.device))
        pools.get(spec, args.num_processes, args.config_timeout)
    except (Exception, SystemExit) as exc:  # noqa: BLE001  (argparse and fail() exit; the job will say it again)
        pools.drop()
        print(f"session: no head start ({type(exc).__name__}: {exc}); the first job starts the client processes",
              file=sys.stderr, flush=True)
        return
    print(f"session: client processes loaded ahead of the first job in {time.monotonic() - began:.1f} s",
          file=sys.stderr, flush=True)


def serve(control: Path, idle_timeout: float) -> int:
    control.mkdir(parents=True, exist_ok=True)
    pools = KeptPools()

    exit_on_sigterm()  # SIGTERM (daemon stop) and Ctrl-C both end the loop below through KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"session: serving jobs from {control} (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        prestart(control, pools)
        idle_since = time.monotonic()
        while True:
            try:
                os.replace(control / JOB, control / RUNNING)  # atomic: the job is ours, or withdrawn
            except FileNotFoundError:
                if time.monotonic() - idle_since > idle_timeout:
                    print(f"session: no job for {idle_timeout:.0f} s; exiting", file=sys.stderr)
                    return 0
                time.sleep(POLL)
                continue
            try:
                job = json.loads((control / RUNNING).read_text())
            except (OSError, ValueError) as exc:
                print(f"session: unreadable job ignored: {exc}", file=sys.stderr, flush=True)
                (control / RUNNING).unlink(missing_ok=True)
                continue
            print(f"session: job {job['id']}: {' '.join(job['argv'])[:300]}", file=sys.stderr, flush=True)
            code, stderr = run_job(job, pools, control)
            write_atomically(done_path(control, job["id"]), json.dumps({"code": code, "stderr": stderr,
                                                                        "session_pid": os.getpid(),
                                                                        "worker_pids": pools.pids()}) + "\n")
            (control / RUNNING).unlink(missing_ok=True)
            print(f"session: job {job['id']} done, exit code {code}", file=sys.stderr, flush=True)
            idle_since = time.monotonic()
    except KeyboardInterrupt:
        print("session: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the workers are stopped below, not twice over
        began = time.monotonic()
        # every process this session started: the client processes with their DHT processes and p2pd,
        # torch_shm_manager (it calls setsid); not multiprocessing's resource tracker, which ignores
        # SIGTERM and exits by itself once the session is gone (its pipe closes)
        tracker = _resource_tracker_pid()
        stop_processes(lambda: [pid for pid in descendants([os.getpid()]) if pid != tracker], timeout=1.0)
        print(f"session: stopped its processes in {time.monotonic() - began:.2f} s", file=sys.stderr, flush=True)


def _resource_tracker_pid() -> int | None:
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    return getattr(getattr(tracker, "_resource_tracker", None), "_pid", None)


# ---- submit ----

def _session_running(pidfile: Path) -> bool:
    from bench_client.core.daemon import Record, is_running

    record = Record.load(pidfile)
    return record is not None and is_running(record)


def submit(control: Path, pidfile: Path, argv: list[str]) -> int:
    job_id = uuid.uuid4().hex
    pid = os.getpid()
    job = {"id": job_id, "argv": argv, "cwd": os.getcwd(), "submitter_pid": pid, "submitter_ticks": start_ticks(pid),
           "env": {k: os.environ[k] for k in JOB_ENV if k in os.environ}}
    done = done_path(control, job_id)
    withdrawn = [False]

    def withdraw(signum, frame):  # noqa: ARG001  (a rerun taking over, the role's stop, Ctrl-C)
        withdrawn[0] = True
        write_atomically(control / CANCEL, job_id + "\n")
        raise KeyboardInterrupt

    if not _session_running(pidfile):
        return _one_shot(argv, "no client session runs")
    control.mkdir(parents=True, exist_ok=True)
    (control / JOB).unlink(missing_ok=True)  # one submitter at a time (daemon run): a stale job is no one's
    signal.signal(signal.SIGTERM, withdraw)
    signal.signal(signal.SIGINT, withdraw)
    try:
        write_atomically(control / JOB, json.dumps(job) + "\n")
        while not done.exists():
            if not _session_running(pidfile):
                try:  # not taken yet: take it back; taken: the session died on it
                    os.replace(control / JOB, control / f".withdrawn-{job_id}")
                    (control / f".withdrawn-{job_id}").unlink()
                except FileNotFoundError:
                    pass
                if not done.exists():
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    return _one_shot(argv, "the client session stopped before the job was done")
            time.sleep(POLL)
    except KeyboardInterrupt:
        deadline = time.monotonic() + 3.0  # the session stops the job's workers, then says so
        while withdrawn[0] and not done.exists() and time.monotonic() < deadline and _session_running(pidfile):
            time.sleep(0.1)
        done.unlink(missing_ok=True)
        return CANCELLED
    result = json.loads(done.read_text())
    done.unlink(missing_ok=True)
    sys.stderr.write(result["stderr"])
    print(f"measured by the client session (pid {result['session_pid']}, client processes {result['worker_pids']})",
          file=sys.stderr)
    return int(result["code"])


def _one_shot(argv: list[str], why: str) -> int:
    print(f"{why}: measuring in this process (python -m bench_client)", file=sys.stderr, flush=True)
    from bench_client.client.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench_client.client.session", description=description(__doc__))
    sub = parser.add_subparsers(dest="action", required=True)
    p_serve = sub.add_parser("serve", help="keep the client's processes and measure the jobs of DIR")
    p_serve.add_argument("--control", required=True, type=Path)
    p_serve.add_argument("--idle-timeout", type=float, default=3600.0,
                         help="exit after this many seconds without a job (a run interrupted for good)")
    p_submit = sub.add_parser("submit", help="have the session measure one profile (python -m bench_client flags)")
    p_submit.add_argument("--control", required=True, type=Path)
    p_submit.add_argument("--pidfile", required=True, type=Path, help="the session's pidfile (daemon start)")
    p_submit.add_argument("client_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "serve":
        code = serve(args.control, args.idle_timeout)
        sys.stderr.flush()
        os._exit(code)  # no interpreter shutdown: hivemind's and multiprocessing's exit hooks can hang

    client_args = args.client_args[1:] if args.client_args[:1] == ["--"] else args.client_args
    return submit(args.control, args.pidfile, client_args)


if __name__ == "__main__":
    sys.exit(main())
