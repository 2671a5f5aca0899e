"""Deterministic train / held-out assignment from the positive asset's id."""

from __future__ import annotations

import hashlib

from loom.schemas.records import Split

DEFAULT_HELDOUT_FRACTION = 0.2


def split_for(asset_id: str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
              salt: str = "loom-split-v1") -> Split:
    """Same id, same split, on any engine and any machine.

    Near-duplicate groups pass their group id (not the member id) so a group never
    straddles the split.
    """
    digest = hashlib.sha256(f"{salt}:{asset_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return Split.HELDOUT if bucket < heldout_fraction else Split.TRAIN
