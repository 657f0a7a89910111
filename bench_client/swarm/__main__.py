"""python -m bench_client.swarm wait|list ...: see bench_client.swarm.blocks."""

from bench_client.swarm.blocks import main

main()
