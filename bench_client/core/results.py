"""Result files: the original 7-column TSV (byte-for-byte format) and one JSON line of metadata per row.

Rows are appended as each configuration finishes, in single writes followed by fsync, so a crash
loses at most the configuration that was running; a rerun reads the TSV back and resumes.

The JSON line is a ``ResultRecord``, the one record every system writes (the Petals client,
FlexGen, transformers) and the report reads: the fields common to all of them at the top, a
system's own under ``system_fields``. Schema 1 (before the record) was one flat object: it still
reads, every field the record does not know becoming a system field.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench_client.core import provenance
from bench_client.core.processes import fail
from bench_client.core.sweep import SweepPoint

TSV_COLUMNS = ("batch_size", "num_micro_batches", "num_processes", "prompt_length", "new_tokens",
               "total_throughput", "mean_generate_latency_s")
SCHEMA_VERSION = 2  # 2: ResultRecord (system_fields); 1: one flat object
READABLE_SCHEMAS = (1, 2)
# What defines a measurement besides its sweep point: every row of one output must agree on these, so a
# rerun resumes only the same experiment (the run's choices first; the swarm's, known once connected).
RUN_IDENTITY = ("model", "dht_prefix", "client_dtype", "network_profile")
# Not the server count: a server replaced after a failure (or a stale DHT record) changes it, and resuming
# there is the point of resuming.
SWARM_IDENTITY = ("weight_dtype",)


class ResultsFileError(ValueError):
    pass


@dataclass
class ResultRecord:
    """One measured (or failed) configuration of any system: the JSONL line beside its TSV row."""

    system: str | None = None  # a name of bench_client.systems' registry
    run_id: str | None = None
    model: str | None = None
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None
    # the sweep point (the TSV's first five columns) and which pass of --repeats measured it
    batch_size: int | None = None
    num_micro_batches: int | None = None
    num_processes: int | None = None
    prompt_length: int | None = None
    new_tokens: int | None = None
    repeat: int | None = None
    # the metrics (core.metrics), None where a failed configuration has none
    total_tokens: int | None = None
    wall_time_s: float | None = None
    total_throughput: float | None = None
    per_gpu_throughput: float | None = None
    mean_generate_latency_s: float | None = None
    prefill_time_s: float | None = None
    decode_time_s: float | None = None
    per_token_latency_s: float | None = None
    # what measured it
    num_gpus: int | None = None
    num_gpus_source: str | None = None
    num_servers: int | None = None
    server_gpus: list = field(default_factory=list)
    weight_dtype: str | None = None
    network_profile: str | None = None
    network: dict | None = None  # what the netem role applied and measured (network.json); None: unshaped
    client_host: str | None = None
    versions: dict = field(default_factory=dict)
    started_at: str | None = None  # ISO 8601 UTC
    finished_at: str | None = None
    launcher: str | None = None  # core.provenance.record(): who launched it, from which commit
    git: dict | None = None
    system_fields: dict = field(default_factory=dict)  # the system's own (a policy, a warm-up, client pids)
    schema: int = SCHEMA_VERSION

    @classmethod
    def of(cls, values: dict[str, Any]) -> ResultRecord:
        """A record from one flat dict: the common fields by name, everything else the system's own."""
        known = {f.name for f in fields(cls)} - {"system_fields", "schema"}
        return cls(**{k: v for k, v in values.items() if k in known},
                   system_fields={k: v for k, v in values.items() if k not in known and k not in ("schema", "system_fields")}
                   | dict(values.get("system_fields") or {}))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRecord:
        """A JSONL line of either schema (a schema-1 line has its system's fields at the top; a line without
        a schema is the oldest, flat, format)."""
        schema = data.get("schema", 1)
        if schema not in READABLE_SCHEMAS:
            raise ResultsFileError(f"schema {schema!r} is not supported (expected one of "
                                   f"{', '.join(map(str, READABLE_SCHEMAS))})")
        return cls.of(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def get(self, name: str, default: Any = None) -> Any:
        """A common field or, failing that, one of the system's own."""
        if name in self.__dataclass_fields__ and name != "system_fields":
            value = getattr(self, name)
            return default if value is None else value
        return self.system_fields.get(name, default)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """A run id where none is given: the UTC time and a random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def load_extra_metadata(path: str | None) -> dict:
    """``--extra-metadata FILE``: a JSON object merged into every record (the role's network.json)."""
    if not path:
        return {}
    try:
        if not Path(path).is_file():  # /dev/zero would be read forever
            fail(f"--extra-metadata {path} is not a regular file")
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"--extra-metadata {path}: {exc}")
    if not isinstance(data, dict):
        fail(f"--extra-metadata {path} must hold a JSON object")
    return data


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
        records = [m for m in read_records(self.metadata) if m.status == "ok"]
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

    def append(self, row: TsvRow, record: ResultRecord) -> None:
        # the record first: a kill between the two leaves a record whose row is missing, which prepare()
        # recognises; a TSV row without its record could not be told from a TSV that never had metadata
        append_lines([(self.metadata, self._line(record)), (self.tsv, row.format())])

    def append_metadata(self, record: ResultRecord) -> None:
        append_lines([(self.metadata, self._line(record))])

    def _line(self, record: ResultRecord) -> str:
        stamped = ResultRecord.of({**record.to_dict(), **self.provenance})
        return json.dumps(stamped.to_dict(), sort_keys=True) + "\n"


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


def read_records(path: str | Path) -> list[ResultRecord]:
    """The results JSONL as records (either schema)."""
    return [ResultRecord.from_dict(data) for data in read_metadata(path)]
