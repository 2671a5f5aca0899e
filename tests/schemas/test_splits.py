"""Properties of `split_for`: deterministic, held-out share near the configured fraction (in the
right direction), monotone in the fraction, salted, and one split per id whatever the caller.

The reference for the bucket is sha256 as the docstring promises, recomputed here with
hashlib on its own so a change to the hash, the byte order or the comparison shows up."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from loom.schemas.records import Split
from loom.schemas.splits import DEFAULT_HELDOUT_FRACTION, split_for

IDS = [f"asset-{i:05d}" for i in range(20_000)]
ids = st.text(min_size=0, max_size=40)
fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def _share(fraction: float, salt: str = "loom-split-v1") -> float:
    return sum(split_for(i, fraction, salt) is Split.HELDOUT for i in IDS) / len(IDS)


def _bucket(asset_id: str, salt: str = "loom-split-v1") -> float:
    digest = hashlib.sha256(f"{salt}:{asset_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def test_default_fraction_is_a_fifth():
    assert DEFAULT_HELDOUT_FRACTION == 0.2
    assert abs(_share(DEFAULT_HELDOUT_FRACTION) - 0.2) < 0.012
    assert sum(split_for(i) is Split.HELDOUT for i in IDS) == sum(
        split_for(i, 0.2) is Split.HELDOUT for i in IDS)


def test_heldout_share_tracks_the_fraction_in_the_right_direction():
    # 20,000 ids: the binomial standard deviation is <= 0.0036, so 0.012 is > 3 sigma.
    shares = {f: _share(f) for f in (0.01, 0.1, 0.3, 0.5, 0.9)}
    for f, share in shares.items():
        assert abs(share - f) < 0.012, (f, share)
    assert list(shares.values()) == sorted(shares.values())  # more fraction, more held out
    assert _share(0.0) == 0.0
    assert _share(1.0) == 1.0


def test_the_bucket_is_sha256_of_salt_and_id():
    # Held out iff the id's bucket lies below the fraction: a flipped or off-by-one
    # comparison, another hash or another byte order all disagree on some id.
    for asset_id in IDS[:3000]:
        want = Split.HELDOUT if _bucket(asset_id) < 0.2 else Split.TRAIN
        assert split_for(asset_id) is want, asset_id
    # At exactly the bucket's value the id is train (strict comparison).
    edge = IDS[7]
    assert split_for(edge, _bucket(edge)) is Split.TRAIN
    assert split_for(edge, _bucket(edge) + 1e-12) is Split.HELDOUT


@settings(max_examples=300, deadline=None)
@given(ids, fractions)
def test_deterministic(asset_id, fraction):
    assert split_for(asset_id, fraction) is split_for(asset_id, fraction)
    assert isinstance(split_for(asset_id, fraction), Split)


@settings(max_examples=300, deadline=None)
@given(ids, fractions, fractions)
def test_monotone_in_the_fraction(asset_id, a, b):
    lo, hi = sorted((a, b))
    if split_for(asset_id, lo) is Split.HELDOUT:
        assert split_for(asset_id, hi) is Split.HELDOUT


@settings(max_examples=200, deadline=None)
@given(ids)
def test_endpoints(asset_id):
    assert split_for(asset_id, 0.0) is Split.TRAIN
    assert split_for(asset_id, 1.0) is Split.HELDOUT


def test_salt_changes_the_assignment_but_not_the_share():
    a = [split_for(i) for i in IDS[:2000]]
    b = [split_for(i, salt="other") for i in IDS[:2000]]
    assert a != b
    assert abs(_share(0.2, salt="other") - 0.2) < 0.012

