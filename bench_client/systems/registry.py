"""Every system under test, in the order -e systems= lists them and the report's columns put them."""

from __future__ import annotations

from bench_client.systems import flexgen, petals, transformers
from bench_client.systems.base import Hosts, Kind, System

SYSTEMS: dict[str, System] = {s.name: s for s in (petals.SYSTEM, flexgen.SYSTEM, transformers.SYSTEM)}
DEFAULT = petals.SYSTEM  # what -e systems= defaults to, and the system of a record without the field


class UnknownSystemError(ValueError):
    pass


def get(name: str) -> System:
    try:
        return SYSTEMS[name]
    except KeyError:
        raise UnknownSystemError(f"unknown system {name!r}; known systems: {', '.join(SYSTEMS)}") from None


def of_record(name: str | None) -> System:
    """The system a result row names: a record before the field is the default's; a name this checkout does
    not know (a newer harness's system) is still reported, as a swarm under its own name."""
    if not name:
        return DEFAULT
    return SYSTEMS.get(name) or System(name=name, label=name, kind=Kind.SWARM, hosts=Hosts.SWARM, role="")


def order(system: System) -> tuple[bool, int]:
    """Columns: the one-GPU systems first (the paper's Table 17 opens with FlexGen), then registry order."""
    names = list(SYSTEMS)
    return (system.networked, names.index(system.name) if system.name in names else len(names))
