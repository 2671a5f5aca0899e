"""Items (ITEM rows: tokens and/or pixels) to padded encoder inputs."""

from __future__ import annotations

import numpy as np
import torch
from loom.models.encoder import EncoderConfig
from loom.schemas.records import nonempty
from loom.transforms.pixels import decode_frames


def collate_items(items: list[dict], cfg: EncoderConfig) -> dict[str, torch.Tensor]:
    """Pads text to the longest row, patches to the most frames, audio to the most tokens.

    A query's leading task instruction (`instruction_tokens`) is counted per row in
    `instruction`. Videos longer than `cfg.max_frames` are evenly subsampled; log-mel rows are
    average-pooled into at most `cfg.max_audio_tokens` tokens, so a 30 s clip and a 2 s
    clip cost the same.
    """
    b = len(items)
    t_len = max((len(it.get("tokens") or []) for it in items), default=0)
    t_len = min(t_len, cfg.max_text_tokens)
    tokens = np.zeros((b, t_len), dtype=np.int64)
    for i, it in enumerate(items):
        toks = (it.get("tokens") or [])[:t_len]
        tokens[i, : len(toks)] = np.minimum(np.asarray(toks, dtype=np.int64), cfg.vocab_size - 1)
    s, p = cfg.image_size, cfg.patch_size
    per_frame = cfg.patches_per_frame
    frames = [min(int(it.get("frames") or 0), cfg.max_frames) if it.get("pixels") else 0
              for it in items]
    n_patches = max(frames, default=0) * per_frame
    patches = np.zeros((b, n_patches, cfg.patch_dim), dtype=np.float32)
    patch_mask = np.zeros((b, n_patches), dtype=bool)
    for i, it in enumerate(items):
        f = frames[i]
        if not f:
            continue
        px = decode_frames(it["pixels"], it.get("pixel_format"), s, s)
        px = px[np.linspace(0, len(px) - 1, f).round().astype(int)]
        g = s // p
        pt = px.reshape(f, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(f * g * g, -1)
        patches[i, : f * per_frame] = pt.astype(np.float32) / 127.5 - 1.0
        patch_mask[i, : f * per_frame] = True
    pooled = [_pool_audio(it, cfg) for it in items]
    a_len = max((len(p) for p in pooled), default=0)
    audio = np.zeros((b, a_len, cfg.n_mels), dtype=np.float32)
    audio_mask = np.zeros((b, a_len), dtype=bool)
    for i, p in enumerate(pooled):
        audio[i, : len(p)] = p
        audio_mask[i, : len(p)] = True
    # leading instruction tokens of a query: attended to, not pooled (encoder.forward)
    instruction = [min(int(it.get("instruction_tokens") or 0), t_len) for it in items]
    return {
        "instruction": torch.tensor(instruction, dtype=torch.long),
        "audio": torch.from_numpy(audio),
        "audio_mask": torch.from_numpy(audio_mask),
        "tokens": torch.from_numpy(tokens),
        "token_mask": torch.from_numpy(tokens != 0),
        "patches": torch.from_numpy(patches),
        "patch_mask": torch.from_numpy(patch_mask),
    }


def _pool_audio(item: dict, cfg: EncoderConfig) -> np.ndarray:
    feats, bins = item.get("features"), item.get("feature_bins")
    if not nonempty(feats) or bins != cfg.n_mels:
        return np.zeros((0, cfg.n_mels), dtype=np.float32)
    rows = np.asarray(feats, dtype=np.float32).reshape(-1, bins)
    groups = np.array_split(rows, min(len(rows), cfg.max_audio_tokens))
    return np.stack([g.mean(axis=0) for g in groups])
