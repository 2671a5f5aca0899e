"""Batched, no-grad embedding of ITEM dicts with an encoder."""

from __future__ import annotations

import numpy as np
import torch

from models.collate import collate_items
from models.encoder import MultimodalEncoder, matryoshka


@torch.no_grad()
def embed_items(model: MultimodalEncoder, items: list[dict], dim: int | None = None,
                batch_size: int = 256) -> np.ndarray:
    """L2-normalized embeddings [N, dim] (dim defaults to the largest Matryoshka size)."""
    cfg = model.cfg
    dim = dim or cfg.out_dim
    model.eval()
    out = np.zeros((len(items), dim), dtype=np.float32)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = collate_items(chunk, cfg)
        out[start : start + len(chunk)] = matryoshka(model(**batch), dim).numpy()
    return out
