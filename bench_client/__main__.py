import os
import sys

from bench_client import compat
from bench_client.client.cli import main

if __name__ == "__main__":
    compat.share_tensors_by_descriptor()  # before hivemind is imported: no /dev/shm files left behind
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # a hard exit: petals' p2p objects can hang the interpreter at exit (see bench_client/compat.py)
    os._exit(code or 0)
