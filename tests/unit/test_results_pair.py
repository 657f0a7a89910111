"""A TSV row and its JSONL record are written as a pair or not at all (issue 24, class 7): with one free
page the TSV row was written, the JSONL write failed with a traceback, and the rerun refused the output
(rows and records no longer agreed), so the run could not be resumed. A real full file system (a tmpfs
of a few pages) and a row left without its record by a kill between the two writes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bench_client.core.results import (ResultRecord, ResultsFileError, ResultsWriter, TsvRow, append_line, read_metadata,
                                       read_tsv)

PAGE = 4096


def _row(prompt: int) -> tuple[TsvRow, ResultRecord]:
    return (TsvRow(1, 1, 1, prompt, 4, 10.0, 0.5),
            ResultRecord.of({"batch_size": 1, "num_micro_batches": 1, "num_processes": 1, "prompt_length": prompt,
                             "new_tokens": 4, "status": "ok", "model": "netbench/tiny", "padding": "x" * 200}))


@pytest.fixture
def small_fs(tmp_path: Path):
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={16 * PAGE},mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill(mount: Path) -> Path:
    """Take every free page of the file system."""
    filler = mount / "filler"
    filler.write_bytes(b"\0" * (os.statvfs(mount).f_bavail * PAGE))
    assert os.statvfs(mount).f_bavail == 0
    return filler


@pytest.mark.root
def test_a_full_disk_writes_neither_line_and_the_rerun_resumes(small_fs: Path):
    writer = ResultsWriter(small_fs / "out.tsv")
    writer.append(*_row(16))  # the first pair: each file has a page now
    # a failed configuration's record fills the JSONL's page to its last byte: its next record needs a new
    # page, while the TSV's next row still fits in its own
    jsonl = small_fs / "out.jsonl"
    frame = '{"status": "failed", "pad": ""}\n'
    append_line(jsonl, frame.replace('""', '"' + "x" * (PAGE - jsonl.stat().st_size - len(frame)) + '"'))
    assert jsonl.stat().st_size == PAGE
    filler = _fill(small_fs)
    with pytest.raises(ResultsFileError, match=r"cannot write the row \(No space left on device\): neither ") as err:
        writer.append(*_row(32))
    assert "out.tsv" in str(err.value) and "out.jsonl" in str(err.value) and "rerun, it resumes here" in str(err.value)
    assert [r.prompt_length for r in read_tsv(small_fs / "out.tsv")] == [16]
    filler.unlink()  # space again: the rerun resumes where the run stopped
    again = ResultsWriter(small_fs / "out.tsv")
    again.prepare()
    again.check_identity({"model": "netbench/tiny"})
    again.append(*_row(32))
    assert [r.prompt_length for r in read_tsv(small_fs / "out.tsv")] == [16, 32]
    assert [m["prompt_length"] for m in read_metadata(small_fs / "out.jsonl") if m.get("status") == "ok"] == [16, 32]


def test_a_record_left_without_its_row_is_measured_again(tmp_path: Path):
    """Killed between the two writes: the JSONL ends with a measured record whose TSV row was never
    written. The rerun drops that record and measures the configuration again; a TSV without any
    metadata is still refused, never cut."""
    writer = ResultsWriter(tmp_path / "out.tsv")
    writer.append(*_row(16))
    append_line(tmp_path / "out.jsonl", json.dumps(_row(32)[1].to_dict()) + "\n")  # the first half of a pair
    again = ResultsWriter(tmp_path / "out.tsv")
    again.prepare()
    again.check_identity({"model": "netbench/tiny"})
    assert [m["prompt_length"] for m in read_metadata(tmp_path / "out.jsonl")] == [16]
    assert [r.prompt_length for r in read_tsv(tmp_path / "out.tsv")] == [16]
    bare = tmp_path / "bare.tsv"
    bare.write_text(_row(16)[0].format())
    seed = ResultsWriter(bare)
    seed.prepare()
    with pytest.raises(ResultsFileError, match="has 1 rows but"):
        seed.check_identity({})
    assert bare.read_text() == _row(16)[0].format()
