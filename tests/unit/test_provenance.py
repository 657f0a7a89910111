"""What launched a row and from which commit (bench_client.core.provenance), through the results writer."""

from __future__ import annotations

import subprocess

from bench_client.core import provenance
from bench_client.core.results import ResultRecord, ResultsWriter, TsvRow, read_metadata


def test_rows_record_the_bare_client_and_this_checkouts_commit(tmp_path, monkeypatch):
    for name in (provenance.LAUNCHER_ENV, provenance.COMMIT_ENV, provenance.DIRTY_ENV):
        monkeypatch.delenv(name, raising=False)
    head = subprocess.run(["git", "-C", str(provenance.PROJECT_DIR), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    writer = ResultsWriter(tmp_path / "out.tsv")
    writer.append(TsvRow(1, 1, 1, 16, 4, 1.0, 1.0), ResultRecord(status="ok"))
    [row] = read_metadata(tmp_path / "out.jsonl")
    assert row["launcher"] == "client" and row["git"]["commit"] == head and isinstance(row["git"]["dirty"], bool)
    assert row["git"]["source"] == "git"


def test_a_launchers_word_wins_over_git(tmp_path, monkeypatch):
    """A launcher (Ansible, local_swarm) passes its commit where the client has no checkout."""
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123abc")
    monkeypatch.setenv(provenance.DIRTY_ENV, "true")
    assert provenance.environment("local_swarm") == {provenance.LAUNCHER_ENV: "local_swarm",
                                                     provenance.COMMIT_ENV: "0123abc", provenance.DIRTY_ENV: "true"}
    monkeypatch.setenv(provenance.LAUNCHER_ENV, "ansible")
    writer = ResultsWriter(tmp_path / "out.tsv")
    writer.append_metadata(ResultRecord(status="failed", launcher="someone else", git=None))
    [row] = read_metadata(tmp_path / "out.jsonl")
    # the writer's word: no --extra-metadata file can pass a row off as another launcher's
    assert row["git"] == {"commit": "0123abc", "dirty": True, "source": "launcher"} and row["launcher"] == "ansible"


def test_a_launchers_dirty_flag_in_the_usual_spellings(monkeypatch):
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123abc")
    for text, dirty in [("0", False), ("1", True), ("no", False), ("True", True), ("maybe", None)]:
        monkeypatch.setenv(provenance.DIRTY_ENV, text)
        assert provenance.git_state() == {"commit": "0123abc", "dirty": dirty, "source": "launcher"}, text


def _state_of_copy(root, monkeypatch_env: dict[str, str]) -> dict:
    """git_state() as the copy of bench_client under ``root`` computes it, in its own interpreter."""
    import json
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k not in (provenance.COMMIT_ENV, provenance.DIRTY_ENV)}
    env.update(PYTHONPATH=str(root), **monkeypatch_env)
    out = subprocess.run([sys.executable, "-c", "import json; from bench_client.core import provenance as p; "
                          "print(json.dumps([p.git_state(), p.code_hash(), str(p.PROJECT_DIR)]))"],
                         capture_output=True, text=True, check=True, env=env, cwd=root).stdout
    return json.loads(out)


def _git_repo(path):
    path.mkdir(parents=True, exist_ok=True)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                                  "--allow-empty", "-m", "outer"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_copy_inside_another_repository_records_no_commit_of_that_repository(tmp_path):
    """A tarball of the tree unpacked in a lab's repository: git there answers with the lab's commit and
    'dirty: false' for code it never contained. The row must carry the code digest and say so."""
    import shutil

    outer = tmp_path / "lab"
    vendored = outer / "vendor" / "petals-netbench"
    shutil.copytree(provenance.PACKAGE_DIR, vendored / "bench_client", ignore=shutil.ignore_patterns("__pycache__"))
    lab_commit = _git_repo(outer)  # the copy is committed in the lab's repository, clean
    state, digest, project = _state_of_copy(vendored, {})
    assert project == str(vendored)
    assert state == {"commit": None, "dirty": None, "source": "code_hash", "code_hash": digest}, (state, lab_commit)
    assert digest == provenance.code_hash()  # the same code as this checkout's
    # the launcher's word still wins, and says it is the launcher's
    state, _, _ = _state_of_copy(vendored, {provenance.COMMIT_ENV: "0123abc", provenance.DIRTY_ENV: "false"})
    assert state == {"commit": "0123abc", "dirty": False, "source": "launcher"}


def test_a_copy_that_is_its_own_repository_records_its_commit(tmp_path):
    import shutil

    own = tmp_path / "checkout"
    shutil.copytree(provenance.PACKAGE_DIR, own / "bench_client", ignore=shutil.ignore_patterns("__pycache__"))
    commit = _git_repo(own)
    state, _, _ = _state_of_copy(own, {})
    assert state == {"commit": commit, "dirty": False, "source": "git"}
