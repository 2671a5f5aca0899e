"""loom's encoder as one ONNX graph, for serving stacks that do not run torch.

The graph is the encoder's forward, traced: seven inputs, every modality always present,
one output (unnormalized embeddings). Its inputs are loom's collate (models/collate.py)
with one rule added: each modality's sequence axis is at least one position long
(masked), because the traced graph always concatenates text, patches and audio.
`onnx_inputs` is that collate; a consumer in another language reproduces it from
EXPORT_README. A masked position changes nothing: attention ignores it and pooling
skips it.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from loom.models.collate import collate_items
from loom.models.encoder import AUDIO, IMAGE, TEXT, EncoderConfig, MultimodalEncoder

INPUTS = ("tokens", "token_mask", "patches", "patch_mask", "audio", "audio_mask", "instruction")
OPSET = 17
_SEQ_AXIS = {"tokens": "text", "token_mask": "text", "patches": "patches",
             "patch_mask": "patches", "audio": "audio", "audio_mask": "audio"}
_BATCH_ONLY = ("instruction",)


def onnx_inputs(items: list[dict], cfg: EncoderConfig) -> dict[str, np.ndarray]:
    """loom's collate, every modality padded to at least one (masked) position."""
    batch = collate_items(items, cfg)
    out = {}
    for data, mask in (("tokens", "token_mask"), ("patches", "patch_mask"),
                       ("audio", "audio_mask")):
        x, m = batch[data].numpy(), batch[mask].numpy()
        if x.shape[1] == 0:
            x = np.zeros((x.shape[0], 1, *x.shape[2:]), dtype=x.dtype)
            m = np.zeros((m.shape[0], 1), dtype=bool)
        out[data], out[mask] = x, m
    out["instruction"] = batch["instruction"].numpy()
    return out


def _example(cfg: EncoderConfig) -> tuple[torch.Tensor, ...]:
    """Two rows that use every modality, so the trace keeps every branch."""
    b = 2
    tokens = torch.full((b, 2), 3, dtype=torch.long)
    patches = torch.zeros((b, cfg.patches_per_frame, cfg.patch_dim))
    audio = torch.zeros((b, 1, cfg.n_mels))
    ones = lambda n: torch.ones((b, n), dtype=torch.bool)  # noqa: E731
    instruction = torch.tensor([1, 0], dtype=torch.long)  # a query and a document
    return (tokens, ones(2), patches, ones(cfg.patches_per_frame), audio, ones(1), instruction)


class _Traceable(torch.nn.Module):
    """The encoder's forward written for tracing: every modality always present, no
    data-dependent branch, and attention with symbolic shapes (torch's MultiheadAttention
    bakes the traced sequence length into a reshape). Same weights, same arithmetic;
    the export test holds it to the encoder's embeddings."""

    def __init__(self, enc: MultimodalEncoder):
        super().__init__()
        self.enc = enc

    def forward(self, tokens, token_mask, patches, patch_mask, audio, audio_mask, instruction):
        e = self.enc
        idx = lambda x: torch.arange(x.shape[1], device=x.device)  # noqa: E731
        x = torch.cat([
            e.token_emb(tokens) + e.text_pos(idx(tokens)) + e.modality.weight[TEXT],
            e.patch_proj(patches) + e.patch_pos(idx(patches)) + e.modality.weight[IMAGE],
            e.audio_proj(audio) + e.audio_pos(idx(audio)) + e.modality.weight[AUDIO],
        ], dim=1)
        mask = torch.cat([token_mask, patch_mask, audio_mask], dim=1)
        first = idx(mask).unsqueeze(0) == 0
        mask = mask | (~mask.any(dim=1, keepdim=True) & first)  # the encoder's empty-row rule
        bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, float("-inf"))
        bias = bias[:, None, None, :]
        for layer in e.transformer.layers:
            x = x + self._attend(layer, layer.norm1(x), bias)
            h = layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
            x = x + h
        x = e.norm(x)
        pos = idx(mask).unsqueeze(0)
        skip = (pos < instruction.unsqueeze(1)) & (pos < tokens.shape[1])
        pooled, full = (mask & ~skip).to(x.dtype), mask.to(x.dtype)
        left = (pooled.sum(1, keepdim=True) > 0).to(x.dtype)  # pool_mask's rule, without a
        m = (pooled * left + full * (1 - left)).unsqueeze(-1)  # bool Where (no ORT kernel)
        return e.proj((x * m).sum(1) / m.sum(1).clamp(min=1.0))

    @staticmethod
    def _attend(layer, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        heads = attn.num_heads
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(-2)
        return attn.out_proj(out)


def export_onnx(model: MultimodalEncoder) -> bytes:
    """The ONNX bytes of `model` (batch and every sequence length dynamic)."""
    model = _Traceable(model.eval()).eval()
    dynamic = {name: {0: "batch", 1: _SEQ_AXIS[name]} for name in INPUTS
               if name not in _BATCH_ONLY}
    dynamic |= {name: {0: "batch"} for name in _BATCH_ONLY}
    dynamic["embedding"] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic
        torch.onnx.export(model, _example(model.enc.cfg), buf, input_names=list(INPUTS),
                          output_names=["embedding"], dynamic_axes=dynamic, dynamo=False,
                          opset_version=OPSET)
    return buf.getvalue()


EXPORT_README = """# loom encoder, ONNX export

`model.onnx` maps seven inputs to `embedding` [batch, {out_dim}] (unnormalized). For a
Matryoshka size d in {dims}, take the first d values and L2-normalize them.

Inputs (batch B; T, P, A >= 1 each; padding positions have mask False):
- `tokens` int64 [B, T]: token ids (0 = padding; ids >= {vocab} are clamped to {vocab_m1}),
  at most {max_text} per row (loom's tokenizer, see spec.json).
- `token_mask` bool [B, T]: tokens != 0.
- `patches` float32 [B, P, {patch_dim}]: each frame resized to {size}x{size} RGB, cut into
  {patch}x{patch} patches in row-major order, each patch flattened (row, column, channel),
  scaled as pixel / 127.5 - 1; frames one after another ({per_frame} patches per frame), at
  most {max_frames} frames per row (longer videos: evenly subsampled).
- `patch_mask` bool [B, P].
- `audio` float32 [B, A, {n_mels}]: log-mel frames ({n_mels} bins) average-pooled into at
  most {max_audio} groups (numpy.array_split of the frames).
- `audio_mask` bool [B, A].
- `instruction` int64 [B]: how many leading tokens of the row are a query's task
  instruction ("<task> |", tokenized apart from the query text); they are attended to but
  not mean-pooled (unless the row has nothing else). 0 for documents.
A row may hold any mix of the three (interleaved early fusion). A modality absent from
the whole batch is still given one position, with mask False.
Reference implementation: `loom.models.onnx_export.onnx_inputs`.
"""


def export_readme(cfg: EncoderConfig) -> str:
    return EXPORT_README.format(
        out_dim=cfg.out_dim, dims=list(cfg.embed_dims), vocab=cfg.vocab_size,
        vocab_m1=cfg.vocab_size - 1, max_text=cfg.max_text_tokens, patch_dim=cfg.patch_dim,
        size=cfg.image_size, patch=cfg.patch_size, per_frame=cfg.patches_per_frame,
        max_frames=cfg.max_frames, n_mels=cfg.n_mels, max_audio=cfg.max_audio_tokens)
