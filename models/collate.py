"""Items (ITEM rows: tokens and/or pixels) to padded encoder inputs."""

from __future__ import annotations

import numpy as np
import torch

from models.encoder import EncoderConfig


def collate_items(items: list[dict], cfg: EncoderConfig) -> dict[str, torch.Tensor]:
    """Pads text to the longest row and patches to the most frames in the batch."""
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
        px = np.frombuffer(it["pixels"], dtype=np.uint8)[: f * s * s * 3].reshape(f, s, s, 3)
        g = s // p
        pt = px.reshape(f, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(f * g * g, -1)
        patches[i, : f * per_frame] = pt.astype(np.float32) / 127.5 - 1.0
        patch_mask[i, : f * per_frame] = True
    return {
        "tokens": torch.from_numpy(tokens),
        "token_mask": torch.from_numpy(tokens != 0),
        "patches": torch.from_numpy(patches),
        "patch_mask": torch.from_numpy(patch_mask),
    }
