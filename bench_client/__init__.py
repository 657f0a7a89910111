"""Petals benchmark harness of the FlexGen paper (Table 17), under emulated networks."""

__version__ = "0.1.0"
