"""Cross-worker in-batch negatives: gather every rank's embeddings, keeping gradients.

With N workers each holding B rows, a query should see the N*B global batch as
negatives, not its own rank's B. The gather must be differentiable: rank r's loss
depends on rank s's document embeddings, so the gradient of every rank's loss with
respect to rank s's rows has to reach rank s. The gather's backward sums the incoming
gradients over ranks and hands each rank the slice of its own rows, so with DDP's gradient averaging the parameter gradient equals a
single process's on the concatenated batch. Ranks may hold different numbers of rows
(mined negatives per row vary), so rows are padded to the largest count first.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's row count, in rank order."""
    local = torch.tensor([n], device=device, dtype=torch.long)
    out = [torch.zeros_like(local) for _ in range(world()[1])]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def all_gather_rows(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Every rank's rows of `x` concatenated in rank order, differentiable w.r.t. the local
    rows (a float tensor) or a plain gather (an integer tensor, no gradient)."""
    rank, size = world()
    if size == 1:
        return x
    sizes = sizes or gather_sizes(x.shape[0], x.device)
    pad = max(sizes) - x.shape[0]
    padded = F.pad(x, (0,) * (2 * (x.dim() - 1)) + (0, pad)) if pad else x
    if x.is_floating_point():
        stacked = _GatherRows.apply(padded.contiguous())
    else:
        parts = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(parts, padded.contiguous())
        stacked = torch.cat(parts)
    m = max(sizes)
    return torch.cat([stacked[r * m : r * m + n] for r, n in enumerate(sizes)])


class _GatherRows(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for the gathered rows and
    returns this rank's slice (a reduce-scatter done as an all-reduce, which gloo has)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


@dataclasses.dataclass
class GlobalDocs:
    """The documents every local query is scored against, and where its positive is."""

    emb: torch.Tensor  # [N_global, D]
    keys: torch.Tensor  # [N_global] int64 asset keys (same key = same asset)
    target: torch.Tensor  # [B_local] index of each local query's positive in emb


def global_docs(d_emb: torch.Tensor, doc_keys: torch.Tensor, n_queries: int,
                gather: bool) -> GlobalDocs:
    """Local docs (positives first, in query order) or, when gathering, every rank's.

    Rank r's docs start after the docs of ranks < r, so query i's positive sits at
    offset_r + i.
    """
    target = torch.arange(n_queries, device=d_emb.device)
    rank, size = world()
    if not gather or size == 1:
        return GlobalDocs(d_emb, doc_keys, target)
    sizes = gather_sizes(d_emb.shape[0], d_emb.device)
    offset = sum(sizes[:rank])
    return GlobalDocs(all_gather_rows(d_emb, sizes), all_gather_rows(doc_keys, sizes),
                      target + offset)


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Averages gradients over ranks in one flat buffer (DDP's result, without DDP).

    Used where the backward runs in several pieces (cached batches), so a DDP reduction
    per piece would be wasted. A missing gradient counts as zero on every rank, so all
    ranks reduce the same buffer.
    """
    _, size = world()
    if size == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= size
    start = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[start : start + n].view_as(p))
        start += n
