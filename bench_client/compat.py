"""Workarounds for upstream breakage in the 2026 Petals stack. Call ``apply()`` before ``import petals``.

What broke, and when each piece can go:

1. hivemind >= 1.1.12 (Jan 2026) no longer re-exports submodule names at top level, so petals
   2.2.0.post1 fails with "cannot import name 'PeerID' from 'hivemind'". petals' own pin
   (hivemind==1.1.10.post2) is an sdist that downloads a Go binary at build time and cannot be
   installed offline. Remove ``_reexport_hivemind_names`` once a petals release imports from
   hivemind's submodules (or pins an installable hivemind).
2. ``petals.utils.version.validate_version`` asks PyPI for the latest version, with no timeout,
   before every server starts: on an offline GPU host behind a dropping firewall start-up stalls,
   and a private experiment must not talk to the internet at all. Always disabled here.
3. petals imports bitsandbytes in every server (petals.utils.peft, for LoRA adapters) even in
   float16. petals asks for bitsandbytes 0.41.1, which raises at import on CUDA 13 hosts ("CUDA
   Setup failed") and has no CPU kernels; we pin 0.50.2 instead (petals is installed --no-deps), which
   imports with petals 2.2.0 and peft 0.5.0 unchanged, ships a CUDA 13 library and runs LLM.int8 and
   NF4 on the CPU too (LoRA adapters on quantised blocks, which we never load, are untried with it).
   Importing 0.50 takes 2-4 s (it sets up torch.compile), so only processes that quantise import it
   (``apply(quantisation=True)``); elsewhere, and where bitsandbytes is absent or cannot be imported
   (a GPU host given no bitsandbytes wheel, or 0.41.1 on CUDA 13), we register a placeholder whose
   quantised layers refuse to be built; int8/nf4 are then refused up front (``bitsandbytes_error``;
   the server launcher also runs a quantised layer on its device before starting). Remove when
   petals imports bitsandbytes lazily.
4. Failover does not work against a killed server (petals 2.2.0 and its main branch): the
   replacement session inherits the failed one's input history but starts at position 0 ("Broken
   input cache"), and a failed server stays in the routes until the next refresh (60 s), while a
   server that cannot be dialled is never banned, so every retry goes back to the dead server. We
   carry the position over, return only the current tokens' outputs, refresh routes after each
   failure and ban a server whose session cannot be opened. Remove both
   (``_recover_server_sessions``, ``_route_around_failed_servers``) when tests/processes/test_faults_mid_sweep.py passes
   without them.
5. Closing a server inference session can raise BrokenPipeError, which petals swallows while the
   session stays "open"; the interpreter then hangs at exit (~3 in 55 client runs). We mark the
   session closed in a ``finally``. Remove when petals fixes ``_ServerInferenceSession.close``.
6. transformers' ``build_alibi_tensor`` (4.34, used by petals' BLOOM block for every block at every
   step) makes its slope bases with ``torch.tensor(x, device=cuda)``: a blocking host-to-device copy,
   two per block per step for OPT's 56 or 96 heads. Each one stalls the server's runtime thread until
   the GPU has drained its queue, so Python never runs ahead of the GPU (profiled on an H200: 69 % of a
   server's samples wait there, docs/results/gpu/). We compute the slopes once per head count and
   device and keep them there; the result is bit-identical (tests/unit/test_engine_pure_parts.py).
   NETBENCH_UPSTREAM_ALIBI=1 keeps the upstream function (for A/B measurements). Remove when petals
   moves to a transformers whose BLOOM no longer copies scalars to the device per call.
7. hivemind's p2pd defaults reach beyond the experiment: NAT port mapping (SSDP to UDP 1900, NAT-PMP
   to UDP 5351), AutoNAT probes, circuit relays (petals' server asks for them itself). Every P2P.create
   runs with them off (``keep_p2p_private``; tests/isolated/test_private_p2p.py). Remove when hivemind and petals
   take a private-swarm switch that our launchers can pass.
8. ``import hivemind.<anything>`` runs hivemind's package ``__init__``, which imports its whole ML stack
   (averaging, MoE, optimizers: torch, scipy), and ``hivemind.utils``' imports torch for MPFuture's
   shared memory: 7.8 s before the DHT bootstrap peer starts on a 2-core CPU host, 12 s on an H200 host,
   for a process that never touches a tensor. ``import_without_package_inits`` loads the DHT's modules
   with those package ``__init__`` files replaced by lazy stand-ins (0.7 s, no torch). Remove when
   hivemind's top-level package imports lazily.
9. A Petals server never exits after its shutdown (petals 2.2.0): ``Server.shutdown`` stops the
   handlers, the runtime and the server's DHT process, but its ModuleAnnouncerThread (not a daemon
   thread) may be inside ``_ping_next_servers``, waiting forever on the DHT that is gone, so the
   interpreter waits at exit and every stop ended in SIGKILL 20 s later. ``exit_after_shutdown`` ends
   the process once petals' own shutdown has returned (logs flushed first). Remove when petals joins
   or daemonises that thread.
10. hivemind shares tensors between processes through files (its default sharing strategy
   "file_system", set at import), /dev/shm/torch_<pid>_*, which only torch_shm_manager removes, and
   only while it outlives their creator: every client process, the swarm wait and the client session
   left their MPFuture buffers behind (24 files per CPU run, 567 had piled up on the CI machine).
   They share only those small buffers: ``apply`` makes them pass descriptors, which leave no file.
   Servers, which share every request's tensors, keep the files (``apply(tensor_files=True)``); their
   stopper removes them (bench_client.core.processes). Remove when hivemind cleans up its buffers.
11. hivemind puts p2pd's and every P2P client's unix sockets in /tmp whatever TMPDIR says
   (``P2P._UNIX_SOCKET_PREFIX = "/unix/tmp/hivemind-"``), and a process that is killed, or exits
   without its P2P shutdown, leaves them there. ``sockets_in_tmpdir`` moves them to this process's
   temporary directory, the private TMPDIR that bench_client.core.daemon gives every group it starts
   and removes when it stops it. Remove when hivemind honours TMPDIR.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
import warnings


# Names petals 2.2.0.post1 imports from the top-level ``hivemind`` package, and where they live now.
_HIVEMIND_NAMES: dict[str, str] = {
    "DHT": "hivemind.dht",
    "P2P": "hivemind.p2p",
    "P2PContext": "hivemind.p2p",
    "PeerID": "hivemind.p2p",
    "MSGPackSerializer": "hivemind.utils.serializer",
    "get_logger": "hivemind.utils.logging",
    "get_dht_time": "hivemind.utils.timed_storage",
    "MAX_DHT_TIME_DISCREPANCY_SECONDS": "hivemind.utils.timed_storage",
    "TimedStorage": "hivemind.utils.timed_storage",
    "BatchTensorDescriptor": "hivemind.utils.tensor_descr",
    "TensorDescriptor": "hivemind.utils.tensor_descr",
    "nested_compare": "hivemind.utils.nested",
    "nested_flatten": "hivemind.utils.nested",
    "nested_pack": "hivemind.utils.nested",
    "anext": "hivemind.utils.asyncio",
    "serialize_torch_tensor": "hivemind.compression",
    "deserialize_torch_tensor": "hivemind.compression",
    "deserialize_tensor_stream": "hivemind.compression",
}

_applied = False
bitsandbytes_error: str | None = None  # why bitsandbytes is unusable here, if it is
NOT_LOADED = "not loaded: only int8/nf4 processes load it (compat.apply(quantisation=True))"


def _bitsandbytes_or_placeholder(load: bool) -> None:
    global bitsandbytes_error
    if not load:  # importing 0.50 costs 2-4 s (it sets up torch.compile): only quantising processes pay
        bitsandbytes_error = NOT_LOADED
    else:
        _import_bitsandbytes()
    if bitsandbytes_error:
        _register_placeholder()


def _forget_bitsandbytes() -> None:
    for name in [n for n in sys.modules if n == "bitsandbytes" or n.startswith("bitsandbytes.")]:
        del sys.modules[name]


def _import_bitsandbytes() -> None:
    global bitsandbytes_error
    bitsandbytes_error = None
    _forget_bitsandbytes()  # a placeholder registered before
    try:
        # bitsandbytes prints its CUDA diagnostics to stdout, which carries JSON for some of our CLIs;
        # 0.50 also warns on every AVX512-BF16 CPU that an optional 4-bit kernel package is absent
        cpu_kernels_log = logging.getLogger("bitsandbytes.backends.cpu.ops")
        level = cpu_kernels_log.level
        cpu_kernels_log.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                import bitsandbytes  # noqa: F401
        finally:
            cpu_kernels_log.setLevel(level)
    except Exception as exc:  # ImportError, or RuntimeError from its CUDA setup
        bitsandbytes_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        _forget_bitsandbytes()


def _register_placeholder() -> None:
    import torch

    message = f"bitsandbytes is unusable in this process ({bitsandbytes_error}); use float16/bfloat16/float32"

    class _Unavailable(torch.nn.Linear):
        def __init__(self, *args, **kwargs):
            raise RuntimeError(message)

    placeholder = types.ModuleType("bitsandbytes")
    placeholder.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", loader=None)
    placeholder.__version__ = "0+unavailable"
    nn = types.ModuleType("bitsandbytes.nn")
    nn.Linear8bitLt = type("Linear8bitLt", (_Unavailable,), {})
    nn.Linear4bit = type("Linear4bit", (_Unavailable,), {})
    placeholder.nn = nn
    sys.modules["bitsandbytes"] = placeholder
    sys.modules["bitsandbytes.nn"] = nn


def _offline_environment() -> None:
    # Dummy-weight models are local folders: nothing may be fetched from the Hugging Face hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("BITSANDBYTES_NOWELCOME", "1")


def _reexport_hivemind_names() -> None:
    hivemind = importlib.import_module("hivemind")
    for name, module_name in _HIVEMIND_NAMES.items():
        if not hasattr(hivemind, name):
            setattr(hivemind, name, getattr(importlib.import_module(module_name), name))


def _disable_version_check() -> None:
    import petals.utils.version as version
    import petals.cli.run_server as run_server

    def validate_version() -> None:  # no network: a private swarm never calls PyPI
        return None

    version.validate_version = validate_version
    run_server.validate_version = validate_version


def _close_sessions_even_on_broken_pipe() -> None:
    from petals.client.inference_session import _ServerInferenceSession

    original_close = _ServerInferenceSession.close
    if getattr(original_close, "_netbench_patched", False):
        return

    def close(self) -> None:
        try:
            original_close(self)
        except Exception:  # the stream is gone either way; what matters is not hanging at exit
            pass
        finally:
            self._outputs_stream = self._inputs_queue = None
            self.closed = True

    close._netbench_patched = True  # type: ignore[attr-defined]
    _ServerInferenceSession.close = close


def _recover_server_sessions() -> None:
    from petals.client.inference_session import InferenceSession, _ServerInferenceSession

    original_update = InferenceSession._update_sequence

    def _update_sequence(self, server_idx: int, block_idx: int, attempt_no: int):
        failed = self._server_sessions[server_idx] if server_idx < len(self._server_sessions) else None
        result = original_update(self, server_idx, block_idx, attempt_no)
        if failed is not None and self._server_sessions[server_idx] is not failed:
            self._server_sessions[server_idx]._position = failed._position  # tokens the span had processed
        return result

    original_step = _ServerInferenceSession.step

    def step(self, inputs, *args, **kwargs):
        outputs = original_step(self, inputs, *args, **kwargs)
        return outputs[:, -inputs.shape[1]:]  # a replacement's first step returns the whole history

    InferenceSession._update_sequence = _update_sequence
    _ServerInferenceSession.step = step


def _route_around_failed_servers() -> None:
    from petals.client.inference_session import InferenceSession
    from petals.client.routing.sequence_manager import RemoteSequenceManager

    original_failure = RemoteSequenceManager.on_request_failure

    def on_request_failure(self, peer_id) -> None:
        original_failure(self, peer_id)
        if peer_id is not None:
            self.update(wait=False)  # the next route waits for a refresh that leaves the banned server out

    original_enter = InferenceSession._enter_server_sessions

    def _enter_server_sessions(self, chosen_spans):
        sessions = []
        for span in chosen_spans:  # one at a time, to know which server could not be reached
            try:
                sessions += original_enter(self, [span])
            except Exception:
                self._exit_server_sessions(sessions)
                self._sequence_manager.on_request_failure(span.peer_id)
                raise
        return sessions

    RemoteSequenceManager.on_request_failure = on_request_failure
    InferenceSession._enter_server_sessions = _enter_server_sessions


def _alibi_slopes_once_per_device() -> None:
    if os.environ.get("NETBENCH_UPSTREAM_ALIBI") == "1":
        return
    import torch
    from transformers.models.bloom import modeling_bloom

    upstream = modeling_bloom.build_alibi_tensor
    slopes_cache: dict[tuple[int, str], torch.Tensor] = {}

    def slopes(num_heads: int, device: torch.device) -> torch.Tensor:
        key = (num_heads, str(device))
        if key not in slopes_cache:  # upstream's own formula, run once on the device: position 1 = the slope
            ones = torch.ones((1, 2), dtype=torch.float32, device=device)
            slopes_cache[key] = upstream(ones, num_heads, torch.float32).reshape(num_heads, 2)[:, 1:].clone()
        return slopes_cache[key]

    def build_alibi_tensor(attention_mask: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
        batch_size, seq_length = attention_mask.shape
        arange_tensor = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :]
        alibi = slopes(num_heads, attention_mask.device) * arange_tensor
        return alibi.reshape(batch_size * num_heads, 1, seq_length).to(dtype)

    from petals.models.bloom import block  # imported the function by name: patch that reference too

    modeling_bloom.build_alibi_tensor = build_alibi_tensor
    block.build_alibi_tensor = build_alibi_tensor


# p2pd options that reach beyond the experiment's own hosts: NAT port mapping (SSDP to UDP 1900,
# NAT-PMP to UDP 5351 on the local network), AutoNAT probes, circuit relays, the IPFS bootstrap.
PRIVATE_P2P_OPTIONS = {"nat_port_map": False, "auto_nat": False, "use_relay": False, "use_auto_relay": False,
                       "use_ipfs": False}


def sockets_in_tmpdir() -> None:
    """hivemind's unix sockets in ``tempfile.gettempdir()`` (TMPDIR), not in /tmp (item 11)."""
    import tempfile

    from hivemind.p2p import P2P

    P2P._UNIX_SOCKET_PREFIX = f"/unix{tempfile.gettempdir()}/hivemind-"


def keep_p2p_private() -> None:
    """Make every p2pd this process (and its forked DHT processes) starts run with PRIVATE_P2P_OPTIONS.

    hivemind's P2P.create is the one place all of them pass through (our DHT launcher, petals' server,
    which passes use_relay/use_auto_relay=True itself, its reachability check and the client's
    sequence manager), so it is wrapped here rather than each caller's arguments threaded through.
    """
    from hivemind.p2p import P2P

    create = P2P.create
    if getattr(create, "netbench_private", False):
        return

    async def private_create(*args, **kwargs):
        return await create.__func__(P2P, *args, **{**kwargs, **PRIVATE_P2P_OPTIONS})

    private_create.netbench_private = True  # type: ignore[attr-defined]
    P2P.create = private_create  # type: ignore[method-assign]


# The packages whose __init__ pulls in torch on the way to hivemind's DHT node and p2p modules.
HIVEMIND_DHT_PACKAGES = ("hivemind", "hivemind.utils", "hivemind.dht")


def _lazy_package(name: str) -> types.ModuleType:
    """A stand-in for package ``name`` that finds its submodules but does not run its ``__init__``; the
    names its ``__init__`` imports (``from hivemind.utils import get_logger``) are imported on first use."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not an installed package")
    with open(spec.origin) as handle:
        tree = ast.parse(handle.read())
    sources: dict[str, tuple[str, str]] = {}  # name -> (module, name there), from the __init__'s imports
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(name.split(".")[:len(name.split(".")) - node.level + 1] + ([module] if module else []))
            for alias in node.names:
                sources[alias.asname or alias.name] = (module, alias.name)
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    package.__spec__.submodule_search_locations = package.__path__

    def __getattr__(attr: str) -> object:
        if attr not in sources:
            raise AttributeError(f"module {name!r} has no attribute {attr!r} (loaded without its __init__)")
        module, original = sources[attr]
        value = getattr(importlib.import_module(module), original)
        setattr(package, attr, value)
        return value

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    return package


def import_without_package_inits(packages: tuple[str, ...] = HIVEMIND_DHT_PACKAGES) -> None:
    """Replace these packages' ``__init__`` by lazy stand-ins in this process (item 8): only for a process
    that needs a few of their modules and none of the rest (the DHT bootstrap peer). Call before importing
    any of them; a package already imported is left as it is."""
    for name in packages:
        if name in sys.modules:
            continue
        package = _lazy_package(name)
        sys.modules[name] = package
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, package)


def exit_after_shutdown(code: int = 0) -> None:
    """End the process after petals' server shutdown has returned (item 9): flush, then ``os._exit``."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def apply(quantisation: bool = False, tensor_files: bool = False) -> None:
    """Make ``import petals`` work and behave in a private, offline swarm. Idempotent.

    ``quantisation``: this process quantises (int8/nf4), so the real bitsandbytes is imported;
    otherwise the placeholder stands in (petals imports bitsandbytes even in float16).
    ``tensor_files``: keep hivemind's file-backed tensor sharing (item 10: servers only); call before
    anything imports hivemind. Processes started from here inherit the choice."""
    global _applied
    if _applied:
        if quantisation and bitsandbytes_error == NOT_LOADED:  # a quantising part after a plain one
            _bitsandbytes_or_placeholder(load=True)
        return
    if not tensor_files:
        os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")
    _offline_environment()
    # transformers 4.34 on torch >= 2.2 warns once per process about a renamed pytree helper
    warnings.filterwarnings("ignore", message=".*_register_pytree_node.*", category=FutureWarning)
    _bitsandbytes_or_placeholder(load=quantisation)
    _reexport_hivemind_names()
    _disable_version_check()
    keep_p2p_private()  # no NAT port mapping, AutoNAT or relays: nothing sent beyond the experiment's hosts
    sockets_in_tmpdir()
    _close_sessions_even_on_broken_pipe()
    _recover_server_sessions()
    _route_around_failed_servers()
    _alibi_slopes_once_per_device()
    _applied = True
