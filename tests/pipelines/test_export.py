"""`loom export --format onnx`: the exported graph, run by onnxruntime, embeds every
modality as loom does (cosine > 0.999), at shapes other than the traced example."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from loom.models.checkpoint import save_checkpoint
from loom.models.embed import embed_items
from loom.models.encoder import EncoderConfig, MultimodalEncoder, matryoshka
from loom.models.onnx_export import onnx_inputs
from loom.pipelines.common import BadInput
from loom.pipelines.export import ExportFormat, run_export
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.pixels import encode_frames

ort = pytest.importorskip("onnxruntime")  # in the test extra: absent only off the pinned set

CFG = EncoderConfig(vocab_size=60, max_text_tokens=16, image_size=16, patch_size=8,
                    max_frames=3, dim=32, layers=2, heads=2, embed_dims=(8, 16, 32),
                    n_mels=8, max_audio_tokens=5)


def _items(rng) -> list[dict]:
    def px(f: int) -> tuple[bytes, str]:
        return encode_frames(rng.integers(0, 255, (f, 16, 16, 3), dtype=np.uint8))

    img, fmt = px(1)
    vid, vfmt = px(7)  # subsampled to 3 frames
    audio = rng.normal(size=23 * 8).astype(np.float32).tolist()
    return [
        {"id": "text", "tokens": rng.integers(1, 60, 12).tolist()},
        {"id": "short", "tokens": [5, 77]},  # 77 >= vocab: clamped
        {"id": "image", "tokens": [], "pixels": img, "pixel_format": fmt, "frames": 1},
        {"id": "video", "tokens": [], "pixels": vid, "pixel_format": vfmt, "frames": 7},
        {"id": "audio", "tokens": [], "features": audio, "feature_bins": 8},
        {"id": "mixed", "tokens": [9, 10, 11], "pixels": img, "pixel_format": fmt,
         "frames": 1, "features": audio, "feature_bins": 8},
        # queries: a leading instruction is attended to, not pooled
        {"id": "query", "tokens": [4, 5, 6, 7, 8], "instruction_tokens": 3},
        {"id": "image-query", "tokens": [4, 5], "instruction_tokens": 2, "pixels": img,
         "pixel_format": fmt, "frames": 1},
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    torch.manual_seed(3)
    model = MultimodalEncoder(CFG)
    spec = PreprocessingSpec(image_size=16)
    ckpt = save_checkpoint(str(base / "ck"), "run-x", 5, model, None, spec, CFG, {}, {})
    out = run_export(ckpt, str(base / "ck"), ExportFormat.ONNX, str(base / "onnx"))
    return model.eval(), out, base


def _onnx_embed(session, items: list[dict], dim: int) -> np.ndarray:
    emb = session.run(None, onnx_inputs(items, CFG))[0]
    return matryoshka(torch.from_numpy(emb), dim).numpy()


@pytest.mark.parametrize("dim", [8, 32])
def test_onnx_export_matches_loom_for_every_modality(exported, dim):
    model, out, base = exported
    session = ort.InferenceSession(out["datasets"]["model"])
    items = _items(np.random.default_rng(0))
    loom = embed_items(model, items, dim=dim)
    # one mixed batch, and each row alone (text-only, image-only ... batches: the other
    # modalities are then a single masked position)
    batches = [items] + [[it] for it in items]
    for batch in batches:
        got = _onnx_embed(session, batch, dim)
        want = loom[[items.index(it) for it in batch]]
        cos = (got * want).sum(1)
        assert cos.min() > 0.999, (dim, [it["id"] for it in batch], cos)
    meta = json.loads((base / "onnx" / "export.json").read_text())
    assert meta["embed_dims"] == [8, 16, 32] and meta["checkpoint"] == "run-x/step-0000005"
    readme = (base / "onnx" / "README.md").read_text()
    assert "patch_mask" in readme and "`instruction` int64 [B]" in readme


def test_other_formats_need_an_hf_trunk(exported):
    _, _, base = exported
    with pytest.raises(BadInput, match="Hugging Face trunk"):
        run_export("run-x", str(base / "ck"), ExportFormat.HF, str(base / "hf"))


def test_export_cli(exported, tmp_path):
    _, _, base = exported
    res = subprocess.run([sys.executable, "-m", "loom.jobs.cli", "export", "latest",
                          "--checkpoint-root", str(base / "ck"), "--output",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["format"] == "onnx" and (tmp_path / "o" / "model.onnx").exists()
    bad = subprocess.run([sys.executable, "-m", "loom.jobs.cli", "export", "latest",
                          "--checkpoint-root", str(base / "ck"), "--output",
                          str(tmp_path / "p"), "--format", "sentence-transformers"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Hugging Face trunk" in bad.stderr
