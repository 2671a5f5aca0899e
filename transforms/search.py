"""Nearest-neighbour search over unit vectors: exact by default, an ANN index above a size.

Exact search is FAISS's brute-force inner-product kernel (the one IndexFlatIP runs) called
on the caller's array, with queries in chunks: no copy of the corpus and results held for
one chunk at a time, so memory beyond the vectors does not grow with the corpus. Above
`ann_threshold` vectors an HNSW or IVF index answers instead, and `ann_recall` measures
its recall@k against exact search on a sample of queries.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import faiss
import numpy as np

AnnKind = Literal["hnsw", "ivf"]


def exact_search(xb: np.ndarray, xq: np.ndarray, k: int,
                 chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products (scores, rows), rows -1 past the corpus size."""
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    k_eff = min(k, len(xb))
    scores = np.full((len(xq), k), -np.inf, dtype=np.float32)
    rows = np.full((len(xq), k), -1, dtype=np.int64)
    if k_eff == 0:
        return scores, rows
    for start in range(0, len(xq), chunk):
        q = np.ascontiguousarray(xq[start : start + chunk], dtype=np.float32)
        d, i = faiss.knn(q, xb, k_eff, metric=faiss.METRIC_INNER_PRODUCT)
        scores[start : start + len(q), :k_eff] = d
        rows[start : start + len(q), :k_eff] = i
    return scores, rows


class VectorIndex:
    """Exact search over `xb` (no copy), or an ANN index when it has more than `threshold` rows."""

    def __init__(self, xb: np.ndarray, ann_threshold: int, ann: AnnKind = "hnsw",
                 hnsw_m: int = 32, ef_search: int = 256, ivf_nprobe: int = 64, seed: int = 0):
        self.xb = np.ascontiguousarray(xb, dtype=np.float32)
        self.kind = "exact" if len(xb) <= ann_threshold else ann
        self.index: faiss.Index | None = None
        self.build_s = 0.0
        if self.kind == "exact":
            return
        start = time.perf_counter()
        dim = self.xb.shape[1]
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = ef_search
            self.ef_search = ef_search
        else:
            nlist = max(1, min(65536, int(8 * math.sqrt(len(xb)))))
            self.quantizer = faiss.IndexFlatIP(dim)  # the IVF index does not own it
            index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = self.xb[np.sort(rng.choice(len(xb), min(len(xb), 64 * nlist), replace=False))]
            index.train(train)
            index.nprobe = min(nlist, ivf_nprobe)
        for s in range(0, len(self.xb), 65536):  # the index holds its own copy
            index.add(self.xb[s : s + 65536])
        self.index = index
        self.build_s = time.perf_counter() - start

    def __len__(self) -> int:
        return len(self.xb)

    def search(self, xq: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            return exact_search(self.xb, xq, k, chunk)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.ef_search, k)
        scores = np.full((len(xq), k), -np.inf, dtype=np.float32)
        rows = np.full((len(xq), k), -1, dtype=np.int64)
        k_eff = min(k, len(self.xb))
        for start in range(0, len(xq), chunk):
            q = np.ascontiguousarray(xq[start : start + chunk], dtype=np.float32)
            d, i = self.index.search(q, k_eff)
            scores[start : start + len(q), :k_eff] = d
            rows[start : start + len(q), :k_eff] = i
        scores[rows < 0] = -np.inf
        return scores, rows


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k rows that the approximate top-k found."""
    hits, total = 0, 0
    for a, e in zip(approx, exact, strict=True):
        e = e[e >= 0]
        hits += len(np.intersect1d(a[a >= 0], e))
        total += len(e)
    return hits / total if total else 1.0


def ann_recall(index: VectorIndex, xq: np.ndarray, k: int, sample: int, seed: int = 0) -> dict:
    """recall@k of `index` against exact search on up to `sample` queries, and both speeds
    (best of two runs each)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(xq), min(sample, len(xq)), replace=False))
    q = xq[pick]
    ann_s = exact_s = float("inf")
    for _ in range(2):  # best of two each, interleaved: the first call also warms up threads
        t0 = time.perf_counter()
        _, approx = index.search(q, k)
        t1 = time.perf_counter()
        _, exact = exact_search(index.xb, q, k)
        t2 = time.perf_counter()
        ann_s, exact_s = min(ann_s, max(t1 - t0, 1e-9)), min(exact_s, max(t2 - t1, 1e-9))
    return {"index": index.kind, "vectors": len(index), "k": k, "sample": len(q),
            f"recall@{k}": round(recall_at_k(approx, exact), 4),
            "build_s": round(index.build_s, 3), "ann_qps": round(len(q) / ann_s, 1),
            "exact_qps": round(len(q) / exact_s, 1), "speedup": round(exact_s / ann_s, 2)}
