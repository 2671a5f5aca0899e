"""`loom shard --weight`: natural and synthetic pairs mix by their source."""

from __future__ import annotations

from loom.transforms.packing import repeats


def _copies(weights: dict[str, float], kind: str, n: int = 2000) -> float:
    return sum(repeats(weights, 0, f"p{i}", kind, "image") for i in range(n)) / n


def test_source_weights_tilt_natural_against_synthetic():
    w = {"natural": 0.25, "synthetic": 2.0}
    assert abs(_copies(w, "natural:record") - 0.25) < 0.04  # a fraction: that share kept
    assert _copies(w, "caption") == 2.0  # whole weights: exact copies
    assert _copies({"natural": 3.0}, "natural:av_track") == 3.0
    assert _copies({"natural": 3.0}, "keyword") == 1.0  # synthetic rows untouched
    # kind, modality and source multiply
    assert _copies({"natural": 2.0, "natural:record": 1.5, "image": 2.0}, "natural:record") == 6.0
