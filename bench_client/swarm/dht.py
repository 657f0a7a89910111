"""DHT bootstrap peer: petals' own ``run_dht`` CLI, plus its multiaddrs written to a file.

    python -m bench_client.swarm.dht --address-file /run/netbench/dht.maddrs [--host-maddrs ...] \
        [--join-peers-file /run/netbench/servers.maddrs]

The file (one multiaddr per line) appears atomically once the DHT is up; Ansible and the tests read
it instead of scraping logs. Stop the process by signalling its process group with SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from bench_client import compat
from bench_client.swarm.peers import PeerError, read_address_file, resolve_initial_peers, write_address_file
from bench_client.core.processes import exit_on_sigterm, fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench_client.swarm.dht", description=__doc__.split("\n")[0])
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


def petals_argv(args: argparse.Namespace) -> list[str]:
    """The ``petals.cli.run_dht`` command line equivalent to our arguments."""
    argv = ["run_dht", "--refresh_period", str(args.refresh_period)]
    host_maddrs = args.host_maddrs
    if args.port is not None:
        if host_maddrs:
            fail("use either --port or --host-maddrs, not both")
        host_maddrs = [f"/ip4/0.0.0.0/tcp/{args.port}"]
    if host_maddrs:
        argv += ["--host_maddrs", *host_maddrs]
    if args.announce_maddrs:
        argv += ["--announce_maddrs", *args.announce_maddrs]
    if args.identity_path:
        argv += ["--identity_path", args.identity_path]
    if args.initial_peers:
        argv += ["--initial_peers", *args.initial_peers]
    return argv


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
    compat.apply()
    import petals.cli.run_dht as run_dht

    original_log = run_dht.log_visible_maddrs

    def log_and_publish(visible_maddrs, only_p2p=False):
        original_log(visible_maddrs, only_p2p=only_p2p)
        write_address_file(args.address_file, visible_maddrs)

    run_dht.log_visible_maddrs = log_and_publish
    if args.initial_peers:
        # Restarted with the running servers as initial peers (petals_dht role): one that died since it
        # wrote its address file must not keep the bootstrap peer from starting (hivemind raises when
        # no initial peer answers); the ones alive are joined, so the restarted DHT is not orphaned.
        run_dht.DHT = functools.partial(run_dht.DHT, ensure_bootstrap_success=False)
    exit_on_sigterm()
    sys.argv = petals_argv(args)
    try:
        run_dht.main()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
