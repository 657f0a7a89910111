"""Is a quantised block right? Dummy blocks built as servers build them, run quantised through petals'
own ``convert_block`` and compared with the same weights in float32.

    python -m bench_client.swarm.quant_check --model netbench/tiny --device cpu
    python -m bench_client.swarm.quant_check --model facebook/opt-30b --device cuda --dtype int8

Prints one JSON object and exits 1 when the quantised block's error exceeds ``--max-error``.
Errors are relative L2 norms against the float32 reference, of the block's output (``out``) and of
what the block adds to its input (``delta`` = output - input: the residual stream hides errors in
``out``). Two yardsticks come with them: float16 with the same weights (the error of half precision
alone) and a block with other weights (``other_weights``: what "wrong" looks like; two unrelated
blocks of OPT width differ by about 1.2 in ``out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from importlib.metadata import version as installed_version

from bench_client.core.models import QUANTISED_DTYPES, WEIGHT_DTYPES, get_model, write_model_dir
from bench_client.core.arguments import description

# LLM.int8 keeps about 2 significant digits per weight; nf4 about 1 (QLoRA). Measured on CPU with
# bitsandbytes 0.50.2 (docs/engine.md): int8 delta 0.019, nf4 delta ~0.1 at width 512.
DEFAULT_MAX_ERROR = {"int8": 0.05, "nf4": 0.25}


def relative_error(value, reference) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm())


def dummy_block(config, device: str, seed: int, block_index: int = 0):
    """One float16 block with the dummy weights a server on ``device`` would draw (same loader)."""
    import torch
    import petals.server.server as petals_server

    from bench_client.swarm.server import install_dummy_weights

    install_dummy_weights(device, seed)
    return petals_server.load_pretrained_block("dummy", block_index, config=config, torch_dtype=torch.float16)


def check(model: str, device: str, dtype: str, batch: int, tokens: int, seed: int) -> dict:
    import torch

    from bench_client import compat

    compat.apply(quantisation=True)
    from petals import DistributedBloomConfig
    from petals.utils.convert_block import QuantType, convert_block

    spec = get_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        config = DistributedBloomConfig.from_pretrained(str(write_model_dir(spec, tmp)))
    block = dummy_block(config, device, seed)
    reference = copy.deepcopy(block).float()
    half = block  # float16 with the same weights
    # as the server does it: petals quantises a CPU block while moving it to its device
    quantised = convert_block(copy.deepcopy(block).cpu(), 0, config, [torch.device(device)], torch.device(device),
                              QuantType[WEIGHT_DTYPES[dtype][1].upper()])
    quantised.eval()
    other = dummy_block(config, device, seed + 1)
    generator = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(batch, tokens, spec.hidden, device=device, generator=generator)

    with torch.inference_mode():
        ref = reference(hidden)[0]
        outputs = {"float16": half(hidden.half())[0], dtype: quantised(hidden.half())[0],
                   "other_weights": other(hidden.half())[0]}
    result: dict = {"model": spec.name, "hidden": spec.hidden, "device": device, "dtype": dtype, "batch": batch,
                    "tokens": tokens, "bitsandbytes": installed_version("bitsandbytes"),
                    "delta_norm_over_input_norm": round(float((ref - hidden).norm() / hidden.norm()), 3)}
    for name, out in outputs.items():
        result[name] = {"out": round(relative_error(out, ref), 5), "delta": round(relative_error(out - hidden, ref - hidden), 5),
                        "finite": bool(torch.isfinite(out).all())}
    if device.startswith("cuda"):
        # a block drawn by the CPU generator with the same seed: not the same weights as on the GPU
        cpu_drawn = dummy_block(config, "cpu", seed).to(device)
        result["cpu_and_cuda_generators_draw_the_same_weights"] = all(
            torch.equal(a, b) for a, b in zip(cpu_drawn.parameters(), block.parameters()))
        result["quantised_weight_bytes"] = sum(t.numel() * t.element_size() for t in quantised.state_dict().values()
                                               if torch.is_tensor(t))
        result["float16_weight_bytes"] = sum(p.numel() * p.element_size() for p in block.parameters())
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench_client.swarm.quant_check", description=description(__doc__))
    p.add_argument("--model", default="netbench/tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="int8", choices=sorted(QUANTISED_DTYPES))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-error", type=float, default=None, help="largest relative error of delta that passes")
    args = p.parse_args(argv)
    result = check(args.model, args.device, args.dtype, args.batch, args.tokens, args.seed)
    limit = DEFAULT_MAX_ERROR[args.dtype] if args.max_error is None else args.max_error
    quantised = result[args.dtype]
    result["passed"] = quantised["finite"] and quantised["delta"] <= limit
    result["max_error"] = limit
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
