"""Run manifests (bench_client.orchestration.manifest) and ``report --compare RUN_A RUN_B``.

The manifest CLI runs as the experiment playbook runs it (a subprocess with the plan, hosts and
extra vars as JSON); the secrets canary scan (tests/secrets_scan.py) checks that a credential passed
as an extra var or hidden in host data never reaches the file. Rows are synthetic schema-1 records.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

from secrets_scan import leaks
from test_report_table17 import write_flexgen, write_petals

from bench_client.report.cli import main

REPO = Path(__file__).resolve().parents[2]


def write_manifest(run_dir: Path, extra_vars: dict, hosts: dict | None = None) -> subprocess.CompletedProcess:
    data = {"plan": {"run_id": run_dir.name, "model": "facebook/opt-30b", "num_gpus": 4, "systems": ["petals"]},
            "hosts": hosts or {"gpu1": {"address": "10.0.0.11", "device": "cuda", "gpus_mib": [143771]}},
            "extra_vars": extra_vars}
    return subprocess.run([sys.executable, "-m", "bench_client.orchestration.manifest", "--out", str(run_dir / "manifest.json"),
                           "--json", json.dumps(data)], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_manifest_records_the_run_and_never_a_secret(tmp_path: Path):
    canaries = [f"canary-{secrets.token_hex(8)}" for _ in range(3)]
    done = write_manifest(tmp_path / "run-a", {"model": "facebook/opt-30b", "repeats": 3,
                                               "ansible_become_password": canaries[0], "hf_token": canaries[1]},
                          hosts={"gpu1": {"address": "10.0.0.11", "ssh_private_key_file": canaries[2]}})
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "run-a" / "manifest.json").read_text())
    assert manifest["run_id"] == "run-a" and manifest["extra_vars"]["repeats"] == 3
    assert manifest["extra_vars"]["ansible_become_password"] == "<redacted>"
    assert manifest["hosts"]["gpu1"] == {"address": "10.0.0.11", "ssh_private_key_file": "<redacted>"}
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert manifest["git"]["commit"] == git and isinstance(manifest["git"]["dirty"], bool)
    assert manifest["controller_versions"]["python"]
    assert not leaks([tmp_path], canaries)


def test_manifest_refuses_bad_json(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "bench_client.orchestration.manifest", "--out", str(tmp_path / "m.json"),
                           "--json", "[1, 2"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2 and "not valid JSON" in done.stderr and not (tmp_path / "m.json").exists()


def test_a_resume_with_another_model_or_dtype_is_refused_and_the_manifest_kept(tmp_path: Path):
    """The pre-flight's --check and the write itself: a run id measured with another dtype is refused,
    its manifest never rewritten; the same configuration (a resume) passes."""
    run = tmp_path / "first"
    assert write_manifest(run, {}).returncode == 0
    kept = (run / "manifest.json").read_bytes()
    plan = {"run_id": "first", "model": "facebook/opt-30b", "num_gpus": 4, "systems": ["petals"]}
    for check in (["--check"], []):
        proc = subprocess.run([sys.executable, "-m", "bench_client.orchestration.manifest", *check, "--out",
                               str(run / "manifest.json"), "--json", json.dumps({"plan": {**plan, "dtype": "bfloat16"}})],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 2 and "resumes run first" in proc.stderr and "dtype None there, 'bfloat16' now" \
            in proc.stderr, proc.stderr
        assert (run / "manifest.json").read_bytes() == kept
    same = subprocess.run([sys.executable, "-m", "bench_client.orchestration.manifest", "--check", "--out",
                           str(run / "manifest.json"), "--json", json.dumps({"plan": plan})],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert same.returncode == 0 and (run / "manifest.json").read_bytes() == kept, same.stderr


def test_compare_two_runs(tmp_path: Path, capsys):
    a, b = tmp_path / "run-a", tmp_path / "run-b"
    write_petals(a, {"none": [8.0, 6.0, 7.0], "paper-10ms-1gbit": [10.0]})
    write_petals(b, {"none": [4.0, 3.5, 3.0]})
    write_flexgen(b / "flexgen", repeats=1)
    write_manifest(a, {"repeats": 3})
    write_manifest(b, {"repeats": 1})
    assert main(["--compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert text == (tmp_path / "cmp" / "compare.md").read_text()
    # Petals, no shaping: median per GPU 2*6*32/7/4 = 13.7 in A, 2*6*32/3.5/4 = 27.4 in B: +100 %
    row = next(line for line in text.splitlines() if "| Petals |" in line and "no shaping" in line)
    assert "13.7 [12.0–16.0] (n=3)" in row and "27.4 [24.0–32.0] (n=3)" in row and "+100.0 %" in row
    assert "Only in run-a: facebook/opt-30b, Petals, float16, 10 ms / 1 Gbit/s" in text
    assert "Only in run-b: facebook/opt-30b, FlexGen" in text
    assert "| extra_vars.repeats | 3 | 1 |" in text


def test_compare_needs_two_run_directories(tmp_path: Path, capsys):
    write_petals(tmp_path / "run-a", {"none": [7.0]})
    assert main(["--compare", str(tmp_path / "run-a"), str(tmp_path / "missing")]) == 2
    assert "missing: not a run directory" in capsys.readouterr().err
    assert main(["--compare", str(tmp_path / "run-a"), str(tmp_path / "run-a"), str(tmp_path)]) == 2
