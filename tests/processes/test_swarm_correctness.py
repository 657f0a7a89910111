"""The swarm computes the model, not just something: a tiny BLOOM with real saved (random) weights,
served by two servers (blocks 0:2 and 2:4), generates the same tokens and logits as plain
transformers on the same weights."""

from __future__ import annotations

import json
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


def test_swarm_matches_transformers_on_the_same_weights(tmp_path):
    model_dir = tmp_path / "tiny-saved"
    reference = save_tiny_model(model_dir)
    inputs = torch.randint(3, 50272, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = reference.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=6,
                                      do_sample=False, output_scores=True, return_dict_in_generate=True)

    swarm = LocalSwarm(tmp_path)
    swarm.env["PYTHONPATH"] = str(Path(__file__).parents[1])  # for correctness_client.py
    try:
        swarm.start_dht()
        for name, span in (("server-a", "0:2"), ("server-b", "2:4")):
            swarm.start_server(name, MODEL, span, "--weights", "pretrained", "--model-dir", str(model_dir))
        swarm.wait_served(MODEL)
        result = swarm.run_module(["correctness_client", str(model_dir), get_model(MODEL).dht_prefix,
                                   str(swarm.address_file), json.dumps(inputs.tolist())], timeout=300)
    finally:
        swarm.stop_all()
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["tokens"] == expected.sequences.tolist()
    # every step's logits: the prefill through both servers and each cached decode step
    torch.testing.assert_close(torch.tensor(got["logits"]), torch.stack(expected.scores), rtol=1e-4, atol=1e-4)
    assert not swarm.leftovers()
