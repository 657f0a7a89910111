"""Shared test plumbing. In CI (NETBENCH_NO_SKIP=1) a skipped test is reported as a failure:
root-only tests may skip on a developer's laptop, never in CI."""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("NETBENCH_NO_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped in CI (NETBENCH_NO_SKIP=1), which counts as a failure: {reason}"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip_root = pytest.mark.skip(reason="needs root (network namespaces, qdiscs or dockerd)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip_root)
