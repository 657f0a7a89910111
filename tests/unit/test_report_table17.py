"""The report's paper layout of Table 17, medians over repeats and the claims checked.

Petals rows are synthetic schema-1 records (tests/unit/test_report.py's helpers); FlexGen rows are made by
bench_client.flexgen's own row writer from the captured FlexGen log (tests/fixtures), so both
systems' rows are in the formats the harness writes. Also run on the committed GPU rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import record, write_run

from bench_client.flexgen.cli import row_and_record
from bench_client.flexgen.log import parse_log
from bench_client.flexgen.policy import Policy, Workload
from bench_client.flexgen.trials import Trial
from bench_client.core.models import get_model
from bench_client.report.cli import main
from bench_client.report.data import Network, ResultRow
from bench_client.report.summary import crossover_tokens, summarize
from bench_client.report.table import derive_all
from bench_client.report.data import Defaults, load_results
from bench_client.core.results import ResultsWriter

REPO = Path(__file__).resolve().parents[2]
LOG = (Path(__file__).parents[1] / "fixtures" / "flexgen-0.1.8-benchmark.log").read_text()
BIG_BATCH = parse_log(LOG)  # 64 sequences: prefill 3.918 s, decode 9.874 s


def write_flexgen(directory: Path, repeats: int = 3) -> None:
    writer = ResultsWriter(directory / "out.tsv")
    work = Workload(get_model("facebook/opt-30b"), 512, 32)
    policy = Policy(32, 2, 100, 0, 100, 0, 100, 0, True, True)
    for repeat in range(repeats):
        log = BIG_BATCH.__class__(**{**BIG_BATCH.__dict__, "total_latency_s": BIG_BATCH.total_latency_s + repeat})
        row, rec = row_and_record(Trial(policy, "ok", log), work, repeat,
                                  {"system": "flexgen", "run_id": "run-1", "model": "facebook/opt-30b", "num_gpus": 1,
                                   "num_gpus_source": "flexgen-one-gpu", "server_gpus": ["h/cuda:0: NVIDIA H200"],
                                   "network_profile": "none"})
        writer.append(row, rec)


def write_petals(root: Path, per_profile: dict[str, list[float]]) -> None:
    """generate() latencies per profile, one record per repeat (batch 2x1x6 on 4 GPUs, 512 / 32)."""
    for profile, latencies in per_profile.items():
        records = [{**record(2, 1, 6, 512, 32, 2 * 6 * 32 / lat, lat, profile=profile), "system": "petals",
                    "repeat": i} for i, lat in enumerate(latencies)]
        write_run(root / profile, records)


def profile_label(name: str | None, system: str = "petals", network: dict | None = None) -> str:
    row = ResultRow("x.tsv", 1, 2, 1, 6, 512, 32, 1.0, 1.0, network_profile=name, profile_name=name,
                    system=system, network=Network.of(name, network))
    return row.network_text


def test_labels():
    """Without a network record (a TSV given --network-profile), a paper-style name still says its conditions."""
    assert profile_label("paper-10ms-100mbit") == "10 ms / 100 Mbit/s"
    assert profile_label("100ms-1gbit") == "100 ms / 1 Gbit/s"
    assert profile_label("none") == "no shaping" and profile_label("none", "flexgen") == "one GPU (no network)"
    assert profile_label("none", "transformers") == "one GPU (no network)"
    assert profile_label("lan-custom") == "lan-custom"


def _applied(delay_ms: float, rate_mbit: float) -> dict:
    """A row's network section as the bench_client role records it: applied profile and measured per server."""
    return {"profile": {"name": "wan", "delay_ms": delay_ms, "jitter_ms": 0.0, "rate_mbit": rate_mbit,
                        "loss_pct": 0.0, "limit": 1000},
            "hosts": {"s1": {"rtt_ms": 2 * delay_ms + 0.3, "rate_mbit": 0.95 * rate_mbit}}}


def test_a_custom_profile_is_labelled_by_what_the_results_record_not_by_its_name():
    assert profile_label("wan", network=_applied(50, 20)) == "50 ms / 20 Mbit/s (wan)"
    # a name that looks like a paper profile's says nothing: what was applied does
    assert profile_label("10ms-1gbit", network=_applied(100, 100)) == "100 ms / 100 Mbit/s"
    network = Network.of("wan", _applied(50, 20))
    assert (network.measured_rtt_ms, network.measured_rate_mbit) == (100.3, 19.0)


def test_a_custom_profile_named_wan_is_ordered_by_its_delay_and_rate(tmp_path: Path):
    """Columns of Table 17 as the paper lays it out, mildest network first: 'wan' (50 ms, 20 Mbit/s)
    after 10 ms / 100 Mbit/s and before 100 ms / 100 Mbit/s (by name it sorted last, labelled 'wan')."""
    write_petals(tmp_path, {"paper-10ms-100mbit": [9.0], "paper-100ms-100mbit": [20.0]})
    records = [{**record(2, 1, 6, 512, 32, 2 * 6 * 32 / 12.0, 12.0, profile="wan"), "system": "petals",
                "network": _applied(50, 20)}]
    write_run(tmp_path / "wan", records)
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    layout = (tmp_path / "report" / "table17.md").read_text().split("## As the paper lays it out")[1]
    header = next(line for line in layout.splitlines() if line.startswith("| model |"))
    columns = [c.strip() for c in header.strip("|").split("|")][1:4]
    assert columns == ["Petals, 10 ms / 100 Mbit/s", "Petals, 50 ms / 20 Mbit/s (wan)", "Petals, 100 ms / 100 Mbit/s"]


def test_paper_layout_medians_and_claims_that_hold(tmp_path: Path, capsys):
    write_flexgen(tmp_path / "flexgen")
    write_petals(tmp_path, {"none": [8.0, 6.0, 7.0], "paper-10ms-1gbit": [9.0, 10.0, 11.0],
                            "paper-100ms-100mbit": [20.0, 21.0, 19.0]})
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "table17.md").read_text()
    layout = md.split("## As the paper lays it out")[1].split("## Claims checked")[0]
    header = next(line for line in layout.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")][:5] == [
        "model", "FlexGen, one GPU (no network)", "Petals, no shaping", "Petals, 10 ms / 1 Gbit/s",
        "Petals, 100 ms / 100 Mbit/s"]
    row = next(line for line in layout.splitlines() if line.startswith("| facebook/opt-30b"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    flex = [64 * 32 / (BIG_BATCH.total_latency_s + r) for r in range(3)]
    assert cells[1].startswith(f"{sorted(flex)[1]:.0f} [{min(flex):.0f}–{max(flex):.0f}] (n=3)")
    assert "32x2x1, int4-g64" in cells[1]
    # Petals per GPU = 2 * 6 * 32 / latency / 4 GPUs: median latency 7 s -> 13.7
    assert cells[2].startswith("13.7 [12.0–16.0] (n=3)") and cells[5:] == ["2.84", "7.32", "8.38"]

    claims = md.split("## Claims checked")[1].split("##")[0]
    verdicts = [line.split("|")[2].strip() for line in [x for x in claims.splitlines() if x.startswith("|")][2:]]
    assert verdicts == ["**yes**", "**yes**", "**yes**"]
    # the crossover, by hand: FlexGen's median repeat (total latency + 1 s, same decode) has prefill 3.918 + 1 s and
    # 9.874/31 s/token; Petals (100 ms, median 20 s) 19.9/32 s/token with prefill 20 - 31 * 19.9 / 32
    petals_token = 19.9 / 32
    t = 1 + (BIG_BATCH.prefill_latency_s + 1 - (20 - 31 * petals_token)) / (petals_token - BIG_BATCH.decode_latency_s / 31)
    assert f"lines cross at {t:.1f} tokens" in claims
    assert "×" in claims and "no shaping 13.7 → 10 ms / 1 Gbit/s 9.60" in claims


def test_claims_that_fail_and_missing_data(tmp_path: Path):
    write_flexgen(tmp_path / "flexgen", repeats=1)
    # Petals faster than FlexGen per GPU (tiny latencies), and faster with the slower network
    write_petals(tmp_path, {"none": [0.2], "paper-10ms-1gbit": [0.1]})
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    claims = (tmp_path / "report" / "table17.md").read_text().split("## Claims checked")[1].split("##")[0]
    verdicts = [line.split("|")[2].strip() for line in [x for x in claims.splitlines() if x.startswith("|")][2:]]
    assert verdicts == ["**no**", "**no**", "**no data**"]


def test_crossover_needs_per_token_latency(tmp_path: Path):
    write_petals(tmp_path, {"none": [7.0]})
    rows = load_results([tmp_path], Defaults()).rows
    (summary,) = summarize(derive_all(rows))
    assert crossover_tokens(summary, summary) is None  # parallel lines never cross


def test_report_on_the_committed_gpu_rows(tmp_path: Path):
    gpu = REPO / "docs" / "results" / "gpu"
    tsvs = [gpu / f"opt{m}.tsv" for m in ("6.7b", "30b", "175b")]
    assert main([*map(str, tsvs), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "table17.md").read_text()
    layout = md.split("## As the paper lays it out")[1].split("## Claims checked")[0]
    for model in ("facebook/opt-6.7b", "facebook/opt-30b", "facebook/opt-175b"):
        assert f"| {model} |" in layout
    # OPT-30B 2x1x6 at 512 / 32 was measured twice (prompt sweep + a rerun): a median with its spread
    assert "(n=2)" in layout
    assert "2x1x6, float16, 4 servers share 1 GPU" in layout  # OPT-30B: 4 servers on one H200
    claims = md.split("## Claims checked")[1].split("##")[0]
    assert claims.count("**no data**") == 3  # no FlexGen rows, one network profile committed so far


@pytest.mark.parametrize("name, expected", [("paper-100ms-100mbit", "100 ms / 100 Mbit/s"), (None, "no shaping")])
def test_label_edge_cases(name, expected):
    assert profile_label(name) == expected


def test_figure_titles_say_when_servers_share_a_gpu(tmp_path: Path):
    from bench_client.report.plots import _title

    write_petals(tmp_path, {"none": [7.0]})
    (row,) = load_results([tmp_path], Defaults()).rows
    shared = derive_all([row.__class__(**{**row.__dict__, "num_servers": 4, "num_gpus": 1})])[0]
    assert "4 servers SHARE the GPU" in _title(shared)
    own = derive_all([row.__class__(**{**row.__dict__, "num_servers": 4, "num_gpus": 4})])[0]
    assert "SHARE" not in _title(own)
