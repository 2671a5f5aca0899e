"""InfoNCE and its Matryoshka terms against references computed by hand and in numpy.

Each Matryoshka term must see only the first `d` coordinates, renormalized: the hand-worked
case has vectors whose prefixes score differently from the full vectors, so a loss computed
on the full vectors at every size gets the small term wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from loom.models.losses import (
    ContrastiveModel,
    asset_keys,
    contrastive_terms,
    info_nce,
    matryoshka_info_nce,
    same_asset_mask,
)


def _reference(q: np.ndarray, docs: np.ndarray, same: np.ndarray, t: float, d: int) -> float:
    """Mean over queries of -log softmax(logit of the own positive), duplicates masked."""
    qn = q[:, :d] / np.linalg.norm(q[:, :d], axis=1, keepdims=True)
    dn = docs[:, :d] / np.linalg.norm(docs[:, :d], axis=1, keepdims=True)
    logits = qn @ dn.T / t
    losses = []
    for i in range(len(q)):
        row = [logits[i, j] for j in range(len(docs)) if j == i or not same[i, j]]
        m = max(row)
        lse = m + math.log(sum(math.exp(x - m) for x in row))
        losses.append(lse - logits[i, i])
    return float(np.mean(losses))


def test_matryoshka_terms_by_hand():
    # At size 2 the prefixes are one-hot: own positive cosine 1, the other 0.
    # At size 4 every query-doc cosine is 1/2. Temperature 1.
    q = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])
    docs = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])
    terms = matryoshka_info_nce(q, docs, torch.zeros(2, 2, dtype=torch.bool), 1.0, (2, 4))
    small, full = math.log(1 + math.exp(-1)), math.log(2)
    assert terms["loss_2"].item() == pytest.approx(small, abs=1e-6)
    assert terms["loss_4"].item() == pytest.approx(full, abs=1e-6)
    assert terms["loss"].item() == pytest.approx((small + full) / 2, abs=1e-6)
    assert list(terms) == ["loss_2", "loss_4", "loss"]


def test_temperature_scales_the_logits_by_hand():
    # Size 2, temperature 0.5: logits 2 and 0 -> log(1 + e^-2) per query.
    q = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])
    docs = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])
    terms = matryoshka_info_nce(q, docs, torch.zeros(2, 2, dtype=torch.bool), 0.5, (2,))
    assert terms["loss_2"].item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    assert terms["loss"].item() == pytest.approx(terms["loss_2"].item(), abs=1e-7)


def test_masked_duplicate_by_hand():
    # Query 0's positive is doc 0; doc 2 is the same asset with cosine 1 too. Masked, the
    # row is logits (1, 0, -inf) -> log(1 + e^-1); unmasked it would be log(2 + e^-1).
    q = torch.tensor([[1.0, 0]])
    docs = torch.tensor([[1.0, 0], [0, 1], [1, 0]])
    same = torch.tensor([[True, False, True]])
    assert info_nce(q, docs, same, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)),
                                                                 abs=1e-6)
    unmasked = info_nce(q, docs, torch.zeros_like(same), 1.0).item()
    assert unmasked == pytest.approx(math.log(2 + math.exp(-1)), abs=1e-6)
    # A query's own positive is never masked, even when `same` marks it.
    assert info_nce(q, docs[:1], torch.tensor([[True]]), 1.0).item() == pytest.approx(0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matryoshka_terms_match_numpy(seed):
    rng = np.random.default_rng(seed)
    q, docs = rng.normal(size=(4, 32)), rng.normal(size=(7, 32))  # 4 queries, 3 mined negatives
    ids = ["a", "b", "a", "c"]
    doc_ids = ["a", "b", "a", "c", "b", "d", "e"]
    same = np.array([[i == j for j in doc_ids] for i in ids])
    dims, t = (8, 16, 32), 0.07
    qt = torch.nn.functional.normalize(torch.tensor(q, dtype=torch.float64), dim=-1)
    dt = torch.nn.functional.normalize(torch.tensor(docs, dtype=torch.float64), dim=-1)
    terms = matryoshka_info_nce(qt, dt, same_asset_mask(ids, doc_ids), t, dims)
    want = {d: _reference(qt.numpy(), dt.numpy(), same, t, d) for d in dims}
    for d in dims:
        assert terms[f"loss_{d}"].item() == pytest.approx(want[d], rel=1e-9), d
    assert terms["loss"].item() == pytest.approx(np.mean(list(want.values())), rel=1e-9)
    assert len({round(v, 6) for v in want.values()}) == 3  # the sizes really differ


def test_same_asset_mask():
    m = same_asset_mask(["a", "b", "a"], ["b", "a", "c", "a"])
    assert m.tolist() == [[False, True, False, True], [True, False, False, False],
                          [False, True, False, True]]
    assert m.dtype == torch.bool


def test_temperature_clamped_and_learnable_only_when_asked():
    assert ContrastiveModel(torch.nn.Identity(), 0.05, learn=False).temperature().item() == \
        pytest.approx(0.05)
    assert ContrastiveModel(torch.nn.Identity(), 0.001, learn=False).temperature().item() == \
        pytest.approx(0.01)
    assert ContrastiveModel(torch.nn.Identity(), 5.0, learn=False).temperature().item() == \
        pytest.approx(1.0)
    fixed = ContrastiveModel(torch.nn.Identity(), 0.05, learn=False)
    learned = ContrastiveModel(torch.nn.Identity(), 0.05, learn=True)
    assert not fixed.log_temperature.requires_grad and learned.log_temperature.requires_grad
    assert learned.log_temperature.item() == pytest.approx(math.log(0.05))


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_contrastive_model_forward_runs_its_encoder_once_per_side():
    torch.manual_seed(0)
    enc = _Linear()
    model = ContrastiveModel(enc, 0.2, learn=True)
    assert model.encoder is enc
    q, d = torch.randn(2, 4), torch.randn(3, 4)
    q_emb, d_emb, t = model([(torch.arange(2), {"x": q})], 2, [(torch.arange(3), {"x": d})], 3)
    assert torch.allclose(q_emb, enc(q)) and torch.allclose(d_emb, enc(d))
    assert t.item() == pytest.approx(0.2) and t.requires_grad
    # two layout groups per side (rows 0, 2 and row 1): put back in input order
    q_emb, d_emb, _ = model([(torch.tensor([0, 2]), {"x": q[:1].repeat(2, 1)}),
                             (torch.tensor([1]), {"x": q[1:]})], 3,
                            [(torch.tensor([1, 0]), {"x": d[:2]}), (torch.tensor([2]), {"x": d[2:]})],
                            3)
    assert torch.allclose(q_emb, enc(torch.stack([q[0], q[1], q[0]])))
    assert torch.allclose(d_emb, enc(torch.stack([d[1], d[0], d[2]])))


@pytest.mark.parametrize("seed", [0, 1])
def test_contrastive_terms_on_one_rank_match_numpy(seed):
    """Without a gather, the trainer's loss is the Matryoshka InfoNCE of the local batch with
    the same-asset mask built from hashed keys: against the numpy reference."""
    rng = np.random.default_rng(seed)
    q, docs = rng.normal(size=(3, 16)), rng.normal(size=(6, 16))
    pos_ids, doc_ids = ["x", "y", "x"], ["x", "y", "x", "z", "y", "w"]
    same = np.array([[p == d for d in doc_ids] for p in pos_ids])
    qt = torch.nn.functional.normalize(torch.tensor(q, dtype=torch.float64), dim=-1)
    dt = torch.nn.functional.normalize(torch.tensor(docs, dtype=torch.float64), dim=-1)
    dims, t = (4, 16), 0.1
    for gather in (False, True):  # one process: gathering is the local batch
        terms = contrastive_terms(qt, dt, asset_keys(pos_ids), asset_keys(doc_ids), t, dims,
                                  gather)
        for d in dims:
            want = _reference(qt.numpy(), dt.numpy(), same, t, d)
            assert terms[f"loss_{d}"].item() == pytest.approx(want, rel=1e-9), (gather, d)


def test_info_nce_with_positives_elsewhere_by_hand():
    """`target` says where each query's positive sits: docs (0, 1), (1, 0); query 0's
    positive is doc 1. Logits (0, 1): loss log(1 + e) - 1; the default target (doc 0)
    would give log(1 + e)."""
    q = torch.tensor([[0.0, 1.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same = torch.zeros((1, 2), dtype=torch.bool)
    got = info_nce(q, docs, same, 1.0, target=torch.tensor([1])).item()
    assert got == pytest.approx(math.log(1 + math.e) - 1, abs=1e-6)
    assert info_nce(q, docs, same, 1.0).item() == pytest.approx(math.log(1 + math.e), abs=1e-6)
    terms = matryoshka_info_nce(q, docs, same, 1.0, (2,), target=torch.tensor([1]))
    assert terms["loss_2"].item() == pytest.approx(math.log(1 + math.e) - 1, abs=1e-6)
    # the positive is never masked, even when `same` marks it (and the other doc is)
    both = torch.ones((1, 2), dtype=torch.bool)
    assert info_nce(q, docs, both, 1.0, target=torch.tensor([1])).item() == pytest.approx(0.0)


def test_asset_keys_are_stable_signed_hashes():
    """The keys survive a process boundary (a tensor gather): blake2b-8, little-endian,
    signed, as int64; equal ids give equal keys, others differ."""
    import hashlib

    want = int.from_bytes(hashlib.blake2b(b"asset-1", digest_size=8).digest(), "little",
                          signed=True)
    keys = asset_keys(["asset-1", "asset-2", "asset-1"])
    assert keys.dtype == torch.long and keys[0].item() == want
    assert keys[0] == keys[2] and keys[0] != keys[1]
