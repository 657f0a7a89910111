"""The tests' name for bench_client.swarm.local (real DHT and servers on loopback, stopped by process group)."""

from bench_client.swarm.local import LocalSwarm, Managed, group_members  # noqa: F401
