"""Pairs / triples -> self-contained TrainingRows, and the deterministic shuffle order."""

from __future__ import annotations

import hashlib
import math

import pyarrow as pa
from loom.schemas.records import TRAINING_ROW, Split, rows_of
from loom.transforms.items import example_to_item, positive_item, query_item
from loom.transforms.tokenizer import TextTokenizer


def shuffle_key(seed: int, pair_id: str) -> str:
    """A global shuffle that is the same on every engine and every rerun for a seed."""
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).hexdigest()


def repeats(weights: dict[str, float], seed: int, pair_id: str, kind: str | None,
            modality: str | None) -> int:
    """How many copies of a row the weights ask for (deterministic per seed and pair)."""
    source = "natural" if (kind or "").startswith("natural:") else "synthetic"
    w = weights.get(kind or "", 1.0) * weights.get(modality or "", 1.0) * weights.get(source, 1.0)
    whole = math.floor(w)
    frac = int(shuffle_key(seed, f"w:{pair_id}")[:8], 16) / 16**8
    return whole + (1 if frac < w - whole else 0)


def training_rows(batch: pa.RecordBatch, examples: dict[str, dict], tokenizer: TextTokenizer,
                  max_tokens: int, split: Split = Split.TRAIN) -> tuple[pa.Table, list[dict]]:
    """Pairs (or triples) of `split` with their content joined in: the query of any
    modality with its task instruction, the positive (or the subset of its parts). The
    held-out split makes the trainer's validation slice (`loom shard --split heldout`).

    Returns the rows and, for every input row that cannot be built (its positive, its
    query's Example or a negative is not in the corpus), a reason, so nothing disappears
    silently.
    """
    rows, missing = [], []
    names = batch.schema.names
    whole: dict[str, dict] = {}  # negatives repeat across rows: one ITEM per Example
    for rec in rows_of(batch):  # inline query parts' features stay float16 arrays
        if "split" in names and rec["split"] != split.value:
            continue
        pos = positive_item(rec, examples, tokenizer, max_tokens)
        if pos is None:
            missing.append({"pair_id": rec["pair_id"], "missing": rec["positive_id"]})
            continue
        query = query_item(rec, examples, tokenizer, max_tokens)
        if query is None:
            missing.append({"pair_id": rec["pair_id"],
                            "missing": rec["query_ref"]["example_id"]})
            continue
        negs = []
        for n in rec.get("negatives") or []:
            ex = examples.get(n["id"])
            if ex is None:
                missing.append({"pair_id": rec["pair_id"], "missing": n["id"]})
                break
            if n["id"] not in whole:
                whole[n["id"]] = example_to_item(ex)
            negs.append(whole[n["id"]])
        else:
            rows.append({
                "pair_id": rec["pair_id"],
                "kind": rec.get("kind"),
                "query": query,
                "positive": pos,
                "negatives": negs,
            })
    return pa.Table.from_pylist(rows, schema=TRAINING_ROW), missing
