"""A Petals server for one block span of an OPT-sized model: petals' own ``run_server`` CLI with
dummy weights built directly on the target device (as the paper's fork served OPT sizes).

    python -m bench_client.swarm.server --model facebook/opt-30b --block-indices 0:12 \
        --initial-peers /ip4/10.0.0.1/tcp/31337/p2p/Qm... --dtype float16 --device cuda:0 \
        [--address-file /run/netbench/server0.maddrs] [-- EXTRA]

Anything after ``--`` is passed to petals' run_server unchanged. Refuses to start without explicit
initial peers; fixes ``--throughput`` so no internet speed test runs. With ``--address-file``, the
server's own multiaddrs are written there (atomically, one per line) as soon as its DHT node is up,
before its blocks are built: a restarted DHT bootstrap peer joins the servers through them.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

from bench_client import compat
from bench_client.core.models import (QUANTISED_DTYPES, WEIGHT_DTYPES, ModelSpec, dummy_block_seed, fill_dummy_weights,
                                      get_model, parse_block_span, write_model_dir)
from bench_client.swarm.peers import (PeerError, check_literal_peers, pending_address_files, resolve_initial_peers,
                                     wait_for_address_files, write_address_file)
from bench_client.core.processes import exit_on_sigterm, fail
from bench_client.core.arguments import description

DEFAULT_MODELS_DIR = Path(os.environ.get("NETBENCH_MODELS_DIR", Path.home() / ".cache" / "petals-netbench" / "models"))
PUBLIC_NAME_PREFIX = "netbench"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench_client.swarm.server", description=description(__doc__))
    p.add_argument("--model", required=True, help="e.g. facebook/opt-30b (see bench_client.core.models)")
    p.add_argument("--initial-peers", nargs="+", required=True, help="DHT multiaddrs, or @FILE written by bench_client.swarm.dht: a FILE that does not exist "
                        "yet is waited for (up to --join-timeout) after the imports, so a server may start "
                        "alongside its DHT")
    p.add_argument("--block-indices", required=True, help="START:END, the blocks this server holds")
    p.add_argument("--dtype", default="float16", choices=sorted(WEIGHT_DTYPES), help="weight format")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--weights", default="dummy", choices=["dummy", "pretrained"],
                   help="dummy: random blocks with the model's dimensions; pretrained: load --model-dir")
    p.add_argument("--model-dir", default=None, help="config folder (dummy) or saved model (pretrained)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--host-maddrs", nargs="+", default=None)
    p.add_argument("--announce-maddrs", nargs="+", default=None)
    p.add_argument("--identity-path", default=None)
    p.add_argument("--address-file", default=None,
                   help="write this server's multiaddrs here once its DHT node is up (a restarted DHT's initial peers)")
    p.add_argument("--attn-cache-tokens", type=int, default=None, help="size it from the workload (see sweep)")
    p.add_argument("--num-handlers", type=int, default=None)
    p.add_argument("--throughput", type=float, default=100.0, help="announced RPS; fixed so no speed test runs")
    p.add_argument("--inference-max-length", type=int, default=None)
    p.add_argument("--public-name", default=None, help="default: netbench|<host>|<gpu>, read back by the client")
    p.add_argument("--seed", type=int, default=0, help="seed of the dummy weights")
    p.add_argument("--join-timeout", type=float, default=90.0,
                   help="keep trying this long (seconds) while no initial peer answers (a DHT still starting); "
                        "also how long an @FILE of --initial-peers is waited for")
    return p


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def device_uuid(device: str) -> str:
    """The GPU's own identity (nvidia-smi's GPU-<uuid>), '' on CPU: servers pinned with CUDA_VISIBLE_DEVICES
    all see their GPU as cuda:0, and cloned hosts share a host name, so neither tells two GPUs apart."""
    import torch

    if not device.startswith("cuda"):
        return ""
    # torch gives it without nvidia-smi's "GPU-" prefix (seen on the H200 host, torch 2.11)
    uuid = str(getattr(torch.cuda.get_device_properties(torch.device(device)), "uuid", "") or "")
    return uuid if not uuid or uuid.startswith("GPU-") else f"GPU-{uuid}"


def default_public_name(device: str) -> str:
    # '|' separated so the client can count GPUs from the DHT (petals shows it on its monitor page)
    return f"{PUBLIC_NAME_PREFIX}|{socket.gethostname()}|{device}|{device_name(device)}|{device_uuid(device)}"


def resolve_device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {requested} asked, but this host has no usable CUDA GPU (torch.cuda.is_available() is False)")
    return requested


def prepare_model_dir(spec: ModelSpec, args: argparse.Namespace) -> Path:
    if args.weights == "pretrained":
        if not args.model_dir or not (Path(args.model_dir) / "config.json").exists():
            fail("--weights pretrained needs --model-dir pointing to a saved model (config.json + weights)")
        return Path(args.model_dir)
    directory = Path(args.model_dir) if args.model_dir else DEFAULT_MODELS_DIR / spec.dht_prefix.replace("/", "--")
    return write_model_dir(spec, directory)


def petals_argv(spec: ModelSpec, model_dir: Path, peers: list[str], args: argparse.Namespace, device: str,
                extra: list[str]) -> list[str]:
    torch_dtype, quant_type, _ = WEIGHT_DTYPES[args.dtype]
    if quant_type != "none" and not device.startswith("cuda"):
        torch_dtype = "bfloat16"  # petals refuses float16 on the CPU; bitsandbytes casts to float16 itself
    argv = [
        "run_server", str(model_dir),
        "--dht_prefix", spec.dht_prefix,
        "--initial_peers", *peers,
        "--block_indices", args.block_indices,
        "--torch_dtype", torch_dtype,
        "--quant_type", quant_type,
        "--device", device,
        "--throughput", repr(args.throughput),
        "--public_name", args.public_name or default_public_name(device),
    ]
    optional = {
        "--port": args.port, "--identity_path": args.identity_path, "--attn_cache_tokens": args.attn_cache_tokens,
        "--num_handlers": args.num_handlers, "--inference_max_length": args.inference_max_length,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    if args.host_maddrs:
        argv += ["--host_maddrs", *args.host_maddrs]
    if args.announce_maddrs:
        argv += ["--announce_maddrs", *args.announce_maddrs]
    return argv + extra


def quantisation_refusal(dtype: str, device: str) -> str | None:
    """Why ``dtype`` cannot be served on ``device`` here (None: it can, or it needs no quantisation).

    Quantises a small layer with petals' own code and runs it on ``device``: bitsandbytes 0.41.1
    imports on CPU hosts but has no CPU kernels, and a bitsandbytes without a library for the host's
    CUDA imports but fails at the first call. Call after ``compat.apply(quantisation=True)``."""
    if dtype not in QUANTISED_DTYPES:
        return None
    advice = "use float16 or bfloat16" if device.startswith("cuda") else "use float32 or bfloat16"
    if compat.bitsandbytes_error:
        return f"--dtype {dtype} needs bitsandbytes, which is unusable here ({compat.bitsandbytes_error}); {advice}"
    import torch
    from petals.utils.convert_block import QuantType, quantize_module

    try:
        layer = quantize_module(torch.nn.Sequential(torch.nn.Linear(64, 64).half()),
                                quant_type=QuantType[WEIGHT_DTYPES[dtype][1].upper()]).to(device).eval()
        with torch.inference_mode():
            out = layer(torch.ones(2, 64, dtype=torch.float16, device=device))
        if not torch.isfinite(out).all():
            raise RuntimeError("non-finite output")
    except Exception as exc:  # bitsandbytes raises several types (RuntimeError, NotImplementedError, ...)
        from importlib.metadata import version as installed_version

        version = installed_version("bitsandbytes")  # 0.41.1 has no __version__
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return (f"--dtype {dtype} does not run on {device} with bitsandbytes {version} "
                f"({type(exc).__name__}: {first_line}); {advice}, or install bitsandbytes>=0.50")
    return None


def install_dummy_weights(device: str, seed: int, *, hand_over_on_cpu: bool = False) -> None:
    """Make petals build each block with random weights on ``device`` instead of loading a checkpoint.

    The weights depend on the device kind: CPU and CUDA generators draw different numbers from one
    seed. ``hand_over_on_cpu`` still draws them on ``device`` (fast, and the weights a float16 server
    of the same seed holds) but returns the block on the CPU, where petals' quantisation wants it: it
    quantises each layer while moving it back to the device."""
    import torch
    from accelerate import init_empty_weights
    import petals.server.server as petals_server
    from petals.server.block_utils import resolve_block_dtype

    def load_dummy_block(model_name, block_index, *, config, torch_dtype="auto", **_ignored):
        dtype = resolve_block_dtype(config, torch_dtype)
        with init_empty_weights():
            block = config.block_class(config)
        # Allocate directly in the target dtype on the target device: building 30B/175B-sized
        # blocks in float32 on the CPU first would take minutes.
        block = block.to(dtype).to_empty(device=device)
        generator = torch.Generator(device=device).manual_seed(dummy_block_seed(seed, block_index))
        fill_dummy_weights(block, generator, config.initializer_range)
        # servers only infer: bitsandbytes on the CPU runs LLM.int8's matmul only outside training
        # mode (dropout is 0 in these configs, so float blocks compute the same either way)
        block.eval()
        return block.cpu() if hand_over_on_cpu else block

    petals_server.load_pretrained_block = load_dummy_block


def join_with_retries(timeout: float, delay: float = 3.0) -> None:
    """Retry the server's first contact with the swarm for ``timeout`` seconds.

    hivemind's p2p daemon gives up at once ("failed to connect to bootstrap peers") when none of the
    initial peers answers its first dial, and petals' server then exits: a server started a few
    seconds before its DHT, or while the DHT host is busy, died at bring-up (seen on an H200: three
    of four servers, docs/results/gpu/README.md). Nothing heavy exists yet at that point (the DHT
    node is made before any block), so trying again is cheap."""
    import petals.server.server as petals_server

    deadline = time.monotonic() + timeout

    def retrying(first_contact):
        def attempt(*args, **kwargs):
            while True:
                try:
                    return first_contact(*args, **kwargs)
                except Exception as exc:  # hivemind's P2PDaemonError, raised again from the DHT's process
                    if "failed to connect to bootstrap peers" not in str(exc) or time.monotonic() + delay > deadline:
                        raise
                    print(f"[bench_client.swarm.server] no initial peer answers yet; trying again in {delay:.0f} s",
                          file=sys.stderr, flush=True)
                    time.sleep(delay)
        return attempt

    # both dial the initial peers: petals' reachability probe (a throw-away DHT node), then the server's node
    petals_server.check_direct_reachability = retrying(petals_server.check_direct_reachability)
    petals_server.DHT = retrying(petals_server.DHT)


def publish_addresses(address_file: str) -> None:
    """Write the server's visible multiaddrs to ``address_file`` right after petals creates its DHT node."""
    import petals.server.server as petals_server

    original_dht = petals_server.DHT

    def dht_and_publish(*args, **kwargs):
        dht = original_dht(*args, **kwargs)
        write_address_file(address_file, dht.get_visible_maddrs())
        return dht

    # petals' Server builds its node with the module-level name DHT (other uses are annotations only)
    petals_server.DHT = dht_and_publish


def main(argv: list[str] | None = None) -> None:
    own_argv, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own_argv)
    try:
        spec = get_model(args.model)
        parse_block_span(args.block_indices, spec.layers)
        # A DHT address file that is not there yet is read after the imports (seconds on a GPU host):
        # the server imports torch and petals while its DHT starts instead of after it.
        pending = pending_address_files(args.initial_peers)
        check_literal_peers(args.initial_peers)
        peers = [] if pending else resolve_initial_peers(args.initial_peers)
    except (ValueError, PeerError) as exc:
        fail(str(exc))
    device = resolve_device(args.device)
    model_dir = prepare_model_dir(spec, args)

    compat.apply(quantisation=args.dtype in QUANTISED_DTYPES, tensor_files=True)  # compat item 10
    refusal = quantisation_refusal(args.dtype, device)
    if refusal:
        fail(refusal)
    import petals.cli.run_server as run_server

    if args.dtype in QUANTISED_DTYPES and not device.startswith("cuda"):
        # bitsandbytes logs at every matmul that it casts the bfloat16 activations to float16
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)

    if pending:
        try:
            wait_for_address_files(pending, args.join_timeout, on_wait=lambda files: print(
                f"[bench_client.swarm.server] waiting for the DHT's address file {files[0]}", file=sys.stderr, flush=True))
            peers = resolve_initial_peers(args.initial_peers)
        except PeerError as exc:
            fail(str(exc))
    if args.weights == "dummy":
        # petals quantises (int8/nf4) CPU blocks as it moves them to the device: drawn on the device,
        # handed over on the CPU (drawing 4 OPT-30B blocks on the CPU took 90 s on an H200 host)
        install_dummy_weights(device, args.seed, hand_over_on_cpu=args.dtype in QUANTISED_DTYPES)
    join_with_retries(args.join_timeout)
    if args.address_file:  # wraps the retrying constructor: the addresses of the node that came up
        publish_addresses(args.address_file)
    exit_on_sigterm()
    sys.argv = petals_argv(spec, model_dir, peers, args, device, extra)
    run_server.main()  # returns after petals' own shutdown (SIGTERM, via exit_on_sigterm)
    compat.exit_after_shutdown()


if __name__ == "__main__":
    main()
