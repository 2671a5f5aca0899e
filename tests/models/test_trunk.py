"""HF trunks (issue 15, item 1): a tiny random BERT written locally as loom's fusion trunk.

The text path must be the stock model (its tokenizer's [CLS] ... [SEP], its embeddings,
mean pooling) so a pretrained trunk starts as itself; frames and audio join through
`inputs_embeds`; a checkpoint loads without the folder it started from."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from loom.models.checkpoint import load_checkpoint, save_checkpoint
from loom.models.collate import collate_items
from loom.models.embed import embed_items
from loom.models.encoder import EncoderConfig
from loom.models.handler import EncoderHandler
from loom.models.trunk import TrunkError, build_encoder, initial_encoder, trunk_encoder_config
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.items import query_item, text_to_item
from loom.transforms.pixels import encode_frames
from loom.transforms.tokenizer import TextTokenizer

from tests.trunks import tiny_bert

BASE = EncoderConfig(image_size=16, patch_size=8, max_frames=4, n_mels=8, max_audio_tokens=5,
                     max_text_tokens=16)
TEXTS = ["a red bicycle leans on the wall", "the blue lake", "a cat sits on a wall 12",
         "find it"]


@pytest.fixture(scope="module")
def trunk(tmp_path_factory):
    path = tiny_bert(tmp_path_factory.mktemp("bert") / "tiny")
    enc, tokenizer_json = trunk_encoder_config(path, BASE, None)
    torch.manual_seed(0)
    return path, enc, tokenizer_json, build_encoder(enc, pretrained=True).eval()


def _text_items(tokenizer_json: str) -> list[dict]:
    tok = TextTokenizer.from_json(tokenizer_json)
    return [text_to_item(f"t{i}", t, tok, 16) for i, t in enumerate(TEXTS)]


def test_config_takes_the_trunks_sizes_and_tokenizer(trunk):
    _, enc, tokenizer_json, _ = trunk
    assert (enc.dim, enc.layers, enc.heads, enc.embed_dims) == (32, 2, 2, (8, 16, 32))
    assert enc.trunk_config["model_type"] == "bert" and enc.vocab_size == 230
    # 256 positions: 16 text + [CLS] + [SEP] + 5 audio leave 233, room for 58 frames of 4
    # patches; the base config's 4 is below that
    assert enc.max_frames == 4
    assert TextTokenizer.from_json(tokenizer_json).encode("a red zebra", 8) == [5, 6, 1]


def test_text_is_the_stock_model_mean_pooled(trunk):
    """Independent of loom's head: AutoTokenizer + AutoModel + attention-mask mean pooling,
    then the head's linear map."""
    from transformers import AutoModel, AutoTokenizer

    path, enc, tokenizer_json, model = trunk
    folder = path.removeprefix("hf:")
    tok, stock = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = stock(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        want = model.head.proj((hidden * m).sum(1) / m.sum(1))
        got = model(**collate_items(_text_items(tokenizer_json), enc))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # the head starts as the identity: the pretrained embedding itself
    assert torch.allclose(want, (hidden * m).sum(1) / m.sum(1), atol=1e-6)


def _mixed_items(tokenizer_json: str, rng) -> list[dict]:
    tok = TextTokenizer.from_json(tokenizer_json)
    img, fmt = encode_frames(rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8))
    audio = rng.normal(size=9 * 8).astype(np.float32).tolist()
    pair = {"pair_id": "q", "task": "find it", "query_text": "a red bicycle",
            "query_parts": [{"kind": "image", "pixels": img, "pixel_format": fmt,
                             "frames": 1}]}
    return [
        text_to_item("long", " ".join(TEXTS), tok, 16),
        text_to_item("mixed", "the blue lake", tok, 16) | {
            "pixels": img, "pixel_format": fmt, "frames": 1},
        {"id": "audio", "tokens": tok.encode("a cat", 16), "features": audio,
         "feature_bins": 8},
        query_item(pair, {}, tok, 16),
    ]


def test_a_rows_embedding_does_not_depend_on_its_batch(trunk):
    """Frames and audio take trunk positions after the row's own text, so padding from a
    longer row elsewhere in the batch changes nothing."""
    _, enc, tokenizer_json, model = trunk
    items = _mixed_items(tokenizer_json, np.random.default_rng(0))
    together = embed_items(model, items, batch_size=len(items))
    with torch.no_grad():  # one collate with every row padded to the longest
        padded = torch.nn.functional.normalize(model(**collate_items(items, enc)), dim=-1)
    for i, it in enumerate(items):
        alone = embed_items(model, [it])
        assert np.allclose(alone, together[i], atol=1e-5), it["id"]
        assert np.allclose(alone[0], padded[i].numpy(), atol=1e-5), it["id"]


def test_the_instruction_is_attended_to_not_pooled(trunk):
    _, enc, tokenizer_json, model = trunk
    query = _mixed_items(tokenizer_json, np.random.default_rng(0))[3]
    assert query["instruction_tokens"] == 3  # "find it |"
    fewer = query | {"instruction_tokens": 0}
    a, b = embed_items(model, [query]), embed_items(model, [fewer])
    assert not np.allclose(a, b, atol=1e-4)


def test_checkpoint_loads_without_the_trunk_folder(trunk, tmp_path):
    path, enc, tokenizer_json, model = trunk
    spec = PreprocessingSpec(image_size=16, patch_size=8, tokenizer_json=tokenizer_json,
                             max_text_tokens=16)
    ckpt = save_checkpoint(str(tmp_path / "ck"), "pft-x", 1, model, None, spec, enc, {}, {})
    items = _mixed_items(tokenizer_json, np.random.default_rng(1))
    want = embed_items(model, items)
    # eval's untrained baseline: the folder's pretrained weights while it is there (text
    # only: the head's frame and audio layers start at a random init)
    assert np.allclose(embed_items(initial_encoder(enc), items[:1]), want[:1], atol=1e-6)
    copy = tmp_path / "moved"
    shutil.copytree(path.removeprefix("hf:"), copy)
    shutil.rmtree(path.removeprefix("hf:"))
    try:
        loaded = load_checkpoint(str(tmp_path / "ck"), ckpt)
        assert np.allclose(embed_items(loaded.model, items), want, atol=1e-6)
        prep = EncoderHandler(str(tmp_path / "ck"), ckpt).inputs()
        assert prep.query("q", "a red zebra")["tokens"] == [5, 6, 1]  # the trunk's ids
        assert not np.allclose(embed_items(initial_encoder(enc), items[:1]), want[:1],
                               atol=1e-2)
    finally:
        shutil.copytree(copy, path.removeprefix("hf:"))


def test_folders_loom_cannot_use_are_refused(tmp_path):
    from transformers import AutoConfig, AutoModel

    with pytest.raises(TrunkError, match="no config.json"):
        trunk_encoder_config(f"hf:{tmp_path / 'none'}", BASE, None)
    with pytest.raises(TrunkError, match="expected hf:PATH"):
        trunk_encoder_config(str(tmp_path), BASE, None)
    gpt = tmp_path / "gpt"
    AutoModel.from_config(AutoConfig.for_model("gpt2", n_embd=16, n_layer=1, n_head=2,
                                               vocab_size=50)).save_pretrained(gpt)
    with pytest.raises(TrunkError, match="not a bidirectional encoder"):  # a decoder
        trunk_encoder_config(f"hf:{gpt}", BASE, None)
    short = tiny_bert(tmp_path / "short", max_positions=24)  # 16 text + 2 + 5 audio = 23
    with pytest.raises(TrunkError, match="no room for one frame"):
        trunk_encoder_config(short, BASE, None)
