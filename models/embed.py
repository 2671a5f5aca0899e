"""Encoding ITEM dicts: grouped by shape, so text rows never pad to image length."""

from __future__ import annotations

import numpy as np
import torch

from models.collate import collate_items
from models.encoder import MultimodalEncoder, matryoshka


def forward_items(model: torch.nn.Module, items: list[dict], cfg) -> torch.Tensor:
    """Unnormalized embeddings [N, out_dim] in input order (with grad when training).

    Items are encoded in groups of the same layout (which of text, pixels, audio they have), which
    halves the work of a mixed batch compared with padding every row to the longest.
    """
    groups: dict[tuple[bool, bool, bool], list[int]] = {}
    for i, it in enumerate(items):
        layout = (bool(it.get("tokens")), bool(it.get("pixels")), bool(it.get("features")))
        groups.setdefault(layout, []).append(i)
    device = next(model.parameters()).device

    def run(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if device.type != "cpu":  # a GPU actor: inputs follow the weights
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        return model(**batch)

    if len(groups) == 1:
        return run(collate_items(items, cfg))
    out: torch.Tensor | None = None
    for idx in groups.values():
        emb = run(collate_items([items[i] for i in idx], cfg))
        if out is None:
            out = emb.new_zeros((len(items), emb.shape[1]))
        out = out.index_copy(0, torch.tensor(idx, device=emb.device), emb)
    return out


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
        out[start : start + len(chunk)] = matryoshka(forward_items(model, chunk, cfg), dim).float().cpu().numpy()
    return out
