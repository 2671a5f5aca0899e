"""Cross-worker negatives and cached batches: the same loss and gradients as one process
on the concatenated batch (two real gloo processes on 127.0.0.1, DDP included)."""

from __future__ import annotations

import contextlib
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from loom.models.embed import collate_groups
from loom.models.encoder import EncoderConfig, MultimodalEncoder
from loom.models.losses import ContrastiveModel, asset_keys
from loom.models.step import TrainBatch, cached_step, plain_step

CFG = EncoderConfig(vocab_size=50, max_text_tokens=16, image_size=16, patch_size=8,
                    max_frames=2, dim=32, layers=2, heads=2, embed_dims=(8, 16, 32))
DIMS = tuple(CFG.embed_dims)
NONE = contextlib.nullcontext()


def _item(i: str, rng) -> dict:
    if rng.random() < 0.5:
        return {"id": i, "tokens": rng.integers(1, 50, rng.integers(2, 9)).tolist(),
                "pixels": None, "frames": 0}
    px = rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8).tobytes()
    return {"id": i, "tokens": [], "pixels": px, "frames": 1}


def _rank_rows(rank: int) -> tuple[list, list, list]:
    """Rank 0: 4 queries and 3 negatives; rank 1: 4 queries and 1 negative, and its first
    positive is the same asset as rank 0's first (masked, not counted as a negative)."""
    rng = np.random.default_rng(10 + rank)
    queries = [_item(f"q{rank}{k}", rng) for k in range(4)]
    positives = [_item(f"p{rank}{k}", rng) for k in range(4)]
    negatives = [_item(f"n{rank}{k}", rng) for k in range(3 if rank == 0 else 1)]
    if rank == 1:
        positives[0] = _rank_rows(0)[1][0]
    return queries, positives, negatives


def _batch(queries, positives, negatives) -> TrainBatch:
    docs = positives + negatives
    return TrainBatch(collate_groups(queries, CFG), collate_groups(docs, CFG),
                      asset_keys([p["id"] for p in positives]),
                      asset_keys([d["id"] for d in docs]), len(queries), len(docs))


def _model() -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel(MultimodalEncoder(CFG), 0.1, learn=True)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
            for n, p in model.named_parameters()}


def _single(cached: bool = False) -> tuple[float, dict]:
    """One process, the two ranks' rows concatenated: the reference."""
    (q0, p0, n0), (q1, p1, n1) = _rank_rows(0), _rank_rows(1)
    batch = _batch(q0 + q1, p0 + p1, n0 + n1)
    model = _model()
    if cached:
        terms, _ = cached_step(model, batch, DIMS, False, NONE, chunk=3)
    else:
        terms, _ = plain_step(model, batch, DIMS, False, NONE)
    return float(terms["loss"].detach()), _grads(model)


MODES = ("gather", "cached", "local")


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    torch.set_num_threads(1)
    try:
        for mode in MODES:
            model = _model()
            batch = _batch(*_rank_rows(rank))
            if mode == "cached":
                terms, _ = cached_step(model, batch, DIMS, True, NONE, chunk=3)
            else:
                ddp = torch.nn.parallel.DistributedDataParallel(model,
                                                                find_unused_parameters=True)
                terms, _ = plain_step(ddp, batch, DIMS, mode == "gather", NONE)
            torch.save({"loss": float(terms["loss"].detach()), "grads": _grads(model)},
                       f"{out}/{mode}-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, tuple[float, dict, dict]]:
    """mode -> (mean of the two ranks' losses, rank 0's grads, rank 1's grads)."""
    out = tmp_path_factory.mktemp("ranks")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(out)), nprocs=2, join=True)
    result = {}
    for mode in MODES:
        r0, r1 = (torch.load(out / f"{mode}-{r}.pt") for r in (0, 1))
        # Each rank's loss is the mean over its own 4 queries; the global mean is their mean.
        result[mode] = ((r0["loss"] + r1["loss"]) / 2, r0["grads"], r1["grads"])
    return result


def _max_err(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("mode", ["gather", "cached"])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(two_ranks, mode):
    ref_loss, ref_grads = _single()
    loss, g0, g1 = two_ranks[mode]
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    err = _max_err(g0, ref_grads)
    print(f"{mode}: |loss diff| {abs(loss - ref_loss):.2e}, max |grad diff| {err:.2e} "
          f"(max |grad| {scale:.2e})")
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    assert err < 1e-5 * max(1.0, scale)
    assert _max_err(g0, g1) < 1e-6  # DDP / all_reduce_grads left every rank the same step
    assert float(ref_grads["log_temperature"].abs()) > 0  # the temperature learns too


def test_without_gathering_two_ranks_differ_from_one_process(two_ranks):
    """The control: per-rank negatives (the old behaviour) give another loss."""
    ref_loss, ref_grads = _single()
    loss, g0, _ = two_ranks["local"]
    assert abs(loss - ref_loss) > 1e-3 and _max_err(g0, ref_grads) > 1e-4


def test_cached_step_equals_the_full_batch_in_one_process():
    ref_loss, ref_grads = _single()
    loss, grads = _single(cached=True)
    err = _max_err(grads, ref_grads)
    print(f"cached, one process: |loss diff| {abs(loss - ref_loss):.2e}, max |grad diff| "
          f"{err:.2e}")
    assert loss == pytest.approx(ref_loss, abs=1e-6) and err < 1e-5


def test_cached_step_replays_dropout_masks():
    """With dropout on, the second (graph) forward must draw the first's masks: the
    gradient still equals the full batch's under the same seed."""
    cfg = CFG.model_copy(update={"dropout": 0.3})
    (q0, p0, n0), (q1, p1, n1) = _rank_rows(0), _rank_rows(1)
    docs = p0 + p1 + n0 + n1
    batch = TrainBatch(collate_groups(q0 + q1, cfg), collate_groups(docs, cfg),
                       asset_keys([p["id"] for p in p0 + p1]),
                       asset_keys([d["id"] for d in docs]), 8, len(docs))
    results = []
    for cached in (False, True):
        torch.manual_seed(0)
        model = ContrastiveModel(MultimodalEncoder(cfg), 0.1, learn=True).train()
        torch.manual_seed(5)
        if cached:  # one chunk per layout group: the forward order matches the plain step
            cached_step(model, batch, DIMS, False, NONE, chunk=100)
        else:
            plain_step(model, batch, DIMS, False, NONE)
        results.append(_grads(model))
    assert _max_err(results[0], results[1]) < 1e-5


def test_gradient_checkpointing_same_gradients():
    _, ref = _single()
    model = _model()
    model.encoder.grad_checkpointing = True
    (q0, p0, n0), (q1, p1, n1) = _rank_rows(0), _rank_rows(1)
    plain_step(model, _batch(q0 + q1, p0 + p1, n0 + n1), DIMS, False, NONE)
    assert _max_err(_grads(model), ref) < 1e-5
