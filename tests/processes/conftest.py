"""Fixtures of the tests that start real swarm processes on loopback."""

from __future__ import annotations

import pytest

from localswarm import LocalSwarm


@pytest.fixture
def swarm(tmp_path):
    """A fresh local swarm for one test, which must leave no process of it behind."""
    swarm = LocalSwarm(tmp_path)
    yield swarm
    problems = swarm.stop_all_checked()
    assert not problems, f"stopping the swarm: {problems}"
