"""The one model seam: a checkpoint loaded once, then batches of items embedded with it.

Shaped like Beam's ModelHandler: `load()` once per worker (an actor's __init__, or once in
a driver), then `embed(items, model)` many times. `inputs()` prepares Examples and query
texts with the checkpoint's own preprocessing (models.inputs) without loading weights, so
a driver can build and cache inputs while the workers hold the model. Mine, backfill,
eval and synth's round-trip filter all embed through it; pipelines.ray.embed is its one
Ray adapter.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from loom.models.checkpoint import LoadedCheckpoint, checkpoint_configs, load_checkpoint
from loom.models.embed import embed_items
from loom.models.inputs import Preprocessor


@dataclasses.dataclass(frozen=True)
class EncoderHandler:
    """Picklable: what to load, not the weights. `dim` defaults to the full size."""

    root: str
    checkpoint: str  # a concrete id (`<run>/step-<n>`), resolved by the caller
    dim: int | None = None
    threads: int | None = None  # torch threads per worker (None: torch's default)
    batch_size: int = 256

    def load(self) -> LoadedCheckpoint:
        """The weights, once: on a GPU when the worker was given one."""
        if self.threads:
            torch.set_num_threads(self.threads)
        loaded = load_checkpoint(self.root, self.checkpoint)
        if torch.cuda.is_available():  # Ray set CUDA_VISIBLE_DEVICES for a num_gpus actor
            loaded.model = loaded.model.cuda()
        return loaded

    def embed(self, items: list[dict], model: LoadedCheckpoint) -> np.ndarray:
        """L2-normalized embeddings [len(items), dim] in input order."""
        return embed_items(model.model, items, self.dim, self.batch_size)

    def inputs(self) -> Preprocessor:
        """The checkpoint's preprocessing (spec + encoder sizes), read without the weights."""
        return _preprocessor(self.root, self.checkpoint)

    def embed_examples(self, examples: list[dict], model: LoadedCheckpoint) -> np.ndarray:
        return self.embed([self.inputs().example(e) for e in examples], model)


@functools.lru_cache(maxsize=8)
def _preprocessor(root: str, checkpoint: str) -> Preprocessor:
    spec, enc = checkpoint_configs(root, checkpoint)
    return Preprocessor(spec, enc, checkpoint)
