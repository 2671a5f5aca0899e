"""Hard-negative selection: exact search, positive-aware false-negative filtering.

Candidates are searched per target modality (a text->image pair gets image negatives).
Excluded: the positive itself, exact duplicates (same id), near-duplicates of the
positive (cosine above `near_duplicate`), and likely false negatives scoring above
`perc_pos` x the positive's score (NV-Retriever's TopK-PercPos rule; for a negative
positive score the margin is taken below it, so the rule never admits more).
"""

from __future__ import annotations

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict


class MiningConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    negatives: int = 3
    search_k: int = 32
    perc_pos: float = 0.95
    near_duplicate: float = 0.98


def exact_search(cand_vecs: np.ndarray, q_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(cand_vecs.shape[1])
    index.add(np.ascontiguousarray(cand_vecs, dtype=np.float32))
    return index.search(np.ascontiguousarray(q_vecs, dtype=np.float32), min(k, len(cand_vecs)))


def select_negatives(q_vecs: np.ndarray, pos_ids: list[str], cand_ids: list[str],
                     cand_vecs: np.ndarray, cfg: MiningConfig) -> tuple[list[list[dict]], dict]:
    """Per query: up to `cfg.negatives` {id, score, rank}; plus counts per rule."""
    row_of = {c: i for i, c in enumerate(cand_ids)}
    scores, idx = exact_search(cand_vecs, q_vecs, cfg.search_k)
    stats = {"positive": 0, "false_negative": 0, "near_duplicate": 0, "kept": 0,
             "positive_not_in_corpus": 0}
    out: list[list[dict]] = []
    for qi, pos in enumerate(pos_ids):
        p_row = row_of.get(pos)
        if p_row is None:
            stats["positive_not_in_corpus"] += 1
            pos_score = float("inf")
            p_vec = None
        else:
            p_vec = cand_vecs[p_row]
            pos_score = float(q_vecs[qi] @ p_vec)
        kept = []
        for rank, (j, s) in enumerate(zip(idx[qi], scores[qi], strict=True)):
            if j < 0:
                break
            cid = cand_ids[j]
            if cid == pos:
                stats["positive"] += 1
                continue
            if s > pos_score - (1 - cfg.perc_pos) * abs(pos_score):
                stats["false_negative"] += 1
                continue
            if p_vec is not None and float(cand_vecs[j] @ p_vec) > cfg.near_duplicate:
                stats["near_duplicate"] += 1
                continue
            kept.append({"id": cid, "score": float(s), "rank": rank})
            if len(kept) == cfg.negatives:
                break
        stats["kept"] += len(kept)
        out.append(kept)
    return out, stats
