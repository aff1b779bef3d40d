"""One real local Ray cluster for every Ray test: a head (CPUs only) and a worker node that
holds `fake_gpu`, the custom resource standing in for a GPU, started by `ray start` as
separate processes on 127.0.0.1 and stopped by PID at the end (skipped, saying why, where Ray
cannot start)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.ray_cluster import RayCluster, RayUnavailable

GPU_STAND_IN = {"fake_gpu": 1.0}


# Package-scoped: one worker runs the Ray modules one after another (`tests/conftest.py`), and the
# cluster stops when they are done instead of idling (its daemons poll) through the rest of the
# worker's session.
@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[RayCluster]:
    pytest.importorskip("ray", reason="Ray is not installed (the `ray` extra)")
    cluster = RayCluster()
    try:
        cluster.start(head_cpus=2, workers=[(1, GPU_STAND_IN)])
    except (RayUnavailable, OSError) as err:
        cluster.stop()
        pytest.skip(f"a local Ray cluster cannot start here: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()
