"""Retrieval metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from loom.pipelines.evaluate import format_table, ndcg_at, random_recall, recall_at


def test_recall_and_ndcg_by_hand():
    # 3 queries, 4 gallery items. Query 0: relevant {0} ranked 1st; query 1: relevant {2}
    # ranked 4th; query 2: relevant {1, 3} ranked 2nd and 4th.
    scores = np.array([[0.9, 0.1, 0.2, 0.3],
                       [0.5, 0.9, 0.1, 0.7],
                       [0.9, 0.5, 0.1, 0.05]])
    relevant = [{0}, {2}, {1, 3}]
    r = recall_at(scores, relevant, ks=(1, 3))
    assert r == {"r@1": pytest.approx(1 / 3), "r@3": pytest.approx(2 / 3)}
    d = [1.0, 1 / math.log2(5),
         (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))]
    assert ndcg_at(scores, relevant, k=10) == pytest.approx(np.mean(d))
    assert ndcg_at(scores, relevant, k=1) == pytest.approx(1 / 3)


def test_random_recall_is_exact_expectation():
    rng = np.random.default_rng(0)
    relevant = [{0}, {1, 2}]
    sims = [recall_at(rng.random((2, 10)), relevant, ks=(1, 5)) for _ in range(4000)]
    expected = random_recall(10, relevant, ks=(1, 5))
    for k in ("r@1", "r@5"):
        assert np.mean([s[k] for s in sims]) == pytest.approx(expected[k], abs=0.02)
    assert expected["r@1"] == pytest.approx((0.1 + 0.2) / 2)


def test_format_table_lists_every_size():
    entry = {"random_r@1": 0.01, "untrained_r@1": 0.02, "queries": 5,
             "by_dim": {"32": {"r@1": 0.5, "r@5": 0.9, "ndcg@10": 0.7},
                        "128": {"r@1": 0.6, "r@5": 1.0, "ndcg@10": 0.8}}}
    text = format_table({"text->image": entry})
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["pair", "dim", "R@1", "R@5", "NDCG@10"]
    assert [ln.split()[1] for ln in lines[1:]] == ["32", "128"]
    assert "0.600" in lines[2] and lines[2].split()[-2] == "-"
