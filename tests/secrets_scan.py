"""Look for secrets in files a run wrote (results, logs): identity key material, and any string an
inventory marks as secret. Used by the fault tests and meant for the Ansible end-to-end test."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path


def key_fragments(key: Path, size: int = 48) -> list[str]:
    """Encodings of the key's last bytes (the private part) as they could appear in text files."""
    raw = key.read_bytes()[-size:]
    return [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(), raw.hex(), repr(raw)[2:-1]]


def leaks(files: Iterable[Path], secrets: Iterable[str]) -> list[str]:
    """``file: secret`` for every secret found in every readable file (directories are walked)."""
    secrets = [s for s in secrets if s]
    found = []
    for path in files:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if not file.is_file():
                continue
            data = file.read_bytes()
            found += [f"{file}: {s[:40]}" for s in secrets if s.encode() in data]
    return found
