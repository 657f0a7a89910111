"""Initial-peer handling shared by every entry point: a private experiment never falls back to
petals' public bootstrap peers, and peers can come from the DHT launcher's address file."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from bench_client.core.processes import write_atomically

# petals.constants.PUBLIC_INITIAL_PEERS identify themselves by these peer IDs and host names.
_PUBLIC_MARKERS = (
    "petals.dev",
    "QmedTaZXmULqwspJXz44SsPZyTNKxhnnFvYRajfH7MGhCY",
    "QmQGTqmM7NKjV6ggU1ZCap8zWiyKR89RViDXiqehSiCpY5",
)
_MULTIADDR = re.compile(r"^/(ip4|ip6|dns|dns4|dns6)/[^/]+/tcp/\d+/p2p/\w+$")


class PeerError(ValueError):
    pass


def write_address_file(path: str | Path, maddrs: Iterable[object]) -> None:
    """One multiaddr a line, replaced atomically: readers never see a half-written file."""
    write_atomically(path, "".join(f"{maddr}\n" for maddr in maddrs))


def read_address_file(path: str | Path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def resolve_initial_peers(peers: list[str] | None) -> list[str]:
    """Expand ``@file`` entries (a DHT address file), validate, and refuse public or missing peers."""
    resolved: list[str] = []
    for peer in peers or []:
        if peer.startswith("@"):
            try:
                resolved.extend(read_address_file(peer[1:]))
            except OSError as exc:
                raise PeerError(f"cannot read initial peers from {peer[1:]}: {exc.strerror}") from None
        else:
            resolved.extend(p for p in peer.split(",") if p)
    if not resolved:
        raise PeerError(
            "no initial peers given: pass the DHT's multiaddr(s) with --initial_peers "
            "(a private swarm never falls back to the public Petals swarm)"
        )
    for peer in resolved:
        if any(marker in peer for marker in _PUBLIC_MARKERS):
            raise PeerError(f"{peer} is a public Petals bootstrap peer; this harness only joins private swarms")
        if not _MULTIADDR.match(peer):
            raise PeerError(f"{peer!r} is not a multiaddr like /ip4/10.0.0.1/tcp/31337/p2p/Qm...")
    return resolved
