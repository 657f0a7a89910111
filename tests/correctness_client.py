"""Run as a subprocess by test_swarm_correctness.py: greedy tokens and logits from the private swarm for a
saved model, printed as JSON. A separate process so petals' p2p state dies with it."""

import json
import os
import sys

import torch

from bench_client import compat
from bench_client.core.processes import terminate_tree

compat.apply()
from petals import DistributedBloomForCausalLM  # noqa: E402

model_dir, prefix, peers_file, inputs_json = sys.argv[1:5]
model = DistributedBloomForCausalLM.from_pretrained(
    model_dir, initial_peers=open(peers_file).read().split(), dht_prefix=prefix, torch_dtype=torch.float32)
inputs = torch.tensor(json.loads(inputs_json))
with torch.inference_mode():
    out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=6, do_sample=False,
                         output_scores=True, return_dict_in_generate=True)
# scores of greedy steps are the raw next-token logits (no logits processors are active)
print(json.dumps({"tokens": out.sequences.tolist(), "logits": [s.tolist() for s in out.scores]}))
sys.stdout.flush()
terminate_tree(os.getpid(), include_self=False)  # petals' DHT process would outlive os._exit
os._exit(0)
