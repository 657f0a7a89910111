"""What a result must record about where it was measured: versions, host, GPUs."""

from __future__ import annotations

import platform
import socket
from importlib import metadata


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "petals", "hivemind", "transformers", "petals-netbench"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def client_gpu(device: str) -> str | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def hostname() -> str:
    return socket.gethostname()
