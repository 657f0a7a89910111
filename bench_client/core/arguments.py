"""argparse types shared by the command lines (client, FlexGen runner, report): one message for one mistake."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def description(doc: str | None) -> str:
    """A module docstring's first paragraph as one line: the --help description (its first line alone
    stopped mid-sentence where the paragraph wraps)."""
    first = (doc or "").strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in first.splitlines())
