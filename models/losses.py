"""InfoNCE over in-batch and mined negatives, at every Matryoshka size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from loom.models.distributed import global_docs
from loom.models.encoder import matryoshka
from loom.schemas.keys import hash_keys


def info_nce(q: torch.Tensor, docs: torch.Tensor, same: torch.Tensor,
             temperature: torch.Tensor | float,
             target: torch.Tensor | None = None) -> torch.Tensor:
    """q [B,D] and docs [N,D] normalized; docs[target[i]] is query i's positive
    (by default docs[i]).

    `same` [B,N] is True where doc j holds the same asset as query i's positive
    (duplicate positives in a batch, or a negative equal to the positive): those
    logits are masked so the model is never pushed away from a correct answer.
    """
    logits = q @ docs.T / temperature
    b = q.shape[0]
    if target is None:
        target = torch.arange(b, device=q.device)
    mask = same.clone()
    target = target.to(q.device)
    mask[torch.arange(b, device=q.device), target] = False
    logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, target)


def matryoshka_info_nce(q_emb: torch.Tensor, d_emb: torch.Tensor, same: torch.Tensor,
                        temperature: torch.Tensor | float,
                        dims: tuple[int, ...],
                        target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One InfoNCE term per nested size; the total is their mean."""
    terms = {
        f"loss_{d}": info_nce(matryoshka(q_emb, d), matryoshka(d_emb, d), same, temperature,
                              target)
        for d in dims
    }
    terms["loss"] = torch.stack(list(terms.values())).mean()
    return terms


def contrastive_terms(q_emb: torch.Tensor, d_emb: torch.Tensor, pos_keys: torch.Tensor,
                      doc_keys: torch.Tensor, temperature: torch.Tensor | float,
                      dims: tuple[int, ...], gather: bool) -> dict[str, torch.Tensor]:
    """The Matryoshka InfoNCE of this rank's queries against this rank's docs or, with
    `gather`, every rank's docs (cross-worker negatives; see models/distributed.py).

    Each rank's loss is the mean over its own queries; DDP's gradient average makes the
    step equal to one process's on the concatenated batch.
    """
    docs = global_docs(d_emb, doc_keys.to(d_emb.device), q_emb.shape[0], gather)
    same = pos_keys.to(d_emb.device).unsqueeze(1) == docs.keys.unsqueeze(0)
    return matryoshka_info_nce(q_emb, docs.emb, same, temperature, dims, docs.target)


def asset_keys(ids: list[str]) -> torch.Tensor:
    """A stable int64 per asset id (blake2b), so masks can be built after a tensor gather."""
    return torch.from_numpy(hash_keys(ids, 8).view("<i8"))


def same_asset_mask(query_positive_ids: list[str], doc_ids: list[str]) -> torch.Tensor:
    return asset_keys(query_positive_ids).unsqueeze(1) == asset_keys(doc_ids).unsqueeze(0)


class ContrastiveModel(torch.nn.Module):
    """The encoder plus its (optionally learnable) temperature: one forward per step.

    One module, so DDP runs one forward per step and all-reduces the temperature's
    gradient with the encoder's. The temperature is exp(log_temperature), clamped to
    [0.01, 1] (CLIP's logit-scale rule, as a temperature).
    """

    def __init__(self, encoder: torch.nn.Module, temperature: float, learn: bool):
        super().__init__()
        self.encoder = encoder
        self.log_temperature = torch.nn.Parameter(
            torch.tensor(float(temperature)).log(), requires_grad=learn)

    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(0.01, 1.0)

    def forward(self, queries, n_queries: int, docs, n_docs: int):
        from loom.models.embed import forward_groups

        return (forward_groups(self.encoder, queries, n_queries),
                forward_groups(self.encoder, docs, n_docs), self.temperature())
