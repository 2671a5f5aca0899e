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


# The column helper `media` adds to Examples for near-duplicate groups (when present).
GROUP_COLUMNS = ("near_dup_group", "group")


def group_of(example: dict) -> str:
    """An Example's asset group: its near-duplicate group when ingest found one, else its
    own id. Every Pair drawn from one Example (any subset of its parts, or text written
    about it) inherits this group, so both sides of a pair always land in one split."""
    for name in GROUP_COLUMNS:
        if example.get(name):
            return str(example[name])
    return example["id"]


def example_split(example: dict, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> Split:
    return split_for(group_of(example), heldout_fraction)
