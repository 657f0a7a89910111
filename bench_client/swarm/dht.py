"""DHT bootstrap peer: a hivemind DHT node, as petals' ``run_dht`` runs it, with its multiaddrs written to a file.

    python -m bench_client.swarm.dht --address-file /run/netbench/dht.maddrs [--host-maddrs ...] \
        [--join-peers-file /run/netbench/servers.maddrs]

The file (one multiaddr per line) appears atomically once the DHT is up; Ansible and the tests read
it instead of scraping logs. Stop the process by signalling its process group with SIGTERM.

The node runs in this process, loaded without hivemind's package ``__init__`` (compat item 8): no torch,
no petals, so the address file is written in about a second instead of after the ML stack's imports.
Unlike petals' run_dht it does not answer petals' reachability probe (that module imports torch): a
server that asks it gets no answer and runs as a directly reachable peer, as this private swarm's
servers are (relays are off, compat item 7).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from secrets import token_hex

from bench_client import compat
from bench_client.swarm.peers import PeerError, read_address_file, resolve_initial_peers, write_address_file
from bench_client.core.processes import exit_on_sigterm, fail
from bench_client.core.arguments import description


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench_client.swarm.dht", description=description(__doc__))
    parser.add_argument("--address-file", required=True, help="where to write this peer's multiaddrs")
    parser.add_argument("--host-maddrs", nargs="+", default=None, help="listen addresses (default: all, random port)")
    parser.add_argument("--announce-maddrs", nargs="+", default=None, help="addresses announced to other peers")
    parser.add_argument("--port", type=int, default=None, help="listen on this TCP port on all IPv4 interfaces")
    parser.add_argument("--identity-path", default=None, help="private key file: a stable peer ID across restarts")
    parser.add_argument("--initial-peers", nargs="*", default=None,
                        help="join these peers: normally none; on a restart, the running servers' multiaddrs")
    parser.add_argument("--join-peers-file", default=None,
                        help="multiaddrs of running servers, one a line, joined as initial peers when the file exists "
                             "and is not empty: a restarted DHT rejoins its swarm (absent or empty: start alone)")
    parser.add_argument("--refresh-period", type=int, default=30)
    return parser


# petals' run_dht listens on every interface, IPv4 and IPv6, when no address is given
DEFAULT_HOST_MADDRS = ["/ip4/0.0.0.0/tcp/0", "/ip6/::/tcp/0"]
SHUTDOWN_TIMEOUT_S = 1.0


def node_options(args: argparse.Namespace) -> dict:
    """hivemind ``DHTNode.create`` arguments equivalent to our command line (petals' run_dht defaults)."""
    host_maddrs = args.host_maddrs
    if args.port is not None:
        if host_maddrs:
            fail("use either --port or --host-maddrs, not both")
        host_maddrs = [f"/ip4/0.0.0.0/tcp/{args.port}"]
    return {"initial_peers": args.initial_peers or [], "host_maddrs": host_maddrs or DEFAULT_HOST_MADDRS,
            "announce_maddrs": args.announce_maddrs, "identity_path": args.identity_path,
            # Restarted with the running servers as initial peers (petals_dht role): one that died since
            # it wrote its address file must not keep the bootstrap peer from starting (hivemind raises
            # when no initial peer answers); the ones alive are joined, so the restarted DHT is not orphaned.
            "ensure_bootstrap_success": not args.initial_peers}


async def serve(args: argparse.Namespace, options: dict) -> None:
    """Run the node until cancelled: publish its multiaddrs, then keep its routing table fresh."""
    from hivemind.dht.node import DHTNode
    from hivemind.utils.logging import get_logger, use_hivemind_log_handler
    from hivemind.utils.networking import log_visible_maddrs

    use_hivemind_log_handler("in_root_logger")
    logger = get_logger(__name__)
    logger.setLevel(logging.INFO)
    node = await DHTNode.create(**options)
    # SIGTERM cancels this task, so the node's shutdown below runs inside a working event loop (a
    # KeyboardInterrupt raised in the middle of the loop left that shutdown waiting forever)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    try:
        maddrs = await node.get_visible_maddrs()
        log_visible_maddrs(maddrs, only_p2p=False)
        write_address_file(args.address_file, maddrs)
        while True:  # petals' run_dht's loop: contact peers so that stale ones leave the routing table
            await asyncio.sleep(args.refresh_period)
            logger.info(f"{len(node.protocol.routing_table.uid_to_peer_id) + 1} DHT nodes (including this one) "
                        f"are in the local routing table; local storage contains {len(node.protocol.storage)} keys")
            await node.get(f"heartbeat_{token_hex(16)}", latest=True)
    except asyncio.CancelledError:
        pass
    finally:
        # bounded: removing the handlers asks p2pd, which never answers once it is gone (killed with
        # its process group); what is left is reaped by our stopper
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(node.shutdown(), SHUTDOWN_TIMEOUT_S)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # The servers' file is rewritten by Ansible on every run but read only here, at (re)start: the
    # command line stays the same, so the daemon does not restart a healthy DHT when servers come up.
    joined: list[str] = []
    if args.join_peers_file and Path(args.join_peers_file).exists():
        joined = read_address_file(args.join_peers_file)
    if args.initial_peers or joined:  # joining another DHT or the running servers: never a public Petals peer
        try:
            args.initial_peers = resolve_initial_peers((args.initial_peers or []) + joined)
        except PeerError as exc:
            fail(str(exc))
    options = node_options(args)
    compat.import_without_package_inits()
    compat.keep_p2p_private()  # no NAT port mapping, AutoNAT or relays (compat item 7)
    compat.sockets_in_tmpdir()  # in the daemon's private TMPDIR (compat item 11)
    exit_on_sigterm()  # until the event loop takes SIGTERM over
    try:
        asyncio.run(serve(args, options))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
