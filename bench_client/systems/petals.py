"""Petals: the swarm (bench_client.swarm servers and DHT, bench_client.client), measured per network profile."""

from bench_client.systems.base import Hosts, Kind, PaperAnchor, System

SYSTEM = System(name="petals", label="Petals", kind=Kind.SWARM, hosts=Hosts.SWARM, role="bench_client",
                anchors=(PaperAnchor("petals_per_gpu", "paper Petals (T4, per GPU)"),))
