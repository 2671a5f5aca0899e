"""Hard-negative selection on a constructed corpus whose right answers are known.

Items are (color, shape, size) combinations embedded as weighted one-hot blocks, so the
nearest non-duplicates of a positive are exactly the items that differ from it in size
(score 0.82), then in shape (0.68), then in color (0.5). Planted next to the positive: an
exact duplicate (same content digest, other id), a near-duplicate vector, another page of its
document, and a likely false negative (score 0.97, not a duplicate).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from loom.transforms.mining import Candidates, MiningConfig, mine
from loom.transforms.search import VectorIndex, ann_recall, exact_search, recall_at_k

WEIGHTS = (1.0, 0.8, 0.6)  # color, shape, size
VALUES = 4
DIM = 3 * VALUES + 2  # + a modality block (text) + a free axis for planted vectors


def _vec(attrs: tuple[int, int, int], text: bool = False) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for a, (value, w) in enumerate(zip(attrs, WEIGHTS, strict=True)):
        v[a * VALUES + value] = w
    v[3 * VALUES] = 0.7 if text else 0.0
    return v / np.linalg.norm(v)


def _name(attrs, modality="image") -> str:
    return f"{modality}-{attrs[0]}{attrs[1]}{attrs[2]}"


POSITIVES = [(0, 0, 0), (1, 2, 3), (3, 1, 2)]


def _corpus(text: bool = True) -> tuple[Candidates, dict]:
    ids, mods, vecs, keys, digests = [], [], [], [], []

    def add(i, m, v, k=(), d=None):
        ids.append(i), mods.append(m), vecs.append(v / np.linalg.norm(v)), keys.append(list(k))
        digests.append(d or f"digest-{i}")

    for attrs in itertools.product(range(VALUES), repeat=3):
        doc = [f"doc:{_name(attrs)}"] if attrs in POSITIVES else []
        add(_name(attrs), "image", _vec(attrs), doc)
        if text:
            add(_name(attrs, "text"), "text", _vec(attrs, text=True))
    planted = {}
    for p in POSITIVES:
        pv = _vec(p)
        hard = _vec((p[0], p[1], (p[2] + 1) % VALUES)) + 0.3 * pv  # scores ~0.89
        free = np.zeros(DIM, np.float32)
        free[-1] = 1.0
        names = {k: f"{_name(p)}-{k}" for k in ("dup", "near", "page", "falseneg")}
        # Same content as the positive under another id (its vector made to look like the
        # hardest negative, so only the content rule can catch it).
        add(names["dup"], "image", hard, d=f"digest-{_name(p)}")
        add(names["near"], "image", pv + 0.05 * free)  # cosine to the positive ~0.999
        add(names["page"], "image", hard, [f"doc:{_name(p)}"])  # same document
        add(names["falseneg"], "image", pv + 0.25 * free)  # score ~0.97 > 0.95 x positive
        planted[p] = set(names.values())
    return Candidates.build(ids, mods, np.stack(vecs), keys, digests), planted


def _queries(positives=POSITIVES, modality="image"):
    q = np.stack([_vec(p) for p in positives])
    return q, [f"pair-{i}" for i in range(len(positives))], [_name(p) for p in positives], \
        [modality] * len(positives)


def _size_variants(p) -> set[str]:
    return {_name((p[0], p[1], s)) for s in range(VALUES) if s != p[2]}


def _shape_variants(p) -> set[str]:
    return {_name((p[0], s, p[2])) for s in range(VALUES) if s != p[1]}


def test_known_hard_negatives_never_duplicates():
    cands, planted = _corpus(text=False)
    res = mine(cands, *_queries(), MiningConfig(negatives=3))
    for p, negs in zip(POSITIVES, res.negatives, strict=True):
        got = {n["id"] for n in negs}
        assert got == _size_variants(p)  # the three items that differ in one (the lightest) attribute
        assert not got & planted[p] and _name(p) not in got
        assert [n["rank"] for n in negs] == sorted(n["rank"] for n in negs)
        assert all(n["modality"] == "image" and 0.8 < n["score"] < 0.85 for n in negs)
    c = res.counts
    assert c["positive"] == 3 and c["duplicate"] == 3 and c["same_asset"] == 3
    assert c["perc_pos"] == 6 and c["near_duplicate"] == 0 and c["kept"] == 9  # near + falseneg
    assert c["unfilled"] == 0 and c["positive_not_in_corpus"] == 0
    np.testing.assert_allclose(res.positive_scores, 1.0, atol=1e-5)
    h = res.histograms
    assert len(h["bins"]) == len(h["kept"]) + 1
    assert sum(h["positive"]) == 3 and sum(h["kept"]) == 9
    assert sum(h["filtered"]) == c["considered"] - c["kept"] - c["positive"]
    assert res.search == {"image": {"index": "exact", "vectors": len(cands.ids)}}


def test_modality_quotas_and_cross_modal_mix():
    cands, planted = _corpus()
    cfg = MiningConfig(negatives=2, cross_modal={"text": 1, "audio": 5})
    q, keys, pos, mods = _queries()
    tq, tkeys, tpos, tmods = _queries(POSITIVES[:1], "text")
    tpos = [_name(POSITIVES[0], "text")]
    res = mine(cands, np.concatenate([q, tq]), keys + ["t-0"], pos + tpos, mods + tmods, cfg)
    for negs in res.negatives[:3]:  # image positives: round robin, so a prefix keeps text
        assert [n["modality"] for n in negs] == ["image", "text", "image"]
        assert all(n["id"].startswith(n["modality"]) for n in negs)
    text_negs = res.negatives[3]  # a text positive: 2 texts; `text` in cross_modal adds nothing
    assert [n["modality"] for n in text_negs] == ["text", "text"]
    assert res.counts["kept.image"] == 6 and res.counts["kept.text"] == 5
    assert res.counts["unfilled"] == 4 * 5  # no audio in the corpus
    assert all(not {n["id"] for n in negs} & s for negs, s in zip(res.negatives[:3], planted.values(), strict=True))


def test_near_duplicates_without_score_rules():
    cands, planted = _corpus(text=False)
    res = mine(cands, *_queries(), MiningConfig(negatives=3, false_negative=()))
    for p, negs in zip(POSITIVES, res.negatives, strict=True):
        got = [n["id"] for n in negs]
        # The 0.97 look-alike is no copy (cosine < 0.98) and, with no score rule, the hardest.
        assert got[0] == f"{_name(p)}-falseneg" and set(got[1:]) <= _size_variants(p)
        assert f"{_name(p)}-near" not in got
    assert res.counts["near_duplicate"] == 3 and res.counts["perc_pos"] == 0


@pytest.mark.parametrize("rule,cfg", [("margin", {"margin": 0.2}),
                                      ("max_score", {"max_score": 0.75})])
def test_optional_false_negative_rules(rule, cfg):
    cands, _ = _corpus(text=False)
    res = mine(cands, *_queries(), MiningConfig(negatives=3, false_negative=("perc_pos", rule),
                                                **cfg))
    for p, negs in zip(POSITIVES, res.negatives, strict=True):
        assert {n["id"] for n in negs} == _shape_variants(p)  # size variants score above the bar
    assert res.counts[rule] == 9 and res.counts["perc_pos"] == 6


def test_range_sampling_is_seeded():
    cands, planted = _corpus(text=False)
    cfg = MiningConfig(negatives=4, sampling="range", rank_range=(2, 20), seed=7)
    a = mine(cands, *_queries(), cfg)
    b = mine(cands, *_queries(), cfg)
    c = mine(cands, *_queries(), cfg.model_copy(update={"seed": 8}))
    assert a.negatives == b.negatives and a.negatives != c.negatives
    for negs, p in zip(a.negatives, POSITIVES, strict=True):
        assert len(negs) == 4 and all(2 <= n["rank"] < 20 for n in negs)
        assert not {n["id"] for n in negs} & planted[p]


def test_search_widens_until_quota_filled_and_missing_positive():
    cands, planted = _corpus(text=False)
    q, keys, pos, mods = _queries()
    res = mine(cands, np.concatenate([q, q[:1]]), keys + ["gone"], pos + ["not-there"],
               mods + ["image"], MiningConfig(negatives=3, search_k=1))
    for p, negs in zip(POSITIVES, res.negatives[:3], strict=True):
        assert {n["id"] for n in negs} == _size_variants(p)
    assert res.negatives[3] == [] and res.counts["positive_not_in_corpus"] == 1
    assert np.isnan(res.positive_scores[3])


def test_ann_index_reports_recall_and_agrees():
    cands, _ = _corpus(text=False)
    exact = mine(cands, *_queries(), MiningConfig())
    ann = mine(cands, *_queries(), MiningConfig(ann_threshold=10, ann="hnsw"))
    info = ann.search["image"]
    assert info["index"] == "hnsw" and info["vectors"] == len(cands.ids)
    assert info["recall@32"] == 1.0 and info["sample"] == 3
    assert ann.negatives == exact.negatives


def test_exact_search_chunks_and_ivf_recall():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 16)).astype(np.float32)
    xb = centers[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 16)).astype("f4")
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[:50]
    s1, r1 = exact_search(xb, xq, 10, chunk=7)
    brute = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
    assert recall_at_k(r1, brute) > 0.99 and (r1[:, 0] == np.arange(50)).all()
    np.testing.assert_allclose(s1[:, 0], 1.0, atol=1e-5)
    _, few = exact_search(xb[:4], xq, 10)
    assert (few[:, 4:] == -1).all()
    info = ann_recall(VectorIndex(xb, 100, "ivf"), xq, 10, 50)
    assert info["index"] == "ivf" and info["recall@10"] >= 0.9


def test_max_negatives_keeps_the_cross_modal_mix():
    cands, _ = _corpus()
    cfg = MiningConfig(negatives=3, cross_modal={"text": 1}, max_negatives=2)
    res = mine(cands, *_queries(), cfg)
    for negs in res.negatives:  # 3 images + 1 text asked, capped at 2: one of each
        assert [n["modality"] for n in negs] == ["image", "text"]


def _collapsed_corpus(n: int = 40, dim: int = 16, spread: float = 0.1, seed: int = 0):
    """Audio embeddings in a narrow cone (pairwise cosine ~0.99), as a collapsed encoder
    gives them; the query sits next to its positive."""
    rng = np.random.default_rng(seed)
    axis = np.zeros(dim, np.float32)
    axis[0] = 1.0
    vecs = axis + spread * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"audio-{i:03d}" for i in range(n)]
    cands = Candidates.build(ids, ["audio"] * n, vecs, [[] for _ in ids], ids)
    q = vecs[:5] + 0.05 * axis
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return cands, q, ids[:5]


def test_collapsed_modality_keeps_negatives_when_calibrated():
    cands, q, pos = _collapsed_corpus()
    args = (cands, q, [f"p{i}" for i in range(5)], pos, ["audio"] * 5)
    plain = mine(*args, MiningConfig(negatives=3, calibrate=False))
    calibrated = mine(*args, MiningConfig(negatives=3))
    assert plain.counts["kept.audio"] == 0  # PercPos 0.95 at cosine ~0.99: nothing left
    assert plain.modalities["audio"]["fill"] == 0.0
    assert calibrated.counts["kept.audio"] == 15
    prof = calibrated.modalities["audio"]
    assert prof["collapsed"] and prof["mean_cosine"] > 0.9 and prof["fill"] == 1.0
    assert 0.9 < prof["floor"] < 1.0
    for negs, score in zip(calibrated.negatives, calibrated.positive_scores, strict=True):
        # the rule still drops what sits right at the positive: above floor + 0.95 x margin
        limit = prof["floor"] + 0.95 * (score - prof["floor"])
        assert all(n["score"] <= limit + 1e-6 for n in negs)


def test_inline_positive_and_the_query_asset_excluded():
    cands, _ = _corpus()
    q, keys, _, _ = _queries(POSITIVES[:1])
    text_pos = _vec(POSITIVES[0], text=True)[None]  # written text about the image query
    res = mine(cands, q, keys, ["t:written"], ["text"], MiningConfig(negatives=3),
               positive_vectors=text_pos, anchor_ids=[_name(POSITIVES[0])])
    got = [n["id"] for n in res.negatives[0]]
    assert len(got) == 3 and all(i.startswith("text-") for i in got)
    assert _name(POSITIVES[0], "text") not in got or res.counts["perc_pos"] >= 0
    assert res.counts["positive_not_in_corpus"] == 0
    # the query's own image never comes back as a cross-modal negative
    res = mine(cands, q, keys, ["t:written"], ["text"],
               MiningConfig(negatives=1, cross_modal={"image": 40}, false_negative=()),
               positive_vectors=text_pos, anchor_ids=[_name(POSITIVES[0])])
    images = {n["id"] for n in res.negatives[0] if n["modality"] == "image"}
    assert _name(POSITIVES[0]) not in images and images


def _scored_corpus(ps: float, scores: list[float]) -> tuple[Candidates, np.ndarray]:
    """A query q = e0, a positive scoring `ps` against it and candidates scoring exactly
    `scores`, each on an axis of its own so no candidate is near the positive."""
    dim = 2 + len(scores)
    q = np.zeros((1, dim), np.float32)
    q[0, 0] = 1.0
    pos = np.zeros(dim, np.float32)
    pos[0], pos[1] = ps, np.sqrt(1 - ps * ps)
    vecs, ids = [pos], ["pos"]
    for j, s in enumerate(scores):
        v = np.zeros(dim, np.float32)
        v[0], v[2 + j] = s, np.sqrt(1 - s * s)
        vecs.append(v)
        ids.append(f"c{j:02d}")
    cands = Candidates.build(ids, ["image"] * len(ids), np.stack(vecs), [[] for _ in ids],
                             [f"d-{i}" for i in ids])
    return cands, q


# (positive score, candidate scores, the ones PercPos 0.95 keeps). The threshold is
# ps - 0.05 |ps|: below the positive on either side of zero. Worked by hand:
# ps = -0.2 -> -0.21; ps = -0.6 -> -0.63; ps = 0.8 -> 0.76; ps = 0.3 -> 0.285.
PERC_POS_CASES = [
    (-0.2, [0.4, -0.1, -0.195, -0.205, -0.215, -0.25, -0.5], [-0.215, -0.25, -0.5]),
    (-0.6, [-0.3, -0.58, -0.62, -0.64, -0.9], [-0.64, -0.9]),
    (0.8, [0.9, 0.79, 0.77, 0.75, 0.1, -0.3], [0.75, 0.1, -0.3]),
    (0.3, [0.31, 0.29, 0.28, 0.0, -0.4], [0.28, 0.0, -0.4]),
]


@pytest.mark.parametrize(("ps", "scores", "kept"), PERC_POS_CASES)
def test_perc_pos_on_both_sides_of_zero(ps, scores, kept):
    cands, q = _scored_corpus(ps, scores)
    res = mine(cands, q, ["q"], ["pos"], ["image"],
               MiningConfig(negatives=len(scores), near_duplicate=0.999))
    np.testing.assert_allclose(res.positive_scores, [ps], atol=1e-6)
    got = [n["score"] for n in res.negatives[0]]
    np.testing.assert_allclose(got, kept, atol=1e-6)
    assert all(s < ps for s in got)  # a kept negative never scores above its positive
    assert res.counts["perc_pos"] == len(scores) - len(kept)
    assert res.counts["kept"] == len(kept) and res.counts["positive"] == 1
    assert res.counts["unfilled"] == len(scores) - len(kept)


def test_perc_pos_factor_is_the_config():
    # ps = -0.2 with perc_pos 0.5: threshold -0.3, so -0.25 is a false negative now.
    cands, q = _scored_corpus(-0.2, [-0.25, -0.35])
    res = mine(cands, q, ["q"], ["pos"], ["image"], MiningConfig(negatives=2, perc_pos=0.5))
    np.testing.assert_allclose([n["score"] for n in res.negatives[0]], [-0.35], atol=1e-6)


def test_margin_and_max_score_on_a_negative_positive():
    # margin 0.05 below ps = -0.2: drop > -0.25; max_score -0.3 drops anything above -0.3.
    cands, q = _scored_corpus(-0.2, [-0.22, -0.27, -0.32])
    res = mine(cands, q, ["q"], ["pos"], ["image"],
               MiningConfig(negatives=3, false_negative=("margin",)))
    np.testing.assert_allclose([n["score"] for n in res.negatives[0]], [-0.27, -0.32], atol=1e-6)
    assert res.counts["margin"] == 1
    res = mine(cands, q, ["q"], ["pos"], ["image"],
               MiningConfig(negatives=3, false_negative=("max_score",), max_score=-0.3))
    np.testing.assert_allclose([n["score"] for n in res.negatives[0]], [-0.32], atol=1e-6)
    assert res.counts["max_score"] == 2


def test_quotas_leave_out_zero_counts():
    cfg = MiningConfig(negatives=0, cross_modal={"image": 2, "audio": 0})
    assert cfg.quotas("text") == {"image": 2}
    assert MiningConfig(negatives=3, cross_modal={"text": 5}).quotas("text") == {"text": 3}


@pytest.mark.parametrize("cfg", [
    MiningConfig(negatives=2, perc_pos=0.5),  # 0.5 - 0.5 x 0.5 = 0.25
    MiningConfig(negatives=2, false_negative=("margin",), margin=0.25),  # 0.5 - 0.25
    MiningConfig(negatives=2, false_negative=("max_score",), max_score=0.25),
])
def test_score_rules_drop_only_scores_above_their_line(cfg):
    """Each rule drops a score *above* its line (0.25 here, exact in binary): a candidate
    scoring exactly on it is kept."""
    cands, q = _scored_corpus(0.5, [0.375, 0.25])
    res = mine(cands, q, ["q"], ["pos"], ["image"], cfg)
    assert [n["score"] for n in res.negatives[0]] == [0.25]
    assert res.counts[cfg.false_negative[0]] == 1


def test_a_duplicate_of_a_positive_in_row_zero():
    """The content rule compares with the positive's own row, also when that row is 0."""
    dim = 4
    q = np.zeros((1, dim), np.float32)
    q[0, 0] = 1.0
    vecs = np.zeros((3, dim), np.float32)
    for row, (s, axis) in enumerate(((0.5, 1), (0.2, 2), (0.1, 3))):
        vecs[row, 0], vecs[row, axis] = s, np.sqrt(1 - s * s)
    ids = ["a-pos", "b-other", "c-copy"]  # sorted: the positive is row 0
    cands = Candidates.build(ids, ["image"] * 3, vecs, [[], [], []], ["same", "d-b", "same"])
    assert cands.row_of(["a-pos"]).tolist() == [0]
    res = mine(cands, q, ["q"], ["a-pos"], ["image"], MiningConfig(negatives=2))
    assert [n["id"] for n in res.negatives[0]] == ["b-other"]
    assert res.counts["duplicate"] == 1


def test_near_duplicate_drops_only_cosines_above_its_line():
    # cosine to the positive (0.5 on the query's axis) = 0.5 x score: 0.375 and exactly 0.25
    cands, q = _scored_corpus(0.5, [0.75, 0.5])
    res = mine(cands, q, ["q"], ["pos"], ["image"],
               MiningConfig(negatives=2, false_negative=(), near_duplicate=0.25))
    assert [n["score"] for n in res.negatives[0]] == [0.5]
    assert res.counts["near_duplicate"] == 1


def _mine_setups():
    """(cands, queries, keys, positive ids, modalities, inline positives, anchors, config):
    the constructed corpus with every image as a query (some positives missing, one inline
    text positive, anchors), and the collapsed corpus (calibrated floors)."""
    cands, _ = _corpus()
    attrs = list(itertools.product(range(VALUES), repeat=3))
    q = np.stack([_vec(a) for a in attrs])
    pos = [_name(a) if i % 7 else "missing" for i, a in enumerate(attrs)]
    pos[3] = None
    inline = np.full(q.shape, np.nan, np.float32)
    inline[3] = _vec(attrs[3], text=True)
    mods = ["text" if i == 3 else "image" for i in range(len(attrs))]
    anchors = [_name(a) if i % 5 == 0 else None for i, a in enumerate(attrs)]
    yield (cands, q, [f"pair-{i:03d}" for i in range(len(q))], pos, mods, inline, anchors,
           MiningConfig(negatives=2, cross_modal={"text": 1}, query_chunk=4))
    cands, q, pos = _collapsed_corpus(n=60)
    q = np.concatenate([q, q[::-1], q])
    yield (cands, q, [f"p{i:02d}" for i in range(len(q))], pos + pos[::-1] + pos,
           ["audio"] * len(q), None, None,
           MiningConfig(negatives=3, sampling="range", rank_range=(1, 12), seed=4))


@pytest.mark.parametrize("setup", list(range(2)))
def test_query_slices_add_up_to_one_search(setup):
    """mine over disjoint query slices, with the profile of every query, then merge_results:
    the same negatives, scores, counts, histograms and modality profiles as one call."""
    from loom.transforms.mining import merge_results, modality_profile

    cands, q, keys, pos, mods, inline, anchors, cfg = list(_mine_setups())[setup]
    whole = mine(cands, q, keys, pos, mods, cfg, positive_vectors=inline, anchor_ids=anchors)
    profile = modality_profile(cands, q, cfg)
    parts, negatives, scores = [], [], []
    for lo in range(0, len(q), 6):
        s = slice(lo, lo + 6)
        r = mine(cands, q[s], keys[s], pos[s], mods[s], cfg,
                 positive_vectors=None if inline is None else inline[s],
                 anchor_ids=None if anchors is None else anchors[s], profile=profile)
        parts.append({"counts": r.counts, "histograms": r.histograms, "search": r.search,
                      "modalities": r.modalities})
        negatives += r.negatives
        scores.append(r.positive_scores)
    merged = merge_results(parts)
    assert negatives == whole.negatives
    np.testing.assert_array_equal(np.concatenate(scores), whole.positive_scores)
    assert merged == {"counts": whole.counts, "histograms": whole.histograms,
                      "search": whole.search, "modalities": whole.modalities}
    assert whole.counts["kept"] > 0 and whole.counts["considered"] > whole.counts["kept"]
    if setup == 0:  # exclusions and rules fired, across modalities
        assert sum(whole.histograms["filtered"]) > 0 and whole.counts["kept.text"] > 0
    else:  # the floors the slices searched with were calibrated over every query
        assert whole.modalities["audio"]["floor"] > 0.9


def test_asset_groups_are_transitive_and_ids_find_their_last_row():
    vecs = np.eye(5, dtype=np.float32)
    ids = ["e", "a", "b", "c", "d"]  # out of order: rows are sorted by (modality, id)
    keys = [["src:z"], ["src:x"], ["src:x", "doc:y"], ["doc:y"], []]
    cands = Candidates.build(ids, ["image"] * 5, vecs, keys, ["1", "2", "3", "2", None])
    assert cands.ids.to_pylist() == ["a", "b", "c", "d", "e"]
    g = cands.groups
    assert g[0] == g[1] == g[2] and len({g[0], g[3], g[4]}) == 3  # a-b by x, b-c by y
    assert cands.content[0] == cands.content[2] and len(set(cands.content.tolist())) == 4
    np.testing.assert_array_equal(cands.vectors[0], vecs[1])
    assert cands.row_of(["c", None, "zz", "e"]).tolist() == [2, -1, -1, 4]
    # b reaches a only through c: one propagation step is not enough
    hop = Candidates.build(["a", "b", "c", "d"], ["image"] * 4, vecs[:4],
                           [["doc:B"], ["doc:A"], ["doc:A", "doc:B"], []], ["1", "2", "3", "4"])
    assert len(set(hop.groups[:3].tolist())) == 1 and hop.groups[3] != hop.groups[0]
    twice = Candidates.build(["a", "a"], ["image"] * 2, vecs[:2], [[], []], ["1", "2"])
    assert twice.row_of(["a"]).tolist() == [1]  # like a dict built row by row
