"""`loom export --format hf|sentence-transformers` (issue 15, item 6): a checkpoint on a
tiny local BERT trunk, loaded back by plain `transformers` (no trust_remote_code) and by
sentence-transformers, embeds as loom does (cosine > 0.999)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from loom.models.checkpoint import save_checkpoint
from loom.models.collate import collate_items
from loom.models.embed import embed_items
from loom.models.encoder import EncoderConfig, MultimodalEncoder
from loom.models.handler import EncoderHandler
from loom.models.trunk import build_encoder, trunk_encoder_config
from loom.pipelines.common import BadInput
from loom.pipelines.export import ExportFormat, run_export
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.items import query_item
from loom.transforms.pixels import encode_frames

from tests.trunks import tiny_bert

BASE = EncoderConfig(image_size=16, patch_size=8, max_frames=3, n_mels=8, max_audio_tokens=5,
                     max_text_tokens=12)
TEXTS = ["a red bicycle leans on the wall", "the blue lake under the mountain",
         "a cat sits", "dog runs on a wall 12 13 14 15 16 17 18 19 20 21 22 23"]  # truncated


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    base = tmp_path_factory.mktemp("hfexport")
    trunk = tiny_bert(base / "bert")
    enc, tokenizer_json = trunk_encoder_config(trunk, BASE, (8, 24))
    torch.manual_seed(1)
    model = build_encoder(enc, pretrained=True)
    with torch.no_grad():  # a trained-looking head: not the identity it starts as
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    spec = PreprocessingSpec(image_size=16, patch_size=8, max_text_tokens=12,
                             tokenizer_json=tokenizer_json)
    root = str(base / "ck")
    ckpt_id = save_checkpoint(root, "pft-hf", 3, model.eval(), None, spec, enc, {}, {})
    return root, ckpt_id, model, enc, base


def _loom(root: str, ckpt_id: str, model, dim: int, texts=TEXTS) -> np.ndarray:
    prep = EncoderHandler(root, ckpt_id).inputs()
    return embed_items(model, [prep.query(f"t{i}", t) for i, t in enumerate(texts)], dim)


def _head_module(folder: pathlib.Path):
    spec = importlib.util.spec_from_file_location("loom_head", folder / "loom_head.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hf_export_loads_in_plain_transformers_and_embeds_as_loom(ckpt):
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer, BertModel

    root, ckpt_id, model, enc, base = ckpt
    out = base / "hf"
    cli = subprocess.run([sys.executable, "-m", "loom.jobs.cli", "export", ckpt_id,
                          "--checkpoint-root", root, "--format", "hf", "--output", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert json.loads(cli.stdout.strip().splitlines()[-1])["format"] == "hf"
    trunk = AutoModel.from_pretrained(out).eval()  # the stock class, no remote code
    assert type(trunk) is BertModel
    tok = AutoTokenizer.from_pretrained(out)
    meta = json.loads((out / "loom_head.json").read_text())
    head = _head_module(out).LoomHead(**meta["init"]).eval()
    head.load_state_dict(load_file(out / "loom_head.safetensors"))
    batch = tok(TEXTS, padding=True, truncation=True, max_length=14, return_tensors="pt")
    with torch.no_grad():
        h = trunk(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        full = head.proj((h * m).sum(1) / m.sum(1))
    for dim in meta["embed_dims"]:
        got = torch.nn.functional.normalize(full[:, :dim], dim=-1).numpy()
        cos = (got * _loom(root, ckpt_id, model, dim)).sum(1)
        assert cos.min() > 0.999, (dim, cos)
    # every modality through the shipped head module and loom's collate
    rng = np.random.default_rng(0)
    img, fmt = encode_frames(rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8))
    prep = EncoderHandler(root, ckpt_id).inputs()
    pair = {"pair_id": "q", "task": "find it", "query_text": "a red bicycle",
            "query_parts": [{"kind": "image", "pixels": img, "pixel_format": fmt,
                             "frames": 5}]}
    items = [query_item(pair, {}, prep.tokenizer, 12),
             {"id": "audio", "tokens": [], "features": rng.normal(size=40).tolist(),
              "feature_bins": 8},
             prep.query("t", TEXTS[0]) | {"pixels": img, "pixel_format": fmt, "frames": 5}]
    with torch.no_grad():
        got = torch.nn.functional.normalize(head(trunk, **collate_items(items, enc)), dim=-1)
    cos = (got.numpy() * embed_items(model, items)).sum(1)
    assert cos.min() > 0.999, cos


def test_sentence_transformers_export_embeds_text_as_loom(ckpt):
    from sentence_transformers import SentenceTransformer

    root, ckpt_id, model, enc, base = ckpt
    with pytest.raises(BadInput, match="export it as hf"):  # onnx covers loom's own encoder
        run_export(ckpt_id, root, ExportFormat.ONNX, str(base / "onnx"))
    out = base / "st"
    run_export(ckpt_id, root, ExportFormat.SENTENCE_TRANSFORMERS, str(out))
    st = SentenceTransformer(str(out), device="cpu")
    got = st.encode(TEXTS)
    assert got.shape == (4, 24)
    assert (got * _loom(root, ckpt_id, model, 24)).sum(1).min() > 0.999
    small = SentenceTransformer(str(out), device="cpu", truncate_dim=8)
    got = small.encode(TEXTS, normalize_embeddings=True)
    assert (got * _loom(root, ckpt_id, model, 8)).sum(1).min() > 0.999
    # a query's task instruction is a prompt left out of the pooling, as in loom
    prep = EncoderHandler(root, ckpt_id).inputs()
    pairs = [{"pair_id": f"q{i}", "task": "find it", "query_text": t}
             for i, t in enumerate(TEXTS[:3])]
    want = embed_items(model, [query_item(p, {}, prep.tokenizer, 12) for p in pairs])
    got = st.encode(TEXTS[:3], prompt="find it | ")
    assert (got * want).sum(1).min() > 0.999


def test_loom_own_encoder_refuses_hf_formats(tmp_path):
    cfg = EncoderConfig(vocab_size=60, max_text_tokens=8, image_size=16, patch_size=8,
                        dim=16, layers=1, heads=2, embed_dims=(8, 16))
    ckpt_id = save_checkpoint(str(tmp_path), "pft-own", 1, MultimodalEncoder(cfg), None,
                              PreprocessingSpec(image_size=16), cfg, {}, {})
    for fmt in (ExportFormat.HF, ExportFormat.SENTENCE_TRANSFORMERS):
        with pytest.raises(BadInput, match="export it as onnx"):
            run_export(ckpt_id, str(tmp_path), fmt, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
