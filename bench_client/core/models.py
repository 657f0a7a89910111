"""The models of the FlexGen paper's Petals benchmark, as BLOOM blocks with OPT dimensions.

The paper's fork served BLOOM blocks resized to OPT-6.7B/30B/175B with random weights; we do the
same, so ``hidden``/``layers``/``heads``/``vocab`` are the OPT numbers and the block is BLOOM's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from bench_client.core.processes import write_atomically

VOCAB_SIZE = 50272  # OPT's vocabulary, used by every model here (as in the paper's fork)

# Weight formats a server can use: name -> (torch compute dtype, petals quant_type, bytes per weight)
WEIGHT_DTYPES: dict[str, tuple[str, str, float]] = {
    "float32": ("float32", "none", 4.0),
    "float16": ("float16", "none", 2.0),
    "bfloat16": ("bfloat16", "none", 2.0),
    "int8": ("float16", "int8", 1.0),  # LLM.int8 via bitsandbytes (CUDA; CPU from bitsandbytes 0.50)
    "nf4": ("float16", "nf4", 0.5),  # QLoRA 4-bit via bitsandbytes (CUDA; CPU from bitsandbytes 0.50)
}
QUANTISED_DTYPES = frozenset(name for name, (_, quant, _) in WEIGHT_DTYPES.items() if quant != "none")


class UnknownModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the name users type, e.g. facebook/opt-30b
    hidden: int
    layers: int
    heads: int
    dht_prefix: str
    vocab: int = VOCAB_SIZE

    @property
    def params_per_block(self) -> int:
        h = self.hidden
        # BLOOM block: fused qkv (3h^2+3h), attention dense (h^2+h), MLP h->4h->h (8h^2+5h), 2 LayerNorms (4h)
        return 12 * h * h + 13 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden + 2 * self.hidden  # tied LM head; word_embeddings_layernorm

    @property
    def block_params(self) -> int:
        return self.layers * self.params_per_block

    def blocks_bytes(self, dtype: str, blocks: int | None = None) -> int:
        """Bytes of weights for ``blocks`` transformer blocks (all of them by default) in ``dtype``."""
        count = self.layers if blocks is None else blocks
        return int(count * self.params_per_block * bytes_per_weight(dtype))

    def cache_bytes(self, dtype: str, tokens: int, blocks: int | None = None) -> int:
        """Bytes of a server's attention cache of ``tokens`` tokens over ``blocks`` blocks, as petals
        reserves it: keys and values (2 x hidden) per token and block in the compute dtype."""
        count = self.layers if blocks is None else blocks
        return int(count * 2 * self.hidden * tokens * bytes_per_weight(WEIGHT_DTYPES[dtype][0]))

    def embedding_bytes(self, dtype: str) -> int:
        """Bytes of a client's embeddings and LM head (tied) in ``dtype``."""
        return int(self.embedding_params * bytes_per_weight(dtype))

    def model_bytes(self, dtype: str) -> int:
        """Bytes of the whole model (blocks + embeddings): what a decode step must stream from memory."""
        return int((self.block_params + self.embedding_params) * bytes_per_weight(dtype))

    def bloom_config(self) -> dict:
        return {
            "architectures": ["BloomForCausalLM"],
            "model_type": "bloom",
            "hidden_size": self.hidden,
            "n_layer": self.layers,
            "n_head": self.heads,
            "vocab_size": self.vocab,
            "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02,
            "apply_residual_connection_post_layernorm": False,
            "bos_token_id": 2,
            "eos_token_id": 2,
            "pad_token_id": 1,
            "use_cache": True,
            "torch_dtype": "float16",
            "netbench_model": self.name,
        }


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("facebook/opt-6.7b", hidden=4096, layers=32, heads=32, dht_prefix="opt6b"),
        ModelSpec("facebook/opt-30b", hidden=7168, layers=48, heads=56, dht_prefix="facebook/opt-30b"),
        ModelSpec("facebook/opt-175b", hidden=12288, layers=96, heads=96, dht_prefix="facebook/opt-175b"),
        ModelSpec("facebook/opt-125m", hidden=768, layers=12, heads=12, dht_prefix="facebook/opt-125m"),
        # for tests and the no-GPU default: 4 blocks, fast on one CPU core
        ModelSpec("netbench/tiny", hidden=64, layers=4, heads=4, dht_prefix="netbench/tiny"),
    )
}


def bytes_per_weight(dtype: str) -> float:
    try:
        return WEIGHT_DTYPES[dtype][2]
    except KeyError:
        raise ValueError(f"unknown weight dtype {dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}") from None


def get_model(name: str) -> ModelSpec:
    """Look a model up by its name or its DHT prefix (the original client accepted the prefix)."""
    if name in MODELS:
        return MODELS[name]
    for spec in MODELS.values():
        if spec.dht_prefix == name:
            return spec
    raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")


_PREFIX_FORBIDDEN = re.compile(r"[.\s]")  # petals' UID_DELIMITER and CHAIN_DELIMITER, and any other blank


def validate_dht_prefix(prefix: str) -> str:
    if not prefix or _PREFIX_FORBIDDEN.search(prefix):
        raise ValueError(f"DHT prefix {prefix!r} may not be empty or contain '.' or whitespace (OPT-6.7B uses 'opt6b')")
    return prefix


def parse_block_span(text: str, layers: int) -> tuple[int, int]:
    """Parse petals' ``start:end`` block indices and check them against the model's depth."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"block span {text!r} must look like START:END, e.g. 0:12")
    start, end = int(match[1]), int(match[2])
    if not 0 <= start < end <= layers:
        raise ValueError(f"block span {text!r} must satisfy 0 <= START < END <= {layers} (the model has {layers} blocks)")
    return start, end


def split_blocks(layers: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous spans that cover all ``layers`` blocks with ``parts`` servers, sizes differing by <= 1."""
    if parts < 1:
        raise ValueError("need at least one server")
    if parts > layers:
        raise ValueError(f"{parts} servers but the model has only {layers} blocks: every server needs at least one")
    base, extra = divmod(layers, parts)
    spans, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        spans.append((start, end))
        start = end
    return spans


def write_model_dir(spec: ModelSpec, directory: str | Path) -> Path:
    """Write a config-only model folder (config.json) that petals can serve with dummy weights."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    config_file = path / "config.json"
    text = json.dumps(spec.bloom_config(), indent=2, sort_keys=True) + "\n"
    if not config_file.exists() or config_file.read_text() != text:
        write_atomically(config_file, text)  # servers started together may write the same folder
    return path


def dummy_block_seed(seed: int, block_index: int) -> int:
    """The generator seed of one block's dummy weights: a server and the transformers system that build
    block ``block_index`` with one ``seed`` hold the same weights (on the same device kind)."""
    return seed * 100003 + block_index


def fill_dummy_weights(module, generator, initializer_range: float, skip: str | None = None) -> None:
    """Random weights in place, as BLOOM initialises them: biases 0, LayerNorms 1, the rest normal(0, range);
    parameters whose name starts with ``skip`` are left (the blocks of a whole model: they have seeds of their own)."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if skip and name.startswith(skip):
                continue
            if name.endswith("bias"):
                param.zero_()
            elif "layernorm" in name or name.startswith("ln_f"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, initializer_range, generator=generator)
