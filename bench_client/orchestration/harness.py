"""The harness for bare hosts: a wheel of exactly the controller's bench_client, which provisioning
installs where a host's Python lacks it or has another version (roles/netbench_host).

    python -m bench_client.orchestration.harness wheel --cache DIR     # -> {"wheel": PATH, "code_hash": H, "changed": BOOL}

The wheel is built from a clean copy of the package (no stale build/ of the checkout can slip in),
without dependencies (the hosts bring petals and torch) and without the network (no build
isolation), into DIR/<code_hash>/, so an unchanged tree is not built twice.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_client.core.provenance import PROJECT_DIR, code_hash
from bench_client.core.arguments import description

SOURCE_FILES = ("pyproject.toml", "README.md")


def build_wheel(cache: Path) -> tuple[Path, bool]:
    """The wheel of this bench_client (built unless already in ``cache``) and whether it was built now."""
    target = cache / code_hash()
    built = sorted(target.glob("*.whl"))
    if built:
        return built[0], False
    with tempfile.TemporaryDirectory(prefix="netbench-harness-") as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in SOURCE_FILES:
            shutil.copy2(PROJECT_DIR / name, source / name)
        shutil.copytree(PROJECT_DIR / "bench_client", source / "bench_client",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        out = Path(tmp) / "wheel"
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                               "-q", "-w", str(out), str(source)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip wheel failed: {done.stderr.strip()[-2000:]}")
        [wheel] = out.glob("*.whl")
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(str(wheel), target / wheel.name)  # whole file at once: a half-built wheel is never found
    return target / wheel.name, True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench_client.orchestration.harness", description=description(__doc__))
    sub = p.add_subparsers(dest="command", required=True)
    wheel = sub.add_parser("wheel", help="build (or find) the wheel of this bench_client")
    wheel.add_argument("--cache", required=True, type=Path)
    args = p.parse_args(argv)
    try:
        path, changed = build_wheel(args.cache)
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"wheel": str(path), "code_hash": code_hash(), "changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
