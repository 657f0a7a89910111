"""End to end on one machine: a real DHT and two real Petals servers (tiny model, CPU) started with
the project's launchers, the benchmark client run with the original command line."""

from __future__ import annotations

import json

import pytest

from bench_client.core.results import TSV_COLUMNS, read_metadata, read_tsv
from localswarm import LocalSwarm

pytestmark = pytest.mark.slow
MODEL = "netbench/tiny"


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    swarm = LocalSwarm(tmp_path_factory.mktemp("swarm"))
    try:
        swarm.start_dht()
        swarm.start_server("server-a", MODEL, "0:2")
        swarm.start_server("server-b", MODEL, "2:4")
        swarm.wait_served(MODEL)
        yield swarm
    finally:
        problems = swarm.stop_all_checked()
        assert not problems, f"stopping the swarm: {problems}"


def run_client(swarm: LocalSwarm, output, *extra: str):
    # the seed README's command line, with a short sweep so it runs in seconds on a CPU
    return swarm.run_module(["bench_client", "--initial_peers", *swarm.initial_peers, "--prefix", MODEL,
                             "-b", "1", "--num-micro-batches", "2", "--num-processes", "2", "--output", str(output),
                             *extra], timeout=600)


def test_original_command_line_writes_original_tsv_and_metadata(swarm, tmp_path):
    out = tmp_path / "out_tiny.tsv"
    result = run_client(swarm, out, "--prompt-lengths", "8", "16", "--new-tokens", "3", "--token-sweep", "0:2",
                        "--token-sweep-prompt-length", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[4/4]" in result.stderr  # progress per configuration
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        assert len(fields) == len(TSV_COLUMNS)
        assert fields[:3] == ["1", "2", "2"]
        assert "." in fields[5] and "." in fields[6]  # str(float), like the original
    rows = read_tsv(out)
    assert [(r.prompt_length, r.new_tokens) for r in rows] == [(8, 3), (16, 3), (8, 0), (8, 1)]
    zero = rows[2]
    assert zero.total_throughput == 0.0 and zero.mean_generate_latency_s > 0
    assert all(r.total_throughput > 0 for r in rows if r.new_tokens > 0)

    meta = read_metadata(out.with_suffix(".jsonl"))
    assert len(meta) == 4 and all(m["status"] == "ok" for m in meta)
    first = meta[0]
    assert first["num_servers"] == 2 and first["num_gpus"] == 2 and first["num_gpus_source"] == "dht-servers"
    assert first["per_gpu_throughput"] == pytest.approx(first["total_throughput"] / 2)
    assert first["total_throughput"] == pytest.approx(rows[0].total_throughput)
    assert first["mean_generate_latency_s"] == pytest.approx(first["prefill_time_s"] + first["decode_time_s"], rel=1e-6)
    # 3 new tokens: 2 decode steps after the prefill step
    assert first["per_token_latency_s"] == pytest.approx(first["decode_time_s"] / 2, rel=1e-6)
    assert first["total_tokens"] == 1 * 2 * 2 * 3
    assert first["weight_dtype"] == "float32" and first["model"] == MODEL
    assert first["versions"]["petals"] == "2.2.0.post1"
    assert meta[2]["per_token_latency_s"] is None and meta[2]["total_throughput"] == 0.0

    # a rerun with the same output resumes: nothing left to measure
    again = run_client(swarm, out, "--prompt-lengths", "8", "16", "--new-tokens", "3", "--token-sweep", "0:2",
                       "--token-sweep-prompt-length", "8")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stderr
    assert out.read_text().splitlines(keepends=True) == lines

    # a longer sweep measures only what is new
    more = run_client(swarm, out, "--prompt-lengths", "8", "16", "--new-tokens", "3", "--token-sweep", "0:3",
                      "--token-sweep-prompt-length", "8")
    assert more.returncode == 0, more.stderr[-2000:]
    assert [(r.prompt_length, r.new_tokens) for r in read_tsv(out)][4:] == [(8, 2)]


def test_batch_two_per_request_and_explicit_gpu_count(swarm, tmp_path):
    out = tmp_path / "b2.tsv"
    result = swarm.run_module(["bench_client", "--initial_peers", f"@{swarm.address_file}", "--prefix", MODEL,
                               "-b", "2", "--num-processes", "2", "--output", str(out), "--prompt-lengths", "8",
                               "--new-tokens", "2", "--token-sweep", "none", "--num-gpus", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = read_tsv(out)
    assert (row.batch_size, row.num_micro_batches, row.num_processes) == (2, 1, 2)
    (meta,) = read_metadata(out.with_suffix(".jsonl"))
    assert meta["num_gpus"] == 4 and meta["num_gpus_source"] == "flag"
    assert meta["per_gpu_throughput"] == pytest.approx(row.total_throughput / 4)
    assert meta["total_tokens"] == 2 * 1 * 2 * 2
    assert meta["system"] == "petals" and meta["repeat"] == 0

    # --repeats 2 on the same output: the first repeat is there, only the second is measured
    again = swarm.run_module(["bench_client", "--initial_peers", f"@{swarm.address_file}", "--prefix", MODEL,
                              "-b", "2", "--num-processes", "2", "--output", str(out), "--prompt-lengths", "8",
                              "--new-tokens", "2", "--token-sweep", "none", "--num-gpus", "4", "--repeats", "2"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 2 configurations to measure" in again.stderr
    assert len(read_tsv(out)) == 2
    assert [m["repeat"] for m in read_metadata(out.with_suffix(".jsonl"))] == [0, 1]


def test_model_nobody_serves_is_a_clear_error(swarm, tmp_path):
    out = tmp_path / "none.tsv"
    result = swarm.run_module(["bench_client", "--initial_peers", *swarm.initial_peers, "--prefix",
                               "facebook/opt-125m", "--output", str(out), "--prompt-lengths", "8", "--new-tokens", "1",
                               "--token-sweep", "none", "--connect-timeout", "20"])
    assert result.returncode == 3
    assert "no server in the swarm announces any block with prefix 'facebook/opt-125m'" in result.stderr
    assert not out.exists()


def test_swarm_info_and_wait_name_missing_blocks(swarm):
    info = swarm.run_module(["bench_client.swarm.blocks", "info", "--initial-peers", *swarm.initial_peers, "--model", MODEL])
    assert info.returncode == 0, info.stderr[-2000:]
    data = json.loads(info.stdout)
    assert data["missing_blocks"] == [] and data["num_online_servers"] == 2
    assert sorted((s["start_block"], s["end_block"]) for s in data["servers"]) == [(0, 2), (2, 4)]
    # a plan of one server: the second one is another run's, and no row is measured through it
    out = swarm.workdir / "other-plan.tsv"
    other = swarm.run_module(["bench_client", "--initial_peers", *swarm.initial_peers, "--prefix", MODEL,
                              "--output", str(out), "--prompt-lengths", "8", "--new-tokens", "1",
                              "--token-sweep", "none", "--expect-servers", "1"])
    assert other.returncode == 3 and "has 2 online servers, the plan 1" in other.stderr, other.stderr[-2000:]
    assert not out.exists()

    # OPT-125m has 12 blocks; serve only 0:3 of it and ask for all
    partial = swarm.start_server("partial-125m", "facebook/opt-125m", "0:3", "--inference-max-length", "64")
    try:
        wait = swarm.run_module(["bench_client.swarm.blocks", "wait", "--initial-peers", *swarm.initial_peers,
                                 "--model", "facebook/opt-125m", "--timeout", "25"])
        assert wait.returncode == 3
        assert "blocks 3:12 of facebook/opt-125m" in wait.stderr
        out = swarm.workdir / "missing.tsv"
        client = swarm.run_module(["bench_client", "--initial_peers", *swarm.initial_peers, "--prefix",
                                   "facebook/opt-125m", "--output", str(out), "--prompt-lengths", "8",
                                   "--new-tokens", "1", "--token-sweep", "none"])
        assert client.returncode == 3 and "missing blocks 3:12" in client.stderr
        assert not out.exists()
    finally:
        swarm.stop(partial)


def test_unreachable_peer_is_a_clear_error(tmp_path):
    swarm = LocalSwarm(tmp_path)
    # a loopback port nobody listens on, with a well-formed peer id
    peer = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWMqGg3Zdg4XvFxZD8cojWEqgqqJevewu4hpPzEWsjPtA9"
    result = swarm.run_module(["bench_client", "--initial_peers", peer, "--prefix", MODEL, "--output",
                               str(tmp_path / "x.tsv"), "--connect-timeout", "10"], timeout=120)
    assert result.returncode == 4
    assert "cannot reach any initial peer" in result.stderr
    assert not (tmp_path / "x.tsv").exists()
