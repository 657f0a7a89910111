"""``python -m bench_client.flexgen``: the benchmark's command line (bench_client.flexgen.cli)."""

import sys

from bench_client.flexgen.cli import main

sys.exit(main())
