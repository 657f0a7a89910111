"""Shared test plumbing. In CI (NETBENCH_NO_SKIP=1) a skipped test is reported as a failure:
root-only tests may skip on a developer's laptop, never in CI.

The marker `parallel` (set here, by path) says a test may share the machine with another one: it
starts no swarm, VM or container and measures nothing against a clock (pure functions, lint, the
pre-flight's refusals, the launchers' refusals). .ci/run runs those on both cores (`-m parallel -n 2`),
then the rest one at a time (`-m "not parallel"`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PARALLEL_SAFE = ("unit/", "ansible/test_preflight_refusals.py", "processes/test_bad_input_refusals.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "parallel: may run beside other tests (.ci/run: on both cores); set by path "
                                       "in tests/conftest.py")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("NETBENCH_NO_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped in CI (NETBENCH_NO_SKIP=1), which counts as a failure: {reason}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.is_relative_to(TESTS) and path.relative_to(TESTS).as_posix().startswith(PARALLEL_SAFE):
            item.add_marker(pytest.mark.parallel)
    if os.geteuid() == 0:
        return
    skip_root = pytest.mark.skip(reason="needs root (network namespaces, qdiscs or dockerd)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip_root)
