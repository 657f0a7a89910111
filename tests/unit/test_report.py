"""Tests of ``python -m bench_client.report`` on small synthetic results written here.

The results are synthetic (made-up numbers in the real file formats: the original 7-column TSV and
our schema-1 JSONL), so the expected table values can be computed exactly. No GPU is involved: the
GPU names below only select an HBM bandwidth for the roofline.
"""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bench_client.core.models import get_model
from bench_client.report.cli import main
from bench_client.report.reference import PAPER_ANCHORS, gpu_bandwidth_gbps, roofline_tokens_per_s_per_gpu
from bench_client.report.table import CSV_COLUMNS

REPO = Path(__file__).resolve().parents[2]
H100 = "NVIDIA H100 80GB HBM3"
OPT30B_FP16_BYTES = get_model("facebook/opt-30b").model_bytes("float16")


def record(b, mb, p, prompt, new, throughput, latency, *, model="facebook/opt-30b", profile="10ms-1gbit",
           num_gpus=4, gpus=None, source="dht-gpus", dtype="float16", status="ok", error=None, run_id="run-1",
           per_token=True):
    """A schema-1 metadata record as bench_client.client.cli writes it (docs/architecture.md, section Results):
    server_gpus holds one "host/device: name" per distinct GPU."""
    if gpus is None:
        gpus = [f"gpu{i}/cuda:0: {H100}" for i in range(num_gpus)]
    return {
        "schema": 1, "run_id": run_id, "model": model, "dht_prefix": model, "weight_dtype": dtype,
        "batch_size": b, "num_micro_batches": mb, "num_processes": p, "prompt_length": prompt, "new_tokens": new,
        "total_tokens": b * mb * p * new, "wall_time_s": 1.0, "total_throughput": throughput,
        "mean_generate_latency_s": latency, "prefill_time_s": 0.1, "decode_time_s": latency - 0.1,
        "per_token_latency_s": (latency - 0.1) / new if per_token and new else None,
        "num_servers": num_gpus or 2, "num_gpus": num_gpus, "num_gpus_source": source,
        "per_gpu_throughput": throughput / num_gpus if num_gpus else None,
        "started_at": "2026-11-26T07:00:00Z", "finished_at": "2026-11-26T07:00:01Z", "client_host": "client",
        "client_device": "cpu", "client_gpu": None, "server_gpus": list(gpus),
        "versions": {"python": "3.11", "torch": "2.5", "petals": "2.2.0.post1", "hivemind": "1.1.12", "transformers": "4.43"},
        "network_profile": profile, "network": None, "status": status, "error": error,
    }


def write_run(directory: Path, records: list[dict], *, tsv_rows: list[dict] | None = None, jsonl: bool = True) -> Path:
    """Write out.tsv (the original client's format: str() of each value, no header) and out.jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [r for r in records if r["status"] == "ok"] if tsv_rows is None else tsv_rows
    tsv = directory / "out.tsv"
    tsv.write_text("".join(
        "\t".join(str(r[k]) for k in ("batch_size", "num_micro_batches", "num_processes", "prompt_length",
                                      "new_tokens", "total_throughput", "mean_generate_latency_s")) + "\n"
        for r in rows
    ))
    if jsonl:
        (directory / "out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tsv


def sweep(profile: str, scale: float, **kw) -> list[dict]:
    """Token sweep 0..32 at prompt 512, batch 2x1x6: latency grows with tokens, throughput saturates."""
    out = []
    for new in (0, 1, 8, 16, 32):
        latency = scale * (0.5 + 0.05 * new)
        throughput = 0.0 if new == 0 else 2 * 6 * new / latency
        out.append(record(2, 1, 6, 512, new, throughput, latency, profile=profile, **kw))
    return out


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """The layout Ansible fetches: results/<run-id>/<profile>/out.{tsv,jsonl}."""
    root = tmp_path / "results"
    write_run(root / "run-1" / "10ms-1gbit", sweep("10ms-1gbit", 1.0) + [record(1, 2, 6, 512, 32, 120.0, 3.2)])
    write_run(root / "run-1" / "100ms-100mbit", sweep("100ms-100mbit", 3.0, run_id="run-1"))
    return root


def run_report(*args: str | Path) -> int:
    return main([str(a) for a in args])


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------- table: columns, units, division


def test_table_has_columns_units_per_gpu_division_and_anchors(results_dir: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert run_report(results_dir, "--out", out) == 0

    table = read_csv(out / "table17.csv")
    assert list(table[0]) == [name for name, _ in CSV_COLUMNS]
    assert {r["new_tokens"] for r in table} == {"32"}, "the table is the 32-new-token rows (the paper's workload)"
    assert sorted((r["network_profile"], r["batch_setting"]) for r in table) == [
        ("100ms-100mbit", "2x1x6"), ("10ms-1gbit", "1x2x6"), ("10ms-1gbit", "2x1x6")]

    roofline_2 = 2 * 3350e9 / OPT30B_FP16_BYTES  # batch 2 on an H100 SXM
    for r in table:
        total = float(r["total_throughput_tokens_per_s"])
        assert float(r["per_gpu_throughput_tokens_per_s"]) == pytest.approx(total / 4, rel=1e-12)
        assert r["num_gpus"] == "4" and r["gpu"] == H100 and r["hbm_bandwidth_gb_per_s"] == "3350.0"
        batch = int(r["batch_size"])
        assert float(r["roofline_tokens_per_s_per_gpu"]) == pytest.approx(roofline_2 * batch / 2, rel=1e-12)
        assert float(r["roofline_fraction"]) == pytest.approx(total / 4 / (roofline_2 * batch / 2), rel=1e-12)
        assert (float(r["paper_petals_tokens_per_s_per_gpu"]), float(r["paper_flexgen_tokens_per_s"]),
                float(r["paper_flexgen_4bit_tokens_per_s"])) == (2.84, 7.32, 8.38)
        assert float(r["ours_vs_paper_petals"]) == pytest.approx(total / 4 / 2.84)
        # column 7 stays the whole generate() latency; the per-token one comes from the JSONL
        latency = float(r["mean_generate_latency_s"])
        assert float(r["per_token_latency_s"]) == pytest.approx((latency - 0.1) / 32)

    md = (out / "table17.md").read_text()
    for header in ("per-GPU throughput (tokens/s/GPU)", "swarm throughput (tokens/s)", "generate() latency (s)",
                   "per-token latency (s/token)", "HBM roofline (tokens/s/GPU)", "of roofline",
                   "paper Petals (tokens/s/GPU)", "paper FlexGen (tokens/s)", "paper FlexGen 4-bit (tokens/s)",
                   "batch × micro-batches × processes"):
        assert header in md
    every = md.split("## Every measurement")[1]  # the full table (before it: the paper's layout, claims, medians)
    row = next(line for line in every.splitlines() if "| 1x2x6 |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:7] == ["facebook/opt-30b", "petals", "float16", "10ms-1gbit", f"4 × {H100}", "1x2x6", "512 / 32"]
    assert cells[7:10] == ["120", "30.0", "3.20"]  # swarm, per GPU (= 120 / 4), generate() latency
    assert cells[12] == f"{100 * 30 / (roofline_2 / 2):.1f} %"
    assert cells[13:] == ["2.84", "7.32", "8.38"]


def test_anchors_only_at_the_paper_workload_and_for_each_model(tmp_path: Path):
    root = tmp_path / "r"
    records = [record(2, 1, 6, prompt, 32, 10.0, 2.0, model=m, num_gpus=n)
               for m, n in (("facebook/opt-6.7b", 1), ("opt6b", 1), ("facebook/opt-175b", 24))
               for prompt in (256, 512)]
    records = [dict(r, run_id=f"{r['model']}-{r['prompt_length']}") for r in records]
    for i, r in enumerate(records):
        write_run(root / str(i), [r])
    assert run_report(root, "--out", tmp_path / "o") == 0
    table = read_csv(tmp_path / "o" / "table17.csv")
    anchors = {(r["model"], r["prompt_length"]): r["paper_petals_tokens_per_s_per_gpu"] for r in table}
    # the DHT prefix opt6b is the same model as facebook/opt-6.7b
    assert anchors == {("facebook/opt-6.7b", "256"): "", ("facebook/opt-6.7b", "512"): "8.25",
                       ("facebook/opt-175b", "256"): "", ("facebook/opt-175b", "512"): "0.08"}
    flex = {r["model"]: (r["paper_flexgen_tokens_per_s"], r["paper_flexgen_4bit_tokens_per_s"])
            for r in table if r["prompt_length"] == "512"}
    assert flex == {"facebook/opt-6.7b": ("25.26", "29.12"), "facebook/opt-175b": ("0.69", "1.12")}
    assert {r["model"]: r["per_gpu_throughput_tokens_per_s"] for r in table if r["prompt_length"] == "512"} == {
        "facebook/opt-6.7b": "10.0", "facebook/opt-175b": repr(10.0 / 24)}


# ---------------------------------------------------------------- 0-new-token rows


def test_zero_new_token_rows_are_kept_without_dividing_by_their_throughput(results_dir: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert run_report(results_dir, "--out", out) == 0
    rows = read_csv(out / "rows.csv")
    assert len(rows) == 11
    zero = [r for r in rows if r["new_tokens"] == "0"]
    assert len(zero) == 2
    for r in zero:
        assert float(r["total_throughput_tokens_per_s"]) == 0.0
        assert float(r["per_gpu_throughput_tokens_per_s"]) == 0.0
        assert r["roofline_fraction"] == "" and r["per_token_latency_s"] == ""
        assert float(r["mean_generate_latency_s"]) > 0  # the prefill-only latency is a real measurement
    assert all(r["new_tokens"] != "0" for r in read_csv(out / "table17.csv"))


def test_zero_new_tokens_with_nonzero_throughput_is_rejected(tmp_path: Path, capsys):
    write_run(tmp_path / "r", [record(2, 1, 6, 512, 0, 5.0, 0.5)])
    assert run_report(tmp_path / "r", "--out", tmp_path / "o") == 2
    assert "out.tsv:1: 0 new tokens but total_throughput 5.0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- TSV without metadata


def test_tsv_without_metadata_is_never_divided_by_one(tmp_path: Path, capsys):
    write_run(tmp_path / "r", sweep("x", 1.0), jsonl=False)
    out = tmp_path / "o"
    assert run_report(tmp_path / "r", "--out", out) == 0
    assert "GPU count unknown (--num-gpus)" in capsys.readouterr().err
    table = read_csv(out / "table17.csv")
    assert len(table) == 1
    assert table[0]["per_gpu_throughput_tokens_per_s"] == "" and table[0]["num_gpus"] == ""
    assert table[0]["total_throughput_tokens_per_s"] != ""
    assert table[0]["roofline_fraction"] == "" and table[0]["per_token_latency_s"] == ""
    md = (out / "table17.md").read_text()
    assert "unknown (GPU count)" in md and "GPU count unknown" in md  # table cell, input note
    assert "Swarm throughput (not per GPU" not in md  # plot titles are in the PNG, not the md
    assert len(list(out.glob("tokens_*.png"))) == 1


def test_tsv_without_metadata_uses_the_flags(tmp_path: Path):
    write_run(tmp_path / "r", sweep("x", 1.0), jsonl=False)
    out = tmp_path / "o"
    assert run_report(tmp_path / "r" / "out.tsv", "--out", out, "--num-gpus", "4", "--model", "facebook/opt-30b",
                      "--gpu", "Tesla T4", "--weight-dtype", "int8", "--network-profile", "10ms-100mbit") == 0
    (r,) = read_csv(out / "table17.csv")
    per_gpu = float(r["total_throughput_tokens_per_s"]) / 4
    roofline = 2 * 320e9 / get_model("facebook/opt-30b").model_bytes("int8")
    assert float(r["per_gpu_throughput_tokens_per_s"]) == pytest.approx(per_gpu, rel=1e-12)
    assert float(r["roofline_tokens_per_s_per_gpu"]) == pytest.approx(roofline, rel=1e-12)
    assert float(r["roofline_fraction"]) == pytest.approx(per_gpu / roofline, rel=1e-12)
    assert (r["network_profile"], r["weight_dtype"], r["paper_petals_tokens_per_s_per_gpu"]) == ("10ms-100mbit", "int8", "2.84")


# ---------------------------------------------------------------- roofline arithmetic


def test_roofline_matches_the_reference_numbers():
    # shared/reference/paper-and-metrics.md: OPT-30B fp16 ~60 GB; batch 2 -> T4 10.7, H100 111, H200 160
    spec = get_model("facebook/opt-30b")
    assert spec.model_bytes("float16") / 1e9 == pytest.approx(60, rel=0.01)
    assert roofline_tokens_per_s_per_gpu(spec, "float16", 2, 320) == pytest.approx(10.7, abs=0.05)
    assert roofline_tokens_per_s_per_gpu(spec, "float16", 2, 3350) == pytest.approx(111, abs=1)
    assert roofline_tokens_per_s_per_gpu(spec, "float16", 2, 4800) == pytest.approx(160, abs=1)
    assert roofline_tokens_per_s_per_gpu(spec, "int8", 2, 320) == pytest.approx(21.4, abs=0.1)
    assert roofline_tokens_per_s_per_gpu(spec, "float16", 1, 320) == pytest.approx(5.34, abs=0.02)


@pytest.mark.parametrize("name, family, gbps", [
    ("Tesla T4", "T4", 320), ("NVIDIA H100 80GB HBM3", "H100 SXM", 3350), ("NVIDIA H100 PCIe", "H100 PCIe", 2000),
    ("NVIDIA H100 NVL", "H100 NVL", 3900), ("NVIDIA H200", "H200", 4800), ("NVIDIA A100-SXM4-40GB", "A100 40GB", 1555),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB", 2039), ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", 1935),
    ("NVIDIA L4", "L4", 300), ("NVIDIA A10G", "A10G", 600), ("Tesla V100-SXM2-16GB", "V100", 900),
    ("NVIDIA L40S", "L40/L40S", 864),
])
def test_gpu_bandwidth_is_matched_from_the_name(name, family, gbps):
    assert gpu_bandwidth_gbps(name) == (family, gbps)


@pytest.mark.parametrize("name", [None, "", "cpu", "Intel Xeon", "NVIDIA GeForce GTX 1080"])
def test_unknown_devices_have_no_bandwidth(name):
    assert gpu_bandwidth_gbps(name) is None


def test_anchor_table_is_the_papers():
    got = {m: (a.petals_per_gpu, a.flexgen, a.flexgen_4bit, a.paper_gpus) for m, a in PAPER_ANCHORS.items()}
    assert got == {"facebook/opt-6.7b": (8.25, 25.26, 29.12, 1), "facebook/opt-30b": (2.84, 7.32, 8.38, 4),
                   "facebook/opt-175b": (0.08, 0.69, 1.12, 24)}


def test_a_fraction_above_the_roofline_is_flagged(tmp_path: Path):
    # 1000 tokens/s on one T4 for OPT-30B in fp16 is physically impossible (roofline 10.7): wrong metadata
    write_run(tmp_path / "r", [record(2, 1, 6, 512, 32, 1000.0, 2.0, num_gpus=1, gpus=["h/cuda:0: Tesla T4"])])
    assert run_report(tmp_path / "r", "--out", tmp_path / "o") == 0
    (r,) = read_csv(tmp_path / "o" / "table17.csv")
    assert float(r["roofline_fraction"]) == pytest.approx(1000 / (2 * 320e9 / OPT30B_FP16_BYTES))
    assert "(above the limit: check GPU count, GPU and dtype)" in (tmp_path / "o" / "table17.md").read_text()


# ---------------------------------------------------------------- CPU swarms, failed configurations


def test_cpu_swarm_is_per_server_and_says_so(tmp_path: Path):
    # what the client records without GPUs: num_gpus counts the servers ("dht-servers"), server_gpus is empty
    write_run(tmp_path / "r" / "a", sweep("none", 1.0, model="netbench/tiny", num_gpus=2, gpus=(),
                                          source="dht-servers", dtype="float32"))
    # and a hand-written record with num_gpus 0
    write_run(tmp_path / "r" / "b", sweep("none", 1.0, model="netbench/tiny", num_gpus=0, gpus=(),
                                          source=None, dtype="float32", run_id="zero"))
    out = tmp_path / "o"
    assert run_report(tmp_path / "r", "--out", out) == 0
    table = {r["run_id"]: r for r in read_csv(out / "table17.csv")}
    a, b = table["run-1"], table["zero"]
    assert (a["num_gpus"], a["num_gpus_source"], a["gpu"], a["roofline_fraction"]) == ("2", "dht-servers", "", "")
    assert float(a["per_gpu_throughput_tokens_per_s"]) == pytest.approx(float(a["total_throughput_tokens_per_s"]) / 2)
    assert (b["num_gpus"], b["per_gpu_throughput_tokens_per_s"], b["roofline_fraction"]) == ("0", "", "")
    md = (out / "table17.md").read_text()
    assert "0 (2 servers without GPU)" in md and " per server (no GPU) |" in md and "n/a (no GPU)" in md
    assert sorted(p.name for p in out.glob("tokens_*.png")) == [
        "tokens_netbench-tiny-float32-2cpu-servers-b2x1x6-prompt512.png", "tokens_netbench-tiny-float32-cpu-b2x1x6-prompt512.png"]


def test_gpu_names_from_several_hosts_and_mixed_gpus(tmp_path: Path):
    write_run(tmp_path / "r" / "same", [record(2, 1, 6, 512, 32, 40.0, 2.0, num_gpus=2,
                                               gpus=["a/cuda:0: Tesla T4", "b/cuda:1: Tesla T4"], run_id="same")])
    write_run(tmp_path / "r" / "mixed", [record(2, 1, 6, 512, 32, 40.0, 2.0, num_gpus=2,
                                                gpus=["a/cuda:0: Tesla T4", "b/cuda:0: NVIDIA L4"], run_id="mixed")])
    assert run_report(tmp_path / "r", "--out", tmp_path / "o") == 0
    table = {r["run_id"]: r for r in read_csv(tmp_path / "o" / "table17.csv")}
    assert (table["same"]["gpu"], table["same"]["hbm_bandwidth_gb_per_s"]) == ("Tesla T4", "320.0")
    assert float(table["same"]["roofline_tokens_per_s_per_gpu"]) == pytest.approx(2 * 320e9 / OPT30B_FP16_BYTES)
    assert table["mixed"]["gpu"] == "mixed: Tesla T4, NVIDIA L4"
    assert table["mixed"]["roofline_tokens_per_s_per_gpu"] == "" and table["mixed"]["roofline_fraction"] == ""


def test_failed_configurations_are_listed_not_tabled(tmp_path: Path):
    records = sweep("p", 1.0)
    failed = record(2, 1, 6, 1024, 32, 0.0, 0.0, status="failed", error="TimeoutError: no route to block 17")
    failed.update(total_throughput=None, mean_generate_latency_s=None, per_gpu_throughput=None, per_token_latency_s=None)
    retried = dict(failed, prompt_length=512, new_tokens=16, error="lost, then measured by a rerun")
    write_run(tmp_path / "r", records[:3] + [retried] + records[3:] + [failed])  # failed ones are not in the TSV
    out = tmp_path / "o"
    assert run_report(tmp_path / "r", "--out", out) == 0
    md = (out / "table17.md").read_text()
    assert "## Failed configurations (1)" in md and "TimeoutError: no route to block 17" in md
    assert "measured by a rerun" not in md
    assert all(r["prompt_length"] == "512" for r in read_csv(out / "rows.csv"))


# ---------------------------------------------------------------- bad input


def _bad_tsv(lines: str):
    def make(root: Path) -> tuple[Path, str]:
        root.mkdir()
        (root / "out.tsv").write_text(lines)
        return root, "out.tsv"
    return make


def _bad_jsonl(mutate):
    def make(root: Path) -> tuple[Path, str]:
        records = sweep("p", 1.0)
        write_run(root, records)
        lines = [json.dumps(r) for r in records]
        mutate(lines, records)
        (root / "out.jsonl").write_text("\n".join(lines) + "\n")
        return root, "out.jsonl"
    return make


def _empty_dir(root: Path) -> tuple[Path, str]:
    root.mkdir()
    (root / "notes.txt").write_text("no results here\n")
    return root, "no .tsv result files"


def _set(index, **changes):
    return lambda lines, records: lines.__setitem__(index, json.dumps(dict(records[index], **changes)))


BAD_INPUTS = {
    "six columns": (_bad_tsv("2\t1\t6\t512\t32\t10.0\t3.2\n2\t1\t6\t512\t32\t10.0\n"), ":2: 6 tab-separated columns, expected 7"),
    "eight columns": (_bad_tsv("2\t1\t6\t512\t32\t10.0\t3.2\t9\n"), ":1: 8 tab-separated columns"),
    "space separated": (_bad_tsv("2 1 6 512 32 10.0 3.2\n"), ":1: 1 tab-separated columns"),
    "non-numeric float": (_bad_tsv("2\t1\t6\t512\t32\tfast\t3.2\n"), ":1: column total_throughput is 'fast'"),
    "float batch": (_bad_tsv("2.0\t1\t6\t512\t32\t10.0\t3.2\n"), ":1: column batch_size is '2.0', not an integer"),
    "nan latency": (_bad_tsv("2\t1\t6\t512\t32\t10.0\tnan\n"), ":1: column mean_generate_latency_s is 'nan'"),
    "header line": (_bad_tsv("batch\tmb\tproc\tprompt\tnew\ttp\tlat\n"), ":1: column batch_size is 'batch'"),
    "empty tsv": (_bad_tsv("\n"), "out.tsv: no result rows"),
    "empty dir": (_empty_dir, "no .tsv result files in this directory"),
    "jsonl throughput differs": (_bad_jsonl(_set(4, total_throughput=99.0)), ":5: total_throughput 99.0 does not match"),
    "jsonl latency differs": (_bad_jsonl(_set(2, mean_generate_latency_s=9.0)), ":3: mean_generate_latency_s 9.0 does not"),
    "jsonl per-gpu wrong": (_bad_jsonl(_set(3, per_gpu_throughput=1e6)), ":4: per_gpu_throughput 1000000.0 is not"),
    "jsonl not json": (_bad_jsonl(lambda lines, _: lines.__setitem__(1, "{oops")), ":2: not valid JSON"),
    "jsonl wrong schema": (_bad_jsonl(_set(0, schema=3)), ":1: schema 3 is not supported"),
    "jsonl bad status": (_bad_jsonl(_set(0, status="done")), ":1: status 'done'"),
    "jsonl record missing": (_bad_jsonl(lambda lines, _: lines.pop()), "out.tsv:5: no record in"),
    "jsonl record extra": (_bad_jsonl(lambda lines, r: lines.append(json.dumps(dict(r[4], prompt_length=256)))),
                           ":6: status 'ok' but"),
    "jsonl key mismatch": (_bad_jsonl(_set(1, new_tokens=2)), "out.tsv:2: no record in"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line_naming_file_and_line_and_writes_nothing(case, tmp_path: Path, capsys):
    make, expected = BAD_INPUTS[case]
    root, expected_file = make(tmp_path / "results")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert run_report(root) == 2  # default --out would be results/report
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("report: error: "), err
    assert expected_file in err and expected in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing may be written on bad input"


def test_missing_path_and_non_tsv_file(tmp_path: Path, capsys):
    assert run_report(tmp_path / "nope", "--out", tmp_path / "o") == 2
    assert "nope: no such file or directory" in capsys.readouterr().err
    (tmp_path / "out.jsonl").write_text("{}\n")
    assert run_report(tmp_path / "out.jsonl", "--out", tmp_path / "o") == 2
    assert "out.jsonl: give the TSV, not its .jsonl metadata" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_torn_last_line_is_no_result_and_is_noted(tmp_path: Path, capsys):
    # a crash mid-write leaves a last line without newline; the client's writer drops it on the next run
    records = sweep("p", 1.0)
    tsv = write_run(tmp_path / "r", records)
    with tsv.open("a") as handle:
        handle.write("2\t1\t6\t1024\t32\t12.")
    with (tmp_path / "r" / "out.jsonl").open("a") as handle:
        handle.write('{"schema": 1, "status": "o')
    assert run_report(tmp_path / "r", "--out", tmp_path / "o") == 0
    err = capsys.readouterr().err
    assert "out.tsv:6: ignored an incomplete last line" in err and "out.jsonl:6: ignored an incomplete" in err
    assert len(read_csv(tmp_path / "o" / "rows.csv")) == 5
    assert "ignored an incomplete last line" in (tmp_path / "o" / "table17.md").read_text()


def test_metadata_kept_elsewhere_and_any_tsv_name(tmp_path: Path, capsys):
    tsv = write_run(tmp_path / "r", sweep("p", 1.0))
    tsv.rename(tmp_path / "out_30b.txt")
    (tmp_path / "r" / "out.jsonl").rename(tmp_path / "meta.jsonl")
    assert run_report(tmp_path / "out_30b.txt", "--metadata", tmp_path / "meta.jsonl", "--out", tmp_path / "o") == 0
    (r,) = read_csv(tmp_path / "o" / "table17.csv")
    assert (r["num_gpus"], r["run_id"], r["source"]) == ("4", "run-1", f"{tmp_path / 'out_30b.txt'}:5")
    # --metadata with several TSVs is ambiguous
    write_run(tmp_path / "two" / "a", sweep("p", 1.0))
    write_run(tmp_path / "two" / "b", sweep("p", 1.0))
    assert run_report(tmp_path / "two", "--metadata", tmp_path / "meta.jsonl", "--out", tmp_path / "o2") == 2
    assert "--metadata needs exactly one TSV, got 2" in capsys.readouterr().err


# ---------------------------------------------------------------- plots and the command line


def test_plots_are_real_readable_pngs_one_per_sweep(results_dir: Path, tmp_path: Path):
    import matplotlib.image

    out = tmp_path / "report"
    assert run_report(results_dir, "--out", out) == 0
    plots = sorted(out.glob("tokens_*.png"))
    # one figure: OPT-30B, 4 GPUs, 2x1x6, prompt 512 (1x2x6 has only 32 new tokens: table only)
    assert [p.name for p in plots] == ["tokens_facebook-opt-30b-float16-4gpu-b2x1x6-prompt512.png"]
    assert png_size(plots[0]) == (1980, 594)  # throughput, generate() latency, per-token latency panels
    assert plots[0].stat().st_size > 30_000
    pixels = matplotlib.image.imread(plots[0])
    assert pixels.std() > 0.05, "the figure is blank"
    md = (out / "table17.md").read_text()
    assert f"]({plots[0].name})" in md
    # every figure also as SVG (vector, for print), and the cross-model figure
    svg = plots[0].with_suffix(".svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and "10 ms / 1 Gbit/s" in svg  # human profile labels
    assert png_size(out / "models_per_gpu.png")[0] > 1000 and (out / "models_per_gpu.svg").is_file()
    assert "](models_per_gpu.png)" in md


def test_command_line_writes_beside_the_results_and_keeps_other_files(results_dir: Path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "bench_client.report.cli", str(results_dir)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = results_dir / "report"
    assert {"table17.md", "table17.csv", "rows.csv"} <= {p.name for p in out.iterdir()}
    assert str(out) in done.stdout and "11 rows" in done.stdout
    assert not [p for p in results_dir.iterdir() if p.name.startswith(".report-")], "staging directory left behind"
    # a second run over the same tree (now containing report/) gives the same table, inputs untouched
    first = (out / "table17.csv").read_text()
    assert main([str(results_dir)]) == 0
    assert (out / "table17.csv").read_text() == first
    assert (results_dir / "run-1" / "10ms-1gbit" / "out.tsv").is_file()
    # a plot an earlier report made and this one does not is removed; other files stay
    (out / "tokens_old.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    assert main([str(results_dir)]) == 0
    assert not (out / "tokens_old.png").exists() and (out / "notes.txt").read_text() == "mine"


def test_out_that_is_a_file_is_bad_input(results_dir: Path, tmp_path: Path, capsys):
    (tmp_path / "taken").write_text("x")
    assert run_report(results_dir, "--out", tmp_path / "taken") == 2
    assert "taken: --out exists and is not a directory" in capsys.readouterr().err


def test_out_is_required_for_several_inputs(results_dir: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(results_dir / "run-1" / "10ms-1gbit"), str(results_dir / "run-1" / "100ms-100mbit")])
    assert exc.value.code == 2
    assert "--out is required" in capsys.readouterr().err


def test_several_runs_of_one_profile_are_separate_curves_and_rows(tmp_path: Path):
    root = tmp_path / "r"
    write_run(root / "a", sweep("p", 1.0, run_id="a"))
    write_run(root / "b", sweep("p", 1.5, run_id="b"))
    out = tmp_path / "o"
    assert run_report(root, "--out", out) == 0
    assert sorted(r["run_id"] for r in read_csv(out / "table17.csv")) == ["a", "b"]
    assert "| run |" in (out / "table17.md").read_text()
    assert len(list(out.glob("tokens_*.png"))) == 1
    assert math.isfinite(png_size(next(out.glob("tokens_*.png")))[0])


def test_flags_are_checked(results_dir: Path, capsys):
    for flags, message in ((["--model", "opt-31b"], "unknown model 'opt-31b'"), (["--num-gpus", "-1"], "must be >= 0, got -1"),
                           (["--weight-dtype", "int3"], "invalid choice: 'int3'")):
        with pytest.raises(SystemExit) as exc:
            main([str(results_dir), *flags])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert not (results_dir / "report").exists()


def _custom_wan(delay_ms: float, run_id: str) -> list[dict]:
    network = {"profile": {"name": "wan", "delay_ms": delay_ms, "jitter_ms": 0.0, "rate_mbit": 100.0, "loss_pct": 0.0,
                           "limit": 1000}, "hosts": {}}
    return [{**r, "network": network} for r in sweep("wan", delay_ms / 10, run_id=run_id)]


def test_one_profile_name_at_two_network_conditions_is_never_merged(tmp_path: Path, capsys):
    """Two runs of a custom profile 'wan', at 10 ms and at 100 ms: one median (n=2) and a compare delta
    of 0 before; the cells are keyed by the conditions applied (the row's network.profile)."""
    from bench_client.report.cli import main as report_main

    root = tmp_path / "results"
    write_run(root / "r10" / "wan", _custom_wan(10, "r10"))
    write_run(root / "r100" / "wan", _custom_wan(100, "r100"))
    assert run_report(root, "--out", tmp_path / "report") == 0
    labels = {row["network_profile"] for row in read_csv(tmp_path / "report" / "rows.csv")}
    assert labels == {"wan (10 ms, 100 Mbit/s, limit 1000)", "wan (100 ms, 100 Mbit/s, limit 1000)"}, labels
    assert "(n=2)" not in (tmp_path / "report" / "table17.md").read_text()
    capsys.readouterr()
    assert report_main(["--compare", str(root / "r10"), str(root / "r100"), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "No configuration was measured in both runs." in text, text
    assert "Only in r10: " in text and "10 ms / 100 Mbit/s (wan)" in text


def test_the_headline_never_calls_cpu_servers_gpus(tmp_path: Path):
    """A CPU swarm's divisor counts servers (dht-servers): Table 17's headline cell and the medians gave its
    numbers as per-GPU on "2 × unknown GPU"."""
    write_run(tmp_path / "r" / "none", sweep("none", 1.0, model="facebook/opt-30b", num_gpus=2, gpus=(),
                                             source="dht-servers", dtype="float32"))
    assert run_report(tmp_path / "r", "--out", tmp_path / "o") == 0
    md = (tmp_path / "o" / "table17.md").read_text()
    assert "unknown GPU" not in md, md
    headline = next(line for line in md.splitlines() if line.startswith("| facebook/opt-30b |"))
    assert "per server, 2 CPU servers (no GPU)" in headline, headline
