"""The swarm computes the model, not just something: a tiny BLOOM with real saved (random) weights,
served by two servers (blocks 0:2 and 2:4), generates the same tokens and logits as plain
transformers on the same weights; served in INT8, logits close to them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from bench_client.core.models import get_model
from localswarm import LocalSwarm

pytestmark = pytest.mark.slow
MODEL = "netbench/tiny"


def save_tiny_model(directory: Path):
    from transformers import BloomConfig, BloomForCausalLM

    spec = get_model(MODEL)
    config = BloomConfig(**{k: v for k, v in spec.bloom_config().items() if k != "architectures"})
    torch.manual_seed(1234)
    model = BloomForCausalLM(config).eval()
    # petals reads blocks as "h.N.*": save the base model, as petals' converted BLOOM repos do
    model.transformer.save_pretrained(directory)
    return model


def run_on_swarm(tmp_path: Path, model_dir: Path, inputs: torch.Tensor, dtype: str = "float32") -> dict:
    """Greedy tokens and logits of the saved model served by two servers (blocks 0:2 and 2:4) in ``dtype``."""
    swarm = LocalSwarm(tmp_path)
    # for correctness_client.py, ahead of what the test runs with
    swarm.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    try:
        swarm.start_dht()
        for name, span in (("server-a", "0:2"), ("server-b", "2:4")):
            swarm.start_server(name, MODEL, span, "--weights", "pretrained", "--model-dir", str(model_dir), dtype=dtype)
        swarm.wait_served(MODEL)
        info = swarm.run_module(["bench_client.swarm.blocks", "info", "--initial-peers", *swarm.initial_peers,
                                 "--model", MODEL], timeout=120)
        assert info.returncode == 0, info.stderr[-3000:]
        # what the servers announce: the quantisation petals applied, not just what was asked
        quant_types = {server["quant_type"] for server in json.loads(info.stdout)["servers"]}
        assert quant_types == {"none" if dtype in ("float32", "float16", "bfloat16") else dtype}, quant_types
        result = swarm.run_module(["correctness_client", str(model_dir), get_model(MODEL).dht_prefix,
                                   str(swarm.address_file), json.dumps(inputs.tolist())], timeout=300)
    finally:
        swarm.stop_all()
    assert result.returncode == 0, result.stderr[-3000:]
    assert not swarm.leftovers()
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_swarm_matches_transformers_on_the_same_weights(tmp_path):
    model_dir = tmp_path / "tiny-saved"
    reference = save_tiny_model(model_dir)
    inputs = torch.randint(3, 50272, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = reference.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=6,
                                      do_sample=False, output_scores=True, return_dict_in_generate=True)
    got = run_on_swarm(tmp_path, model_dir, inputs)
    assert got["tokens"] == expected.sequences.tolist()
    # every step's logits: the prefill through both servers and each cached decode step
    torch.testing.assert_close(torch.tensor(got["logits"]), torch.stack(expected.scores), rtol=1e-4, atol=1e-4)


def test_an_int8_swarm_computes_the_model_on_the_same_weights(tmp_path):
    """INT8 (LLM.int8 through bitsandbytes, on the CPU here) servers of the same saved weights: the
    prefill's logits within a few per cent of float32's, far closer than another model's."""
    model_dir = tmp_path / "tiny-saved"
    reference = save_tiny_model(model_dir)
    inputs = torch.randint(3, 50272, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = reference(inputs).logits[:, -1]
        torch.manual_seed(99)
        other = type(reference)(reference.config).eval()(inputs).logits[:, -1]
    got = torch.tensor(run_on_swarm(tmp_path, model_dir, inputs, dtype="int8")["logits"][0])

    def relative(a: torch.Tensor) -> float:
        return float((a - expected).norm() / expected.norm())

    print(f"int8 swarm: logits' relative error {relative(got):.4f}, another model's {relative(other):.4f}")
    assert relative(got) < 0.05 < relative(other), (relative(got), relative(other))
