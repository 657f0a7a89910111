"""Result files: the original 7-column TSV (byte-for-byte format) and one JSON line of metadata per row.

Rows are appended as each configuration finishes, in single writes followed by fsync, so a crash
loses at most the configuration that was running; a rerun reads the TSV back and resumes.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench_client.core import provenance
from bench_client.core.sweep import SweepPoint

TSV_COLUMNS = ("batch_size", "num_micro_batches", "num_processes", "prompt_length", "new_tokens",
               "total_throughput", "mean_generate_latency_s")
SCHEMA_VERSION = 1
# What defines a measurement besides its sweep point: every row of one output must agree on these, so a
# rerun resumes only the same experiment (the run's choices first; the swarm's, known once connected).
RUN_IDENTITY = ("model", "dht_prefix", "client_dtype", "network_profile")
# Not the server count: a server replaced after a failure (or a stale DHT record) changes it, and resuming
# there is the point of resuming.
SWARM_IDENTITY = ("weight_dtype",)


class ResultsFileError(ValueError):
    pass


@dataclass(frozen=True)
class TsvRow:
    batch_size: int
    num_micro_batches: int
    num_processes: int
    prompt_length: int
    new_tokens: int
    total_throughput: float
    mean_generate_latency_s: float

    def format(self) -> str:
        # exactly the original: "\t".join(map(str, [...])) printed with a newline
        return "\t".join(map(str, (self.batch_size, self.num_micro_batches, self.num_processes, self.prompt_length,
                                   self.new_tokens, self.total_throughput, self.mean_generate_latency_s))) + "\n"

    @property
    def point(self) -> SweepPoint:
        return SweepPoint(self.prompt_length, self.new_tokens)


def metadata_path_for(tsv: str | Path) -> Path:
    tsv = Path(tsv)
    candidate = tsv.with_suffix(".jsonl")
    return candidate if candidate != tsv else tsv.with_name(tsv.name + ".meta.jsonl")


def parse_tsv_line(line: str, where: str) -> TsvRow:
    fields = line.rstrip("\n").split("\t")
    if len(fields) != len(TSV_COLUMNS):
        raise ResultsFileError(f"{where}: expected {len(TSV_COLUMNS)} tab-separated columns, found {len(fields)}")
    try:
        ints = [int(f) for f in fields[:5]]
        floats = [float(f) for f in fields[5:]]
    except ValueError:
        raise ResultsFileError(f"{where}: non-numeric field in {line.strip()!r}") from None
    return TsvRow(*ints, *floats)


def read_tsv(path: str | Path) -> list[TsvRow]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(keepends=True), start=1):
        if not line.strip():
            continue
        if not line.endswith("\n"):
            continue  # a torn last line (crash mid-write); repair_tail() drops it before appending
        rows.append(parse_tsv_line(line, f"{path}:{number}"))
    return rows


def repair_tail(path: Path) -> None:
    """Drop a last line without its newline, left by a crash in the middle of a write."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def check_writable(path: Path) -> None:
    """Refuse, before anything is measured, an output that is not a regular file we can append to (a
    directory, a device such as /dev/full, a FIFO, an immutable or read-only file): found out after the
    sweep, the results would be lost."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ResultsFileError(f"{path}: cannot be created ({parent} is not a writable directory)") from None
        return
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"),
                                             (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"))
                     if test(info.st_mode)), "special file")
        raise ResultsFileError(f"{path} is a {kind}, not a regular file; give a file name such as out_30b.tsv")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    except OSError as exc:
        raise ResultsFileError(f"{path} cannot be written ({exc.strerror}); results would be lost") from None


def append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = line.encode()
        while data:  # a short write (a nearly full disk) is not the whole line
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def append_lines(lines: list[tuple[Path, str]]) -> None:
    """Append each line to its file, all of them or none: on a failed write (a full disk, a quota) every
    file is cut back to its size before (truncating needs no space), so a TSV row never stands without
    its JSONL record and the rerun resumes from where the run stopped."""
    sizes = [(path, _size(path)) for path, _ in lines]
    try:
        for path, line in lines:
            append_line(path, line)
    except OSError as exc:
        for path, size in sizes:
            if path.exists():
                os.truncate(path, size)
        names = " nor ".join(str(path) for path, _ in lines)
        raise ResultsFileError(f"cannot write the row ({exc.strerror}): neither {names} was changed; free the "
                               "space and rerun, it resumes here") from None


class ResultsWriter:
    """Appends TSV rows and their metadata for one (batch, micro-batches, processes) setting."""

    def __init__(self, tsv: str | Path, metadata: str | Path | None = None):
        self.tsv = Path(tsv)
        self.metadata = Path(metadata) if metadata else metadata_path_for(self.tsv)
        # who launched the measurement and from which commit: in every row, asked once (git is slow)
        self.provenance = provenance.record()

    def done(self, batch_size: int, num_micro_batches: int, num_processes: int) -> Counter:
        """How many times each sweep point was already measured with this batch setting."""
        counts: Counter = Counter()
        for row in read_tsv(self.tsv):
            if (row.batch_size, row.num_micro_batches, row.num_processes) == (batch_size, num_micro_batches,
                                                                               num_processes):
                counts[row.point] += 1
        return counts

    def check_writable(self) -> None:
        for path in (self.tsv, self.metadata):
            check_writable(path)

    def check_identity(self, wanted: dict) -> None:
        """Every row already in the output was measured with ``wanted``'s values (model, dtype, profile,
        swarm): a rerun continues that experiment and nothing else. The TSV and its metadata must also
        describe the same measurements, row by row."""
        rows = read_tsv(self.tsv)
        records = [m for m in read_metadata(self.metadata) if m.get("status") == "ok"]
        if len(rows) != len(records):
            raise ResultsFileError(f"{self.tsv} has {len(rows)} rows but {self.metadata} describes {len(records)} "
                                   "measured ones, so what they measured cannot be checked; give a new --output")
        for number, (row, record) in enumerate(zip(rows, records), start=1):
            point = {"batch_size": row.batch_size, "num_micro_batches": row.num_micro_batches,
                     "num_processes": row.num_processes, "prompt_length": row.prompt_length,
                     "new_tokens": row.new_tokens}
            if any(record.get(k) != v for k, v in point.items()):
                raise ResultsFileError(f"{self.tsv}:{number} does not match line {number} of the measurements in "
                                       f"{self.metadata}; give a new --output")
            differs = [k for k, v in wanted.items() if record.get(k) != v]
            if differs:
                was = ", ".join(f"{k}={record.get(k)!r}" for k in differs)
                now = ", ".join(f"{k}={wanted[k]!r}" for k in differs)
                raise ResultsFileError(f"{self.tsv}:{number} was measured with {was}, this run has {now}; a rerun "
                                       "only resumes the same configuration: give another --output (or run_id)")

    def prepare(self) -> None:
        for path in (self.tsv, self.metadata):
            repair_tail(path)
        self._drop_record_without_row()

    def _drop_record_without_row(self) -> None:
        """A process killed between the two writes of a pair (the record first, then the row) left the JSONL
        one measured record ahead of the TSV, as its last line: that record describes a row that was never
        written, so it goes and the configuration is measured again. Anything else (a TSV without its
        JSONL, records missing in the middle) is left for check_identity to refuse."""
        if not self.metadata.exists():
            return
        lines = self.metadata.read_bytes().splitlines(keepends=True)
        records = read_metadata(self.metadata)
        ok = sum(1 for m in records if m.get("status") == "ok")
        if lines and records and records[-1].get("status") == "ok" and ok == len(read_tsv(self.tsv)) + 1:
            os.truncate(self.metadata, self.metadata.stat().st_size - len(lines[-1]))

    def append(self, row: TsvRow, metadata: dict) -> None:
        # the record first: a kill between the two leaves a record whose row is missing, which prepare()
        # recognises; a TSV row without its record could not be told from a TSV that never had metadata
        append_lines([(self.metadata, self._record(metadata)), (self.tsv, row.format())])

    def append_metadata(self, metadata: dict) -> None:
        append_lines([(self.metadata, self._record(metadata))])

    def _record(self, metadata: dict) -> str:
        return json.dumps({"schema": SCHEMA_VERSION, **metadata, **self.provenance}, sort_keys=True) + "\n"


def read_metadata(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ResultsFileError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return records
