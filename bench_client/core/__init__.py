"""Shared pieces without Petals: models, workload sweep, metrics, the results format, processes."""
