"""Fixtures shared by the root-only tests.

`vm_cluster`: two booted VMs (tests/vm) for every module that asks for it, booted once per session
(test_host_dropout.py, test_netem_role_vm.py; a boot of two VMs costs ~20-40 s under TCG on 2 cores)
and shut down right after the last test that uses it, so they do not idle through the rest of the run.
Each module gets the cluster whole: a VM that an earlier module killed and did not boot again is
booted again first, and the extra inventory groups an earlier module set are reset.
"""

from __future__ import annotations

import os
import time

import pytest

from vm import VMCluster, build_image

_shared: dict[str, VMCluster] = {}


@pytest.fixture(scope="session")
def _vm_cluster_booted():
    if os.geteuid() != 0:
        pytest.skip("VMs need root (network namespaces, tap devices)")
    build_image()
    cluster = VMCluster(count=2)
    _shared["cluster"] = cluster
    try:
        started = time.monotonic()
        cluster.start()
        print(f"two VMs booted in {time.monotonic() - started:.0f} s (shared by every module that uses vm_cluster)")
        yield cluster
    finally:
        _shared.pop("cluster", None)
        cluster.close()


@pytest.fixture(scope="module")
def vm_cluster(_vm_cluster_booted):
    """The session's two VMs, whole (see the module's docstring)."""
    rebooted = _vm_cluster_booted.make_whole()
    if rebooted:
        print(f"booted again before this module: {', '.join(rebooted)}")
    yield _vm_cluster_booted


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    # after the last test that uses the cluster (its module's fixtures torn down by now): shut it down
    cluster = _shared.get("cluster")
    if cluster is None or "vm_cluster" not in getattr(item, "fixturenames", ()):
        return
    items = item.session.items
    later = items[items.index(item) + 1:]
    if not any("vm_cluster" in getattr(other, "fixturenames", ()) for other in later):
        _shared.pop("cluster", None)
        cluster.close()
