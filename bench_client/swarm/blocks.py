"""Who serves which blocks of a model in a private swarm.

    python -m bench_client.swarm wait --initial-peers @dht.maddrs --model facebook/opt-30b --timeout 600 [--expect-servers N]
    python -m bench_client.swarm info --initial-peers @dht.maddrs --model facebook/opt-30b

``wait`` exits 0 once every block is served by an online server, and 3 on timeout with the missing
block ranges named. ``info`` prints the servers and coverage as JSON. Online means announced ONLINE
and answering a ping now: a killed server's record, ONLINE for minutes, counts as DEAD.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field

from bench_client import compat
from bench_client.core.models import ModelSpec, get_model
from bench_client.swarm.peers import (PeerError, check_literal_peers, pending_address_files, resolve_initial_peers,
                                     wait_for_address_files)
from bench_client.core.processes import fail
from bench_client.core.arguments import description

EXIT_MISSING_BLOCKS = 3
EXIT_UNREACHABLE = 4


@dataclass
class ServerView:
    peer_id: str
    start_block: int | None
    end_block: int | None
    state: str
    public_name: str | None
    torch_dtype: str | None
    quant_type: str | None
    cache_tokens_left: int | None

    @property
    def host(self) -> str | None:
        parts = (self.public_name or "").split("|")
        return parts[1] if len(parts) >= 4 and parts[0] == "netbench" else None

    @property
    def gpu(self) -> str | None:
        """'host/device: name' for servers started by bench_client.swarm.server, None for others; with the
        GPU's UUID where the server announced one ('host/device@GPU-...: name'): servers pinned with
        CUDA_VISIBLE_DEVICES all say cuda:0, cloned hosts one host name, and must still count apart."""
        parts = (self.public_name or "").split("|")
        if len(parts) >= 4 and parts[0] == "netbench":
            uuid = f"@{parts[4]}" if len(parts) >= 5 and parts[4] else ""
            return f"{parts[1]}/{parts[2]}{uuid}: {parts[3]}"
        return None


@dataclass
class SwarmView:
    model: str
    dht_prefix: str
    num_blocks: int
    servers: list[ServerView] = field(default_factory=list)
    served_blocks: list[int] = field(default_factory=list)

    @property
    def missing_blocks(self) -> list[int]:
        served = set(self.served_blocks)
        return [i for i in range(self.num_blocks) if i not in served]

    @property
    def online_servers(self) -> list[ServerView]:
        return [s for s in self.servers if s.state == "ONLINE"]

    @property
    def gpus(self) -> list[str]:
        """Distinct GPUs of online servers; several servers may share one GPU (emulated swarms)."""
        gpus: dict[str, str] = {}  # one GPU: its UUID where announced, else host/device
        for server in self.online_servers:
            if server.gpu and not server.gpu.endswith(": cpu"):
                where = server.gpu.split(": ", 1)[0]
                gpus.setdefault(where.split("@", 1)[1] if "@" in where else where, server.gpu)
        return sorted(gpus.values())

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(missing_blocks=self.missing_blocks, missing=format_ranges(self.missing_blocks),
                    num_online_servers=len(self.online_servers), gpus=self.gpus)
        return data


def format_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0:3, 5:6' (petals' START:END notation)."""
    spans: list[list[int]] = []
    for i in sorted(indices):
        if spans and spans[-1][1] == i:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return ", ".join(f"{start}:{end}" for start, end in spans)


def connect(initial_peers: list[str], timeout: float = 30.0):
    """A client-mode DHT node on the private swarm; a clear error if no initial peer answers."""
    compat.apply()
    from hivemind import DHT

    try:
        return DHT(initial_peers=initial_peers, client_mode=True, start=True, startup_timeout=timeout,
                   await_ready=True)
    except Exception as exc:  # hivemind raises several types for "nobody answered"
        raise PeerError(f"cannot reach any initial peer {initial_peers} ({type(exc).__name__}: {exc}); "
                        "is the DHT running and its port open?") from None


# A server killed without its shutdown (SIGKILL, a lost host) stays ONLINE in the DHT until its record
# expires, minutes later: every server announced ONLINE is pinged, and one that does not answer within
# this many seconds counts as DEAD (it serves no block; the wait and the client do not count it).
PING_TIMEOUT_S = 3.0
DEAD = "DEAD"


def answering(dht, peer_ids: list[str], timeout: float = PING_TIMEOUT_S) -> set[str]:
    """The peers that answer a DHT ping (all at once, within ``timeout``)."""
    if not peer_ids:
        return set()
    import math
    from functools import partial

    from hivemind import PeerID
    from petals.utils.ping import ping_parallel

    rtts = dht.run_coroutine(partial(ping_parallel, [PeerID.from_base58(p) for p in peer_ids], wait_timeout=timeout))
    return {str(peer) for peer, rtt in rtts.items() if rtt != math.inf}


def inspect(dht, spec: ModelSpec, ping_timeout: float = PING_TIMEOUT_S) -> SwarmView:
    from petals.data_structures import UID_DELIMITER, ServerState
    from petals.utils.dht import get_remote_module_infos

    uids = [f"{spec.dht_prefix}{UID_DELIMITER}{i}" for i in range(spec.layers)]
    infos = get_remote_module_infos(dht, uids, latest=True)
    view = SwarmView(model=spec.name, dht_prefix=spec.dht_prefix, num_blocks=spec.layers)
    seen: dict[str, ServerView] = {}
    for info in infos:
        for peer_id, server in (info.servers.items() if info is not None else ()):
            seen.setdefault(str(peer_id), ServerView(
                peer_id=str(peer_id), start_block=server.start_block, end_block=server.end_block,
                state=ServerState(server.state).name, public_name=server.public_name,
                torch_dtype=server.torch_dtype, quant_type=server.quant_type,
                cache_tokens_left=server.cache_tokens_left,
            ))
    announced = [key for key, server in seen.items() if server.state == "ONLINE"]
    for key in set(announced) - answering(dht, announced, ping_timeout):
        seen[key].state = DEAD
    for index, info in enumerate(infos):
        if info is not None and any(seen[str(peer)].state == "ONLINE" for peer in info.servers):
            view.served_blocks.append(index)
    view.servers = sorted(seen.values(), key=lambda s: (s.start_block or 0, s.peer_id))
    return view


def wait_for_blocks(dht, spec: ModelSpec, timeout: float, poll: float = 2.0, progress=None,
                    expect_servers: int | None = None) -> SwarmView:
    """Until every block is served (and, with ``expect_servers``, by exactly that many online servers:
    the plan's, none of another run beside them), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        view = inspect(dht, spec)
        if not view.missing_blocks and expect_servers in (None, len(view.online_servers)):
            return view
        if progress:
            progress(view)
        if time.monotonic() >= deadline:
            return view
        time.sleep(poll)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench_client.swarm", description=description(__doc__))
    p.add_argument("command", choices=["wait", "info"])
    p.add_argument("--initial-peers", "--initial_peers", nargs="+", required=True,
                   help="DHT multiaddrs or @FILE; wait: a FILE not written yet is waited for (within --timeout)")
    p.add_argument("--model", required=True)
    p.add_argument("--timeout", type=float, default=300.0, help="wait: give up after this many seconds")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--poll", type=float, default=0.5, help="wait: seconds between two looks at the DHT")
    p.add_argument("--expect-servers", type=int, default=None,
                   help="wait: until exactly this many servers are online (the plan's number)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        spec = get_model(args.model)
        # wait, started alongside the DHT: import hivemind and petals while its address file is written
        pending = pending_address_files(args.initial_peers) if args.command == "wait" else []
        check_literal_peers(args.initial_peers)
        peers = [] if pending else resolve_initial_peers(args.initial_peers)
    except ValueError as exc:  # bad input (PeerError included): exit 2
        fail(str(exc))
    if pending:
        compat.apply()  # imports hivemind and petals while the DHT starts
        started = time.monotonic()
        try:
            wait_for_address_files(pending, args.timeout)
            peers = resolve_initial_peers(args.initial_peers)
        except PeerError as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        args.timeout = max(0.0, args.timeout - (time.monotonic() - started))
    try:
        dht = connect(peers, args.connect_timeout)
    except PeerError as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    try:
        if args.command == "info":
            view = inspect(dht, spec)
        else:
            def progress(v: SwarmView) -> None:
                print(f"waiting: {spec.layers - len(v.missing_blocks)}/{spec.layers} blocks of {spec.name} served, "
                      f"missing {format_ranges(v.missing_blocks)}", file=sys.stderr, flush=True)

            view = wait_for_blocks(dht, spec, args.timeout, poll=args.poll, progress=progress,
                                   expect_servers=args.expect_servers)
        print(json.dumps(view.to_json(), indent=2))
        if args.command == "wait" and view.missing_blocks:
            fail(f"after {args.timeout:.0f} s, blocks {format_ranges(view.missing_blocks)} of {spec.name} "
                 f"(prefix {spec.dht_prefix!r}) are served by no online server; start servers for them "
                 "or check their logs", EXIT_MISSING_BLOCKS)
        if args.command == "wait" and args.expect_servers not in (None, len(view.online_servers)):
            names = ", ".join(f"{s.public_name or s.peer_id} blocks {s.start_block}:{s.end_block}"
                              for s in view.online_servers)
            fail(f"after {args.timeout:.0f} s, {len(view.online_servers)} servers of {spec.name} are online, the plan "
                 f"has {args.expect_servers}: {names}; servers of another run serve in this swarm (stop them: "
                 "site.yml --tags cleanup on their hosts)", EXIT_MISSING_BLOCKS)
    finally:
        dht.shutdown()


if __name__ == "__main__":
    main()
