"""Model soups: the (weighted) average of compatible checkpoints' weights."""

from __future__ import annotations

import torch
from torch import Tensor


def normalize_weights(weights: list[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} checkpoints")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative, got {weights}")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must not sum to zero, got {weights}")
    return [float(w) / total for w in weights]


def average_state_dicts(state_dicts: list[dict[str, Tensor]],
                        weights: list[float] | None = None) -> dict[str, Tensor]:
    """Elementwise (weighted) mean of state dicts; weights are normalized to sum 1.

    Floating tensors are averaged (accumulated in float64, cast back to their dtype);
    integer and bool buffers (counters, masks) are taken from the first state dict.
    Raises ValueError naming the first key that is missing or differs in shape or dtype.
    """
    if not state_dicts:
        raise ValueError("no state dicts to average")
    w = normalize_weights(weights, len(state_dicts))
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        missing = sorted(set(first) - set(sd))
        extra = sorted(set(sd) - set(first))
        if missing:
            raise ValueError(f"state dict {i} lacks key {missing[0]!r}")
        if extra:
            raise ValueError(f"state dict {i} has unexpected key {extra[0]!r}")
        for key, ref in first.items():
            t = sd[key]
            if t.shape != ref.shape:
                raise ValueError(f"key {key!r}: shape {tuple(t.shape)} in state dict {i} "
                                 f"!= {tuple(ref.shape)} in state dict 0")
            if t.dtype != ref.dtype:
                raise ValueError(f"key {key!r}: dtype {t.dtype} in state dict {i} "
                                 f"!= {ref.dtype} in state dict 0")
    out: dict[str, Tensor] = {}
    for key, ref in first.items():
        if not (ref.is_floating_point() or ref.is_complex()):
            out[key] = ref.detach().clone()
            continue
        acc_dtype = torch.complex128 if ref.is_complex() else torch.float64
        acc = torch.zeros(ref.shape, dtype=acc_dtype)
        for wi, sd in zip(w, state_dicts, strict=True):
            acc += wi * sd[key].detach().cpu().to(acc_dtype)
        out[key] = acc.to(ref.dtype).contiguous()
    return out
