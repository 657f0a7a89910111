"""Summarise py-spy's raw (folded) samples: where the sampled threads spend their time.

    python tools/gpu/fold_summary.py server.folded [--top 25] > server-summary.txt

py-spy ``record --format raw`` writes one line per distinct stack, ``frame;frame;...;leaf COUNT``,
with ``process PID:"cmdline"`` and ``thread (TID)`` frames first when --subprocesses/--threads are
given. Printed: samples per process and thread, the leaf functions by self time, and the functions
by inclusive time (a function counted once per stack even when recursive).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME_LOCATION = re.compile(r"\s*\((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    """'fn (path/to/petals/server/backend.py:123)' -> 'fn (petals/server/backend.py)'."""
    match = FRAME_LOCATION.search(frame)
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "dist-packages/", "/tmp/site/", "lib/python3.12/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{frame[:match.start()].strip()} ({path})"


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks) or 1
    by_thread: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        heads = [f for f in frames if f.startswith(("process ", "thread ("))]
        code = [short(f) for f in frames if f not in heads]
        by_thread[" / ".join(h[:90] for h in heads) or "(all)"] += count
        if code:
            self_time[code[-1]] += count
        for frame in set(code):
            inclusive[frame] += count
    out = [f"{total} samples"]
    for title, counter in (("per process / thread", by_thread), ("self time (leaf frames)", self_time),
                           ("inclusive time", inclusive)):
        out.append(f"\n## {title}")
        out += [f"{100 * n / total:6.1f} %  {n:7d}  {name}" for name, n in counter.most_common(top)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folded", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    print(summarise(parse(args.folded), args.top))


if __name__ == "__main__":
    main()
