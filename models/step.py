"""One contrastive training step's forward and backward: plain, or cached (GradCache).

The cached step (Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup", 2021) makes the batch size independent of activation memory:
1. embed every row in chunks without a graph;
2. compute the loss over all embeddings (gathered across ranks when asked) and
   backpropagate it to the embeddings only;
3. embed each chunk again, with a graph, and backpropagate the cached embedding
   gradient through it: only one chunk's activations are alive at a time.
The gradient equals the full batch's; the price is a second forward. Each chunk's
random state is replayed in step 3, so dropout draws the same masks as in step 1.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from loom.models.distributed import all_reduce_grads
from loom.models.embed import Group
from loom.models.losses import contrastive_terms


@dataclasses.dataclass
class TrainBatch:
    """One step's encoder inputs, collated off the training thread.

    Docs are the queries' positives (in query order), then mined negatives. Assets are
    int64 keys (losses.asset_keys), so the duplicate-positive mask can be built after
    the docs of every rank are gathered.
    """

    queries: list[Group]
    docs: list[Group]
    pos_keys: torch.Tensor  # [B] the asset key of each query's positive
    doc_keys: torch.Tensor  # [N] the asset key of each doc
    rows: int
    n_docs: int
    ids: list[str] = dataclasses.field(default_factory=list)  # pair ids, for records

    @property
    def same(self) -> torch.Tensor:
        """[B, N] True where doc j is query i's positive asset (this rank's docs only)."""
        return self.pos_keys.unsqueeze(1) == self.doc_keys.unsqueeze(0)

    def to(self, device: torch.device) -> TrainBatch:
        def move(groups):
            return [(i.to(device), {k: v.to(device, non_blocking=True) for k, v in t.items()})
                    for i, t in groups]
        return dataclasses.replace(self, queries=move(self.queries), docs=move(self.docs),
                                   pos_keys=self.pos_keys.to(device),
                                   doc_keys=self.doc_keys.to(device))


def plain_step(model: torch.nn.Module, batch: TrainBatch, dims: tuple[int, ...],
               gather: bool, autocast) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forward through `model` (a ContrastiveModel, DDP-wrapped or not) and backward."""
    with autocast:
        q_emb, d_emb, temperature = model(batch.queries, batch.rows, batch.docs, batch.n_docs)
    terms = contrastive_terms(q_emb.float(), d_emb.float(), batch.pos_keys, batch.doc_keys,
                              temperature, dims, gather)
    terms["loss"].backward()
    return terms, temperature


def cached_step(model: torch.nn.Module, batch: TrainBatch, dims: tuple[int, ...],
                gather: bool, autocast, chunk: int) -> tuple[dict[str, torch.Tensor],
                                                            torch.Tensor]:
    """GradCache over `model` (the unwrapped ContrastiveModel): same gradients as
    plain_step, at most `chunk` rows' activations alive at once.

    The backward runs once per chunk, so gradients are averaged over ranks once at the
    end (all_reduce_grads) rather than by DDP per backward.
    """
    encoder = model.encoder
    q_chunks = split_groups(batch.queries, chunk)
    d_chunks = split_groups(batch.docs, chunk)
    q_emb, q_rng = _embed_no_grad(encoder, q_chunks, batch.rows, autocast)
    d_emb, d_rng = _embed_no_grad(encoder, d_chunks, batch.n_docs, autocast)
    q_leaf, d_leaf = q_emb.requires_grad_(), d_emb.requires_grad_()
    temperature = model.temperature()
    terms = contrastive_terms(q_leaf, d_leaf, batch.pos_keys, batch.doc_keys, temperature,
                              dims, gather)
    terms["loss"].backward()
    _backward_chunks(encoder, q_chunks, q_rng, q_leaf.grad, autocast)
    _backward_chunks(encoder, d_chunks, d_rng, d_leaf.grad, autocast)
    all_reduce_grads([p for p in model.parameters() if p.requires_grad])
    return terms, temperature


def split_groups(groups: list[Group], chunk: int) -> list[Group]:
    """Each layout group cut into pieces of at most `chunk` rows (padding is masked, so a
    row's embedding does not depend on which piece it is in)."""
    out = []
    for idx, inputs in groups:
        for start in range(0, len(idx), chunk):
            sl = slice(start, start + chunk)
            out.append((idx[sl], {k: v[sl] for k, v in inputs.items()}))
    return out


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _run(encoder: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    device = _device_of(encoder)
    return encoder(**{k: v.to(device, non_blocking=True) for k, v in inputs.items()})


def _embed_no_grad(encoder, chunks: list[Group], n: int, autocast):
    out, states = None, []
    with torch.no_grad():
        for idx, inputs in chunks:
            states.append(_RngState(_device_of(encoder)))
            with autocast:
                emb = _run(encoder, inputs).float()
            if out is None:
                out = emb.new_zeros((n, emb.shape[1]))
            out[idx.to(emb.device)] = emb
    return out, states


def _backward_chunks(encoder, chunks: list[Group], states: list, grad: torch.Tensor,
                     autocast) -> None:
    for (idx, inputs), state in zip(chunks, states, strict=True):
        with state.replay(), autocast:
            emb = _run(encoder, inputs).float()
        emb.backward(grad[idx.to(grad.device)])


class _RngState:
    """The CPU (and CUDA) random state before a chunk's first forward, to replay it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield
