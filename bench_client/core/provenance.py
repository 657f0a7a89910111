"""What launched a measurement and from which source: recorded in every JSONL row by the results writer.

A launcher (the Ansible roles, local_swarm) says who it is and which commit of this project it runs
through the environment of the client it starts, because the client may run where there is no git
checkout (a host that got the harness as a wheel, a container, a GPU host given a copy of the tree):

    NETBENCH_LAUNCHER    ansible | local_swarm (unset: the client was started by hand, "client")
    NETBENCH_GIT_COMMIT  the commit the launcher runs (unset: asked of git in this package's checkout)
    NETBENCH_GIT_DIRTY   true | false (or 1 | 0, yes | no): tracked files differ from that commit

git is asked only where its top level is this project's root: a copy of the tree inside another
repository (a tarball unpacked in a lab's repo, a vendored copy, a wheel in a checkout's .venv) would
otherwise record that repository's commit. Where neither the launcher nor git knows, the row carries
the code digest instead. ``source`` says which of the three it is: launcher | git | code_hash.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # bench_client/
PROJECT_DIR = PACKAGE_DIR.parent  # the checkout (or site-packages, for a wheel)
LAUNCHER_ENV, COMMIT_ENV, DIRTY_ENV = "NETBENCH_LAUNCHER", "NETBENCH_GIT_COMMIT", "NETBENCH_GIT_DIRTY"
BARE_CLIENT = "client"
DIRTY_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _git(*args: str) -> str | None:
    """git's answer about PROJECT_DIR, or None (no git, not a repository, or another project's)."""
    try:
        done = subprocess.run(["git", "-C", str(PROJECT_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git on this host
    return done.stdout if done.returncode == 0 else None


def own_checkout() -> bool:
    """Is PROJECT_DIR the top level of a git work tree (not a folder inside another repository)?"""
    top = _git("rev-parse", "--show-toplevel")
    return top is not None and Path(top.strip()).resolve() == PROJECT_DIR.resolve()


def git_state() -> dict[str, Any]:
    """``{"commit", "dirty", "source"}`` of this project: the launcher's word (environment) first, then
    git where this package's checkout is its own repository; else no commit and the code digest
    (``source: code_hash``, ``code_hash``): a wheel install started by hand, a copy in another repo."""
    commit = os.environ.get(COMMIT_ENV) or None
    if commit:
        dirty_text = os.environ.get(DIRTY_ENV, "").strip().lower()
        # anything else is "not known" rather than a guess
        return {"commit": commit, "dirty": DIRTY_WORDS.get(dirty_text), "source": "launcher"}
    head = _git("rev-parse", "HEAD") if own_checkout() else None
    if head is None:
        return {"commit": None, "dirty": None, "source": "code_hash", "code_hash": code_hash()}
    # untracked files (wheels, results) are not the code that ran; modified tracked files are
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head.strip(), "dirty": None if status is None else bool(status.strip()), "source": "git"}


def code_hash() -> str:
    """A digest of this installed bench_client's own files (path and bytes of every .py, .sh and .txt):
    the same for a git checkout and a wheel of the same code, so a host's harness can be compared with
    the controller's however it was installed."""
    package = PACKAGE_DIR
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".sh", ".txt") and p.is_file()
                       and "__pycache__" not in p.parts):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def launcher() -> str:
    return os.environ.get(LAUNCHER_ENV) or BARE_CLIENT


def environment(launched_by: str) -> dict[str, str]:
    """The variables a launcher puts in its client's environment (its own name and this git state)."""
    state = git_state()
    env = {LAUNCHER_ENV: launched_by}
    if state["commit"]:
        env[COMMIT_ENV] = state["commit"]
        if state["dirty"] is not None:
            env[DIRTY_ENV] = "true" if state["dirty"] else "false"
    return env


def record() -> dict[str, Any]:
    """The fields every JSONL row carries."""
    return {"launcher": launcher(), "git": git_state()}
