"""The GPU count of the per-GPU divisor comes from the GPUs themselves (issue 24, class 4): servers the
role pins with CUDA_VISIBLE_DEVICES all see their GPU as cuda:0, and cloned hosts share a host name, so
the client counted one GPU per host; the servers now announce each GPU's UUID."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from bench_client.client.cli import count_gpus
from bench_client.swarm.blocks import ServerView, SwarmView

ROOT = Path(__file__).resolve().parents[2]


def _server(public_name: str, peer: str) -> ServerView:
    return ServerView(peer_id=peer, start_block=0, end_block=1, state="ONLINE", public_name=public_name,
                      torch_dtype="float16", quant_type="none", cache_tokens_left=None)


def _view(*names: str) -> SwarmView:
    return SwarmView("facebook/opt-30b", "facebook/opt-30b", 48,
                     [_server(n, f"peer{i}") for i, n in enumerate(names)], list(range(48)))


def test_pinned_servers_of_one_host_count_their_gpus_by_uuid():
    pinned = _view(*(f"netbench|gpuhost|cuda:0|NVIDIA H200|GPU-{i}" for i in range(4)))
    assert count_gpus(pinned, None) == (4, "dht-gpus")
    # the lab's namespaces (host names differ) on one GPU: one
    shared = _view(*(f"netbench|h{i}|cuda:0|NVIDIA H200|GPU-same" for i in range(4)))
    assert count_gpus(shared, None) == (1, "dht-gpus")
    # two cloned hosts (one host name), one GPU each
    cloned = _view("netbench|clone|cuda:0|NVIDIA H200|GPU-a", "netbench|clone|cuda:0|NVIDIA H200|GPU-b")
    assert count_gpus(cloned, None) == (2, "dht-gpus")
    assert cloned.gpus == ["clone/cuda:0@GPU-a: NVIDIA H200", "clone/cuda:0@GPU-b: NVIDIA H200"]
    # servers of before (no UUID) count as they did: by host and device
    old = _view("netbench|h|cuda:0|NVIDIA H200", "netbench|h|cuda:1|NVIDIA H200", "netbench|h|cuda:1|NVIDIA H200")
    assert count_gpus(old, None) == (2, "dht-gpus")
    cpu = _view("netbench|h|cpu|cpu|", "netbench|h|cpu|cpu|")
    assert count_gpus(cpu, None) == (2, "dht-servers")


def test_the_report_reads_the_gpu_name_behind_a_uuid():
    from bench_client.report.data import gpu_names

    assert gpu_names(["clone/cuda:0@GPU-a: NVIDIA H200", "clone/cuda:0@GPU-b: NVIDIA H200"]) == ["NVIDIA H200"]


def test_the_probe_reads_each_gpus_memory_and_uuid(tmp_path: Path):
    """The pre-flight probe with nvidia-smi's CSV (this machine has no GPU: a stand-in prints what
    `nvidia-smi --query-gpu=memory.total,uuid --format=csv,noheader,nounits` prints on the H200 host)."""
    probe = yaml.safe_load((ROOT / "roles/preflight/tasks/probe.yml").read_text())[0]["ansible.builtin.shell"]["cmd"]
    probe = probe.replace("{{ netbench_workdir | quote }}", str(tmp_path / "work"))
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text('#!/bin/sh\nprintf "143771, GPU-6a4f0c2e-1b2c-3d4e-5f60-718293a4b5c6\\n[N/A], GPU-77\\n"\n')
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{smi.parent}:{os.environ['PATH']}"}
    probed = json.loads(subprocess.run(["sh", "-c", probe], capture_output=True, text=True, env=env, check=True).stdout)
    assert probed["gpus_mib"] == [143771, 0]
    assert probed["gpus_uuid"] == ["GPU-6a4f0c2e-1b2c-3d4e-5f60-718293a4b5c6", "GPU-77"]
