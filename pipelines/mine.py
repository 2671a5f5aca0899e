"""Mine: train Pairs + corpus + a checkpoint -> triples with modality-aware hard negatives."""

from __future__ import annotations

import json

import pyarrow as pa

from models.checkpoint import load_checkpoint, resolve
from pipelines.common import BadInput, result, reuse, timed
from schemas import manifest as mf
from schemas import storage
from schemas.records import TRIPLE, Split
from schemas.splits import split_for
from transforms.items import example_to_item, text_to_item
from transforms.mining import MiningConfig, select_negatives
from transforms.tokenizer import TextTokenizer


def run_mine(pairs_uri: str, output_root: str, checkpoint: str, checkpoint_root: str,
             config: MiningConfig | None = None, corpus_uri: str | None = None) -> dict:
    from pipelines.ray.embed import embed_on_ray

    config = config or MiningConfig()
    pairs_uri, output_root = storage.absolute(pairs_uri), storage.absolute(output_root)
    checkpoint_root = storage.absolute(checkpoint_root)
    corpus_uri = storage.absolute(corpus_uri) if corpus_uri else None
    pairs_dir, pairs_manifest = mf.resolve_input(pairs_uri)
    if "pairs" not in pairs_manifest.tables:
        raise BadInput(f"{pairs_dir} is not a pairs dataset")
    ckpt_id = resolve(checkpoint_root, checkpoint)  # `latest` resolves once, here
    corpus_dir, corpus_manifest = mf.resolve_input(corpus_uri or pairs_manifest.lineage["examples"])
    heldout_fraction = pairs_manifest.config.get("heldout_fraction", 0.2)
    cfg = config.model_dump()
    version = mf.version_id("mine", [pairs_manifest.version, corpus_manifest.version, ckpt_id], cfg)
    writer = mf.VersionWriter(output_root, "mine", version)
    if (done := reuse(writer, "mine", checkpoint=ckpt_id)) is not None:
        return done
    timings: dict[str, float] = {}
    ckpt = load_checkpoint(checkpoint_root, ckpt_id)
    tokenizer = TextTokenizer.from_json(ckpt.spec.tokenizer_json)
    pairs = [p for p in mf.read_table(pairs_dir, pairs_manifest, "pairs").to_pylist()
             if p["split"] == Split.TRAIN.value]
    examples = mf.read_table(corpus_dir, corpus_manifest, "examples").to_pylist()
    # Held-out assets are never negatives.
    corpus = [e for e in examples if split_for(e["id"], heldout_fraction) == Split.TRAIN]
    with timed(timings, "embed_s"):
        cand_items = [example_to_item(e) for e in corpus]
        q_items = [text_to_item(f"q:{p['pair_id']}", p["query_text"], tokenizer,
                                ckpt.spec.max_text_tokens) for p in pairs]
        cand_ids, cand_vecs = embed_on_ray(cand_items, checkpoint_root, ckpt_id)
        _, q_vecs = embed_on_ray(q_items, checkpoint_root, ckpt_id)
    modality_of = {e["id"]: e["modality"] for e in corpus}
    pos_row = {c: i for i, c in enumerate(cand_ids)}
    rows, stats = [], {}
    with timed(timings, "search_s"):
        for modality in sorted({p["positive_modality"] for p in pairs}):
            sel = [i for i, p in enumerate(pairs) if p["positive_modality"] == modality]
            cands = [i for i, c in enumerate(cand_ids) if modality_of[c] == modality]
            negs, st = select_negatives(q_vecs[sel], [pairs[i]["positive_id"] for i in sel],
                                        [cand_ids[i] for i in cands], cand_vecs[cands], config)
            stats[modality] = st
            for qi, n in zip(sel, negs, strict=True):
                p = pairs[qi]
                pr = pos_row.get(p["positive_id"])
                rows.append({
                    "pair_id": p["pair_id"], "kind": p["kind"], "query_text": p["query_text"],
                    "query_modality": p["query_modality"], "positive_id": p["positive_id"],
                    "positive_modality": modality,
                    "positive_score": float(q_vecs[qi] @ cand_vecs[pr]) if pr is not None else None,
                    "negatives": [x | {"modality": modality} for x in n],
                    "checkpoint": ckpt_id, "mining_config": json.dumps(cfg, sort_keys=True),
                })
    rows.sort(key=lambda r: r["pair_id"])
    files = [writer.write_part("triples", f"part-{i // 4096:05d}",
                               pa.Table.from_pylist(rows[i : i + 4096], schema=TRIPLE))
             for i in range(0, len(rows), 4096)]
    counts = {"triples": len(rows), "corpus": len(corpus),
              "negatives": sum(len(r["negatives"]) for r in rows),
              "filtered_false_negatives": sum(s["false_negative"] for s in stats.values()),
              "filtered_near_duplicates": sum(s["near_duplicate"] for s in stats.values())}
    lineage = {"pairs": pairs_dir, "pairs_version": pairs_manifest.version,
               "examples": corpus_dir, "corpus_version": corpus_manifest.version,
               "checkpoint": ckpt_id, "checkpoint_root": checkpoint_root,
               "spec_digest": ckpt.spec.digest(), "rules": stats, "timings": timings}
    manifest = writer.commit({"triples": files}, counts, cfg, lineage)
    return result("mine", manifest, writer.dir, False, checkpoint=ckpt_id, timings=timings)
