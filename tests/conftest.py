"""Suite-wide fixtures: one local Ray session per test run, shared by every test that asks."""

from __future__ import annotations

import os

import pytest

from tests.gcs import GcsEmulator, emulator_available

os.environ["RAY_AUTH_MODE"] = "disabled"


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI (CI=true) a skipped test fails: what a test needs (the emulator, chromium, the
    CRDs, the fuzz seeds) is in the repo or installed by .ci/run, so a skip there means a
    check silently stopped running. Deselected tests (-m 'not slow') are not skips."""
    report = yield
    if _on_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        where, _, reason = report.longrepr if isinstance(report.longrepr, tuple) else ("", 0,
                                                                                       report.longrepr)
        report.longrepr = f"skipped on CI (CI=true turns skips into failures): {reason} {where}"
    return report


@pytest.fixture(scope="session")
def ray_session(request):
    """A local Ray (2 CPUs, small object store), started on first use, shut down at the end.

    The GCS emulator (when installed) starts first: Ray's workers inherit its
    STORAGE_EMULATOR_HOST, so a gs:// run on Ray reads and writes it from every worker."""
    import ray
    from loom.pipelines.ray.session import ensure_ray

    if emulator_available():
        request.getfixturevalue("gcs")

    ensure_ray(num_cpus=2, object_store_mb=256)
    yield ray
    ray.shutdown()


BUCKET = "loom-test"


@pytest.fixture(scope="session")
def gcs():
    """A running emulator with bucket `loom-test`; STORAGE_EMULATOR_HOST points at it.

    schemas.storage caches one GcsFileSystem per emulator host, so the variable must be
    set before the first gs:// call, which this fixture guarantees for its users.
    """
    if not emulator_available():
        pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[test]')")
    with GcsEmulator(bucket=BUCKET) as emulator, pytest.MonkeyPatch.context() as mp:
        for key, value in emulator.env().items():
            mp.setenv(key, value)
        yield emulator


@pytest.fixture
def offline_llm():
    """start(faults=None) -> the base URL of a new offline Gemini server on 127.0.0.1;
    every server the test started is stopped after it."""
    from loom.synth.offline_server import start_server

    servers = []

    def start(faults=None) -> str:
        server, url = start_server(0, faults)
        servers.append(server)
        return url

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()
