"""DHT bootstrap peer: petals' own ``run_dht`` CLI, plus its multiaddrs written to a file.

    python -m bench_client.dht --address-file /run/netbench/dht.maddrs [--host-maddrs ...]

The file (one multiaddr per line) appears atomically once the DHT is up; Ansible and the tests read
it instead of scraping logs. Stop the process by signalling its process group with SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

from bench_client import compat
from bench_client.peers import PeerError, resolve_initial_peers
from bench_client.processes import exit_on_sigterm, fail, write_atomically


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench_client.dht", description=__doc__.split("\n")[0])
    parser.add_argument("--address-file", required=True, help="where to write this peer's multiaddrs")
    parser.add_argument("--host-maddrs", nargs="+", default=None, help="listen addresses (default: all, random port)")
    parser.add_argument("--announce-maddrs", nargs="+", default=None, help="addresses announced to other peers")
    parser.add_argument("--port", type=int, default=None, help="listen on this TCP port on all IPv4 interfaces")
    parser.add_argument("--identity-path", default=None, help="private key file: a stable peer ID across restarts")
    parser.add_argument("--initial-peers", nargs="*", default=None, help="join an existing DHT (normally empty)")
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
    if args.initial_peers:  # joining another DHT: never a public Petals one
        try:
            args.initial_peers = resolve_initial_peers(args.initial_peers)
        except PeerError as exc:
            fail(str(exc))
    compat.apply()
    import petals.cli.run_dht as run_dht

    original_log = run_dht.log_visible_maddrs

    def log_and_publish(visible_maddrs, only_p2p=False):
        original_log(visible_maddrs, only_p2p=only_p2p)
        write_atomically(args.address_file, "".join(f"{maddr}\n" for maddr in visible_maddrs))

    run_dht.log_visible_maddrs = log_and_publish
    exit_on_sigterm()
    sys.argv = petals_argv(args)
    try:
        run_dht.main()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
