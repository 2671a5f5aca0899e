"""Fixtures for the schemas tests: one GCS emulator per session, started on first use."""

from __future__ import annotations

import pytest

from tests.gcs import GcsEmulator, emulator_available

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
