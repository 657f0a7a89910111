#!/usr/bin/env python3
"""Copy kernel modules and everything they depend on into a directory, and list them in load
order (a module after the modules it needs) in DEST/modules.list, for a busybox initramfs whose
insmod does not resolve dependencies.

    kmod-closure.py KMOD_DIR DEST MODULE...     # KMOD_DIR: lib/modules/<version> with modules.dep

A module missing from modules.dep is built into the kernel and skipped.
"""

from __future__ import annotations

import os
import shutil
import sys


def closure(modules_dep: str, wanted: list[str]) -> list[str]:
    """Paths (relative to the module directory) of ``wanted`` and their dependencies, in load order."""
    deps: dict[str, tuple[str, list[str]]] = {}
    with open(modules_dep) as lines:
        for line in lines:
            path, _, rest = line.partition(":")
            deps[os.path.basename(path).split(".ko")[0].replace("-", "_")] = (path, rest.split())
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:  # depth-first: a module after everything it needs
        if path in seen:
            return
        seen.add(path)
        name = os.path.basename(path).split(".ko")[0].replace("-", "_")
        for dep in deps.get(name, (path, []))[1]:
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in deps:
            visit(deps[name][0])
    return order


def main(argv: list[str]) -> int:
    kmod, dest, wanted = argv[1], argv[2], argv[3:]
    os.makedirs(os.path.join(dest, "lib/modules"), exist_ok=True)
    with open(os.path.join(dest, "modules.list"), "w") as listing:
        for path in closure(os.path.join(kmod, "modules.dep"), wanted):
            shutil.copy(os.path.join(kmod, path), os.path.join(dest, "lib/modules"))
            listing.write(os.path.basename(path) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
