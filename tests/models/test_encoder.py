"""Encoder, losses and checkpoints: shapes, masking, and round trips that can fail."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from loom.models.checkpoint import load_checkpoint, resolve, save_checkpoint
from loom.models.collate import collate_items
from loom.models.embed import embed_items, forward_items
from loom.models.encoder import EncoderConfig, MultimodalEncoder, count_parameters
from loom.models.losses import info_nce, matryoshka_info_nce, same_asset_mask
from loom.schemas.spec import PreprocessingSpec

CFG = EncoderConfig(vocab_size=50, max_text_tokens=16, image_size=16, patch_size=8,
                    max_frames=4, dim=32, layers=1, heads=2, embed_dims=(8, 16, 32),
                    n_mels=8, max_audio_tokens=6)


def _items(rng: np.random.Generator) -> list[dict]:
    px = lambda f: rng.integers(0, 255, (f, 16, 16, 3), dtype=np.uint8).tobytes()  # noqa: E731
    return [
        {"id": "t", "tokens": [3, 4, 5], "pixels": None, "frames": 0},
        {"id": "i", "tokens": [], "pixels": px(1), "frames": 1},
        {"id": "v", "tokens": [], "pixels": px(10), "frames": 10},  # subsampled to 4
        {"id": "a", "tokens": [], "pixels": None, "frames": 0,
         "features": rng.normal(size=40 * 8).astype(np.float32).tolist(), "feature_bins": 8},
        {"id": "m", "tokens": [7, 8], "pixels": px(1), "frames": 1},  # interleaved
    ]


def test_collate_shapes_subsample_video_and_pool_audio():
    batch = collate_items(_items(np.random.default_rng(0)), CFG)
    assert batch["tokens"].shape == (5, 3)
    assert batch["patches"].shape == (5, 4 * CFG.patches_per_frame, CFG.patch_dim)
    assert batch["patch_mask"].sum(1).tolist() == [0, 4, 16, 0, 4]
    assert batch["audio"].shape == (5, 6, 8)
    assert batch["audio_mask"].sum(1).tolist() == [0, 0, 0, 6, 0]


def test_grouped_forward_equals_one_padded_batch():
    """Padding is masked everywhere, so grouping by layout must not change embeddings."""
    torch.manual_seed(0)
    model = MultimodalEncoder(CFG).eval()
    items = _items(np.random.default_rng(1))
    with torch.no_grad():
        grouped = forward_items(model, items, CFG)
        padded = model(**collate_items(items, CFG))
    assert torch.allclose(grouped, padded, atol=1e-5)
    emb = embed_items(model, items, dim=16)
    assert emb.shape == (5, 16)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert count_parameters(model) > 0


def test_instruction_tokens_are_attended_but_not_pooled():
    """A query's leading instruction steers attention, but the pooled vector is the mean of
    the final (normed) states of the other positions: checked against a hook on the norm."""
    torch.manual_seed(0)
    model = MultimodalEncoder(CFG).eval()
    rng = np.random.default_rng(3)
    px = rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8).tobytes()
    items = [{"id": "q", "tokens": [3, 4, 5, 6, 7], "instruction_tokens": 2},
             {"id": "qi", "tokens": [3, 4], "pixels": px, "frames": 1, "instruction_tokens": 2},
             {"id": "all", "tokens": [3, 4], "instruction_tokens": 2},  # nothing else: pool all
             {"id": "d", "tokens": [3, 4, 5, 6, 7]}]
    states = []
    model.norm.register_forward_hook(lambda mod, inp, out: states.append(out))
    with torch.no_grad():
        out = [model(**collate_items([it], CFG))[0] for it in items]
    pooled = [states[0][0, 2:5].mean(0), states[1][0, 2:].mean(0), states[2][0].mean(0),
              states[3][0].mean(0)]
    for got, x in zip(out, pooled, strict=True):
        assert torch.allclose(got, model.proj(x), atol=1e-5)
    assert not torch.allclose(out[0], out[3], atol=1e-3)  # same tokens, other pooling
    batch = collate_items(items, CFG)
    assert batch["instruction"].tolist() == [2, 2, 2, 0]
    with torch.no_grad():  # one padded batch pools the same way as one row at a time
        assert torch.allclose(model(**batch), torch.stack(out), atol=1e-5)


def test_info_nce_masks_duplicate_positives():
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    docs = q.clone()
    docs[2] = q[0]  # query 2's positive duplicates query 0's asset
    same = same_asset_mask(["a", "b", "a"], ["a", "b", "a"])
    assert same.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    masked = info_nce(q, docs, same, 0.05)
    unmasked = info_nce(q, docs, torch.zeros_like(same), 0.05)
    assert masked < unmasked  # the duplicate no longer counts as a negative
    terms = matryoshka_info_nce(torch.randn(3, 32), torch.randn(5, 32),
                                torch.zeros(3, 5, dtype=torch.bool), 0.05, (8, 16, 32))
    assert set(terms) == {"loss_8", "loss_16", "loss_32", "loss"}
    assert torch.isclose(terms["loss"], (terms["loss_8"] + terms["loss_16"] + terms["loss_32"]) / 3)


def test_checkpoint_round_trip_and_latest(tmp_path):
    torch.manual_seed(0)
    model = MultimodalEncoder(CFG)
    opt = torch.optim.AdamW(model.parameters())
    model(**collate_items(_items(np.random.default_rng(2)), CFG)).sum().backward()
    opt.step()
    spec = PreprocessingSpec(image_size=16)
    root = str(tmp_path)
    first = save_checkpoint(root, "run-a", 5, model, opt, spec, CFG, {"lr": 1}, {"step": 5})
    second = save_checkpoint(root, "run-a", 10, model, opt, spec, CFG, {"lr": 1}, {"step": 10})
    assert first == "run-a/step-0000005" and second == "run-a/step-0000010"
    assert resolve(root, "run-a") == second
    assert resolve(root, "latest") == second
    assert resolve(root, first) == first
    with pytest.raises(FileNotFoundError):
        resolve(root, "run-b")
    loaded = load_checkpoint(root, second, with_optimizer=True)
    assert loaded.spec == spec and loaded.encoder_config == CFG
    assert loaded.state["step"] == 10 and "state" in loaded.state["optimizer"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    assert json.loads((tmp_path / "run-a" / "latest.json").read_text())["step"] == 10
