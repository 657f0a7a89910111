"""Every command line's --help description is its docstring's first paragraph, never a line cut mid-sentence."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from bench_client.core.arguments import description

PACKAGE = Path(__file__).resolve().parents[2] / "bench_client"
CLIS = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
              if "description=description(__doc__)" in p.read_text())


def test_the_paragraph_is_joined():
    assert description("Starts here and\n    ends there.\n\nMore.") == "Starts here and ends there."


@pytest.mark.parametrize("module", CLIS)
def test_no_description_stops_mid_sentence(module: str):
    text = description(importlib.import_module(module).__doc__)
    assert text.endswith((".", ":")), (module, text)
