"""loom's layers around a Hugging Face trunk: plain torch, no loom import.

loom trains a stock `transformers` model (BERT-like, bidirectional) as its fusion trunk.
What loom adds lives here, so an `hf` export ships this very file as `loom_head.py`
beside the stock model, and a serving stack rebuilds loom's embeddings with
`AutoModel.from_pretrained` (no trust_remote_code) plus this module:

- text: the trunk's own token embeddings, the sequence wrapped in the tokenizer's
  [CLS] ... [SEP] (added here, so loom's collate stays tokenizer-agnostic);
- image patches / video frames and log-mel audio: linear projections into the trunk's
  hidden size, plus a learned position and a modality embedding, placed after the text
  (early fusion through `inputs_embeds`); their trunk position ids continue from each
  row's own text length, so a row's embedding does not depend on its batch's padding;
- pooling: the mean of the trunk's last hidden states over valid positions, leaving out
  a query's task instruction (and [CLS] with it); then `proj`, a linear map to the
  largest Matryoshka size. A size d is the first d values, L2-normalized.

For text alone this is exactly the stock model with mean pooling and a Dense layer:
what sentence-transformers runs for an `sentence-transformers` export.
"""

from __future__ import annotations

import torch
from torch import nn


class LoomHead(nn.Module):
    def __init__(self, hidden: int, out_dim: int, patch_dim: int, patch_positions: int,
                 n_mels: int, audio_positions: int, cls_id: int, sep_id: int):
        super().__init__()
        self.cls_id, self.sep_id = cls_id, sep_id
        self.patch_proj = nn.Linear(patch_dim, hidden)
        self.patch_pos = nn.Embedding(patch_positions, hidden)
        self.audio_proj = nn.Linear(n_mels, hidden)
        self.audio_pos = nn.Embedding(audio_positions, hidden)
        self.modality = nn.Embedding(2, hidden)  # 0: image/video frames, 1: audio
        self.proj = nn.Linear(hidden, out_dim)
        for emb in (self.patch_pos, self.audio_pos, self.modality):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():  # start as the trunk's own mean-pooled embedding (truncated)
            self.proj.weight.zero_()
            self.proj.bias.zero_()
            n = min(hidden, out_dim)
            self.proj.weight[:n, :n] = torch.eye(n)

    def forward(self, trunk: nn.Module, tokens: torch.Tensor, token_mask: torch.Tensor,
                patches: torch.Tensor, patch_mask: torch.Tensor,
                audio: torch.Tensor | None = None, audio_mask: torch.Tensor | None = None,
                instruction: torch.Tensor | None = None) -> torch.Tensor:
        """loom's collate (tokens without special tokens) -> unnormalized [B, out_dim]."""
        b, device = tokens.shape[0], tokens.device
        seqs, masks, positions = [], [], []
        n_text = torch.zeros(b, dtype=torch.long, device=device)
        skip = torch.zeros(b, dtype=torch.long, device=device)
        if tokens.shape[1] > 0:
            ids, mask = self._wrap(tokens, token_mask)
            n_text = mask.sum(1)
            seqs.append(trunk.get_input_embeddings()(ids))
            masks.append(mask)
            positions.append(torch.arange(ids.shape[1], device=device).expand(b, -1))
            if instruction is not None:  # [CLS] and the instruction are not pooled
                instruction = instruction.to(device)
                skip = torch.where(instruction > 0, instruction + 1, 0)
        offset = n_text
        for data, mask, proj, pos, kind in ((patches, patch_mask, self.patch_proj,
                                             self.patch_pos, 0),
                                            (audio, audio_mask, self.audio_proj,
                                             self.audio_pos, 1)):
            if data is None or data.shape[1] == 0:
                continue
            idx = torch.arange(data.shape[1], device=device)
            seqs.append(proj(data) + pos(idx) + self.modality.weight[kind])
            masks.append(mask.bool())
            positions.append(offset.unsqueeze(1) + idx)
            offset = offset + mask.sum(1)
        x, mask = torch.cat(seqs, dim=1), torch.cat(masks, dim=1)
        empty = ~mask.any(dim=1)  # a row with nothing valid attends to its first position
        if empty.any():
            mask = mask.clone()
            mask[empty, 0] = True
        position_ids = torch.cat(positions, dim=1).clamp(max=_max_positions(trunk) - 1)
        hidden = trunk(inputs_embeds=x, attention_mask=mask.long(),
                       position_ids=position_ids).last_hidden_state
        pos = torch.arange(mask.shape[1], device=device).unsqueeze(0)
        pooled = mask & ~(pos < skip.unsqueeze(1))
        pooled = torch.where(pooled.any(dim=1, keepdim=True), pooled, mask)
        m = pooled.unsqueeze(-1).to(hidden.dtype)
        return self.proj((hidden * m).sum(1) / m.sum(1).clamp(min=1.0))

    def _wrap(self, tokens: torch.Tensor, token_mask: torch.Tensor):
        """[CLS] tokens [SEP] per row with text (rows without text stay empty)."""
        b, t = tokens.shape
        n = token_mask.sum(1)
        has = n > 0
        ids = torch.zeros((b, t + 2), dtype=tokens.dtype, device=tokens.device)
        ids[:, 1 : t + 1] = torch.where(token_mask, tokens, 0)
        ids[:, 0] = torch.where(has, self.cls_id, 0)
        ids.scatter_(1, (n + 1).unsqueeze(1), torch.where(has, self.sep_id, 0).unsqueeze(1)
                     .to(ids.dtype))
        pos = torch.arange(t + 2, device=tokens.device).unsqueeze(0)
        return ids, (pos < (n + 2).unsqueeze(1)) & has.unsqueeze(1)


def _max_positions(trunk: nn.Module) -> int:
    return int(getattr(trunk.config, "max_position_embeddings", 1 << 30))
