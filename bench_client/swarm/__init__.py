"""The Petals swarm: DHT and server launchers, who serves which blocks, a whole swarm on one host."""
