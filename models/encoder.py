"""The multimodal encoder: one bidirectional transformer over an interleaved sequence.

Text token embeddings and image patch projections (frames are images) get modality
and position embeddings, share one transformer, are mean-pooled over valid positions
and projected to the largest Matryoshka size. Sizes are config: tiny in tests, small
in the demo, large on a GPU cluster.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

TEXT, IMAGE, AUDIO = 0, 1, 2


class EncoderConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = 2000
    max_text_tokens: int = 64
    image_size: int = 48
    patch_size: int = 8
    # video frames seen by the encoder: every frame ingest sampled (1 fps, at most 32, as
    # the paper); a longer clip's frames are evenly subsampled to this many
    max_frames: int = Field(32, ge=1, le=256)
    n_mels: int = 64
    max_audio_tokens: int = 64  # log-mel frames are average-pooled into at most this many
    dim: int = 128
    layers: int = 2
    heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.0
    embed_dims: tuple[int, ...] = Field((32, 64, 128))
    # Every other constructor argument the weights depend on, recorded in encoder.json so
    # a plain-torch rebuild gets the same function (norm_first changes it silently).
    norm_first: bool = True
    activation: Literal["relu", "gelu"] = "relu"
    layer_norm_eps: float = 1e-5
    modalities: Literal[3] = 3  # modality embedding rows: text 0, image 1, audio 2
    text_padding_idx: int = 0
    pooling: Literal["mean"] = "mean"  # over valid positions, after the final LayerNorm
    # A Hugging Face trunk (models/trunk.py) instead of loom's transformer: `hf:PATH` as
    # trained from, its config inline (a checkpoint loads without PATH), and its
    # tokenizer's [CLS]/[SEP] ids. dim/layers/heads then describe the trunk.
    trunk: str | None = None
    trunk_config: dict | None = None
    trunk_cls_id: int = 0
    trunk_sep_id: int = 0

    @property
    def out_dim(self) -> int:
        return max(self.embed_dims)

    @property
    def patches_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * 3


class MultimodalEncoder(nn.Module):
    # Recompute each layer's activations in backward instead of keeping them (a training
    # option, not part of the architecture: set by the trainer, never saved).
    grad_checkpointing: bool = False

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.token_emb = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.text_padding_idx)
        self.text_pos = nn.Embedding(cfg.max_text_tokens, d)
        self.patch_proj = nn.Linear(cfg.patch_dim, d)
        self.patch_pos = nn.Embedding(cfg.patches_per_frame * cfg.max_frames, d)
        self.audio_proj = nn.Linear(cfg.n_mels, d)
        self.audio_pos = nn.Embedding(cfg.max_audio_tokens, d)
        self.modality = nn.Embedding(cfg.modalities, d)
        layer = nn.TransformerEncoderLayer(
            d, cfg.heads, d * cfg.ff_mult, cfg.dropout, activation=cfg.activation,
            layer_norm_eps=cfg.layer_norm_eps, batch_first=True, norm_first=cfg.norm_first
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.proj = nn.Linear(d, cfg.out_dim)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor,
                patches: torch.Tensor, patch_mask: torch.Tensor,
                audio: torch.Tensor | None = None,
                audio_mask: torch.Tensor | None = None,
                instruction: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B,T] int, token_mask [B,T] bool, patches [B,P,patch_dim], patch_mask [B,P],
        audio [B,A,n_mels] pooled log-mel, audio_mask [B,A], instruction [B] int: how many
        leading tokens are a query's task instruction, attended to but left out of the
        mean pool (a row with nothing else pools them).

        Returns unnormalized embeddings [B, out_dim]; callers normalize per Matryoshka size.
        """
        seqs, masks = [], []
        if tokens.shape[1] > 0:
            pos = torch.arange(tokens.shape[1], device=tokens.device)
            seqs.append(self.token_emb(tokens) + self.text_pos(pos) + self.modality.weight[TEXT])
            masks.append(token_mask)
        if patches.shape[1] > 0:
            pos = torch.arange(patches.shape[1], device=patches.device)
            seqs.append(self.patch_proj(patches) + self.patch_pos(pos) + self.modality.weight[IMAGE])
            masks.append(patch_mask)
        if audio is not None and audio.shape[1] > 0:
            pos = torch.arange(audio.shape[1], device=audio.device)
            seqs.append(self.audio_proj(audio) + self.audio_pos(pos) + self.modality.weight[AUDIO])
            masks.append(audio_mask)
        x = torch.cat(seqs, dim=1)
        mask = torch.cat(masks, dim=1)
        # A row with no valid position at all (should not happen) attends to itself only.
        empty = ~mask.any(dim=1)
        if empty.any():
            mask = mask.clone()
            mask[empty, 0] = True
        x = self._trunk(x, ~mask)
        x = self.norm(x)
        m = pool_mask(mask, tokens.shape[1], instruction).unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.proj(pooled)

    def _trunk(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return self.transformer(x, src_key_padding_mask=padding)
        from torch.utils.checkpoint import checkpoint

        for layer in self.transformer.layers:
            x = checkpoint(layer, x, src_key_padding_mask=padding, use_reentrant=False)
        return x


def matryoshka(emb: torch.Tensor, dim: int) -> torch.Tensor:
    """The first `dim` coordinates, L2-normalized: a nested embedding size."""
    return F.normalize(emb[:, :dim], dim=-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pool_mask(mask: torch.Tensor, n_tokens: int,
              instruction: torch.Tensor | None) -> torch.Tensor:
    """`mask` without each row's first `instruction` text positions (text comes first in
    the sequence), unless that leaves the row nothing to pool."""
    if instruction is None or n_tokens == 0:
        return mask
    pos = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    pooled = mask & ~((pos < instruction.to(mask.device).unsqueeze(1)) & (pos < n_tokens))
    return torch.where(pooled.any(dim=1, keepdim=True), pooled, mask)
