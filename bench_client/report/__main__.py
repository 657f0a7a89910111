"""python -m bench_client.report RESULTS...: see bench_client.report.cli."""

import sys

from bench_client.report.cli import main

sys.exit(main())
