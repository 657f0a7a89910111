"""The benchmark client: the seed's command line and TSV, worker processes."""
