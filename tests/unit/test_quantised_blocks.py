"""INT8 (the paper's dtype) and NF4 blocks compute what the float32 block computes, on the CPU with the
bitsandbytes the project pins (0.50.2: CPU kernels for LLM.int8's matmul with its outlier threshold).
Real bitsandbytes, real petals ``convert_block``, dummy blocks drawn exactly as servers draw them.

Each test runs in a fresh interpreter (this module, re-run by ``python -m pytest`` in a subprocess):
bitsandbytes 0.50's import sets up torch.compile, which fails in a process where Ansible's module_utils
replaced ``sys.intern`` (other tests of this suite import Ansible's filters in-process); a server or
``quant_check`` never imports Ansible."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

FRESH = "NETBENCH_QUANT_FRESH"
if os.environ.get(FRESH) != "1":
    def test_in_a_fresh_interpreter():
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                                env={**os.environ, FRESH: "1"}, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert re.search(r"^5 passed", result.stdout, re.M), result.stdout[-2000:]
else:
    from bench_client import compat
    from bench_client.swarm import quant_check
    from bench_client.swarm.server import install_dummy_weights, quantisation_refusal

    @pytest.fixture(scope="module", autouse=True)
    def petals_ready():
        compat.apply(quantisation=True)
        assert compat.bitsandbytes_error is None, compat.bitsandbytes_error


    @pytest.mark.parametrize("dtype", ["int8", "nf4"])
    def test_the_pinned_bitsandbytes_quantises_on_this_cpu(dtype):
        assert quantisation_refusal(dtype, "cpu") is None


    @pytest.mark.parametrize("dtype, limit", [("int8", 0.05), ("nf4", 0.25)])
    def test_a_quantised_block_is_close_to_float32_and_far_from_other_weights(dtype, limit):
        # OPT-125M's width: 768, wide enough that LLM.int8's row-wise scales and outlier columns matter
        result = quant_check.check("facebook/opt-125m", "cpu", dtype, batch=2, tokens=16, seed=0)
        error = result[dtype]
        assert error["finite"]
        assert error["delta"] <= limit, result
        assert result["float16"]["delta"] < error["delta"]  # half precision alone is closer still
        # what a wrong block looks like: other weights differ by more than the whole block's update
        assert result["other_weights"]["delta"] > max(1.0, 5 * error["delta"]), result


    def test_quantised_servers_get_the_float16_servers_weights_handed_over_on_the_cpu(tmp_path):
        import petals.server.server as petals_server
        from petals import DistributedBloomConfig

        from bench_client.core.models import get_model, write_model_dir

        config = DistributedBloomConfig.from_pretrained(str(write_model_dir(get_model("netbench/tiny"), tmp_path)))
        blocks = []
        for hand_over in (False, True):
            install_dummy_weights("cpu", seed=3, hand_over_on_cpu=hand_over)
            blocks.append(petals_server.load_pretrained_block("dummy", 1, config=config, torch_dtype=torch.float16))
        plain, handed = blocks
        assert not handed.training and all(p.device.type == "cpu" for p in handed.parameters())
        for (name, a), (_, b) in zip(plain.named_parameters(), handed.named_parameters()):
            assert torch.equal(a, b), name
        # every parameter drawn or set: nothing left as torch.empty's garbage
        weights = dict(handed.named_parameters())
        assert all(torch.isfinite(p).all() for p in weights.values())
        assert abs(float(weights["mlp.dense_h_to_4h.weight"].detach().float().std()) - config.initializer_range) < 0.002
