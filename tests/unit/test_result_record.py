"""The one result record every system writes (core.results.ResultRecord): old files still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench_client.core.results import ResultRecord, ResultsFileError, ResultsWriter, TsvRow, read_metadata, read_records
from bench_client.report.data import Defaults, load_results

# A row exactly as the Petals client wrote it before the record (schema 1: one flat object).
TODAY = {
    "schema": 1, "system": "petals", "run_id": "r1", "model": "netbench/tiny", "dht_prefix": "netbench/tiny",
    "batch_size": 1, "num_micro_batches": 1, "num_processes": 2, "num_gpus": 2, "num_gpus_source": "dht-servers",
    "warmup": "shape", "num_servers": 2, "server_gpus": [], "weight_dtype": "float32", "server_torch_dtypes": ["float32"],
    "server_quant_types": ["none"], "client_host": "h", "client_device": "cpu", "client_gpu": None,
    "client_dtype": "float32", "versions": {"torch": "2.4.1"}, "network_profile": "none", "network": None,
    "prompt_length": 16, "new_tokens": 4, "sweep_index": 0, "repeat": 0, "total_tokens": 8, "wall_time_s": 0.5,
    "total_throughput": 16.0, "per_gpu_throughput": 8.0, "mean_generate_latency_s": 0.5, "prefill_time_s": 0.2,
    "decode_time_s": 0.3, "per_token_latency_s": 0.1, "tokens_generated_per_call": [4], "warmup_kind": "full",
    "warmup_s": 0.4, "started_at": "2026-12-01T10:00:00+00:00", "finished_at": "2026-12-01T10:00:01+00:00",
    "status": "ok", "error": None, "client_pids": [11, 12], "launcher": "ansible",
    "git": {"commit": "abc", "dirty": False, "source": "git"},
}


def test_a_row_in_todays_format_reads_as_a_record():
    record = ResultRecord.from_dict(TODAY)
    assert (record.system, record.model, record.prompt_length, record.total_throughput) == ("petals", "netbench/tiny", 16, 16.0)
    # what only the Petals client knows is the system's own
    assert record.system_fields["client_pids"] == [11, 12] and record.system_fields["warmup_kind"] == "full"
    assert "total_throughput" not in record.system_fields and "schema" not in record.system_fields
    assert record.get("client_dtype") == "float32" and record.get("model") == "netbench/tiny"
    # written again, it is schema 2 with the same values
    again = record.to_dict()
    assert again["schema"] == 2 and again["system_fields"]["dht_prefix"] == "netbench/tiny"
    assert ResultRecord.from_dict(again) == record


def test_a_line_without_a_schema_is_the_oldest_format_and_an_unknown_one_is_refused():
    assert ResultRecord.from_dict({"status": "failed", "pad": ""}).system_fields == {"pad": ""}
    with pytest.raises(ResultsFileError, match="schema 3 is not supported"):
        ResultRecord.from_dict({"schema": 3})


def test_a_file_of_todays_rows_resumes_and_reports_with_new_ones_after_them(tmp_path: Path):
    """A rerun of a run measured before the record: the writer checks the old rows' identity, appends
    schema-2 rows, and the report reads both."""
    tsv = tmp_path / "none" / "out.tsv"
    tsv.parent.mkdir()
    tsv.write_text("1\t1\t2\t16\t4\t16.0\t0.5\n")
    (tmp_path / "none" / "out.jsonl").write_text(json.dumps(TODAY) + "\n")
    writer = ResultsWriter(tsv)
    writer.prepare()
    writer.check_identity({"model": "netbench/tiny", "dht_prefix": "netbench/tiny", "client_dtype": "float32",
                           "network_profile": "none"})
    new = ResultRecord.of({**TODAY, "schema": 2, "prompt_length": 32, "total_throughput": 12.0,
                           "per_gpu_throughput": 6.0, "mean_generate_latency_s": 0.6})
    writer.append(TsvRow(1, 1, 2, 32, 4, 12.0, 0.6), new)
    assert [line["schema"] for line in read_metadata(writer.metadata)] == [1, 2]
    assert [r.get("client_pids") for r in read_records(writer.metadata)] == [[11, 12], [11, 12]]
    rows = load_results([tmp_path], Defaults()).rows
    assert [(r.system, r.prompt_length, r.per_gpu_throughput) for r in rows] == [("petals", 16, 8.0), ("petals", 32, 6.0)]
