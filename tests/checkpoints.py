"""Small real checkpoints for tests: the encoder a spec and a TrainConfig make, saved once."""

from __future__ import annotations

import torch
from loom.models.checkpoint import save_checkpoint
from loom.models.encoder import MultimodalEncoder
from loom.pipelines.train import TrainConfig, encoder_for
from loom.schemas import storage
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec

TINY = TrainConfig(dim=32, layers=1, heads=2, embed_dims=(16, 32))


def examples_spec(examples_uri: str) -> PreprocessingSpec:
    """The preprocessing spec an ingest version wrote beside its Examples."""
    return PreprocessingSpec.model_validate_json(
        storage.read_bytes(storage.join(examples_uri, SPEC_FILE)))


def tiny_checkpoint(root: str, run: str, spec: PreprocessingSpec, seed: int = 0,
                    config: TrainConfig = TINY) -> str:
    """Step 1 of `run` under root: untrained weights for `seed`; returns the checkpoint id."""
    enc = encoder_for(spec, config)
    torch.manual_seed(seed)
    return save_checkpoint(root, run, 1, MultimodalEncoder(enc), None, spec, enc, {}, {})
