"""What launched a row and from which commit (bench_client.core.provenance), through the results writer."""

from __future__ import annotations

import subprocess

from bench_client.core import provenance
from bench_client.core.results import ResultsWriter, TsvRow, read_metadata


def test_rows_record_the_bare_client_and_this_checkouts_commit(tmp_path, monkeypatch):
    for name in (provenance.LAUNCHER_ENV, provenance.COMMIT_ENV, provenance.DIRTY_ENV):
        monkeypatch.delenv(name, raising=False)
    head = subprocess.run(["git", "-C", str(provenance.PROJECT_DIR), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    writer = ResultsWriter(tmp_path / "out.tsv")
    writer.append(TsvRow(1, 1, 1, 16, 4, 1.0, 1.0), {"status": "ok"})
    [row] = read_metadata(tmp_path / "out.jsonl")
    assert row["launcher"] == "client" and row["git"]["commit"] == head and isinstance(row["git"]["dirty"], bool)


def test_a_launchers_word_wins_over_git(tmp_path, monkeypatch):
    """A launcher (Ansible, local_swarm) passes its commit where the client has no checkout."""
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123abc")
    monkeypatch.setenv(provenance.DIRTY_ENV, "true")
    assert provenance.environment("local_swarm") == {provenance.LAUNCHER_ENV: "local_swarm",
                                                     provenance.COMMIT_ENV: "0123abc", provenance.DIRTY_ENV: "true"}
    monkeypatch.setenv(provenance.LAUNCHER_ENV, "ansible")
    writer = ResultsWriter(tmp_path / "out.tsv")
    writer.append_metadata({"status": "failed", "launcher": "someone else", "git": None})
    [row] = read_metadata(tmp_path / "out.jsonl")
    # the writer's word: no --extra-metadata file can pass a row off as another launcher's
    assert row["git"] == {"commit": "0123abc", "dirty": True} and row["launcher"] == "ansible"


def test_a_launchers_dirty_flag_in_the_usual_spellings(monkeypatch):
    monkeypatch.setenv(provenance.COMMIT_ENV, "0123abc")
    for text, dirty in [("0", False), ("1", True), ("no", False), ("True", True), ("maybe", None)]:
        monkeypatch.setenv(provenance.DIRTY_ENV, text)
        assert provenance.git_state() == {"commit": "0123abc", "dirty": dirty}, text
