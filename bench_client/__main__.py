import os
import sys

from bench_client.client.cli import main

if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # a hard exit: petals' p2p objects can hang the interpreter at exit (see bench_client/compat.py)
    os._exit(code or 0)
