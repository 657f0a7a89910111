"""The flexgen_bench role run by ansible-playbook on this machine: it starts bench_client.flexgen as
an async job, waits, and fetches the rows to <results_dir>/<run_id>/flexgen/. FlexGen itself needs
CUDA, so the trial child is tests/fixtures/fake_flexgen_python.py (passed with --python); the role,
the parent process, the row writer and the fetch are the real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_role_runs_flexgen_and_fetches_rows(tmp_path: Path):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {FIXTURES / 'fake_flexgen_python.py'} \"$@\"\n")
    fake.chmod(0o755)
    playbook = tmp_path / "play.yml"
    playbook.write_text(f"""\
- name: FlexGen role alone
  hosts: localhost
  gather_facts: false
  roles:
    - role: flexgen_bench
      vars:
        flexgen_bench_python: {sys.executable}
        flexgen_bench_workdir: {tmp_path / 'work'}
        flexgen_bench_model: facebook/opt-6.7b
        flexgen_bench_run_id: run-fg
        flexgen_bench_prompt_lengths: [16, 32]
        flexgen_bench_repeats: 2
        flexgen_bench_search: false
        flexgen_bench_poll_seconds: 1
        flexgen_bench_results_dir: {tmp_path / 'results'}
        flexgen_bench_extra_args: [--python, {fake}, --gpu-batch-size, "2"]
        flexgen_bench_environment:
          PYTHONPATH: {ROOT}
          FAKE_FLEXGEN_CALLS: {tmp_path / 'calls'}
""")
    (tmp_path / "work").mkdir()
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", str(playbook)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    fetched = tmp_path / "results" / "run-fg" / "flexgen"
    rows = (fetched / "out.tsv").read_text().splitlines()
    assert [r.split("\t")[:5] for r in rows] == [["2", "1", "1", "16", "32"], ["2", "1", "1", "16", "32"],
                                                  ["2", "1", "1", "32", "32"], ["2", "1", "1", "32", "32"]]
    meta = [json.loads(line) for line in (fetched / "out.jsonl").read_text().splitlines()]
    assert [(m["system"], m["run_id"], m["repeat"]) for m in meta] == [("flexgen", "run-fg", r) for r in (0, 1, 0, 1)]
    assert len((tmp_path / "calls").read_text().splitlines()) == 4
