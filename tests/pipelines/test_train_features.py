"""Trainer pieces: the collate that feeds iter_torch_batches, and a learnable temperature."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
from loom.models.encoder import EncoderConfig
from loom.pipelines.ray.train import TrainCollate
from loom.pipelines.shard import run_shard
from loom.pipelines.train import TrainConfig, TrainStage, run_train
from loom.schemas.records import TRAINING_ROW
from loom.transforms.pixels import encode_frames

from tests.pipelines.test_shards_tools import _bigger_pairs, _examples

ENC = EncoderConfig(vocab_size=64, max_text_tokens=16, image_size=8, patch_size=4, dim=16,
                    layers=1, heads=2, embed_dims=(8, 16))


def _item(i: str, modality: str, rng) -> dict:
    if modality == "text":
        return {"id": i, "modality": "text", "tokens": [3, 4, 5], "pixels": None,
                "pixel_format": None, "frames": 0, "features": None, "feature_bins": None}
    data, fmt = encode_frames(rng.integers(0, 255, (1, 8, 8, 3), dtype=np.uint8))
    return {"id": i, "modality": "image", "tokens": [], "pixels": data, "pixel_format": fmt,
            "frames": 1, "features": None, "feature_bins": None}


def test_collate_groups_and_masks_duplicate_positives():
    rng = np.random.default_rng(0)
    rows = [{"pair_id": f"p{k}", "kind": "caption", "query": _item(f"q{k}", "text", rng),
             "positive": _item(pos, mod, rng),
             "negatives": [_item(f"n{k}{j}", "image", rng) for j in range(3)]}
            for k, (pos, mod) in enumerate([("a", "image"), ("b", "text"), ("a", "image")])]
    batch = TrainCollate(ENC, max_negatives=2)(pa.Table.from_pylist(rows, schema=TRAINING_ROW))
    assert batch.rows == 3 and batch.n_docs == 3 + 3 * 2
    assert len(batch.queries) == 1  # all text: one group
    groups = {tuple(idx.tolist()): t for idx, t in batch.docs}
    assert set(groups) == {(0, 2, 3, 4, 5, 6, 7, 8), (1,)}  # image docs vs the text positive
    image = groups[(0, 2, 3, 4, 5, 6, 7, 8)]
    assert image["patches"].shape == (8, ENC.patches_per_frame, ENC.patch_dim)
    assert image["patches"].abs().max() <= 1.0 and image["patch_mask"].all()
    # query 0's and query 2's positives are the same asset: each masks the other's
    assert batch.same.shape == (3, 9)
    assert batch.same[0, 2] and batch.same[2, 0] and not batch.same[0, 1]
    moved = batch.to(torch.device("cpu"))
    assert moved.same.equal(batch.same)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("trainfeat")
    pairs = _bigger_pairs(str(base / "pairs"), _examples(str(base / "examples")), 96)
    return run_shard(pairs, str(base / "shards"), rows_per_shard=32)["uri"]


def test_learnable_temperature_moves_and_is_saved(shards, tmp_path, ray_session):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=5e-3, warmup_steps=2, dim=16, layers=1,
                      heads=2, embed_dims=(8, 16), temperature=0.2, learn_temperature=True,
                      checkpoint_every=1000)
    out = run_train(shards, str(tmp_path / "ck"), TrainStage.PFT, cfg)
    df = pl.read_parquet(out["datasets"]["metrics"])
    temps = df["temperature"].to_list()
    assert len(temps) == out["counts"]["steps"] == 12
    assert temps[0] == pytest.approx(0.2, rel=0.05) and temps[-1] != pytest.approx(temps[0])
    state = json.loads(pathlib.Path(out["datasets"]["checkpoint"], "state.json").read_text())
    assert np.exp(state["log_temperature"]) == pytest.approx(temps[-1], rel=1e-3)


@pytest.mark.slow
def test_two_workers_train_when_batches_lack_a_modality(shards, tmp_path, ray_session):
    """DDP over two workers: no batch holds audio (and some no image), so those layers get
    no gradient on a rank; without find_unused_parameters the second step fails."""
    cfg = TrainConfig(epochs=1, batch_size=8, lr=5e-3, warmup_steps=1, dim=16, layers=1,
                      heads=2, embed_dims=(8, 16), checkpoint_every=1000)
    out = run_train(shards, str(tmp_path / "ck2"), TrainStage.PFT, cfg, workers=2)
    # 3 shard files of 32 rows dealt whole to 2 ranks: 64 and 32 rows; every rank runs
    # the smaller rank's 32 // 8 steps
    assert out["counts"]["steps"] == 32 // 8
    df = pl.read_parquet(out["datasets"]["metrics"])
    assert df["step"].to_list() == list(range(1, 5))
