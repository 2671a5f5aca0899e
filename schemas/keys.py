"""Fixed-width hash keys of strings: what a process keeps of an id to sort, search and
compare at millions of rows without a Python object per row."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def hash_keys(texts: Iterable[str], size: int) -> np.ndarray:
    """One `size`-byte blake2b digest per string, as a (writable) numpy `S<size>` array.

    8 bytes where the caller checks collisions against the ids themselves (backfill's
    bookkeeping, the loss's same-asset mask; `.view("<u8")` or `"<i8"` gives the same
    integers as `int.from_bytes(digest, "little")`); 16 where a collision would pass
    unnoticed (the embedding cache's (id, digest) keys)."""
    raw = bytearray(b"".join(hashlib.blake2b(t.encode(), digest_size=size).digest()
                             for t in texts))
    return np.frombuffer(raw, dtype=f"S{size}")
