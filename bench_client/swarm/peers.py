"""Initial-peer handling shared by every entry point: a private experiment never falls back to
petals' public bootstrap peers, and peers can come from the DHT launcher's address file."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench_client.core.processes import write_atomically

# petals.constants.PUBLIC_INITIAL_PEERS identify themselves by these peer IDs and host names.
_PUBLIC_MARKERS = (
    "petals.dev",
    "QmedTaZXmULqwspJXz44SsPZyTNKxhnnFvYRajfH7MGhCY",
    "QmQGTqmM7NKjV6ggU1ZCap8zWiyKR89RViDXiqehSiCpY5",
)
# fullmatch: a "$" anchor would let a final newline through (it matches before one)
_MULTIADDR = re.compile(r"/(ip4|ip6|dns|dns4|dns6)/[^/\s]+/tcp/[0-9]+/p2p/[A-Za-z0-9]+")


class PeerError(ValueError):
    pass


def write_address_file(path: str | Path, maddrs: Iterable[object]) -> None:
    """One multiaddr a line, replaced atomically: readers never see a half-written file."""
    write_atomically(path, "".join(f"{maddr}\n" for maddr in maddrs))


def read_address_file(path: str | Path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def pending_address_files(peers: list[str] | None) -> list[Path]:
    """The ``@file`` entries of ``peers`` whose file does not name a peer yet (a DHT still starting)."""
    pending = []
    for peer in peers or []:
        if peer.startswith("@"):
            path = Path(peer[1:])
            try:
                if read_address_file(path):
                    continue
            except OSError:
                pass
            pending.append(path)
    return pending


def check_literal_peers(peers: list[str] | None) -> None:
    """Validate the multiaddrs given on the command line now, before waiting for any ``@file``."""
    literal = [peer for peer in peers or [] if not peer.startswith("@")]
    if literal:
        resolve_initial_peers(literal)


def wait_for_address_files(paths: list[Path], timeout: float, poll: float = 0.1,
                           on_wait: Callable[[list[Path]], None] | None = None) -> None:
    """Wait until every file in ``paths`` names a peer: a process started alongside its DHT imports its
    libraries meanwhile instead of after the DHT is up. PeerError naming the files still missing after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pending = pending_address_files([f"@{path}" for path in paths])
    if pending and on_wait:
        on_wait(pending)
    while pending:
        pending = pending_address_files([f"@{path}" for path in pending])
        if not pending:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(str(path) for path in pending)
            raise PeerError(f"no DHT address file {names} after {timeout:.0f} s: is the DHT running? (see its log)")
        time.sleep(poll)


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
        if not _MULTIADDR.fullmatch(peer):
            raise PeerError(f"{peer!r} is not a multiaddr like /ip4/10.0.0.1/tcp/31337/p2p/Qm...")
    return resolved
