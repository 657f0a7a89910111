"""The transformers system really run on the CPU with the tiny model: the swarm's model in one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench_client.report.data import Defaults, load_results

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench_client.systems.transformers", "--model", "netbench/tiny",
                           "--output", str(out), "--prompt-lengths", "8", "16", "--new-tokens", "4",
                           "--batch-sizes", "2", "3", "--run-id", "tf-1", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_rows_in_the_common_record_resume_and_report(tmp_path: Path):
    out = tmp_path / "transformers" / "out.tsv"
    done = _run(out)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert [r[:5] for r in rows] == [["2", "1", "1", "8", "4"], ["2", "1", "1", "16", "4"],
                                     ["3", "1", "1", "8", "4"], ["3", "1", "1", "16", "4"]]
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    r = records[0]
    assert (r["schema"], r["system"], r["model"], r["weight_dtype"], r["status"]) == (2, "transformers", "netbench/tiny",
                                                                                     "float32", "ok")
    assert r["system_fields"]["device"] == "cpu" and r["system_fields"]["tokens_generated"] == 4
    assert r["total_tokens"] == 8 and r["per_token_latency_s"] > 0 and r["prefill_time_s"] > 0

    # a rerun with a second repeat measures only what it lacks
    again = _run(out, "--repeats", "2")
    assert again.returncode == 0, again.stderr
    assert len(out.read_text().splitlines()) == 8
    assert [json.loads(line)["repeat"] for line in out.with_suffix(".jsonl").read_text().splitlines()][4:] == [1] * 4
    # another dtype is another experiment: refused, nothing written
    other = _run(out, "--dtype", "bfloat16")
    assert other.returncode == 2 and "weight_dtype='float32'" in other.stderr, other.stderr

    report = load_results([tmp_path], Defaults())
    assert {(row.system_info.label, row.network_text) for row in report.rows} == {("transformers", "one GPU (no network)")}


def test_the_model_is_the_swarms_blocks_with_the_servers_dummy_weights():
    """Block for block the weights a server of the same seed builds (bench_client.swarm.engine_bench builds
    them the server's way), so the transformers number is the swarm's very model run locally."""
    import torch

    from bench_client.core.models import get_model
    from bench_client.swarm.engine_bench import _dummy_blocks
    from bench_client.systems.transformers import build_model

    model = build_model(get_model("netbench/tiny"), "cpu", "float32", seed=0)
    _, _, _, blocks = _dummy_blocks("netbench/tiny", "cpu", "float32", 4)
    for ours, servers in zip(model.transformer.h, blocks):
        theirs = servers.state_dict()
        for name, tensor in ours.state_dict().items():
            assert torch.equal(tensor, theirs[name]), name
    assert model.lm_head.weight.data_ptr() == model.transformer.word_embeddings.weight.data_ptr()
    assert torch.all(model.transformer.ln_f.weight == 1) and torch.all(model.transformer.word_embeddings_layernorm.bias == 0)
