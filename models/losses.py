"""InfoNCE over in-batch and mined negatives, at every Matryoshka size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loom.models.encoder import matryoshka


def info_nce(q: torch.Tensor, docs: torch.Tensor, same: torch.Tensor,
             temperature: torch.Tensor | float) -> torch.Tensor:
    """q [B,D] and docs [N,D] normalized; docs[i] is query i's positive (i < B).

    `same` [B,N] is True where doc j holds the same asset as query i's positive
    (duplicate positives in a batch, or a negative equal to the positive): those
    logits are masked so the model is never pushed away from a correct answer.
    """
    logits = q @ docs.T / temperature
    b = q.shape[0]
    target = torch.arange(b, device=q.device)
    mask = same.clone()
    mask[target, target] = False
    logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, target)


def matryoshka_info_nce(q_emb: torch.Tensor, d_emb: torch.Tensor, same: torch.Tensor,
                        temperature: torch.Tensor | float,
                        dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """One InfoNCE term per nested size; the total is their mean."""
    terms = {
        f"loss_{d}": info_nce(matryoshka(q_emb, d), matryoshka(d_emb, d), same, temperature)
        for d in dims
    }
    terms["loss"] = torch.stack(list(terms.values())).mean()
    return terms


def same_asset_mask(query_positive_ids: list[str], doc_ids: list[str]) -> torch.Tensor:
    index: dict[str, int] = {}
    pos = torch.tensor([index.setdefault(i, len(index)) for i in query_positive_ids])
    docs = torch.tensor([index.setdefault(i, len(index)) for i in doc_ids])
    return pos.unsqueeze(1) == docs.unsqueeze(0)


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
