"""Pairs / triples -> self-contained TrainingRows, and the deterministic shuffle order."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from loom.schemas.records import TRAINING_ROW, Split
from loom.transforms.items import text_to_item
from loom.transforms.tokenizer import TextTokenizer


def shuffle_key(seed: int, pair_id: str) -> str:
    """A global shuffle that is the same on every engine and every rerun for a seed."""
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).hexdigest()


def training_rows(batch: pa.RecordBatch, items: dict[str, dict], tokenizer: TextTokenizer,
                  max_tokens: int) -> tuple[pa.Table, list[dict]]:
    """Train-split pairs (or triples) with their content joined in.

    Returns the rows and, for every input row that cannot be built (its positive or a
    negative is not in the corpus), a reason, so nothing disappears silently.
    """
    rows, missing = [], []
    names = batch.schema.names
    for rec in batch.to_pylist():
        if "split" in names and rec["split"] != Split.TRAIN.value:
            continue
        pos = items.get(rec["positive_id"])
        if pos is None:
            missing.append({"pair_id": rec["pair_id"], "missing": rec["positive_id"]})
            continue
        negs = []
        for n in rec.get("negatives") or []:
            item = items.get(n["id"])
            if item is None:
                missing.append({"pair_id": rec["pair_id"], "missing": n["id"]})
                break
            negs.append(item)
        else:
            rows.append({
                "pair_id": rec["pair_id"],
                "kind": rec.get("kind"),
                "query": text_to_item(f"q:{rec['pair_id']}", rec["query_text"], tokenizer,
                                      max_tokens),
                "positive": pos,
                "negatives": negs,
            })
    return pa.Table.from_pylist(rows, schema=TRAINING_ROW), missing
