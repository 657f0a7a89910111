"""The report on a REAL result: a CPU swarm on loopback, measured here by the project's own client.

Produced on 2026-11-26 07:18 UTC on the 2-core development VM (no GPU) with the shared working tree's
bench_client (client, server and dht modules as then uncommitted, foundation commit 6eff882):
  python -m bench_client.swarm.dht --address-file dht.addr --host-maddrs /ip4/127.0.0.1/tcp/0
  python -m bench_client.swarm.server --model netbench/tiny --initial-peers @dht.addr --block-indices 0:2 \\
      --dtype float32 --device cpu --host-maddrs /ip4/127.0.0.1/tcp/0        (and a second one with 2:4)
  python -m bench_client --initial_peers @dht.addr --prefix netbench/tiny -b 1 --num-micro-batches 2 \\
      --num-processes 2 --output results/cpu-run/none/out.tsv --prompt-lengths 16 --new-tokens 4 \\
      --token-sweep 0:5 --token-sweep-prompt-length 16 --device cpu --network-profile none --run-id cpu-run
The files are kept verbatim below (the TSV and JSONL the client wrote), so the test needs no swarm.
Traits of a real run that synthetic data lacks: no GPU (the client counts servers, "dht-servers"),
a configuration measured twice (4 new tokens in the prompt sweep and in the token sweep), a
0-new-token row, a per-token latency of null where fewer than 2 tokens were generated.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bench_client.report.cli import main

REAL_TSV = '1\t2\t2\t16\t4\t17.588345860019256\t0.4213417965000019\n1\t2\t2\t16\t0\t0.0\t0.18332028450001303\n1\t2\t2\t16\t1\t10.676715220906525\t0.16505114725003978\n1\t2\t2\t16\t2\t13.964902885874395\t0.27036613524998643\n1\t2\t2\t16\t3\t12.509350244144946\t0.4648570250000432\n1\t2\t2\t16\t4\t18.279969820866935\t0.4317787667499431\n'

REAL_JSONL = (
    '{"batch_size": 1, "client_device": "cpu", "client_dtype": "float32", "client_gpu": null, "client_host": "vm", "decode_time_s": 0.22850867400001107, "dht_prefix": "netbench/tiny", "error": null, "finished_at": "2026-11-26T07:18:34+00:00", "mean_generate_latency_s": 0.4213417965000019, "model": "netbench/tiny", "network": null, "network_profile": "none", "new_tokens": 4, "num_gpus": 2, "num_gpus_source": "dht-servers", "num_micro_batches": 2, "num_processes": 2, "num_servers": 2, "per_gpu_throughput": 8.794172930009628, "per_token_latency_s": 0.07616955800000369, "prefill_time_s": 0.19283312249999085, "prompt_length": 16, "run_id": "cpu-run", "schema": 1, "server_gpus": [], "server_quant_types": ["none"], "server_torch_dtypes": ["float32"], "started_at": "2026-11-26T07:18:33+00:00", "status": "ok", "sweep_index": 0, "tokens_generated_per_call": [4], "total_throughput": 17.588345860019256, "total_tokens": 16, "versions": {"hivemind": "1.1.12", "petals": "2.2.0.post1", "petals-netbench": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.34.1"}, "wall_time_s": 0.909693278000077, "weight_dtype": "float32"}\n'
    '{"batch_size": 1, "client_device": "cpu", "client_dtype": "float32", "client_gpu": null, "client_host": "vm", "decode_time_s": 0.0, "dht_prefix": "netbench/tiny", "error": null, "finished_at": "2026-11-26T07:18:35+00:00", "mean_generate_latency_s": 0.18332028450001303, "model": "netbench/tiny", "network": null, "network_profile": "none", "new_tokens": 0, "num_gpus": 2, "num_gpus_source": "dht-servers", "num_micro_batches": 2, "num_processes": 2, "num_servers": 2, "per_gpu_throughput": 0.0, "per_token_latency_s": null, "prefill_time_s": 0.18332028450001303, "prompt_length": 16, "run_id": "cpu-run", "schema": 1, "server_gpus": [], "server_quant_types": ["none"], "server_torch_dtypes": ["float32"], "started_at": "2026-11-26T07:18:34+00:00", "status": "ok", "sweep_index": 1, "tokens_generated_per_call": [1], "total_throughput": 0.0, "total_tokens": 0, "versions": {"hivemind": "1.1.12", "petals": "2.2.0.post1", "petals-netbench": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.34.1"}, "wall_time_s": 0.40223585100000037, "weight_dtype": "float32"}\n'
    '{"batch_size": 1, "client_device": "cpu", "client_dtype": "float32", "client_gpu": null, "client_host": "vm", "decode_time_s": 0.02209976250003365, "dht_prefix": "netbench/tiny", "error": null, "finished_at": "2026-11-26T07:18:36+00:00", "mean_generate_latency_s": 0.16505114725003978, "model": "netbench/tiny", "network": null, "network_profile": "none", "new_tokens": 1, "num_gpus": 2, "num_gpus_source": "dht-servers", "num_micro_batches": 2, "num_processes": 2, "num_servers": 2, "per_gpu_throughput": 5.338357610453262, "per_token_latency_s": null, "prefill_time_s": 0.14295138475000613, "prompt_length": 16, "run_id": "cpu-run", "schema": 1, "server_gpus": [], "server_quant_types": ["none"], "server_torch_dtypes": ["float32"], "started_at": "2026-11-26T07:18:35+00:00", "status": "ok", "sweep_index": 2, "tokens_generated_per_call": [1], "total_throughput": 10.676715220906525, "total_tokens": 4, "versions": {"hivemind": "1.1.12", "petals": "2.2.0.post1", "petals-netbench": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.34.1"}, "wall_time_s": 0.3746470629999976, "weight_dtype": "float32"}\n'
    '{"batch_size": 1, "client_device": "cpu", "client_dtype": "float32", "client_gpu": null, "client_host": "vm", "decode_time_s": 0.11309969249995788, "dht_prefix": "netbench/tiny", "error": null, "finished_at": "2026-11-26T07:18:36+00:00", "mean_generate_latency_s": 0.27036613524998643, "model": "netbench/tiny", "network": null, "network_profile": "none", "new_tokens": 2, "num_gpus": 2, "num_gpus_source": "dht-servers", "num_micro_batches": 2, "num_processes": 2, "num_servers": 2, "per_gpu_throughput": 6.982451442937197, "per_token_latency_s": 0.11309969249995788, "prefill_time_s": 0.15726644275002855, "prompt_length": 16, "run_id": "cpu-run", "schema": 1, "server_gpus": [], "server_quant_types": ["none"], "server_torch_dtypes": ["float32"], "started_at": "2026-11-26T07:18:36+00:00", "status": "ok", "sweep_index": 3, "tokens_generated_per_call": [2], "total_throughput": 13.964902885874395, "total_tokens": 8, "versions": {"hivemind": "1.1.12", "petals": "2.2.0.post1", "petals-netbench": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.34.1"}, "wall_time_s": 0.5728647070000079, "weight_dtype": "float32"}\n'
    '{"batch_size": 1, "client_device": "cpu", "client_dtype": "float32", "client_gpu": null, "client_host": "vm", "decode_time_s": 0.27428411475003145, "dht_prefix": "netbench/tiny", "error": null, "finished_at": "2026-11-26T07:18:38+00:00", "mean_generate_latency_s": 0.4648570250000432, "model": "netbench/tiny", "network": null, "network_profile": "none", "new_tokens": 3, "num_gpus": 2, "num_gpus_source": "dht-servers", "num_micro_batches": 2, "num_processes": 2, "num_servers": 2, "per_gpu_throughput": 6.254675122072473, "per_token_latency_s": 0.13714205737501572, "prefill_time_s": 0.19057291025001177, "prompt_length": 16, "run_id": "cpu-run", "schema": 1, "server_gpus": [], "server_quant_types": ["none"], "server_torch_dtypes": ["float32"], "started_at": "2026-11-26T07:18:36+00:00", "status": "ok", "sweep_index": 4, "tokens_generated_per_call": [3], "total_throughput": 12.509350244144946, "total_tokens": 12, "versions": {"hivemind": "1.1.12", "petals": "2.2.0.post1", "petals-netbench": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.34.1"}, "wall_time_s": 0.9592824380000593, "weight_dtype": "float32"}\n'
    '{"batch_size": 1, "client_device": "cpu", "client_dtype": "float32", "client_gpu": null, "client_host": "vm", "decode_time_s": 0.28232304624995663, "dht_prefix": "netbench/tiny", "error": null, "finished_at": "2026-11-26T07:18:39+00:00", "mean_generate_latency_s": 0.4317787667499431, "model": "netbench/tiny", "network": null, "network_profile": "none", "new_tokens": 4, "num_gpus": 2, "num_gpus_source": "dht-servers", "num_micro_batches": 2, "num_processes": 2, "num_servers": 2, "per_gpu_throughput": 9.139984910433467, "per_token_latency_s": 0.09410768208331888, "prefill_time_s": 0.14945572049998646, "prompt_length": 16, "run_id": "cpu-run", "schema": 1, "server_gpus": [], "server_quant_types": ["none"], "server_torch_dtypes": ["float32"], "started_at": "2026-11-26T07:18:38+00:00", "status": "ok", "sweep_index": 5, "tokens_generated_per_call": [4], "total_throughput": 18.279969820866935, "total_tokens": 16, "versions": {"hivemind": "1.1.12", "petals": "2.2.0.post1", "petals-netbench": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.34.1"}, "wall_time_s": 0.8752749679999852, "weight_dtype": "float32"}\n'
)


@pytest.fixture
def real_results(tmp_path: Path) -> Path:
    run = tmp_path / "results" / "cpu-run" / "none"
    run.mkdir(parents=True)
    (run / "out.tsv").write_text(REAL_TSV)
    (run / "out.jsonl").write_text(REAL_JSONL)
    return tmp_path / "results"


def _csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_report_of_a_real_cpu_swarm(real_results: Path, capsys):
    assert main([str(real_results)]) == 0
    out = real_results / "report"
    rows = _csv(out / "rows.csv")
    assert len(rows) == 6 and {r["new_tokens"] for r in rows} == {"0", "1", "2", "3", "4"}
    for r in rows:
        # 2 servers without GPU: the client divided by servers, and the report says "per server"
        assert (r["num_gpus"], r["num_gpus_source"], r["gpu"], r["batch_setting"]) == ("2", "dht-servers", "", "1x2x2")
        total = float(r["total_throughput_tokens_per_s"])
        assert float(r["per_gpu_throughput_tokens_per_s"]) == pytest.approx(total / 2, rel=1e-12)
        assert r["roofline_fraction"] == "" and r["paper_petals_tokens_per_s_per_gpu"] == ""
    zero = next(r for r in rows if r["new_tokens"] == "0")
    assert float(zero["total_throughput_tokens_per_s"]) == 0.0 and zero["per_token_latency_s"] == ""
    one = next(r for r in rows if r["new_tokens"] == "1")
    assert one["per_token_latency_s"] == ""  # the client records none for fewer than 2 new tokens

    # no row has the paper's 32 new tokens: the table takes the largest count, both measurements of it
    table = _csv(out / "table17.csv")
    assert [r["new_tokens"] for r in table] == ["4", "4"]
    assert sorted(r["source"].rsplit(":", 1)[1] for r in table) == ["1", "6"]
    md = (out / "table17.md").read_text()
    assert "Rows with 4 new tokens, the most measured (no result has the paper's 32)" in md
    assert "8.79 per server (no GPU)" in md and "0 (2 servers without GPU)" in md

    (plot,) = out.glob("tokens_*.png")
    assert plot.name == "tokens_netbench-tiny-float32-2cpu-servers-b1x2x2-prompt16.png"
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    assert "report: 6 rows (0 failed configurations)" in capsys.readouterr().out


def test_real_result_with_a_tampered_row_is_rejected(real_results: Path, capsys):
    tsv = real_results / "cpu-run" / "none" / "out.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("10.676715220906525", "20.676715220906525")
    tsv.write_text("".join(lines))
    assert main([str(real_results)]) == 2
    err = capsys.readouterr().err
    assert "out.jsonl:3: total_throughput 10.676715220906525 does not match" in err and "out.tsv:3" in err
    assert not (real_results / "report").exists()
