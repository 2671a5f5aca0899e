"""A tiny workdir as the stages leave it, written with the real writers (VersionWriter,
write_part, the trainer's metrics.parquet layout): what the report reads, in milliseconds."""

from __future__ import annotations

import json
import os

import pyarrow as pa
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import METRICS, REJECTED, TRIPLE, to_table

PNG_HEAD = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _commit(root: str, stage: str, tables: dict[str, pa.Table], counts: dict, lineage: dict
            ) -> str:
    w = mf.VersionWriter(root, stage, mf.version_id(stage, [root], counts))
    files = {t: [w.write_part(t, "part-00000", data)] for t, data in tables.items()}
    w.commit(files, counts, {}, lineage)
    return w.dir


def make_workdir(workdir: str) -> dict[str, str]:
    raw = os.path.join(workdir, "raw")
    os.makedirs(raw, exist_ok=True)
    for name, body in (("bad.png", PNG_HEAD), ("empty.txt", b""), ("broken.png", PNG_HEAD),
                       ("odd.bin", b"\x00\x01\x02")):
        with open(os.path.join(raw, name), "wb") as f:
            f.write(body)
    rejected = to_table([
        {"uri": os.path.join(raw, "bad.png"), "stage": "ingest", "reason": "truncated"},
        {"uri": os.path.join(raw, "broken.png"), "stage": "ingest", "reason": "decode_error"},
        {"uri": os.path.join(raw, "empty.txt"), "stage": "ingest", "reason": "empty"},
        {"uri": os.path.join(raw, "odd.bin"), "stage": "ingest", "reason": "unsupported_format"},
    ], REJECTED)
    ex = _commit(storage.join(workdir, "examples"), "ingest", {"rejected": rejected},
                 {"examples": 20, "examples.image": 12, "examples.text": 8, "rejected": 4},
                 {"input": raw})
    pairs = _commit(storage.join(workdir, "pairs"), "synth", {},
                    {"pairs": 40, "llm_calls": 30, "cache_hits": 10},
                    {"examples": ex, "backend": "offline", "llm_model": "gemini-2.5-flash"})
    triples = to_table([
        {"pair_id": f"p{i}", "kind": "caption", "query_text": "q", "query_modality": "text",
         "positive_id": f"x{i}", "positive_modality": "image", "positive_score": 0.6 + i / 100,
         "negatives": [{"id": f"n{i}{j}", "score": 0.2 + (i * 3 + j) / 100,
                        "modality": "image" if j % 2 else "text", "rank": j} for j in range(3)],
         "checkpoint": "pft-x/step-4"} for i in range(20)], TRIPLE)
    mine = _commit(storage.join(workdir, "triples"), "mine", {"triples": triples},
                   {"triples": 20}, {"pairs": pairs})
    metrics = pa.table({"pair": ["text->image", "text->image", "text->text", "text->text"],
                        "dim": [32, 64, 32, 64], "r@1": [0.3, 0.4, 0.35, 0.5],
                        "r@5": [0.7, 0.8, 0.8, 0.9], "ndcg@10": [0.5, 0.6, 0.55, 0.7],
                        "random_r@1": [0.05] * 4, "random_r@5": [0.2] * 4,
                        "untrained_r@1": [0.06, 0.06, 0.07, 0.07], "untrained_r@5": [0.2] * 4,
                        "untrained_ndcg@10": [0.15] * 4,
                        "lexical_r@1": [None, None, 0.45, 0.45],
                        "lexical_r@5": [None, None, 0.7, 0.7],
                        "lexical_ndcg@10": [None, None, 0.6, 0.6], "queries": [20] * 4,
                        "gallery": [20] * 4}).to_pylist()
    metrics = to_table(metrics, METRICS)  # the fixed schema
    ev = _commit(storage.join(workdir, "eval"), "eval", {"metrics": metrics},
                 {"text->image:queries": 20}, {"pairs": pairs})
    runs = {}
    for stage, start in (("pft", 4.0), ("ft", 2.5)):
        run = storage.join(workdir, "checkpoints", f"{stage}-0123456789abcdef")
        storage.write_parquet(pa.table({"step": list(range(1, 11)),
                                        "loss": [start / (1 + s / 3) for s in range(10)]}),
                              storage.join(run, "metrics.parquet"))
        storage.write_bytes(storage.join(run, "lineage.json"), json.dumps({}).encode())
        runs[stage] = run
    return {"examples": ex, "pairs": pairs, "mine": mine, "eval": ev, **runs}
