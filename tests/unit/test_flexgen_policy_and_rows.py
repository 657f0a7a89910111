"""FlexGen as a second system, on CPU: the policy search and its memory model, FlexGen's log format,
the command line, and the rows it writes (read back by the report).

FlexGen itself needs a CUDA GPU, so the trial child is replaced where it must be: the search's
OOM fallback is driven by a trial function, and the CLI end to end by tests/fixtures/
fake_flexgen_python.py, a stand-in for the child that emits the captured FlexGen log. The log
fixture was written by flexgen 0.1.8's own flexgen.utils.write_benchmark_log (not typed by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_client.flexgen import cli as flexgen
from bench_client.flexgen.log import FlexGenLogError, parse_log
from bench_client.flexgen.policy import Estimate, Policy, Workload, estimate, h200, plan_search
from bench_client.flexgen.tokenizer import StandInTokenizer
from bench_client.flexgen.trials import Trial, TrialFailed, classify, flexgen_args, search
from bench_client.core.models import get_model
from bench_client.report.data import Defaults, load_results

FIXTURES = Path(__file__).parents[1] / "fixtures"
LOG = (FIXTURES / "flexgen-0.1.8-benchmark.log").read_text()
REPO = Path(__file__).resolve().parents[2]


def test_parse_log_reads_flexgens_last_entry():
    log = parse_log(LOG)
    assert log.projected is True and log.total_throughput == 148.492 and log.total_latency_s == 13.792
    first = parse_log("".join(LOG.splitlines(keepends=True)[:5]))
    assert (first.prefill_latency_s, first.decode_latency_s, first.total_throughput) == (0.082, 1.563, 38.906)
    assert first.model_gb == 55.803 and first.peak_gpu_gb == 61.2 and first.projected is False


def test_parse_log_without_a_result_says_so():
    with pytest.raises(FlexGenLogError, match="no FlexGen benchmark result"):
        parse_log("init weight...\nwarmup - generate\nTraceback: CUDA out of memory\n")


def test_our_size_formulas_are_flexgens():
    """FlexGen printed 'model size: 55.803 GB' and 'cache size: 1.395 GB' (2 x 544 tokens) for OPT-30B."""
    work = Workload(get_model("facebook/opt-30b"), 512, 32)
    assert round(work.weight_bytes / (1 << 30), 3) == parse_log(LOG).model_gb
    assert round(work.cache_bytes(2) / (1 << 30), 3) == parse_log(LOG[: LOG.index("model size", 10)]).cache_gb


@pytest.mark.parametrize(
    "bad, message",
    [
        (Policy(0, 1, 100, 0, 100, 0, 100, 0), ">= 1"),
        (Policy(2, 1, 80, 30, 100, 0, 100, 0), "weights"),
        (Policy(2, 1, 100, 0, 100, 0, 50, 50), "activations"),
        (Policy(2, 1, 100, 0, 50, 50, 100, 0, True, True), "compressed cache"),
    ],
)
def test_policy_rejects_what_flexgen_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        bad.check()


def test_plan_fits_the_memory_model_and_is_ordered():
    hw = h200(128)
    work = Workload(get_model("facebook/opt-30b"), 512, 32)
    plan = plan_search(work, hw)
    assert plan and all(e.fits(hw) for _, e in plan)
    # the best fp16 and the best 4-bit policy come first, then the rest best-estimate first
    assert {p.compress_weight for p, _ in plan[:2]} == {False, True}
    speeds = [e.tokens_per_s for _, e in plan[2:]]
    assert speeds == sorted(speeds, reverse=True) and plan[0][1].tokens_per_s >= plan[2][1].tokens_per_s
    # the measurement: 32 x 4 sequences of OPT-30B in fp16 all on the GPU ran out of memory
    oom = Policy(32, 4, 100, 0, 100, 0, 100, 0)
    assert not estimate(oom, work, hw).fits(hw)
    assert oom not in {p for p, _ in plan}


def test_opt175b_on_one_h200_needs_compression():
    work = Workload(get_model("facebook/opt-175b"), 512, 32)
    hw = h200(128)
    assert plan_search(work, hw, compression=(False,)) == []  # 325 GiB of fp16 > 136 GiB GPU + 112 GiB host
    plan = plan_search(work, hw, compression=(True,))
    assert plan and all(p.compress_weight and p.compress_cache for p, _ in plan)


def _plan(*policies: Policy) -> list[tuple[Policy, Estimate]]:
    return [(p, Estimate(0, 0, 1, 100 - i)) for i, p in enumerate(policies)]


def _trial(policy: Policy, status: str, tps: float = 0.0) -> Trial:
    log = parse_log(LOG)
    return Trial(policy, status, log.__class__(**{**log.__dict__, "total_throughput": tps}) if status == "ok" else None)


def test_search_falls_back_on_oom_and_skips_larger_batches_of_that_arrangement():
    big, bigger, small, other = (Policy(64, 1, 100, 0, 100, 0, 100, 0), Policy(64, 2, 100, 0, 100, 0, 100, 0),
                                 Policy(32, 1, 100, 0, 100, 0, 100, 0), Policy(64, 2, 50, 50, 100, 0, 100, 0))
    speeds = {small: 300.0, other: 120.0}
    ran: list[Policy] = []

    def runner(policy: Policy) -> Trial:
        ran.append(policy)
        return _trial(policy, "ok", speeds[policy]) if policy in speeds else _trial(policy, "oom")

    result = search(_plan(big, bigger, small, other), runner, max_trials=10)
    assert ran == [big, small, other]  # bigger: same arrangement as big, which ran out of memory
    assert result.skipped == 1 and result.best.policy == small


def test_search_stops_at_max_trials_and_reuses_known_trials():
    a, b, c = (Policy(g, 1, 100, 0, 100, 0, 100, 0) for g in (8, 4, 2))
    ran: list[Policy] = []

    def runner(policy: Policy) -> Trial:
        ran.append(policy)
        return _trial(policy, "ok", 10.0 * policy.gpu_batch_size)

    result = search(_plan(a, b, c), runner, max_trials=2, known={a: _trial(a, "ok", 80.0)})
    assert ran == [b] and result.best.policy == a and len(result.trials) == 2


def test_search_stops_on_a_failure_that_is_not_memory():
    p = Policy(2, 1, 100, 0, 100, 0, 100, 0)
    with pytest.raises(TrialFailed, match="not out of memory"):
        search(_plan(p), lambda policy: Trial(policy, "error", detail="ImportError: flexgen"), max_trials=3)


def test_classify():
    assert classify(0, "") == "ok"
    assert classify(1, "torch.OutOfMemoryError: CUDA out of memory.") == "oom"
    assert classify(-9, "") == "oom"  # the kernel's OOM killer (host RAM)
    assert classify(1, "ModuleNotFoundError: No module named 'flexgen'") == "error"


def test_flexgen_args_are_flex_opts_flags():
    p = Policy(32, 4, 50, 50, 0, 100, 100, 0, True, True)
    args = flexgen_args(p, "facebook/opt-30b", 512, 32, "/tmp/x.log", "/tmp/off")
    assert args[args.index("--percent") + 1 : args.index("--percent") + 7] == ["50", "50", "0", "100", "100", "0"]
    assert args[args.index("--path") + 1] == "_DUMMY_"
    assert ["--gpu-batch-size", "32", "--num-gpu-batches", "4"] == args[args.index("--gpu-batch-size") :][:4]
    assert args[-2:] == ["--compress-weight", "--compress-cache"]


def test_stand_in_tokenizer_pads_like_opts():
    """flex_opt.get_test_inputs: tokenizer(prompts, padding="max_length", max_length=n).input_ids[0]."""
    ids = StandInTokenizer()(["Paris is the capital city of"], padding="max_length", max_length=512).input_ids[0]
    assert len(ids) == 512 and ids[:505] == [1] * 505 and 1 not in ids[505:]
    assert len(StandInTokenizer()(["x"], max_length=4).input_ids[0]) == 4


def _cli(tmp_path: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {FIXTURES / 'fake_flexgen_python.py'} \"$@\"\n")
    fake.chmod(0o755)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_FLEXGEN_CALLS": str(tmp_path / "calls"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bench_client.flexgen", "--model", "facebook/opt-30b", "--output",
         str(tmp_path / "out.tsv"), "--python", str(fake), "--cpu-mem-gib", "100", *extra],
        capture_output=True, text=True, env=full_env, cwd=REPO, timeout=120,
    )


def test_cli_search_repeats_rows_and_resume(tmp_path):
    env = {"FAKE_FLEXGEN_MAX_SEQUENCES": "48"}
    done = _cli(tmp_path, "--prompt-lengths", "512", "--search", "--max-trials", "3", "--repeats", "2", env=env)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 3 + 2  # 3 trials, then 2 repeats of the best
    trials = [json.loads(line) for line in (tmp_path / "out.search.jsonl").read_text().splitlines()]
    # the stand-in runs out of memory above 48 sequences, as CUDA would: those trials fell back
    assert trials[0]["status"] == "oom" and trials[0]["policy"]["num_sequences"] > 48
    assert all((t["status"] == "ok") == (t["policy"]["num_sequences"] <= 48) for t in trials)
    assert any(t["status"] == "ok" for t in trials)
    rows = (tmp_path / "out.tsv").read_text().splitlines()
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and [r["repeat"] for r in records] == [0, 1]
    best = records[0]["system_fields"]["policy"]  # FlexGen's own field
    assert rows[0].split("\t")[:5] == [str(best["gpu_batch_size"]), str(best["num_gpu_batches"]), "1", "512", "32"]
    r = records[0]
    assert r["system"] == "flexgen" and r["num_gpus"] == 1 and r["system_fields"]["tokenizer"].startswith("stand-in")
    assert r["per_gpu_throughput"] == r["total_throughput"] == pytest.approx(best["num_sequences"] * 32 / 1.645)
    assert r["per_token_latency_s"] == pytest.approx(1.563 / 31)

    # a rerun with more repeats measures only the missing one, with the chosen policy, no new search
    again = _cli(tmp_path, "--prompt-lengths", "512", "--search", "--repeats", "3", env=env)
    assert again.returncode == 0, again.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == 6
    assert len((tmp_path / "out.tsv").read_text().splitlines()) == 3

    results = load_results([tmp_path / "out.tsv"], Defaults())
    assert len(results.rows) == 3 and {row.system for row in results.rows} == {"flexgen"}


def test_a_search_after_a_broken_flexgen_is_fixed_runs_again(tmp_path):
    broken = _cli(tmp_path, "--prompt-lengths", "512", "--search", "--max-trials", "2", env={"FAKE_FLEXGEN_BROKEN": "1"})
    assert broken.returncode == flexgen.EXIT_TRIAL_ERROR
    assert json.loads((tmp_path / "out.search.jsonl").read_text())["status"] == "error"
    fixed = _cli(tmp_path, "--prompt-lengths", "512", "--search", "--max-trials", "2")
    assert fixed.returncode == 0, fixed.stderr  # the error trial was not reused
    assert len((tmp_path / "out.tsv").read_text().splitlines()) == 1


def test_cli_fixed_policy_and_a_broken_flexgen(tmp_path):
    broken = _cli(tmp_path, "--prompt-lengths", "256", env={"FAKE_FLEXGEN_BROKEN": "1"})
    assert broken.returncode == flexgen.EXIT_TRIAL_ERROR and "No module named 'flexgen'" in broken.stderr
    assert not (tmp_path / "out.tsv").exists() or not (tmp_path / "out.tsv").read_text()
    failed = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert failed[0]["status"] == "failed"
    ok = _cli(tmp_path, "--prompt-lengths", "256", "--gpu-batch-size", "2", "--percent", "100", "0", "100", "0",
              "100", "0")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out.tsv").read_text().split("\t")[:5] == ["2", "1", "1", "256", "32"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--percent", "100", "0", "100"], "six numbers"),
        (["--percent", "100", "0", "100", "0", "50", "50"], "activations"),
        (["--model", "facebook/opt-999b"], "opt-999b"),
    ],
)
def test_cli_bad_input_fails_before_running_anything(tmp_path, args, message):
    done = _cli(tmp_path, *args)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "calls").exists()


def test_cli_refuses_to_mix_policies_in_one_output(tmp_path):
    first = _cli(tmp_path, "--prompt-lengths", "256", "--gpu-batch-size", "2")
    assert first.returncode == 0, first.stderr
    other = _cli(tmp_path, "--prompt-lengths", "256", "--gpu-batch-size", "4", "--repeats", "2")
    assert other.returncode == 2 and "repeats of one configuration must share the policy" in other.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == 1


def test_a_trial_dies_with_its_parent(tmp_path):
    """The FlexGen child gets SIGKILL when the parent is killed (a time limit's SIGKILL included)."""
    import signal
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import subprocess, sys\n"
        "from bench_client.flexgen.trials import _die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True,\n"
        "                         preexec_fn=_die_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as stat:
            if stat.read().split(")")[1].split()[0] == "Z":
                break  # dead, waiting to be reaped by init
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the trial outlived its parent")


def test_opt175b_fp16_fits_the_two_h200_host_offloaded():
    """256 GB of host RAM: 325 GiB of fp16 weights fit GPU + host when most weights live on the host."""
    plan = plan_search(Workload(get_model("facebook/opt-175b"), 512, 32), h200(256), compression=(False,))
    assert plan and all(p.w_gpu < 100 and p.w_cpu > 0 for p, _ in plan)
