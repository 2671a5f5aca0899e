"""A checkpoint is usable outside loom: from its files alone (encoder.json, model.safetensors)
plain torch rebuilds the encoder, loads the weights strictly and gets the same embeddings.

The rebuild below reads every constructor argument from encoder.json; nothing comes from
loom's loader or model class. (Without `norm_first` in encoder.json, the issue's rebuild
loaded strictly and silently scored R@1 0.577 instead of 0.798.)"""

from __future__ import annotations

import json

import pytest
import torch
from loom.models.checkpoint import save_checkpoint
from loom.models.encoder import EncoderConfig, MultimodalEncoder
from loom.schemas.spec import PreprocessingSpec
from safetensors.torch import load_file
from torch import nn


class PlainEncoder(nn.Module):
    """What an outside trainer writes from encoder.json."""

    def __init__(self, c: dict):
        super().__init__()
        d, patch_dim = c["dim"], c["patch_size"] ** 2 * 3
        per_frame = (c["image_size"] // c["patch_size"]) ** 2
        self.token_emb = nn.Embedding(c["vocab_size"], d, padding_idx=c["text_padding_idx"])
        self.text_pos = nn.Embedding(c["max_text_tokens"], d)
        self.patch_proj = nn.Linear(patch_dim, d)
        self.patch_pos = nn.Embedding(per_frame * c["max_frames"], d)
        self.audio_proj = nn.Linear(c["n_mels"], d)
        self.audio_pos = nn.Embedding(c["max_audio_tokens"], d)
        self.modality = nn.Embedding(c["modalities"], d)
        layer = nn.TransformerEncoderLayer(d, c["heads"], d * c["ff_mult"], c["dropout"],
                                           activation=c["activation"],
                                           layer_norm_eps=c["layer_norm_eps"],
                                           batch_first=True, norm_first=c["norm_first"])
        self.transformer = nn.TransformerEncoder(layer, c["layers"], enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.proj = nn.Linear(d, max(c["embed_dims"]))

    def forward(self, tokens, token_mask, patches, patch_mask):
        t = self.token_emb(tokens) + self.text_pos(torch.arange(tokens.shape[1])) \
            + self.modality.weight[0]
        p = self.patch_proj(patches) + self.patch_pos(torch.arange(patches.shape[1])) \
            + self.modality.weight[1]
        x, mask = torch.cat([t, p], 1), torch.cat([token_mask, patch_mask], 1)
        x = self.norm(self.transformer(x, src_key_padding_mask=~mask))
        m = mask.unsqueeze(-1).float()
        return self.proj((x * m).sum(1) / m.sum(1))


@pytest.mark.parametrize("norm_first", [True, False])
def test_plain_torch_rebuild_gives_identical_embeddings(tmp_path, norm_first):
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=50, max_text_tokens=8, image_size=16, patch_size=8, dim=32,
                        layers=2, heads=2, embed_dims=(16, 32), norm_first=norm_first,
                        activation="gelu")
    model = MultimodalEncoder(cfg).eval()
    ckpt = save_checkpoint(str(tmp_path), "pft-x", 1, model, None, PreprocessingSpec(), cfg,
                           {}, {"step": 1})
    folder = tmp_path / ckpt
    plain = PlainEncoder(json.loads((folder / "encoder.json").read_text()))
    plain.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    plain.eval()
    tokens = torch.randint(1, 50, (3, 8))
    token_mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3, [True] * 2 + [False] * 6])
    patches = torch.randn(3, 4, 192)
    patch_mask = torch.tensor([[True] * 4, [True] * 4, [False] * 4])
    with torch.no_grad():
        want = model(tokens, token_mask, patches, patch_mask)
        got = plain(tokens, token_mask, patches, patch_mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_encoder_json_names_every_constructor_argument(tmp_path):
    cfg = EncoderConfig()
    ckpt = save_checkpoint(str(tmp_path), "pft-y", 1, MultimodalEncoder(cfg), None,
                           PreprocessingSpec(), cfg, {}, {"step": 1})
    saved = json.loads((tmp_path / ckpt / "encoder.json").read_text())
    assert {"norm_first", "activation", "layer_norm_eps", "modalities", "text_padding_idx",
            "pooling", "dropout", "ff_mult"} <= set(saved)
    spec = json.loads((tmp_path / ckpt / "preprocessing.json").read_text())
    assert {"audio_n_mels", "audio_win_ms", "audio_hop_ms", "audio_f_min", "audio_mel_scale",
            "audio_log_eps", "audio_sample_rate"} <= set(spec)
