"""Validation while training: a held-out slice scored every N steps (issue 15, 5b).

The slice is the first `rows` rows of a held-out shards dataset (`loom shard --split
heldout`), read and collated once when the worker starts. At each validation step rank 0
embeds its queries and positives (eval mode, no graph) and logs to the metrics table:
- `val_loss`: the Matryoshka InfoNCE over the slice (each query against every positive,
  same-asset positives masked, the run's temperature): the training loss on unseen rows;
- `val_r1/<query modality>-><positive modality>`: recall@1 at the largest Matryoshka size,
  each query ranked against the slice's distinct positive assets of its positive's
  modality (as `loom eval` ranks a query against a corpus of that modality);
- `val_r1`: the mean over those pairs, the number `--keep best` follows.
"""

from __future__ import annotations

import collections

import pyarrow as pa
import torch
from loom.models.embed import collate_groups, forward_groups
from loom.models.encoder import EncoderConfig, matryoshka
from loom.models.losses import asset_keys, matryoshka_info_nce
from loom.schemas import storage
from loom.schemas.records import rows_of
from pydantic import BaseModel, ConfigDict, Field

SCORE = "val_r1"


class Validation(BaseModel):
    """What a run validates on and how often (not part of the run's id: it changes no
    weight)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    files: list[str] = Field(min_length=1)  # the held-out shard files
    every: int = Field(ge=1)  # steps between validations (and the run's last step)
    rows: int = Field(512, ge=1)
    keep_best: bool = False  # mark the best val_r1's checkpoint (<run>/best.json)


def read_slice(files: list[str], rows: int) -> pa.Table:
    """The first `rows` rows of the files, in order (only query and positive are read)."""
    parts, left = [], rows
    for uri in files:
        if left <= 0:
            break
        t = storage.read_parquet([uri], columns=["query", "positive"]).slice(0, left)
        parts.append(t)
        left -= t.num_rows
    return pa.concat_tables(parts)


class Validator:
    """The slice, collated once; `__call__(encoder, temperature)` -> the metric columns."""

    def __init__(self, table: pa.Table, enc: EncoderConfig, batch_size: int = 64,
                 prep=None):
        rows = rows_of(table)
        prep = prep or (lambda item: item)  # an HF trunk's re-tokenizing (TrainCollate's)
        self.queries = [prep(r["query"]) for r in rows]
        positives = [prep(r["positive"]) for r in rows]
        self.pairs = [f"{q['modality']}->{p['modality']}"
                      for q, p in zip(self.queries, positives, strict=True)]
        self.pos_ids = [p["id"] for p in positives]
        self.pos_modality = [p["modality"] for p in positives]
        self.dims = tuple(enc.embed_dims)
        self.batch_size = batch_size
        self.q_batches = self._collate(self.queries, enc)
        self.p_batches = self._collate(positives, enc)
        self.keys = [SCORE, "val_loss"] + [f"{SCORE}/{p}" for p in sorted(set(self.pairs))]

    def _collate(self, items: list[dict], enc: EncoderConfig) -> list:
        return [(len(items[i:i + self.batch_size]),
                 collate_groups(items[i:i + self.batch_size], enc))
                for i in range(0, len(items), self.batch_size)]

    def empty(self) -> dict[str, None]:
        """The columns of a step without validation (every metrics row has them)."""
        return dict.fromkeys(self.keys)

    @torch.no_grad()
    def __call__(self, encoder: torch.nn.Module, temperature: float) -> dict[str, float]:
        was_training = encoder.training
        encoder.eval()
        try:
            q = torch.cat([forward_groups(encoder, g, n) for n, g in self.q_batches]).float()
            d = torch.cat([forward_groups(encoder, g, n) for n, g in self.p_batches]).float()
        finally:
            encoder.train(was_training)
        keys = asset_keys(self.pos_ids).to(q.device)
        same = keys.unsqueeze(1) == keys.unsqueeze(0)
        out = {"val_loss": float(matryoshka_info_nce(q, d, same, temperature, self.dims)["loss"])}
        recall = self._recall(matryoshka(q, max(self.dims)), matryoshka(d, max(self.dims)))
        out |= {f"{SCORE}/{pair}": r for pair, r in recall.items()}
        out[SCORE] = sum(recall.values()) / len(recall)
        return out

    def _recall(self, q: torch.Tensor, d: torch.Tensor) -> dict[str, float]:
        first: dict[str, int] = {}  # one candidate per distinct positive asset
        for j, pid in enumerate(self.pos_ids):
            first.setdefault(pid, j)
        by_modality = collections.defaultdict(list)
        for j in first.values():
            by_modality[self.pos_modality[j]].append(j)
        hits, counts = collections.Counter(), collections.Counter()
        for i, pair in enumerate(self.pairs):
            cand = by_modality[self.pos_modality[i]]
            best = cand[int(torch.argmax(d[cand] @ q[i]))]
            hits[pair] += self.pos_ids[best] == self.pos_ids[i]
            counts[pair] += 1
        return {pair: hits[pair] / counts[pair] for pair in sorted(counts)}
