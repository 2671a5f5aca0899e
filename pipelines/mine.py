"""Mine: train Pairs + corpus + a checkpoint -> triples with modality-aware hard negatives.

The checkpoint resolves once (`latest` included) and its id, spec digest and the mining
config go into the version id and the manifest. Both sides are prepared with the
checkpoint's own preprocessing (models.inputs: text re-tokenized with its tokenizer;
a corpus decoded with other frame or audio settings is refused, exit 2). Corpus and query embeddings come from the
per-checkpoint cache (pipelines.embed_cache); what is missing is embedded on Ray (one
encoder per actor). The driver holds file names, counts and histograms, never rows:
workers read the Examples and Pairs files, decide cache hits, embed, assemble the vectors
per modality and search them (pipelines.ray.mine). Held-out assets never become candidates. The search, exclusions,
false-negative rules and sampling are transforms.mining; the run reports counts per rule,
score histograms and, for ANN-searched modalities, the index's measured recall@k.
"""

from __future__ import annotations

from loom.models.checkpoint import resolve
from loom.models.handler import EncoderHandler
from loom.models.inputs import examples_spec
from loom.pipelines.cluster import check_paths
from loom.pipelines.common import BadInput, cleanup_work, result, reuse, timed
from loom.pipelines.embed_cache import EmbeddingCache
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.transforms.mining import EXCLUSIONS, RULES, MiningConfig, merge_results


def run_mine(pairs_uri: str, output_root: str, checkpoint: str, checkpoint_root: str,
             config: MiningConfig | None = None, corpus_uri: str | None = None,
             cache_root: str | None = None) -> dict:
    """`cache_root` holds the embedding cache (default: the output root)."""
    import ray
    from loom.pipelines.ray import mine as steps
    from loom.pipelines.ray.embed import embed_plan
    from loom.pipelines.ray.session import ensure_ray
    from loom.pipelines.ray.sizing import actor_deadline

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
    cache = EmbeddingCache(cache_root or output_root,
                           {"checkpoint_root": checkpoint_root, "checkpoint": ckpt_id,
                            "spec_digest": spec.digest()}, dim)
    work = storage.join(writer.dir, mf.WORK, "mine")
    files = corpus_manifest.tables.get("examples", [])
    example_files = [storage.join(corpus_dir, f.path) for f in files]
    ensure_ray()
    with timed(timings, "embed_s"):
        queries = ray.get(steps.prepare_queries.remote(
            pairs_dir, pairs_manifest, example_files, heldout_fraction, handler, work,
            steps.SLICE_ROWS, steps.PAIR_BATCH))
        units = _units(files, example_files, work) + [
            {"kind": "items", "uris": [u], "plan": ""} for u in queries["item_parts"]]
        cache.ensure_key()
        actors, cpus, gpus = embed_plan()  # each actor fits one node; a deadline to start
        with actor_deadline("mine embedding", cpus, gpus):
            embedded = steps.embed_missing(units, cache, handler, heldout_fraction, actors,
                                           cpus, gpus)
    with timed(timings, "search_s"):
        plan_parts = [u["plan"] for u in units if u["kind"] == "examples"]
        vectors = ray.get(steps.assemble.remote(cache, plan_parts, queries["plan"], work,
                                                config))
        slices = ray.get([steps.search.remote(work, vectors["spans"], config, writer.dir,
                                              ckpt_id, dim, plan, lo, hi, vectors["profile"],
                                              steps.ROWS_PER_PART)
                          for plan, (lo, hi) in zip(queries["plan"], queries["slices"],
                                                    strict=True)])
        found = merge_results(slices) | {
            "files": [f for s in slices for f in s["files"]],
            "triples": sum(s["triples"] for s in slices),
            "negatives": sum(s["negatives"] for s in slices)}
    n_corpus = vectors["corpus"]
    e_counts = {"embedded": embedded["embedded"],
                "cache_hits": n_corpus + queries["positions"] - embedded["positions"]}
    mc = found["counts"]
    counts = {"triples": found["triples"], "corpus": n_corpus,
              "heldout_excluded": corpus_manifest.rows("examples") - n_corpus,
              "negatives": found["negatives"],
              "embedded": e_counts["embedded"], "cache_hits": e_counts["cache_hits"],
              "filtered_false_negatives": sum(mc[r] for r in RULES),
              "filtered_near_duplicates": mc["near_duplicate"]}
    counts |= {f"filtered.{r}": mc[r] for r in (*EXCLUSIONS, *RULES)}
    counts |= {k: v for k, v in mc.items() if k.startswith("kept.")}
    counts |= {k: mc[k] for k in ("considered", "unfilled", "positive_not_in_corpus")}
    counts["query_not_in_corpus"] = queries["missing_query"]
    profiles = found["modalities"]
    collapsed = sorted(m for m, prof in profiles.items() if prof["collapsed"])
    warnings = [f"{m}: embeddings collapsed (mean pairwise cosine "
                f"{profiles[m]['mean_cosine']:.3f}); false-negative rules calibrated "
                f"to its floor {profiles[m]['floor']:.3f}" for m in collapsed]
    extra = {"checkpoint": ckpt_id, "search": found["search"], "cache": cache.dir,
             "modalities": profiles, "warnings": warnings}
    lineage = {"pairs": pairs_dir, "pairs_version": pairs_manifest.version,
               "examples": corpus_dir, "corpus_version": corpus_manifest.version,
               "checkpoint": ckpt_id, "checkpoint_root": checkpoint_root,
               "spec_digest": spec.digest(), "histograms": found["histograms"],
               "timings": timings, "extra": extra}
    manifest = writer.commit({"triples": found["files"]}, counts, cfg, lineage)
    cleanup_work(writer.dir)
    return result("mine", manifest, writer.dir, False, timings=timings,
                  histograms=found["histograms"], **extra)


ROWS_PER_UNIT = 1024  # Examples rows per reading task (the actors' call size)


def _units(files: list[mf.FileRecord], uris: list[str], work: str) -> list[dict]:
    """Consecutive Examples files of about ROWS_PER_UNIT rows: one reading task each, and
    one corpus plan part (named by its place, so a rerun overwrites it)."""
    units: list[dict] = []
    rows = 0
    for f, uri in zip(files, uris, strict=True):
        if not units or rows >= ROWS_PER_UNIT:
            units.append({"kind": "examples", "uris": [],
                          "plan": storage.join(work, "corpus", f"plan-{len(units):05d}.parquet")})
            rows = 0
        units[-1]["uris"].append(uri)
        rows += f.rows
    return units
