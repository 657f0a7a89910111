"""The tests' name for bench_client.local_swarm (real DHT and servers on loopback, stopped by process group)."""

from bench_client.local_swarm import LocalSwarm, Managed, group_members  # noqa: F401
