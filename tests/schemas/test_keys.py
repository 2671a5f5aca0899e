"""hash_keys: the one fixed-width key of backfill's ids, the embedding cache's (id, digest)
pairs and the loss's asset ids; the values are the ones each computed before."""

from __future__ import annotations

import hashlib

import numpy as np
from loom.pipelines.backfill import _keys
from loom.pipelines.embed_cache import cache_keys
from loom.schemas.keys import hash_keys


def test_keys_are_the_digests_each_caller_computed_before():
    ids = ["a", "example-2", "", "\u00e9t\u00e9"]
    want = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
            for i in ids]
    got = _keys(ids)
    assert got.dtype == np.uint64 and got.tolist() == want
    digests = ["d1", "d2", "d3", "d4"]
    old = np.array([hashlib.blake2b(f"{i}\0{d}".encode(), digest_size=16).digest()
                    for i, d in zip(ids, digests, strict=True)], dtype="S16")
    assert np.array_equal(cache_keys(ids, digests), old)
    assert cache_keys(ids, digests).tobytes() == old.tobytes()


def test_keys_are_writable_and_empty_input_gives_an_empty_array():
    keys = hash_keys(["x", "y"], 8)
    keys[0] = keys[1]  # callers may sort or fill in place
    assert hash_keys([], 16).shape == (0,) and hash_keys([], 16).dtype == np.dtype("S16")
    assert _keys([]).dtype == np.uint64 and len(_keys([])) == 0
