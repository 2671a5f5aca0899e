"""Hard-negative selection: per-modality search with quotas, exclusions, false-negative rules.

For each query (a Pair) the candidates of every target modality with a quota are searched:
the positive's modality gets `negatives`, and `cross_modal` adds negatives of other
modalities (`{"image": 1}`). A candidate is dropped by the first rule that fires, in order:
`positive` (the positive itself), `same_asset` (another part or source of the positive's
asset: same id, PDF document or source URI, transitively), `duplicate` (same content digest),
then the enabled false-negative rules: `perc_pos` (score above `perc_pos` x the positive's
score, NV-Retriever's TopK-PercPos; for a negative positive score the margin is taken below
it, so the rule never admits more), `margin` (score above positive score - `margin`),
`max_score` (score above `max_score`), and last `near_duplicate` (cosine to the positive
above `near_duplicate`: a near-copy that the score rules let through, e.g. with
`false_negative: []`). Held-out assets never reach the candidates (the caller leaves them out).

Calibration per modality (`calibrate`): an encoder can squeeze one modality into a narrow
cone (every audio clip at cosine 0.93 to every other), where PercPos at 0.95 drops every
candidate. The perc_pos rule is applied to scores above that modality's floor (the median
score of random query-candidate pairs, clamped at 0): a candidate is dropped when
`score - floor > perc_pos * (positive - floor)`; likewise near_duplicate is measured above
the modality's mean pairwise cosine. A spread modality (floors 0) keeps the plain rules. A modality whose candidates' mean pairwise cosine passes `collapse_cosine` is reported
collapsed (`modalities[m]["collapsed"]`), with its fill (negatives kept / asked).

A Pair's positive may be inline text (`positive_vectors`: its embedding, not a corpus row),
and its query may be a corpus Example (`anchor_ids`): candidates of the query's own asset
are excluded as `same_asset` too. Negatives are listed round-robin over modalities (the
positive's first), so any prefix (the trainer's `max_negatives`) keeps the cross-modal mix;
`max_negatives` here caps the list the same way.

Survivors are taken in rank order (`top_k`) or sampled from a rank range (`range`), with a
generator seeded by (seed, query key, modality): the same inputs give the same negatives.
Counts are per rule over the candidates the miner considered (up to the last one it took, or
the whole rank range), and histograms compare positive, kept and filtered scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loom.transforms.search import AnnKind, VectorIndex, ann_recall
from pydantic import BaseModel, ConfigDict, Field, model_validator

Rule = Literal["perc_pos", "margin", "max_score"]
EXCLUSIONS = ("positive", "same_asset", "duplicate", "near_duplicate")
RULES: tuple[Rule, ...] = ("perc_pos", "margin", "max_score")
# The order rules are tried in (a candidate counts under the first that drops it): identity
# rules, then score rules, then the near-duplicate check, which needs the candidate's vector
# and so runs only on what the others left.
ORDER = ("positive", "same_asset", "duplicate", *RULES, "near_duplicate")
HIST_BINS = np.linspace(-1.0, 1.0, 41)
GATHER_FLOATS = 1 << 23  # candidate vectors gathered at once for near-duplicate checks


class MiningConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    negatives: int = Field(3, ge=0)  # of the positive's modality
    cross_modal: dict[str, int] = {}  # other modality -> extra negatives of it
    search_k: int = Field(32, ge=1)  # first search depth; widened while quotas go unfilled
    max_search_k: int = Field(256, ge=1)
    false_negative: tuple[Rule, ...] = ("perc_pos",)
    perc_pos: float = 0.95
    margin: float = 0.05
    max_score: float = 0.9
    near_duplicate: float = 0.98
    sampling: Literal["top_k", "range"] = "top_k"
    rank_range: tuple[int, int] = (0, 32)  # [lo, hi) raw ranks, for sampling="range"
    seed: int = 0
    ann_threshold: int = Field(200_000, ge=0)  # corpus size per modality above which ANN answers
    ann: AnnKind = "ivf"
    ann_recall_sample: int = Field(256, ge=1)
    query_chunk: int = Field(1024, ge=1)
    calibrate: bool = True  # perc_pos above each modality's score floor (module docstring)
    collapse_cosine: float = 0.9  # mean pairwise cosine of a modality reported as collapsed
    calibration_sample: int = Field(256, ge=2)
    max_negatives: int | None = Field(None, ge=0)  # cap on the round-robin list

    @model_validator(mode="after")
    def _check(self) -> MiningConfig:
        lo, hi = self.rank_range
        if not 0 <= lo < hi:
            raise ValueError(f"rank_range must be 0 <= lo < hi, got {self.rank_range}")
        if any(n < 0 for n in self.cross_modal.values()):
            raise ValueError("cross_modal counts must be >= 0")
        return self

    def quotas(self, positive_modality: str) -> dict[str, int]:
        out = {positive_modality: self.negatives}
        out |= {m: n for m, n in self.cross_modal.items() if m != positive_modality}
        return {m: n for m, n in out.items() if n > 0}


@dataclasses.dataclass
class Candidates:
    """The searchable corpus, rows grouped by modality (each modality is one contiguous slice).

    Rows given sorted by (modality, id) are used in place; otherwise the vectors are copied.
    Per-row metadata is Arrow and numpy (ids a string array, asset groups and content
    classes int64 codes), never a Python object per row.
    """

    ids: pa.Array  # string, in row order
    vectors: np.ndarray  # (N, d) float32, unit rows
    groups: np.ndarray  # same-asset group per row
    content: np.ndarray  # content-digest class per row
    spans: dict[str, tuple[int, int]]

    @classmethod
    def build(cls, ids, modalities, vectors: np.ndarray, asset_keys, digests) -> Candidates:
        """ids, modalities, digests: strings; asset_keys: lists of strings (Python
        sequences or Arrow arrays)."""
        ids = _arrow(ids, pa.string())
        mods = _arrow(modalities, pa.string())
        n = len(ids)
        order = pc.sort_indices(pa.table({"m": mods, "id": ids}),
                                sort_keys=[("m", "ascending"), ("id", "ascending")]).to_numpy()
        if np.array_equal(order, np.arange(n)):  # already grouped: no copy of the vectors
            vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        else:
            vecs = np.ascontiguousarray(vectors[order], dtype=np.float32)
            ids, mods = ids.take(order), mods.take(order)
        keys = _arrow(asset_keys, pa.list_(pa.string())).take(order)
        groups = _asset_groups(keys, ids)
        digest = pc.fill_null(_arrow(digests, pa.string()).take(order), "None")
        content = pc.dictionary_encode(digest).indices.to_numpy(zero_copy_only=False)
        spans: dict[str, tuple[int, int]] = {}
        if n:
            runs = pc.run_end_encode(mods)
            ends = runs.run_ends.to_numpy(zero_copy_only=False)
            for m, lo, hi in zip(runs.values.to_pylist(), np.r_[0, ends[:-1]], ends,
                                 strict=True):
                spans[m] = (int(lo), int(hi))
        return cls(ids, vecs, groups, content.astype(np.int64), spans)

    def row_of(self, ids: Sequence[str | None]) -> np.ndarray:
        """The row of each id (its last row if repeated), -1 for an id not in the corpus."""
        n = len(self.ids)
        if not n or not len(ids):
            return np.full(len(ids), -1, dtype=np.int64)
        back = pc.index_in(_arrow(ids, pa.string()),
                           value_set=self.ids.take(np.arange(n - 1, -1, -1)))
        back = pc.fill_null(back, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.where(back >= 0, n - 1 - back, -1)


def _arrow(values, type_: pa.DataType) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.cast(type_) if values.type != type_ else values
    if pa.types.is_list(type_):
        values = [list(v) for v in values]
    return pa.array(values, type_)


def _asset_groups(keys: pa.Array, ids: pa.Array) -> np.ndarray:
    """Rows sharing an id, document or source are one asset: the connected components of
    the row-key graph, labelled by their smallest row."""
    n = len(ids)
    if not n:
        return np.zeros(0, dtype=np.int64)
    own = pc.binary_join_element_wise("id:", ids, "")
    flat = pc.fill_null(pc.list_flatten(keys), "\0null")  # a None key is shared, like in a set
    rows = np.concatenate([np.arange(n), pc.list_parent_indices(keys).to_numpy(
        zero_copy_only=False)]).astype(np.int64)
    codes = pc.dictionary_encode(pa.concat_arrays([own, flat.cast(pa.string())])).indices \
        .to_numpy(zero_copy_only=False).astype(np.int64)
    label = np.arange(n, dtype=np.int64)
    while True:  # min-label propagation through the keys, with pointer jumping
        low = np.full(codes.max() + 1, n, dtype=np.int64)
        np.minimum.at(low, codes, label[rows])
        new = label.copy()
        np.minimum.at(new, rows, low[codes])
        while not np.array_equal(jumped := new[new], new):
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new


@dataclasses.dataclass
class MiningResult:
    negatives: list[list[dict]]  # per query: {id, score, modality, rank}
    positive_scores: np.ndarray  # nan where the positive is not a candidate
    counts: dict[str, int]
    histograms: dict
    search: dict[str, dict]  # per modality: exact, or the ANN index and its measured recall
    modalities: dict[str, dict] = dataclasses.field(default_factory=dict)  # floor, fill, ...


def modality_profile(cands: Candidates, q_vecs: np.ndarray, cfg: MiningConfig
                     ) -> dict[str, dict]:
    """Per candidate modality: the score floor (median query-candidate score over a seeded
    sample, clamped at 0) and the mean pairwise cosine of its candidates."""
    return sampled_profile(cands.spans, cands.vectors.__getitem__, len(q_vecs),
                           q_vecs.__getitem__, cfg)


def sampled_profile(spans: dict[str, tuple[int, int]], cand_rows, n_queries: int, query_rows,
                    cfg: MiningConfig) -> dict[str, dict]:
    """`modality_profile` from row getters: `cand_rows(rows)` and `query_rows(rows)` give the
    vectors of those candidate rows and query positions (the caller need not hold them all:
    a query-sliced search takes the profile of every query from here)."""
    rng = np.random.default_rng(cfg.seed)
    out = {}
    for m, (lo, hi) in sorted(spans.items()):
        rows = rng.choice(np.arange(lo, hi), min(hi - lo, cfg.calibration_sample), replace=False)
        vecs = cand_rows(np.sort(rows))
        qs = query_rows(rng.choice(n_queries, min(n_queries, cfg.calibration_sample),
                                   replace=False)) if n_queries else \
            np.zeros((0, vecs.shape[1]), np.float32)
        floor = float(np.median(qs @ vecs.T)) if len(qs) and len(vecs) else 0.0
        gram = vecs @ vecs.T
        n = len(vecs)
        mean_cos = float((gram.sum() - np.trace(gram)) / (n * (n - 1))) if n > 1 else 0.0
        collapsed = bool(n > 1 and mean_cos > cfg.collapse_cosine)
        calibrated = cfg.calibrate and collapsed  # a spread modality keeps the plain rules
        out[m] = {"floor": round(max(0.0, floor), 4) if calibrated else 0.0,
                  "mean_cosine": round(mean_cos, 4),
                  "pair_floor": round(max(0.0, mean_cos), 4) if calibrated else 0.0,
                  "collapsed": collapsed}
    return out


def mine(cands: Candidates, q_vecs: np.ndarray, q_keys: Sequence[str],
         positive_ids: Sequence[str], positive_modalities: Sequence[str],
         cfg: MiningConfig, positive_vectors: np.ndarray | None = None,
         anchor_ids: Sequence[str | None] | None = None,
         profile: dict[str, dict] | None = None) -> MiningResult:
    """`profile`: the modalities' floors taken over every query (`sampled_profile`) when
    `q_vecs` is a slice of them; by default taken from `q_vecs`. The result's counts,
    histograms and modalities' kept/asked then add up over the slices (`merge_results`)."""
    n = len(q_keys)
    pos_row = cands.row_of(positive_ids)
    pos_vec = np.where((pos_row >= 0)[:, None], cands.vectors[np.maximum(pos_row, 0)], 0.0) \
        if len(cands.ids) else np.zeros_like(q_vecs)
    if positive_vectors is not None:  # inline positives: their own embedding
        given = (pos_row < 0) & ~np.isnan(positive_vectors).any(axis=1)
        pos_vec = np.where(given[:, None], np.nan_to_num(positive_vectors), pos_vec)
    else:
        given = np.zeros(n, dtype=bool)
    has_pos = (pos_row >= 0) | given
    anchor_row = cands.row_of([a or None for a in anchor_ids] if anchor_ids else [None] * n)
    if profile is None:
        profile = modality_profile(cands, q_vecs, cfg) if len(cands.ids) else {}
    else:  # filled in below: a copy
        profile = {m: {k: v for k, v in prof.items() if k not in ("kept", "asked", "fill")}
                   for m, prof in profile.items()}
    pos_score = np.where(has_pos, np.einsum("qd,qd->q", q_vecs, pos_vec), np.nan)
    counts = dict.fromkeys((*EXCLUSIONS, *RULES, "considered", "kept", "unfilled"), 0)
    counts["positive_not_in_corpus"] = int((~has_pos).sum())
    hist = {"positive": np.histogram(pos_score[has_pos], HIST_BINS)[0],
            "kept": np.zeros(len(HIST_BINS) - 1, np.int64),
            "filtered": np.zeros(len(HIST_BINS) - 1, np.int64)}
    picked: list[dict[str, list[dict]]] = [{} for _ in range(n)]
    search: dict[str, dict] = {}
    pos_mod = np.array(positive_modalities, dtype=object)
    for m, (lo, hi) in sorted(cands.spans.items()):
        quota = np.array([cfg.quotas(pm).get(m, 0) for pm in pos_mod], dtype=np.int64)
        todo = np.flatnonzero(has_pos & (quota > 0))
        counts[f"kept.{m}"] = 0
        if len(todo) == 0:
            continue
        index = VectorIndex(cands.vectors[lo:hi], cfg.ann_threshold, cfg.ann, seed=cfg.seed)
        k0 = cfg.search_k if cfg.sampling == "top_k" else max(cfg.search_k, cfg.rank_range[1])
        search[m] = ({"index": "exact", "vectors": hi - lo} if index.kind == "exact" else
                     ann_recall(index, q_vecs[todo], k0, cfg.ann_recall_sample, cfg.seed))
        ctx = _Ctx(cands, lo, m, q_vecs, q_keys, pos_row, pos_vec, pos_score, quota, cfg,
                   counts, hist, picked, anchor_row, profile[m]["floor"],
                   profile[m]["pair_floor"])
        profile[m]["asked"] = int(quota[todo].sum())
        for start in range(0, len(todo), cfg.query_chunk):
            chunk, k = todo[start : start + cfg.query_chunk], min(k0, hi - lo)
            while len(chunk):
                scores, rows = index.search(q_vecs[chunk], k, cfg.query_chunk)
                final = (k >= min(hi - lo, cfg.max_search_k)) or cfg.sampling == "range"
                chunk = ctx.select(chunk, scores, np.where(rows >= 0, rows + lo, -1), final)
                k = min(k * 4, hi - lo, cfg.max_search_k)
    for qi in np.flatnonzero(has_pos):  # a quota for a modality the corpus lacks stays unfilled
        counts["unfilled"] += sum(q for m, q in cfg.quotas(positive_modalities[qi]).items()
                                  if m not in cands.spans)
    out = [_round_robin(picked[qi], positive_modalities[qi], cfg.max_negatives)
           for qi in range(n)]
    for m, prof in profile.items():
        kept = counts.get(f"kept.{m}", 0)
        prof |= {"kept": kept, "asked": prof.get("asked", 0),
                 "fill": round(kept / prof["asked"], 4) if prof.get("asked") else None}
    histograms = {"bins": [round(float(b), 4) for b in HIST_BINS]} | {
        k: v.astype(int).tolist() for k, v in hist.items()}
    return MiningResult(out, pos_score, counts, histograms, search, profile)


def _round_robin(by_modality: dict[str, list[dict]], first: str,
                 cap: int | None) -> list[dict]:
    """Negatives interleaved over modalities (the positive's first, then by name), each
    modality's in rank order: a prefix of any length keeps the cross-modal mix."""
    order = [first] if first in by_modality else []
    order += sorted(m for m in by_modality if m != first)
    out: list[dict] = []
    for i in range(max((len(by_modality[m]) for m in order), default=0)):
        out += [by_modality[m][i] for m in order if i < len(by_modality[m])]
    return out if cap is None else out[:cap]


@dataclasses.dataclass
class _Ctx:
    cands: Candidates
    lo: int
    modality: str
    q_vecs: np.ndarray
    q_keys: Sequence[str]
    pos_row: np.ndarray
    pos_vec: np.ndarray
    pos_score: np.ndarray
    quota: np.ndarray
    cfg: MiningConfig
    counts: dict[str, int]
    hist: dict[str, np.ndarray]
    picked: list[dict[str, list[dict]]]
    anchor_row: np.ndarray  # the query's own Example's row, or -1
    floor: float  # this modality's score floor (0: the plain PercPos rule)
    pair_floor: float  # its mean pairwise cosine floor (0: the plain near-duplicate rule)

    def select(self, qs: np.ndarray, scores: np.ndarray, rows: np.ndarray,
               final: bool) -> np.ndarray:
        """Commits the queries whose quota is met (or that cannot search deeper); returns the rest."""
        drop = self._rules(qs, scores, rows)
        kept = (rows >= 0) & (drop < 0)
        quota = self.quota[qs]
        k = rows.shape[1]
        lo_r, hi_r = self.cfg.rank_range
        if self.cfg.sampling == "top_k":
            taken = kept & (np.cumsum(kept, axis=1) <= quota[:, None])
            filled = taken.sum(1) >= quota
            last = np.where(filled, k - 1 - np.argmax(taken[:, ::-1], axis=1), k - 1)
            considered = (rows >= 0) & (np.arange(k)[None, :] <= last[:, None])
        else:
            considered = (rows >= 0) & (np.arange(k) >= lo_r)[None, :] & (np.arange(k) < hi_r)
            taken = np.zeros_like(kept)
            for j, qi in enumerate(qs):
                pool = np.flatnonzero(kept[j] & considered[j])
                rng = np.random.default_rng(_seed(self.cfg.seed, self.q_keys[qi], self.modality))
                take = rng.choice(pool, min(len(pool), quota[j]), replace=False)
                taken[j, np.sort(take)] = True
            filled = taken.sum(1) >= quota
        done = filled | final
        commit = np.flatnonzero(done)
        ids = iter(self.cands.ids.take(rows[commit][taken[commit]]).to_pylist())
        for j in commit:  # row-major, as taken[commit] listed them
            qi = int(qs[j])
            self.picked[qi][self.modality] = [
                {"id": next(ids), "score": float(scores[j, r]),
                 "modality": self.modality, "rank": int(r)} for r in np.flatnonzero(taken[j])]
        c = considered[done]
        d = drop[done]
        for code, name in enumerate(ORDER):
            self.counts[name] += int(((d == code) & c).sum())
        self.counts["considered"] += int(c.sum())
        n_taken = int(taken[done].sum())
        self.counts["kept"] += n_taken
        self.counts[f"kept.{self.modality}"] += n_taken
        self.counts["unfilled"] += int((quota[done] - taken[done].sum(1)).sum())
        s = scores[done]
        self.hist["kept"] += np.histogram(s[taken[done]], HIST_BINS)[0]
        self.hist["filtered"] += np.histogram(s[c & (d > 0)], HIST_BINS)[0]
        return qs[~done]

    def _rules(self, qs: np.ndarray, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per candidate, the index in ORDER of the first rule that drops it, or -1."""
        c = self.cands
        safe = np.maximum(rows, 0)
        prow = self.pos_row[qs][:, None]
        drop = np.full(rows.shape, -1, dtype=np.int8)
        drop[rows < 0] = -2  # no candidate

        def mark(name: str, cond: np.ndarray) -> None:
            drop[(drop == -1) & cond] = ORDER.index(name)

        in_corpus = prow >= 0  # an inline positive has no row, group or digest
        mark("positive", (rows == prow) & in_corpus)
        mark("same_asset", (c.groups[safe] == c.groups[np.maximum(prow, 0)]) & in_corpus)
        arow = self.anchor_row[qs][:, None]
        mark("same_asset", (c.groups[safe] == c.groups[np.maximum(arow, 0)]) & (arow >= 0))
        mark("duplicate", (c.content[safe] == c.content[np.maximum(prow, 0)]) & in_corpus)
        ps = self.pos_score[qs][:, None]
        for rule in self.cfg.false_negative:
            if rule == "perc_pos":
                f = self.floor  # scores above the modality's floor (0: plain PercPos)
                mark(rule, scores - f > (ps - f) - (1 - self.cfg.perc_pos) * np.abs(ps - f))
            elif rule == "margin":
                mark(rule, scores > ps - self.cfg.margin)
            else:
                mark(rule, scores > self.cfg.max_score)
        q_idx, k_idx = np.nonzero(drop == -1)  # only survivors need their vectors
        near = np.zeros(len(q_idx), dtype=bool)
        dim = c.vectors.shape[1]
        step = max(1, GATHER_FLOATS // dim)
        for s in range(0, len(q_idx), step):
            cand = c.vectors[rows[q_idx[s : s + step], k_idx[s : s + step]]]
            pos = self.pos_vec[qs[q_idx[s : s + step]]]
            f = self.pair_floor
            near[s : s + step] = (np.einsum("nd,nd->n", cand, pos) - f
                                  > self.cfg.near_duplicate * (1 - f))
        drop[q_idx[near], k_idx[near]] = ORDER.index("near_duplicate")
        drop[drop == -2] = -1
        return drop


def _seed(seed: int, key: str, modality: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}:{modality}".encode()).digest()[:8], "big")


def merge_results(parts: Sequence[dict]) -> dict:
    """Exact sum of query slices' summaries ({"counts", "histograms", "search",
    "modalities"} of `mine` over disjoint query slices with one profile): counts and
    histogram bins add, each modality's kept and asked add and its fill is recomputed; a
    modality's search entry is the first slice's that searched it."""
    counts: dict[str, int] = {}
    hist: dict = {}
    search: dict[str, dict] = {}
    mods: dict[str, dict] = {}
    for part in parts:
        for k, v in part["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, v in part["histograms"].items():
            if k == "bins":
                if hist.setdefault("bins", v) != v:
                    raise ValueError("slices binned their scores differently")
            else:
                hist[k] = [a + b for a, b in zip(hist.get(k, [0] * len(v)), v, strict=True)]
        for m, info in part["search"].items():
            search.setdefault(m, info)
        for m, prof in part["modalities"].items():
            have = mods.setdefault(m, dict(prof, kept=0, asked=0))
            have["kept"] += prof["kept"]
            have["asked"] += prof["asked"]
    for prof in mods.values():
        prof["fill"] = round(prof["kept"] / prof["asked"], 4) if prof["asked"] else None
    return {"counts": counts, "histograms": hist, "search": search, "modalities": mods}
