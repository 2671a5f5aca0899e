"""The response cache on gs:// (the emulator): a batch's entries come back in order, a
missing or torn entry is a miss, and they are fetched several at a time, not one round
trip after another."""

from __future__ import annotations

import threading
import uuid

import pytest
from loom.schemas import storage
from loom.synth import cache as cache_mod
from loom.synth.cache import ResponseCache


@pytest.fixture
def remote(gcs) -> ResponseCache:
    return ResponseCache(f"gs://{gcs.bucket}/cache-{uuid.uuid4().hex[:8]}")


def _fill(c: ResponseCache, n: int) -> list[str]:
    keys = [f"{i:064x}" for i in range(n)]
    for i, k in enumerate(keys):
        if i % 4 != 3:  # every fourth entry is never written: a miss
            c.put(k, {"queries": [f"q{i}"]})
    storage.write_bytes(c.uri(keys[5]), b'{"queries": ["torn')  # a torn write: a miss
    return keys


def test_get_many_on_gcs_matches_one_get_at_a_time(remote):
    keys = _fill(remote, 24)
    want = [None if i % 4 == 3 or i == 5 else {"queries": [f"q{i}"]} for i in range(24)]
    assert [remote.get(k) for k in keys] == want
    fresh = ResponseCache(remote.root_uri)
    assert fresh.get_many(keys) == want
    assert (fresh.hits, fresh.misses) == (sum(w is not None for w in want),
                                         sum(w is None for w in want))


def test_get_many_on_gcs_fetches_entries_at_once(remote, monkeypatch):
    """The first two reads wait for each other: one read after another never gets past
    the barrier (it breaks after 20 s and the get raises)."""
    keys = _fill(remote, 8)
    barrier = threading.Barrier(2, timeout=20)
    calls = []
    read = storage.read_bytes

    def meeting(uri, *a, **kw):
        calls.append(uri)
        if len(calls) <= 2:
            barrier.wait()
        return read(uri, *a, **kw)

    monkeypatch.setattr(cache_mod.storage, "read_bytes", meeting)
    got = remote.get_many(keys)
    assert len(calls) == len(keys) and got[0] == {"queries": ["q0"]} and got[3] is None
