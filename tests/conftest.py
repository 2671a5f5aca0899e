"""Suite-wide fixtures: one local Ray session per test run, shared by every test that asks."""

from __future__ import annotations

import os

import pytest

os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray (2 CPUs, small object store), started on first use, shut down at the end."""
    import ray

    from pipelines.ray.session import ensure_ray

    ensure_ray(num_cpus=2, object_store_mb=256)
    yield ray
    ray.shutdown()
