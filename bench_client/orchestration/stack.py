"""The swarm stack on a bare host (roles/netbench_host, tasks/stack*.yml): which torch build a host gets
and which requirements its venv installs. Pure functions; the role's filter plugin calls them.

Torch for the host (``netbench_host_torch``):
  cpu   -> the CPU build, from ``<base>/cpu`` (a host without an NVIDIA driver, ``auto`` there)
  cuda  -> the CUDA build that fits the driver: nvidia-smi's header reports the newest CUDA version the
           driver runs ("CUDA Version: 12.8"); a CUDA build runs on a driver that supports its CUDA
           version or a newer one, so the newest build not newer than the driver's is taken, e.g. with
           the builds cu130, cu128, cu126 (``netbench_host_torch_cuda_builds``):
             driver CUDA 13.0 or newer -> cu130;  12.8, 12.9 -> cu128;  12.6, 12.7 -> cu126;
             older than 12.6 -> refused (update the driver, or give netbench_host_torch_index)
  auto  -> cuda where the host has an NVIDIA driver, cpu elsewhere
A cuda host without a driver is refused (the role does it before any change).
"""

from __future__ import annotations

import re
from pathlib import Path


class StackError(ValueError):
    """A refusal, one line, naming what to change."""


def _cuda_version(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)?\s*", str(text))
    if not match:
        raise StackError(f"cannot read the driver's CUDA version from {text!r} (nvidia-smi's 'CUDA Version: X.Y')")
    return int(match[1]), int(match[2])


def _build_version(build: str) -> tuple[int, int]:
    """cu128 -> (12, 8), cu130 -> (13, 0): the last digit is the minor version."""
    match = re.fullmatch(r"cu(\d+)(\d)", build)
    if not match:
        raise StackError(f"{build!r} is not a CUDA build name like cu128")
    return int(match[1]), int(match[2])


def cuda_build(driver_cuda: str, builds: list[str]) -> str:
    """The newest of ``builds`` whose CUDA version the driver supports (see the module's table)."""
    driver = _cuda_version(driver_cuda)
    fitting = sorted((b for b in builds if _build_version(b) <= driver), key=_build_version)
    if not fitting:
        oldest = min(builds, key=_build_version) if builds else "none"
        raise StackError(f"the NVIDIA driver runs CUDA {driver_cuda}, older than every torch build offered "
                         f"(oldest {oldest}): update the driver, or set netbench_host_torch_index to an index "
                         f"with a build for it")
    return fitting[-1]


def torch_build(choice: str, driver_cuda: str, builds: list[str]) -> str:
    """``cpu`` or the ``cuXYZ`` build for a host: ``choice`` auto|cpu|cuda, ``driver_cuda`` '' without a driver."""
    if choice not in ("auto", "cpu", "cuda"):
        raise StackError(f"netbench_host_torch must be one of auto, cpu, cuda, got {choice!r}")
    if choice == "cpu" or (choice == "auto" and not driver_cuda):
        return "cpu"
    if not driver_cuda:
        raise StackError("torch for cuda was asked for but the host has no NVIDIA driver (nvidia-smi does not "
                         "run): install the driver, or use netbench_device=cpu / netbench_host_torch=cpu")
    return cuda_build(driver_cuda, builds)


def torch_index(choice: str, driver_cuda: str, builds: list[str], base: str) -> str:
    """The package index the host's torch comes from: ``<base>/<build>``."""
    return f"{base.rstrip('/')}/{torch_build(choice, driver_cuda, builds)}"


def requirements(pyproject: str | Path) -> list[str]:
    """The project's pinned stack (pyproject.toml's [project] dependencies), torch left out (the role
    installs the build chosen for the host first, or keeps the host's)."""
    text = Path(pyproject).read_text()
    block = re.search(r"(?ms)^dependencies\s*=\s*\[(.*?)^\]", text)
    if not block:
        raise StackError(f"{pyproject}: no [project] dependencies list")
    found = re.findall(r'^\s*"([^"]+)"', block[1], re.M)
    return [r for r in found if not re.match(r"torch\b", r)]
