"""Reading benchmark results for the report: the original 7-column TSV plus our JSONL metadata.

Every problem in the input raises ``ReportInputError`` naming the file and line, before anything is
written. A TSV without a JSONL beside it is usable: what only the metadata knows (model, GPU count,
GPU name, dtype, profile) comes from ``Defaults`` (the report's flags) or stays unknown.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench_client.core.metrics import per_gpu
from bench_client.core.models import ModelSpec, UnknownModelError, get_model
from bench_client.systems import registry
from bench_client.systems.base import System

# The original client's 7 columns, as our client writes them: column 6 is the whole swarm's
# tokens/s (NOT per GPU), column 7 the mean wall time of one whole generate() call (NOT per token).
from bench_client.core.results import READABLE_SCHEMAS, TSV_COLUMNS, ResultRecord, metadata_path_for

_INT_COLUMNS = TSV_COLUMNS[:5]
MIXED_GPUS = "mixed: "  # gpu_name prefix of a swarm with several GPU models: no single roofline
# Relative tolerance for JSONL numbers that must equal the TSV's (str() of a float round-trips; this
# leaves room for a writer that rounds).
_MATCH_REL_TOL = 1e-3


class ReportInputError(ValueError):
    """Bad input; str() is the one-line message that names the file and line."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Defaults:
    """Values for results whose JSONL lacks them (or that have no JSONL at all)."""

    model: str | None = None
    num_gpus: int | None = None
    gpu_name: str | None = None
    weight_dtype: str | None = None
    network_profile: str | None = None


UNSHAPED = ("none", "", None)
# A paper-style profile name ("paper-10ms-100mbit", "10ms-1gbit"): read only for a row whose results do
# not record the conditions (a TSV without its JSONL, given --network-profile)
_PROFILE_NAME = re.compile(r"(?:paper-)?(\d+(?:\.\d+)?)ms-(\d+(?:\.\d+)?)(g|m|k)bit", re.IGNORECASE)
_MBIT = {"g": 1000.0, "m": 1.0, "k": 0.001}


def _rate_text(mbit: float) -> str:
    if mbit >= 1000:
        return f"{mbit / 1000:g} Gbit/s"
    return f"{mbit:g} Mbit/s" if mbit >= 1 else f"{mbit * 1000:g} kbit/s"


@dataclass(frozen=True)
class Network:
    """The conditions a row was measured under: what the netem role applied (the record's
    ``network.profile``) and what it measured (the mean over the shaped servers of ``network.hosts``)."""

    delay_ms: float = 0.0
    rate_mbit: float = 0.0  # 0: no rate limit
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    measured_rtt_ms: float | None = None
    measured_rate_mbit: float | None = None

    @property
    def shaped(self) -> bool:
        return bool(self.delay_ms or self.rate_mbit or self.jitter_ms or self.loss_pct)

    @property
    def label(self) -> str:
        """'10 ms / 100 Mbit/s' (the paper's way), 'no shaping' without any."""
        if not self.shaped:
            return "no shaping"
        delay = f"{self.delay_ms:g} ms" + (f" ± {self.jitter_ms:g} ms" if self.jitter_ms else "")
        parts = [delay, _rate_text(self.rate_mbit) if self.rate_mbit else "no rate limit"]
        return " / ".join(parts) + (f", {self.loss_pct:g} % loss" if self.loss_pct else "")

    @property
    def severity(self) -> tuple[float, float, float]:
        """Ordering, mildest first: more delay, then less bandwidth (none = unlimited), then more loss."""
        return (self.delay_ms, -(self.rate_mbit or math.inf), self.loss_pct)

    @classmethod
    def of(cls, name: str | None, record: Any) -> Network | None:
        """From what the results record (``record``: the row's ``network`` section, or None where the run
        did not shape); None where neither the record nor a paper-style name says (a custom profile of a
        TSV without its JSONL)."""
        applied = record.get("profile") if isinstance(record, dict) else None
        if isinstance(applied, dict):
            hosts = [h for h in (record.get("hosts") or {}).values() if isinstance(h, dict)]
            return cls(delay_ms=_number(applied.get("delay_ms")), rate_mbit=_number(applied.get("rate_mbit")),
                       jitter_ms=_number(applied.get("jitter_ms")), loss_pct=_number(applied.get("loss_pct")),
                       measured_rtt_ms=_mean([h.get("rtt_ms") for h in hosts]),
                       measured_rate_mbit=_mean([h.get("rate_mbit") for h in hosts]))
        if name in UNSHAPED:
            return cls()
        match = _PROFILE_NAME.fullmatch(name or "")
        if match:
            delay, rate, unit = match.groups()
            return cls(delay_ms=float(delay), rate_mbit=float(rate) * _MBIT[unit.lower()])
        return None


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) / len(numbers) if numbers else None


@dataclass(frozen=True)
class ResultRow:
    source: str  # TSV path (or JSONL path for a failed configuration without a TSV row)
    line: int  # 1-based line in ``source``
    batch_size: int
    num_micro_batches: int
    num_processes: int
    prompt_length: int
    new_tokens: int
    total_throughput: float | None  # whole swarm, tokens/s
    mean_generate_latency_s: float | None  # one whole generate() call
    per_token_latency_s: float | None = None  # only from JSONL: the true per-token latency
    model: str | None = None
    spec: ModelSpec | None = None
    weight_dtype: str | None = None
    network_profile: str | None = None
    num_gpus: int | None = None  # None: unknown; 0: no GPU (CPU servers)
    # how the client counted num_gpus: "flag", "dht-gpus" or "dht-servers" (no GPU seen: one per server)
    num_gpus_source: str | None = None
    num_servers: int | None = None
    gpu_name: str | None = None
    run_id: str | None = None
    metadata_at: str | None = None  # "path:line" of the JSONL record, None without metadata
    status: str = "ok"
    error: str | None = None
    system: str = registry.DEFAULT.name  # a name of bench_client.systems' registry; records before the field: its default
    repeat: int | None = None  # which measurement of a configuration measured --repeats times
    network: Network | None = Network()  # the conditions recorded (None: unknown)
    profile_name: str | None = None  # the profile's own name (network_profile adds a custom one's conditions)

    @property
    def system_info(self) -> System:
        return registry.of_record(self.system)

    @property
    def network_text(self) -> str:
        """The row's network as the report labels it: a one-GPU system has none; a custom profile shows
        its name beside the conditions the results record."""
        system = self.system_info
        if not system.networked:
            return "one GPU (no network)"
        if self.network is None:
            return str(self.network_profile)
        label = self.network.label
        name = self.profile_name or self.network_profile
        plain = name in UNSHAPED or (name or "").startswith("paper-") or _PROFILE_NAME.fullmatch(name or "")
        return label if plain else f"{label} ({name})"

    @property
    def network_order(self) -> tuple[float, ...]:
        """Mildest network first; unknown conditions last."""
        return self.network.severity if self.network is not None else (math.inf, 0.0, 0.0)

    @property
    def batch_setting(self) -> str:
        return f"{self.batch_size}x{self.num_micro_batches}x{self.num_processes}"

    @property
    def per_gpu_throughput(self) -> float | None:
        """Swarm throughput / number of GPUs; None when the GPU count is unknown or zero (never / 1)."""
        return None if self.total_throughput is None else per_gpu(self.total_throughput, self.num_gpus)

    @property
    def single_gpu_model(self) -> str | None:
        """The GPU model every server uses, or None (unknown or mixed)."""
        return None if not self.gpu_name or self.gpu_name.startswith(MIXED_GPUS) else self.gpu_name

    @property
    def per_server(self) -> bool:
        """The divisor counts servers, not GPUs (a CPU swarm): the "per-GPU" number is per server."""
        return self.num_gpus_source == "dht-servers"

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        return (self.batch_size, self.num_micro_batches, self.num_processes, self.prompt_length, self.new_tokens)


@dataclass
class Results:
    rows: list[ResultRow]  # successful configurations
    failed: list[ResultRow]  # configurations the JSONL marks as failed
    warnings: list[str]


def find_tsv_files(paths: list[Path]) -> list[Path]:
    """TSV files named directly or found under directories (recursively, sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            tsvs = sorted(p for p in path.rglob("*.tsv") if p.is_file())
            if not tsvs:
                raise ReportInputError(path, None, "no .tsv result files in this directory")
            found.extend(tsvs)
        elif path.is_file():
            if path.suffix == ".jsonl":
                raise ReportInputError(path, None, "give the TSV, not its .jsonl metadata (found beside the TSV)")
            found.append(path)  # a TSV named by hand may have any suffix (the seed's out_30b.tsv, out.txt)
        else:
            raise ReportInputError(path, None, "no such file or directory")
    unique: list[Path] = []
    for path in found:
        if path.resolve() not in {p.resolve() for p in unique}:
            unique.append(path)
    return unique


def _parse_int(text: str, path: Path, line: int, column: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ReportInputError(path, line, f"column {column} is {text!r}, not an integer") from None
    if value < 0:
        raise ReportInputError(path, line, f"column {column} is negative ({value})")
    return value


def _parse_float(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ReportInputError(path, line, f"column {column} is {text!r}, not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ReportInputError(path, line, f"column {column} is {text!r}, not a finite non-negative number")
    return value


def _lines(path: Path, notes: list[str]) -> list[str]:
    """The file's complete lines. A last line without its newline is a write torn by a crash: the
    client's writer drops it before appending again, so it is no result (and is noted)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReportInputError(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    if torn.strip():
        notes.append(f"{path}:{len(lines) + 1}: ignored an incomplete last line (no newline: a write torn by a crash?)")
    return [line.rstrip("\r") for line in lines]


def read_tsv(path: Path, notes: list[str]) -> list[ResultRow]:
    rows: list[ResultRow] = []
    for number, text in enumerate(_lines(path, notes), start=1):
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != len(TSV_COLUMNS):
            raise ReportInputError(
                path,
                number,
                f"{len(fields)} tab-separated columns, expected {len(TSV_COLUMNS)} ({', '.join(TSV_COLUMNS)})",
            )
        ints = [_parse_int(fields[i].strip(), path, number, TSV_COLUMNS[i]) for i in range(5)]
        throughput = _parse_float(fields[5].strip(), path, number, TSV_COLUMNS[5])
        latency = _parse_float(fields[6].strip(), path, number, TSV_COLUMNS[6])
        if ints[4] == 0 and throughput != 0:
            # the original client's throughput counts generated tokens only: 0 by definition here
            raise ReportInputError(path, number, f"0 new tokens but total_throughput {throughput} (must be 0)")
        rows.append(ResultRow(str(path), number, *ints, total_throughput=throughput, mean_generate_latency_s=latency))
    if not rows:
        raise ReportInputError(path, None, "no result rows")
    return rows


def _jsonl_int(record: ResultRecord, name: str, path: Path, line: int) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportInputError(path, line, f"field {name!r} is {value!r}, expected a non-negative integer")
    return value


def _jsonl_optional_number(record: ResultRecord, name: str, path: Path, line: int) -> float | None:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ReportInputError(
            path, line, f"field {name!r} is {value!r}, expected a finite non-negative number or null"
        )
    return float(value)


def _jsonl_optional_int(record: ResultRecord, name: str, path: Path, line: int) -> int | None:
    if record.get(name) is None:
        return None
    return _jsonl_int(record, name, path, line)


# bench_client.swarm.blocks writes one "host/device: GPU name" per distinct GPU, e.g. "gpu1/cuda:0: NVIDIA H100 PCIe"
_HOST_DEVICE_PREFIX = re.compile(r"^[^/\s]+/\S+: ")


def gpu_names(value: Any) -> list[str]:
    """Distinct GPU model names in ``server_gpus`` (names, "host/device: name", dicts with "name", nested)."""
    names: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, str):
            name = _HOST_DEVICE_PREFIX.sub("", item).strip()
            if name and name not in names:
                names.append(name)
        elif isinstance(item, dict):
            if isinstance(item.get("name"), str):
                walk(item["name"])
            else:
                for sub in item.values():
                    walk(sub)
        elif isinstance(item, (list, tuple)):
            for sub in item:
                walk(sub)

    walk(value)
    return names


def read_jsonl(path: Path, notes: list[str]) -> list[tuple[int, ResultRecord]]:
    records: list[tuple[int, ResultRecord]] = []
    for number, raw in enumerate(_lines(path, notes), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ReportInputError(path, number, f"not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ReportInputError(path, number, "not a JSON object")
        schema = record.get("schema", 1)  # none: the oldest, flat, format
        if schema not in READABLE_SCHEMAS:
            raise ReportInputError(path, number, f"schema {schema!r} is not supported (expected one of "
                                   f"{', '.join(map(str, READABLE_SCHEMAS))})")
        status = record.get("status")
        if status not in ("ok", "failed"):
            raise ReportInputError(path, number, f"status {status!r}, expected 'ok' or 'failed'")
        records.append((number, ResultRecord.from_dict(record)))
    return records


def _resolve_model(name: str | None) -> tuple[str | None, ModelSpec | None]:
    if not name:
        return None, None
    try:
        spec = get_model(name)
    except UnknownModelError:
        return name, None  # still reported, without roofline or anchors
    return spec.name, spec


def network_label(name: str | None, network: Any) -> str | None:
    """The row's network as cells are keyed and labelled: a custom profile's name with the conditions the
    netem role applied (the record's network.profile), so 'wan' at 10 ms and 'wan' at 100 ms are never one
    cell. Paper profiles keep their names (the plan refuses a paper-* name with other values)."""
    applied = network.get("profile") if isinstance(network, dict) else None
    if not name or not isinstance(applied, dict) or name.startswith("paper-"):
        return name
    parts = [f"{applied.get('delay_ms') or 0:g} ms"]
    if applied.get("jitter_ms"):
        parts[0] += f" ± {applied['jitter_ms']:g} ms"
    if applied.get("rate_mbit"):
        parts.append(f"{applied['rate_mbit']:g} Mbit/s")
    if applied.get("loss_pct"):
        parts.append(f"{applied['loss_pct']:g} % loss")
    if applied.get("limit"):
        parts.append(f"limit {applied['limit']}")
    return f"{name} ({', '.join(parts)})"


def _row_from_record(base: ResultRow, record: ResultRecord, path: Path, line: int, defaults: Defaults) -> ResultRow:
    """Merge one JSONL record into its TSV row (or build a failed row), filling gaps from ``defaults``."""
    names = gpu_names(record.get("server_gpus"))
    gpu_name = names[0] if len(names) == 1 else (f"{MIXED_GPUS}{', '.join(names)}" if names else defaults.gpu_name)
    num_gpus = _jsonl_optional_int(record, "num_gpus", path, line)
    model, spec = _resolve_model(record.get("model") or defaults.model)
    row = replace(
        base,
        per_token_latency_s=_jsonl_optional_number(record, "per_token_latency_s", path, line),
        model=model,
        spec=spec,
        weight_dtype=record.get("weight_dtype") or defaults.weight_dtype,
        network_profile=network_label(record.get("network_profile") or defaults.network_profile, record.get("network")),
        num_gpus=num_gpus if num_gpus is not None else defaults.num_gpus,
        num_gpus_source=record.get("num_gpus_source") if num_gpus is not None else _flag_source(defaults),
        num_servers=_jsonl_optional_int(record, "num_servers", path, line),
        gpu_name=gpu_name,
        run_id=record.get("run_id"),
        metadata_at=f"{path}:{line}",
        status=record.status,
        error=record.get("error"),
        system=registry.of_record(record.get("system")).name,
        repeat=_jsonl_optional_int(record, "repeat", path, line),
        network=Network.of(record.get("network_profile") or defaults.network_profile, record.get("network")),
        profile_name=record.get("network_profile") or defaults.network_profile,
    )
    return row


def _check_record_matches(row: ResultRow, record: ResultRecord, path: Path, line: int, tsv: Path) -> None:
    for name in ("total_throughput", "mean_generate_latency_s"):
        value = _jsonl_optional_number(record, name, path, line)
        expected = getattr(row, name)
        if value is None or not math.isclose(value, expected, rel_tol=_MATCH_REL_TOL, abs_tol=1e-12):
            raise ReportInputError(path, line, f"{name} {value!r} does not match {tsv}:{row.line} ({expected!r})")
    recorded = _jsonl_optional_number(record, "per_gpu_throughput", path, line)
    num_gpus = record.get("num_gpus")
    if recorded is not None and isinstance(num_gpus, int) and num_gpus > 0:
        expected = row.total_throughput / num_gpus
        if not math.isclose(recorded, expected, rel_tol=_MATCH_REL_TOL, abs_tol=1e-12):
            raise ReportInputError(
                path, line, f"per_gpu_throughput {recorded!r} is not total_throughput / num_gpus ({expected!r})"
            )


def _key_of(record: ResultRecord, path: Path, line: int) -> tuple[int, int, int, int, int]:
    return tuple(_jsonl_int(record, name, path, line) for name in _INT_COLUMNS)  # type: ignore[return-value]


def pair_with_metadata(
    tsv: Path, rows: list[ResultRow], jsonl: Path, defaults: Defaults, notes: list[str]
) -> tuple[list[ResultRow], list[ResultRow]]:
    """Match TSV rows with JSONL records by configuration, in order (reruns may repeat a configuration).

    Returns (ok rows, failed rows). A failed configuration may have no TSV row (the client leaves
    it out so that a rerun retries it); every successful record needs its TSV row and vice versa.
    """
    records = read_jsonl(jsonl, notes)
    ok_by_key: dict[tuple, list[tuple[int, ResultRecord]]] = {}
    failed_by_key: dict[tuple, list[tuple[int, ResultRecord]]] = {}
    for line, record in records:
        target = ok_by_key if record.status == "ok" else failed_by_key
        target.setdefault(_key_of(record, jsonl, line), []).append((line, record))

    ok_rows: list[ResultRow] = []
    failed_rows: list[ResultRow] = []
    for row in rows:
        if ok_by_key.get(row.key):
            line, record = ok_by_key[row.key].pop(0)
            _check_record_matches(row, record, jsonl, line, tsv)
            ok_rows.append(_row_from_record(row, record, jsonl, line, defaults))
        elif failed_by_key.get(row.key):
            line, record = failed_by_key[row.key].pop(0)
            failed_rows.append(_row_from_record(row, record, jsonl, line, defaults))
        else:
            raise ReportInputError(
                tsv,
                row.line,
                f"no record in {jsonl} for configuration {row.batch_setting}, prompt {row.prompt_length}, "
                f"{row.new_tokens} new tokens",
            )
    for pending in ok_by_key.values():
        for line, _record in pending:
            raise ReportInputError(jsonl, line, f"status 'ok' but {tsv} has no row for this configuration")
    measured = {row.key for row in ok_rows}
    for key, pending in failed_by_key.items():
        for line, record in pending:
            if key in measured:
                continue  # failed once, measured by a rerun: the client resumes at failed configurations
            base = ResultRow(str(jsonl), line, *key, total_throughput=None, mean_generate_latency_s=None)
            failed_rows.append(_row_from_record(base, record, jsonl, line, defaults))
    return ok_rows, failed_rows


def _flag_source(defaults: Defaults) -> str | None:
    return "report --num-gpus" if defaults.num_gpus is not None else None


def _apply_defaults(row: ResultRow, defaults: Defaults) -> ResultRow:
    model, spec = _resolve_model(defaults.model)
    return replace(
        row,
        model=model,
        spec=spec,
        weight_dtype=defaults.weight_dtype,
        network_profile=defaults.network_profile,
        network=Network.of(defaults.network_profile, None),
        profile_name=defaults.network_profile,
        num_gpus=defaults.num_gpus,
        num_gpus_source=_flag_source(defaults),
        gpu_name=defaults.gpu_name,
    )


def load_results(paths: list[Path], defaults: Defaults, metadata: Path | None = None) -> Results:
    """Every result under ``paths``; ``metadata`` names the JSONL of a single TSV kept elsewhere."""
    results = Results(rows=[], failed=[], warnings=[])
    tsvs = find_tsv_files(paths)
    if metadata is not None:
        if len(tsvs) != 1:
            raise ReportInputError(metadata, None, f"--metadata needs exactly one TSV, got {len(tsvs)}")
        if not metadata.is_file():
            raise ReportInputError(metadata, None, "no such metadata file")
    for tsv in tsvs:
        rows = read_tsv(tsv, results.warnings)
        jsonl = metadata or metadata_path_for(tsv)  # the client's default: same name, .jsonl
        if jsonl.is_file():
            ok, failed = pair_with_metadata(tsv, rows, jsonl, defaults, results.warnings)
            results.rows.extend(ok)
            results.failed.extend(failed)
        else:
            results.rows.extend(_apply_defaults(row, defaults) for row in rows)
            notes = []
            if defaults.num_gpus is None:
                notes.append("GPU count unknown (--num-gpus): no per-GPU throughput")
            if defaults.model is None:
                notes.append("model unknown (--model): no anchors or roofline")
            detail = "; ".join(notes) if notes else "model, GPUs etc. from the flags"
            results.warnings.append(f"{tsv}: no metadata ({jsonl.name}) beside it: {detail}")
    for path in paths:
        if path.is_dir():
            for orphan in sorted(path.rglob("*.jsonl")):
                if not orphan.with_suffix(".tsv").is_file():
                    results.warnings.append(f"{orphan}: ignored, no TSV with the same name beside it")
    if not results.rows:
        detail = (
            f" ({len(results.failed)} failed configurations, first: {results.failed[0].error})"
            if results.failed
            else ""
        )
        raise ReportInputError(", ".join(str(p) for p in paths), None, f"no successful result rows{detail}")
    return results
