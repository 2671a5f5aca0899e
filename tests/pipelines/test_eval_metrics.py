"""Retrieval metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from loom.pipelines.evaluate import (
    _bm25_top,
    embedding_metrics,
    format_table,
    ndcg_at,
    random_recall,
    recall_at,
    retrieval_metrics,
    score_chunk,
    top_k,
    top_k_chunked,
)
from rank_bm25 import BM25Okapi


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


@pytest.mark.parametrize("k", [1, 3, 10, 40, 41])
def test_top_k_is_a_stable_full_sort_cut_at_k(k):
    # Scores with many ties (small integers): the order must be numpy's stable argsort of
    # whole rows, ties to the lower gallery index, whatever the partition picked.
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(25, 40)).astype(np.float32)
    want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    got = top_k(scores, k)
    assert got.shape == (25, min(k, 40))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_chunked_scores_rank_as_the_whole_matrix(chunk):
    rng = np.random.default_rng(chunk)
    # Small integers: every product is exact in float32 whatever BLAS path a chunk takes,
    # and many scores tie.
    q = rng.integers(-2, 3, size=(30, 8)).astype(np.float32)
    g = rng.integers(-2, 3, size=(50, 8)).astype(np.float32)
    np.testing.assert_array_equal(top_k_chunked(q, g, 10, chunk),
                                  np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10])
    relevant = [{int(i) % 50, (3 * int(i)) % 50} for i in range(30)]
    full = q @ g.T
    want = {"r@1": np.mean([bool(rel & {int(np.argsort(-row, kind="stable")[0])})
                            for row, rel in zip(full, relevant, strict=True)])}
    got = embedding_metrics(q, g, relevant)
    assert got["r@1"] == pytest.approx(want["r@1"])
    assert got == retrieval_metrics(full, relevant)


@pytest.mark.parametrize(("chunk", "block", "k"), [(1, 1, 10), (7, 9, 10), (7, 9, 4), (30, 3, 10),
                                                  (4, 49, 50), (256, 64, 1)])
def test_gallery_blocks_rank_as_the_whole_matrix(chunk, block, k):
    """Scored a block of the gallery at a time (fewer rows than k, a ragged last block),
    each block's top k merged: the same rows, in the same order, as a stable sort of
    whole rows; ties (many, from small integers) still go to the lower gallery index."""
    rng = np.random.default_rng(block)
    q = rng.integers(-2, 3, size=(30, 8)).astype(np.float32)
    g = rng.integers(-2, 3, size=(50, 8)).astype(np.float32)
    np.testing.assert_array_equal(top_k_chunked(q, g, k, chunk, block),
                                  np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :k])


def test_default_blocks_hold_a_chunk_of_scores_within_score_bytes(monkeypatch):
    """With the defaults, a gallery larger than SCORE_BYTES allows is scored in blocks:
    no scores array past SCORE_BYTES is made, and the ranking is the whole matrix's."""
    from loom.pipelines import evaluate

    monkeypatch.setattr(evaluate, "SCORE_BYTES", 4 * 256 * 40)  # 40 gallery rows a block
    made = []
    real = evaluate.top_k

    def spy(scores, k=evaluate.TOP):
        made.append(scores.shape)
        return real(scores, k)

    monkeypatch.setattr(evaluate, "top_k", spy)
    rng = np.random.default_rng(3)
    q = rng.integers(-2, 3, size=(300, 8)).astype(np.float32)
    g = rng.integers(-2, 3, size=(130, 8)).astype(np.float32)
    np.testing.assert_array_equal(top_k_chunked(q, g, 10),
                                  np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10])
    assert max(r * c * 4 for r, c in made) <= evaluate.SCORE_BYTES
    assert sorted({c for _, c in made}) == [10, 40]  # three whole blocks, a ragged last


@pytest.mark.parametrize("chunk", [1, 4, 256])
def test_bm25_in_query_chunks_ranks_as_the_whole_matrix(chunk):
    """The lexical baseline scored a chunk of queries at a time gives each query the top
    rows a stable sort of its whole BM25 row gives (ties: repeated words, empty texts)."""
    rng = np.random.default_rng(chunk)
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 6))) for _ in range(60)]
    queries = [" ".join(rng.choice(words, size=2)).upper() for _ in range(9)]
    bm25 = BM25Okapi([t.lower().split() or [""] for t in texts])
    whole = np.stack([bm25.get_scores(q.lower().split()) for q in queries])
    want = np.argsort(-whole, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(_bm25_top(queries, texts, k=10, chunk=chunk), want)


def test_score_chunks_shrink_as_the_gallery_grows(monkeypatch):
    """A chunk's scores stay within SCORE_BYTES whatever the gallery (at least one query
    a chunk), and the ranking is that of the whole matrix at any chunk size."""
    from loom.pipelines import evaluate

    assert score_chunk(100) == evaluate.SCORE_CHUNK
    for rows in (10**5, 10**6, 10**8):
        for itemsize in (4, 8):
            chunk = score_chunk(rows, itemsize)
            assert chunk >= 1 and (chunk == 1 or chunk * rows * itemsize <= evaluate.SCORE_BYTES)
    assert score_chunk(10**6) == 4 and score_chunk(10**8) == 1
    rng = np.random.default_rng(5)
    q = rng.integers(-2, 3, size=(20, 8)).astype(np.float32)
    g = rng.integers(-2, 3, size=(300, 8)).astype(np.float32)
    monkeypatch.setattr(evaluate, "SCORE_BYTES", 4 * 300 * 3)  # three queries a chunk
    assert score_chunk(300) == 3
    np.testing.assert_array_equal(top_k_chunked(q, g, 10),
                                  np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10])


def test_a_task_plan_is_read_a_part_at_a_time(tmp_path, monkeypatch):
    """The driver reads one task's gallery plan rows (in plan order) a part at a time,
    never every task's plan in one table."""
    import pyarrow as pa
    from loom.pipelines import evaluate
    from loom.pipelines.ray.evaluate import PLAN_SCHEMA
    from loom.schemas import storage

    rows = [{"task": t, "id": f"{t}{i}", "digest": "d", "key": "k", "text": None, "file": n,
             "row": i, "parts": None} for n, t in enumerate("abab") for i in range(3)]
    parts = []
    for n in range(4):
        parts.append(str(tmp_path / f"plan-{n}.parquet"))
        storage.write_parquet(pa.Table.from_pylist(rows[3 * n : 3 * n + 3], PLAN_SCHEMA),
                              parts[-1])
    reads = []
    real = storage.read_parquet
    monkeypatch.setattr(storage, "read_parquet",
                        lambda uris, *a, **k: reads.append(len(uris)) or real(uris, *a, **k))
    got = evaluate._task_plan(parts, "b", PLAN_SCHEMA)
    assert got.column("id").to_pylist() == ["b0", "b1", "b2", "b0", "b1", "b2"]
    assert got.column("file").to_pylist() == [1, 1, 1, 3, 3, 3]
    assert reads == [1, 1, 1, 1]
    assert evaluate._task_plan([], "b", PLAN_SCHEMA).num_rows == 0
