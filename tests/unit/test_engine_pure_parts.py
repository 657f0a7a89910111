"""Unit tests of the engine's pure parts: metrics, sweep, result files, peers, model table, CLI errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench_client.core import metrics
from bench_client.core.metrics import GenerateTiming
from bench_client.core.models import MODELS, get_model, parse_block_span, split_blocks, validate_dht_prefix
from bench_client.swarm.peers import PeerError, resolve_initial_peers
from bench_client.core.results import ResultRecord, ResultsFileError, ResultsWriter, TsvRow, metadata_path_for, read_tsv
from bench_client.core.sweep import (SweepPoint, attention_cache_tokens, build_sweep, parse_token_sweep, remaining, repeat_of,
                                repeat_sweep)

ROOT = Path(__file__).resolve().parents[2]
PEER = "/ip4/127.0.0.1/tcp/31337/p2p/12D3KooWMqGg3Zdg4XvFxZD8cojWEqgqqJevewu4hpPzEWsjPtA9"


# --- model table -------------------------------------------------------------------------------
def test_paper_models_have_opt_dimensions_and_prefixes():
    assert (get_model("facebook/opt-6.7b").hidden, get_model("facebook/opt-6.7b").layers,
            get_model("facebook/opt-6.7b").heads) == (4096, 32, 32)
    assert (get_model("facebook/opt-30b").hidden, get_model("facebook/opt-30b").layers,
            get_model("facebook/opt-30b").heads) == (7168, 48, 56)
    assert (get_model("facebook/opt-175b").hidden, get_model("facebook/opt-175b").layers,
            get_model("facebook/opt-175b").heads) == (12288, 96, 96)
    assert get_model("facebook/opt-6.7b").dht_prefix == "opt6b"
    assert get_model("opt6b").name == "facebook/opt-6.7b"  # the original client passed prefixes
    assert all(spec.vocab == 50272 for spec in MODELS.values())
    for spec in MODELS.values():
        validate_dht_prefix(spec.dht_prefix)


def test_model_sizes_match_the_paper():
    # the paper: OPT-30B in fp16 is ~60 GB; OPT-175B ~350 GB
    assert get_model("facebook/opt-30b").model_bytes("float16") / 1e9 == pytest.approx(60, rel=0.02)
    assert get_model("facebook/opt-175b").model_bytes("float16") / 1e9 == pytest.approx(350, rel=0.02)
    assert get_model("facebook/opt-30b").model_bytes("int8") * 2 == get_model("facebook/opt-30b").model_bytes("float16")


def test_unknown_model_and_bad_prefix():
    with pytest.raises(ValueError, match="unknown model 'facebook/opt-13b'; known models: facebook/opt-6.7b"):
        get_model("facebook/opt-13b")
    with pytest.raises(ValueError, match="may not be empty or contain '.'"):
        validate_dht_prefix("facebook/opt-6.7b")


def test_block_spans():
    assert parse_block_span("0:12", 48) == (0, 12)
    for bad in ("12", "3:3", "0:49", "-1:4", "a:b"):
        with pytest.raises(ValueError):
            parse_block_span(bad, 48)
    assert split_blocks(48, 4) == [(0, 12), (12, 24), (24, 36), (36, 48)]
    assert split_blocks(96, 24)[-1] == (92, 96)
    assert split_blocks(10, 3) == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="only 4 blocks"):
        split_blocks(4, 5)


# --- metrics -----------------------------------------------------------------------------------
def timing(start, first, end, n):
    return GenerateTiming(start=start, first_token=first, end=end, new_tokens=n)


def test_summary_arithmetic_by_hand():
    # 2 processes x 2 micro-batches, batch 1, 4 new tokens, over a 10 s window
    ts = [timing(0, 1, 5, 4), timing(5, 6, 10, 4), timing(0, 2, 4, 4), timing(4, 5, 8, 4)]
    m = metrics.summarize(ts, batch_size=1, num_micro_batches=2, num_processes=2, new_tokens=4, wall_time_s=10,
                          num_gpus=4)
    assert m.total_tokens == 16
    assert m.total_throughput == pytest.approx(1.6)
    assert m.per_gpu_throughput == pytest.approx(0.4)
    assert m.mean_generate_latency_s == pytest.approx((5 + 5 + 4 + 4) / 4)  # TSV column 7: whole generate()
    assert m.prefill_time_s == pytest.approx((1 + 1 + 2 + 1) / 4)
    # decode: (4 + 4 + 2 + 3) s over 4 x 3 steps after the first token
    assert m.per_token_latency_s == pytest.approx(13 / 12)


def test_zero_new_tokens_is_zero_throughput_not_a_division():
    ts = [timing(0, None, 1, 0)]
    m = metrics.summarize(ts, batch_size=2, num_micro_batches=1, num_processes=1, new_tokens=0, wall_time_s=1,
                          num_gpus=1)
    assert m.total_throughput == 0.0 and m.per_gpu_throughput == 0.0
    assert m.per_token_latency_s is None and m.prefill_time_s == 1 and m.decode_time_s == 0
    assert metrics.throughput(0, 0.0) == 0.0


def test_metric_guards():
    with pytest.raises(ValueError, match="expected 4 timed"):
        metrics.summarize([timing(0, 1, 2, 2)], batch_size=1, num_micro_batches=2, num_processes=2, new_tokens=2,
                          wall_time_s=1, num_gpus=None)
    with pytest.raises(ValueError, match="wall time must be positive"):
        metrics.throughput(5, 0.0)
    assert metrics.per_gpu(10.0, None) is None


# --- sweep -------------------------------------------------------------------------------------
def test_original_sweep():
    sweep = build_sweep([256, 512, 1024], 32, parse_token_sweep("auto", "facebook/opt-30b"))
    assert sweep[:3] == [SweepPoint(256, 32), SweepPoint(512, 32), SweepPoint(1024, 32)]
    assert sweep[3:] == [SweepPoint(512, t) for t in range(33)]
    assert len(sweep) == 36
    assert parse_token_sweep("auto", "facebook/opt-175b") is None  # the original swept OPT-30B only
    assert build_sweep([256], 32, parse_token_sweep("none", "facebook/opt-30b")) == [SweepPoint(256, 32)]
    assert list(parse_token_sweep("4:6", "x")) == [4, 5]
    for bad in ("6:4", "1-3", "all"):
        with pytest.raises(ValueError, match="--token-sweep"):
            parse_token_sweep(bad, "x")
    with pytest.raises(ValueError, match="new tokens must be >= 0"):
        build_sweep([256], -1, None)
    with pytest.raises(ValueError, match="prompt length must be >= 1"):
        build_sweep([0], 1, None)


def test_resume_counts_duplicates():
    sweep = build_sweep([256, 512], 32, range(31, 33))  # 512x32 appears twice, like the original
    assert remaining(sweep, Counter()) == list(enumerate(sweep))
    done = Counter({SweepPoint(256, 32): 1, SweepPoint(512, 32): 1})
    assert [p for _, p in remaining(sweep, done)] == [SweepPoint(512, 31), SweepPoint(512, 32)]
    done[SweepPoint(512, 32)] = 2
    done[SweepPoint(512, 31)] = 1
    assert remaining(sweep, done) == []


def test_repeats_are_whole_passes_and_resume_in_order():
    one = build_sweep([256, 512], 32, range(32, 33))  # 512x32 twice per pass
    sweep = repeat_sweep(one, 3)
    assert len(sweep) == 9 and sweep[3:6] == one
    done = Counter({SweepPoint(256, 32): 2, SweepPoint(512, 32): 3})
    todo = remaining(sweep, done)
    # pass 0 is complete, pass 1 lacks its second 512x32, pass 2 everything but its 256x32 ... in sweep order
    assert [(repeat_of(i, len(one)), p.prompt_length) for i, p in todo] == [(1, 512), (2, 256), (2, 512), (2, 512)]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        repeat_sweep(one, 0)


def test_attention_cache_is_sized_from_the_workload():
    # 6 processes x batch 2 x (1024 + 32) tokens, plus one session of slack
    assert attention_cache_tokens(2, 6, [256, 512, 1024], [32]) == 2 * 7 * 1056


# --- result files ------------------------------------------------------------------------------
def test_tsv_row_is_byte_for_byte_the_original_format():
    row = TsvRow(1, 2, 6, 512, 32, 12.345678901234567, 4.5)
    original = "\t".join(map(str, [1, 2, 6, 512, 32, 12.345678901234567, 4.5])) + "\n"
    assert row.format() == original == "1\t2\t6\t512\t32\t12.345678901234567\t4.5\n"
    assert TsvRow(1, 1, 1, 512, 0, 0.0, 1.25).format() == "1\t1\t1\t512\t0\t0.0\t1.25\n"


def test_writer_appends_resumes_and_repairs_a_torn_line(tmp_path):
    out = tmp_path / "out.tsv"
    writer = ResultsWriter(out)
    assert writer.metadata == tmp_path / "out.jsonl"
    writer.prepare()
    writer.append(TsvRow(1, 2, 6, 256, 32, 1.5, 2.5), ResultRecord(prompt_length=256))
    writer.append(TsvRow(2, 1, 6, 256, 32, 1.5, 2.5), ResultRecord(prompt_length=256))
    with open(out, "a") as handle:
        handle.write("1\t2\t6\t512\t3")  # a crash in the middle of a write
    assert writer.done(1, 2, 6) == Counter({SweepPoint(256, 32): 1})
    assert writer.done(2, 1, 6) == Counter({SweepPoint(256, 32): 1})
    writer.prepare()
    assert out.read_text() == "1\t2\t6\t256\t32\t1.5\t2.5\n2\t1\t6\t256\t32\t1.5\t2.5\n"
    assert metadata_path_for(tmp_path / "x.jsonl") == tmp_path / "x.jsonl.meta.jsonl"


def test_foreign_tsv_is_refused_with_file_and_line(tmp_path):
    out = tmp_path / "bad.tsv"
    out.write_text("1\t2\t6\t256\t32\t1.5\t2.5\nbatch\tmb\n")
    with pytest.raises(ResultsFileError, match=r"bad.tsv:2: expected 7 tab-separated columns, found 2"):
        read_tsv(out)


# --- peers -------------------------------------------------------------------------------------
def test_initial_peers(tmp_path):
    assert resolve_initial_peers([PEER]) == [PEER]
    file = tmp_path / "dht.maddrs"
    file.write_text(f"{PEER}\n\n")
    assert resolve_initial_peers([f"@{file}"]) == [PEER]
    with pytest.raises(PeerError, match="no initial peers given"):
        resolve_initial_peers([])
    with pytest.raises(PeerError, match="public Petals bootstrap peer"):
        resolve_initial_peers(["/dns/bootstrap1.petals.dev/tcp/31337/p2p/QmedTaZXmULqwspJXz44SsPZyTNKxhnnFvYRajfH7MGhCY"])
    with pytest.raises(PeerError, match="not a multiaddr"):
        resolve_initial_peers(["10.0.0.1:31337"])
    with pytest.raises(PeerError, match="cannot read initial peers"):
        resolve_initial_peers([f"@{tmp_path / 'missing'}"])


# --- command-line errors: one line, non-zero, nothing written, no network touched --------------
@pytest.mark.parametrize("args, message", [
    (["-b", "0"], "argument --batch-size/-b: must be >= 1, got 0"),
    (["--new-tokens", "-1"], "argument --new-tokens: must be >= 0, got -1"),
    (["--num-processes", "0"], "argument --num-processes: must be >= 1"),
    (["--prefix", "facebook/opt-13b"], "unknown model 'facebook/opt-13b'"),
    (["--token-sweep", "9:3"], "--token-sweep '9:3' must be"),
    (["--initial_peers"], "no initial peers given"),
    (["--output", "/dev/full"], "/dev/full is a character device, not a regular file"),
])
def test_client_refuses_bad_input_before_connecting(tmp_path, args, message):
    out = tmp_path / "out.tsv"
    base = ["--initial_peers", PEER, "--prefix", "netbench/tiny", "--output", str(out)]
    result = subprocess.run([sys.executable, "-m", "bench_client", *base, *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists() and not out.with_suffix(".jsonl").exists()


@pytest.mark.parametrize("args, message", [
    (["--block-indices", "0:9"], "must satisfy 0 <= START < END <= 4"),
    (["--block-indices", "0:2", "--initial-peers", "/dns/bootstrap2.petals.dev/tcp/31338/p2p/"
      "QmQGTqmM7NKjV6ggU1ZCap8zWiyKR89RViDXiqehSiCpY5"], "public Petals bootstrap peer"),
])
def test_server_refuses_bad_input(args, message):
    base = ["--model", "netbench/tiny", "--initial-peers", PEER]
    if "--initial-peers" in args:
        base = base[:2]
    result = subprocess.run([sys.executable, "-m", "bench_client.swarm.server", *base, *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("dtype", ["int8", "nf4"])
def test_quantisation_that_bitsandbytes_cannot_run_here_is_refused(tmp_path, dtype):
    # bitsandbytes 0.41.1 imports on a CPU host but has no CPU kernels: a stand-in that imports and
    # whose quantised layers fail at the first call, as that one does ("Torch not compiled with CUDA")
    fake = tmp_path / "bitsandbytes"
    (fake / "nn").mkdir(parents=True)
    (fake / "__init__.py").write_text("from . import nn\n")
    (fake / "nn" / "__init__.py").write_text(
        "import torch\n"
        "class _NoKernel(torch.nn.Linear):\n"
        "    def __init__(self, i, o, bias=True, **kw):\n        super().__init__(i, o, bias)\n"
        "    def forward(self, x):\n        raise AssertionError('Torch not compiled with CUDA enabled')\n"
        "def _param(data, **kw):\n    return torch.nn.Parameter(data, requires_grad=False)\n"
        "Linear8bitLt = LinearNF4 = _NoKernel\nInt8Params = Params4bit = _param\n")
    (tmp_path / "bitsandbytes-0.41.1.dist-info").mkdir()
    (tmp_path / "bitsandbytes-0.41.1.dist-info" / "METADATA").write_text("Name: bitsandbytes\nVersion: 0.41.1\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    result = subprocess.run([sys.executable, "-m", "bench_client.swarm.server", "--model", "netbench/tiny",
                             "--initial-peers", PEER, "--block-indices", "0:2", "--dtype", dtype, "--device", "cpu"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert (f"--dtype {dtype} does not run on cpu with bitsandbytes 0.41.1 (AssertionError: Torch not compiled "
            "with CUDA enabled); use float32 or bfloat16, or install bitsandbytes>=0.50") in result.stderr


def test_unusable_bitsandbytes_gets_a_placeholder_and_quantisation_is_refused(tmp_path):
    # what bitsandbytes 0.41.1 does on a CUDA 13 host: raise at import
    fake = tmp_path / "bitsandbytes"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('CUDA Setup failed despite GPU being available.')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    probe = ("from bench_client import compat; compat.apply(quantisation=True); import petals.utils.peft, bitsandbytes; "
             "print(bitsandbytes.__version__, '|', compat.bitsandbytes_error)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0+unavailable | RuntimeError: CUDA Setup failed" in result.stdout
    refused = subprocess.run([sys.executable, "-m", "bench_client.swarm.server", "--model", "netbench/tiny",
                              "--initial-peers", PEER, "--block-indices", "0:2", "--dtype", "nf4", "--device", "cpu"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2
    assert ("--dtype nf4 needs bitsandbytes, which is unusable here (RuntimeError: CUDA Setup failed despite GPU "
            "being available.); use float32 or bfloat16") in refused.stderr


def test_client_refuses_a_directory_as_output(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench_client", "--initial_peers", PEER, "--prefix", "netbench/tiny",
                             "--output", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"{tmp_path} is a directory, not a regular file" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_alibi_workaround_is_bit_identical_to_upstream_and_used_by_the_petals_block():
    """compat item 6: slopes computed once per device instead of per call; same numbers, bit for bit."""
    probe = """
import os, torch
os.environ["NETBENCH_UPSTREAM_ALIBI"] = "1"
from transformers.models.bloom import modeling_bloom
upstream = modeling_bloom.build_alibi_tensor
os.environ.pop("NETBENCH_UPSTREAM_ALIBI")
from bench_client import compat
compat.apply()
import petals.models.bloom.block as block
assert block.build_alibi_tensor is modeling_bloom.build_alibi_tensor is not upstream
mask = torch.ones((3, 17))
mask[1, :5] = 0  # left padding
for heads in (4, 32, 56, 96, 112):  # OPT-6.7B, -30B, -175B have 32, 56, 96; 56 and 96 are not powers of two
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        ours, theirs = modeling_bloom.build_alibi_tensor(mask, heads, dtype), upstream(mask, heads, dtype)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == (3 * heads, 1, 17)
        assert torch.equal(ours, theirs), (heads, dtype)
print("identical")
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("identical")


def test_bench_engine_step_runs_real_blocks_and_prints_numbers():
    """The GPU-side step benchmark (docs/results/gpu) on CPU with the tiny model: real petals blocks
    with dummy weights, a measured window, numbers out; --kernels needs CUDA and says so."""
    import json

    base = [sys.executable, "-m", "bench_client.swarm.engine_bench", "step", "--model", "netbench/tiny", "--device", "cpu",
            "--dtype", "float32", "--blocks", "2", "--past", "16", "--seconds", "0.5"]
    result = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    numbers = json.loads(result.stdout)
    assert numbers["blocks"] == 2 and numbers["steps_per_s"] > 0 and numbers["step_ms"] > 0, numbers
    refused = subprocess.run(base + ["--kernels"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "needs --device cuda" in refused.stderr
