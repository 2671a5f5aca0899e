"""Mine: train Pairs + corpus + a checkpoint -> triples with modality-aware hard negatives.

The checkpoint resolves once (`latest` included) and its id, spec digest and the mining
config go into the version id and the manifest. Both sides are prepared with the
checkpoint's own preprocessing (models.inputs: text re-tokenized with its tokenizer;
a corpus decoded with other frame or audio settings is refused, exit 2). Corpus and query embeddings come from the
per-checkpoint cache (pipelines.embed_cache); what is missing is embedded on Ray (one
encoder per actor). Held-out assets never become candidates. The search, exclusions,
false-negative rules and sampling are transforms.mining; the run reports counts per rule,
score histograms and, for ANN-searched modalities, the index's measured recall@k.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
from loom.models.checkpoint import resolve
from loom.models.handler import EncoderHandler
from loom.models.inputs import examples_spec
from loom.pipelines.cluster import check_paths
from loom.pipelines.common import BadInput, result, reuse, timed
from loom.pipelines.embed_cache import EmbeddingCache, item_digest
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import TRIPLE, Split
from loom.schemas.splits import example_split
from loom.transforms.items import positive_item, query_item
from loom.transforms.mining import EXCLUSIONS, RULES, Candidates, MiningConfig, mine

ROWS_PER_PART = 4096


def run_mine(pairs_uri: str, output_root: str, checkpoint: str, checkpoint_root: str,
             config: MiningConfig | None = None, corpus_uri: str | None = None,
             cache_root: str | None = None) -> dict:
    """`cache_root` holds the embedding cache (default: the output root)."""
    check_paths(pairs=pairs_uri, output=output_root,
                checkpoint_root=checkpoint_root)  # multi-node: no local paths
    config = config or MiningConfig()
    pairs_uri, output_root = storage.absolute(pairs_uri), storage.absolute(output_root)
    checkpoint_root = storage.absolute(checkpoint_root)
    corpus_uri = storage.absolute(corpus_uri) if corpus_uri else None
    pairs_dir, pairs_manifest = mf.resolve_input(pairs_uri)
    if "pairs" not in pairs_manifest.tables:
        raise BadInput(f"{pairs_dir} is not a pairs dataset")
    try:
        ckpt_id = resolve(checkpoint_root, checkpoint)  # `latest` resolves once, here
    except FileNotFoundError as e:
        raise BadInput(str(e)) from e
    corpus_dir, corpus_manifest = mf.resolve_input(corpus_uri or pairs_manifest.lineage["examples"])
    heldout_fraction = pairs_manifest.config.get("heldout_fraction", 0.2)
    cfg = config.model_dump(mode="json")
    version = mf.version_id("mine", [pairs_manifest.version, corpus_manifest.version, ckpt_id], cfg)
    writer = mf.VersionWriter(output_root, "mine", version)
    if (done := reuse(writer, "mine")) is not None:
        return done
    timings: dict[str, float] = {}
    handler = EncoderHandler(checkpoint_root, ckpt_id)
    prep = handler.inputs()  # the checkpoint's spec and sizes; no weights in the driver
    spec, dim = prep.spec, prep.encoder.out_dim
    prep.check_corpus(examples_spec(corpus_dir), f"corpus {corpus_dir}")
    pairs = [p for p in mf.read_table(pairs_dir, pairs_manifest, "pairs").to_pylist()
             if p["split"] == Split.TRAIN.value]
    examples = mf.read_table(corpus_dir, corpus_manifest, "examples").to_pylist()
    # Held-out assets are never candidates; (modality, id) order lets the search use the
    # embedded vectors in place.
    corpus = sorted((e for e in examples if example_split(e, heldout_fraction) == Split.TRAIN),
                    key=lambda e: (e["modality"], e["id"]))
    by_id = {e["id"]: e for e in corpus}
    del examples
    tokenizer, max_tokens = prep.tokenizer, spec.max_text_tokens
    q_built = [query_item(p, by_id, tokenizer, max_tokens) for p in pairs]
    missing_query = sum(q is None for q in q_built)
    pairs = [p for p, q in zip(pairs, q_built, strict=True) if q is not None]
    q_items = [q for q in q_built if q is not None]
    del q_built
    inline = [i for i, p in enumerate(pairs) if p.get("positive_text")]
    cache = EmbeddingCache(cache_root or output_root,
                           {"checkpoint_root": checkpoint_root, "checkpoint": ckpt_id,
                            "spec_digest": spec.digest()}, dim)

    def embed(items: list[dict]):
        from loom.pipelines.ray.embed import embed_on_ray, embed_plan
        from loom.pipelines.ray.sizing import actor_deadline

        actors, cpus, gpus = embed_plan()  # each actor fits one node; a deadline to start
        with actor_deadline("mine embedding", cpus, gpus):
            return embed_on_ray(items, handler, actors=actors, cpus_per_actor=cpus,
                                gpus_per_actor=gpus)[1]

    with timed(timings, "embed_s"):
        cand_items = [prep.example(e) for e in corpus]  # re-tokenized with its tokenizer
        digests = [item_digest(it) for it in cand_items]  # also the exact-duplicate key
        p_items = [positive_item(pairs[i], by_id, tokenizer, max_tokens) for i in inline]
        extra = q_items + p_items
        extra_digests = [item_digest(q) for q in extra]
        for item, d in zip(extra, extra_digests, strict=True):  # same content, one embedding
            item["id"] = f"q:{d}"
        # One call, so one Ray Data job embeds whatever corpus items and queries are missing.
        vecs, e_counts = cache.embed(cand_items + extra, embed, digests + extra_digests)
        cand_vecs = vecs[: len(corpus)]
        q_vecs = vecs[len(corpus) : len(corpus) + len(q_items)]
        pos_vecs = np.full((len(pairs), vecs.shape[1]), np.nan, dtype=np.float32)
        pos_vecs[inline] = vecs[len(corpus) + len(q_items) :]
        del cand_items, q_items, p_items, vecs
    with timed(timings, "search_s"):
        cands = Candidates.build([e["id"] for e in corpus], [e["modality"] for e in corpus],
                                 cand_vecs, [_asset_keys(e) for e in corpus],
                                 digests)
        mined = mine(cands, q_vecs, [p["pair_id"] for p in pairs],
                     [p["positive_id"] for p in pairs], [p["positive_modality"] for p in pairs],
                     config, positive_vectors=pos_vecs,
                     anchor_ids=[(p.get("query_ref") or {}).get("example_id") for p in pairs])
    with timed(timings, "write_s"):
        rows = [{name: p.get(name) for name in TRIPLE.names}
                | {"positive_score": None if s != s else float(s), "negatives": negs,
                   "checkpoint": ckpt_id, "mining_config": json.dumps(cfg, sort_keys=True)}
                for p, s, negs in zip(pairs, mined.positive_scores, mined.negatives, strict=True)]
        rows.sort(key=lambda r: r["pair_id"])
        files = [writer.write_part("triples", f"part-{i // ROWS_PER_PART:05d}",
                                   pa.Table.from_pylist(rows[i : i + ROWS_PER_PART], schema=TRIPLE))
                 for i in range(0, len(rows), ROWS_PER_PART)]
    mc = mined.counts
    counts = {"triples": len(rows), "corpus": len(corpus),
              "heldout_excluded": corpus_manifest.rows("examples") - len(corpus),
              "negatives": sum(len(r["negatives"]) for r in rows),
              "embedded": e_counts["embedded"], "cache_hits": e_counts["cache_hits"],
              "filtered_false_negatives": sum(mc[r] for r in RULES),
              "filtered_near_duplicates": mc["near_duplicate"]}
    counts |= {f"filtered.{r}": mc[r] for r in (*EXCLUSIONS, *RULES)}
    counts |= {k: v for k, v in mc.items() if k.startswith("kept.")}
    counts |= {k: mc[k] for k in ("considered", "unfilled", "positive_not_in_corpus")}
    counts["query_not_in_corpus"] = missing_query
    collapsed = sorted(m for m, prof in mined.modalities.items() if prof["collapsed"])
    warnings = [f"{m}: embeddings collapsed (mean pairwise cosine "
                f"{mined.modalities[m]['mean_cosine']:.3f}); false-negative rules calibrated "
                f"to its floor {mined.modalities[m]['floor']:.3f}" for m in collapsed]
    extra = {"checkpoint": ckpt_id, "search": mined.search, "cache": cache.dir,
             "modalities": mined.modalities, "warnings": warnings}
    lineage = {"pairs": pairs_dir, "pairs_version": pairs_manifest.version,
               "examples": corpus_dir, "corpus_version": corpus_manifest.version,
               "checkpoint": ckpt_id, "checkpoint_root": checkpoint_root,
               "spec_digest": spec.digest(), "histograms": mined.histograms,
               "timings": timings, "extra": extra}
    manifest = writer.commit({"triples": files}, counts, cfg, lineage)
    return result("mine", manifest, writer.dir, False, timings=timings,
                  histograms=mined.histograms, **extra)




def _asset_keys(example: dict) -> list[str]:
    """Keys shared by parts and sources of one asset: PDF document id, source URIs."""
    keys = [f"src:{u}" for u in example.get("source_uris") or []]
    meta = json.loads(example["metadata"]) if example.get("metadata") else {}
    if isinstance(meta, dict) and meta.get("document_id"):
        keys.append(f"doc:{meta['document_id']}")
    return keys
