"""Encoding ITEM dicts: grouped by shape, so text rows never pad to image length."""

from __future__ import annotations

import numpy as np
import torch
from loom.models.collate import collate_items
from loom.models.encoder import MultimodalEncoder, matryoshka
from loom.schemas.records import nonempty

Group = tuple[torch.Tensor, dict[str, torch.Tensor]]  # (row indices, encoder inputs)


def collate_groups(items: list[dict], cfg) -> list[Group]:
    """Items split by layout (text or not, how many frames, audio or not), each collated.

    Encoding per layout halves the work of a mixed batch compared with padding every row
    to the longest. This is the CPU half of a forward pass: the trainer runs it in its
    data prefetch thread (pipelines/train_data.iter_batches), off the training thread.
    """
    groups: dict[tuple[bool, int, bool], list[int]] = {}
    for i, it in enumerate(items):  # frames count too: an image never pads to a clip's length
        frames = min(int(it.get("frames") or 1), cfg.max_frames) if it.get("pixels") else 0
        layout = (bool(it.get("tokens")), frames, nonempty(it.get("features")))
        groups.setdefault(layout, []).append(i)
    return [(torch.tensor(idx), collate_items([items[i] for i in idx], cfg))
            for idx in groups.values()]


def forward_groups(model: torch.nn.Module, groups: list[Group], n: int) -> torch.Tensor:
    """Unnormalized embeddings [n, out_dim] in input order (with grad when training).

    Inputs follow the weights: on a GPU actor they are moved to the model's device."""
    device = next(model.parameters()).device

    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if device.type != "cpu":
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        return model(**inputs)

    if len(groups) == 1:
        return run(groups[0][1])
    out: torch.Tensor | None = None
    for idx, inputs in groups:
        emb = run(inputs)
        if out is None:
            out = emb.new_zeros((n, emb.shape[1]))
        out = out.index_copy(0, idx.to(emb.device), emb)
    return out


def forward_items(model: torch.nn.Module, items: list[dict], cfg) -> torch.Tensor:
    """Unnormalized embeddings [N, out_dim] in input order (see collate_groups)."""
    return forward_groups(model, collate_groups(items, cfg), len(items))


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
        emb = matryoshka(forward_items(model, chunk, cfg), dim)
        out[start : start + len(chunk)] = emb.float().cpu().numpy()
    return out
