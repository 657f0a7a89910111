"""What a system under test declares (pure data: the plan, the report and the roles read it)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    """Where a system runs, which decides how its rows are keyed: by network profile or not at all."""

    SWARM = "swarm"  # over the network: one row per network profile
    ONE_GPU = "one-gpu"  # one process on one GPU: no network, the profile does not apply


class Hosts(str, Enum):
    """How the plan picks a system's hosts."""

    SWARM = "swarm"  # the inventory's dht, servers and clients groups
    FIRST_GPU_SERVER = "first-gpu-server"  # the first server host with a CUDA GPU (refused without one)
    FIRST_SERVER = "first-server"  # the first server host with a GPU, else the first server host (CPU: tests)


@dataclass(frozen=True)
class PaperAnchor:
    """One of the paper's numbers for this system."""

    key: str  # the field of bench_client.report.reference.Anchor that holds it
    label: str  # the report's column header


@dataclass(frozen=True)
class System:
    name: str  # what -e systems= and the records' ``system`` field say
    label: str  # what the report prints
    kind: Kind
    hosts: Hosts
    role: str  # the Ansible role that runs it (entry points: main, stop)
    anchors: tuple[PaperAnchor, ...] = ()  # none: the paper did not measure it

    @property
    def networked(self) -> bool:
        return self.kind is Kind.SWARM
