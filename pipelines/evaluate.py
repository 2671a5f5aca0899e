"""Eval: held-out retrieval per modality pair, beside baselines that keep it honest.

For each `query->target` pair: R@1, R@5 and NDCG@10 of the checkpoint at every
Matryoshka size (`by_dim`; the top-level figures are the full size), the expected R@k of
a random ranking, the same architecture untrained (same seed; on an HF trunk: the trunk's
pretrained weights with the head at its start, models.trunk.initial_encoder), and for
text->text a BM25 baseline. The gallery is every held-out asset of the target modality.
The baselines that need a whole index in memory (BM25, untrained) read a seeded sample of
exactly `baseline_cap` items of a larger gallery (relevant items of the queries they
score first, then distractors), on a worker; the task's entry says so in
`baseline_sample`. The driver
holds queries (at most max_queries a task), per-item metadata and vectors, never the
gallery's ITEMs or the held-out Example rows: workers read the Pairs and Examples files,
build every task's gallery ITEMs and embed what the per-checkpoint cache lacks (mine's
cache: pipelines/ray/evaluate.py); the driver fills the vectors from the cache into
memory maps in its own temp. The untrained baseline is not a checkpoint and embeds in
its worker, its sampled gallery ITEMs read from the files a chunk at a time. Queries and
gallery both go through the checkpoint's own preprocessing (models.inputs): a gallery
ingested with another tokenizer is re-tokenized; other frame or audio settings are
refused. Relevance is the exact positive, or with a ground-truth file, any gallery asset
of the same scene key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from loom.models.checkpoint import resolve
from loom.models.handler import EncoderHandler
from loom.models.inputs import examples_spec
from loom.models.trunk import initial_encoder
from loom.pipelines.cluster import check_paths
from loom.pipelines.common import BadInput, cleanup_work, result, reuse, timed
from loom.pipelines.embed_cache import cache_keys
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import METRICS, Split, rows_of
from loom.schemas.splits import group_of
from rank_bm25 import BM25Okapi

KS = (1, 5)
BASELINES = ("random_", "untrained_", "lexical_")


BASELINE_CAP = 50_000  # gallery items the whole-index baselines (BM25, untrained) read
TOP = 10  # the deepest rank any metric reads (NDCG@10)
SCORE_CHUNK = 256  # queries scored at once: memory is chunk x block, not queries x gallery
SCORE_BYTES = 1 << 24  # ... against a block of the gallery: a chunk's scores <= 16 MiB
UNTRAINED_CHUNK = 8  # model batches of gallery ITEMs the untrained baseline reads at once


def top_k(scores: np.ndarray, k: int = TOP) -> np.ndarray:
    """[Q, min(k, N)] gallery indices by descending score, ties to the lower index (what a
    stable argsort of whole rows gives) from a partition, not a sort of every row."""
    n = scores.shape[1]
    k = min(k, n)
    if k == n:
        return np.argsort(-scores, axis=1, kind="stable")
    kth = np.partition(scores, n - k, axis=1)[:, n - k]  # each row's k-th largest (one copy)
    out = np.empty((len(scores), k), dtype=np.int64)
    for i, row in enumerate(scores):
        cand = np.flatnonzero(row >= kth[i])  # ascending, so the stable sort keeps ties
        out[i] = cand[np.argsort(-row[cand], kind="stable")][:k]
    return out


def score_chunk(gallery_rows: int, itemsize: int = 4) -> int:
    """Queries scored at once against `gallery_rows` items: SCORE_CHUNK, or fewer so one
    chunk's scores stay within SCORE_BYTES (top_k holds about two such arrays)."""
    return max(1, min(SCORE_CHUNK, SCORE_BYTES // (itemsize * max(1, gallery_rows))))


def top_k_in_chunks(n_queries: int, scores: Callable[[slice], np.ndarray], k: int,
                    chunk: int) -> np.ndarray:
    """top_k of every query's scores, `scores(rows)` giving a chunk of queries' rows."""
    parts = [top_k(scores(slice(i, i + chunk)), k) for i in range(0, n_queries, chunk)]
    return np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.int64)


def top_k_chunked(queries: np.ndarray, gallery: np.ndarray, k: int = TOP,
                  chunk: int | None = None, block: int | None = None) -> np.ndarray:
    """top_k of queries @ gallery.T: `chunk` query rows (default SCORE_CHUNK) against
    `block` gallery rows at a time (default: what keeps their scores within SCORE_BYTES),
    each block's top k merged into the chunk's running top k, ties to the lower gallery
    index as in top_k. So what is held is a chunk x block of scores whatever the gallery
    (scoring whole gallery rows was ~3 x 64 MiB of driver at 100,000 items), and the
    gallery is read once per query chunk."""
    n = len(gallery)
    k = min(k, n)
    chunk = chunk or SCORE_CHUNK
    block = block or max(k, SCORE_BYTES // (4 * chunk))
    if n <= block:
        return top_k_in_chunks(len(queries), lambda rows: queries[rows] @ gallery.T, k, chunk)
    parts = []
    for i in range(0, len(queries), chunk):
        q = queries[i : i + chunk]
        best_i, best_s = np.empty((len(q), 0), np.int64), np.empty((len(q), 0), np.float32)
        for b in range(0, n, block):
            scores = q @ gallery[b : b + block].T
            top = top_k(scores, k)
            cand_i = np.concatenate([best_i, top + b], axis=1)
            cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
            order = np.lexsort((cand_i, -cand_s), axis=-1)[:, :k]  # score, then index
            best_i = np.take_along_axis(cand_i, order, axis=1)
            best_s = np.take_along_axis(cand_s, order, axis=1)
        parts.append(best_i)
    return np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.int64)


def recall_at(scores: np.ndarray, relevant: list[set[int]], ks=KS) -> dict[str, float]:
    """scores [Q, N]; a hit at k if any relevant gallery index is in the top k."""
    return recall_from_top(top_k(scores, max(ks)), relevant, ks)


def recall_from_top(top: np.ndarray, relevant: list[set[int]], ks=KS) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"r@{k}"] = float(np.mean([bool(rel & set(row)) for row, rel in
                                       zip(top[:, :k].tolist(), relevant, strict=True)]))
    return out


def ndcg_at(scores: np.ndarray, relevant: list[set[int]], k: int = 10) -> float:
    """Mean NDCG@k with binary relevance (every gallery item of the query's scene counts)."""
    return ndcg_from_top(top_k(scores, k), relevant, k)


def ndcg_from_top(top: np.ndarray, relevant: list[set[int]], k: int = 10) -> float:
    k = min(k, top.shape[1])
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    vals = []
    for row, rel in zip(top[:, :k].tolist(), relevant, strict=True):
        dcg = sum(discount[i] for i, j in enumerate(row) if j in rel)
        vals.append(dcg / discount[: min(len(rel), k)].sum())
    return float(np.mean(vals))


def metrics_from_top(top: np.ndarray, relevant: list[set[int]]) -> dict[str, float]:
    return recall_from_top(top, relevant) | {"ndcg@10": ndcg_from_top(top, relevant)}


def retrieval_metrics(scores: np.ndarray, relevant: list[set[int]]) -> dict[str, float]:
    return metrics_from_top(top_k(scores, TOP), relevant)


def embedding_metrics(queries: np.ndarray, gallery: np.ndarray,
                      relevant: list[set[int]]) -> dict[str, float]:
    """retrieval_metrics of queries @ gallery.T, scored a chunk of queries at a time."""
    return metrics_from_top(top_k_chunked(queries, gallery), relevant)


def random_recall(n: int, relevant: list[set[int]], ks=KS) -> dict[str, float]:
    """Expected recall@k of a uniformly random ranking (exact, not sampled)."""
    out = {}
    for k in ks:
        k = min(k, n)
        vals = [1 - math.comb(n - len(r), k) / math.comb(n, k) for r in relevant]
        out[f"r@{k}"] = float(np.mean(vals))
    return out


def load_ground_truth(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    lines = storage.read_bytes(path).decode().splitlines()
    return {(rec := json.loads(line))["file"]: rec["key"] for line in lines if line.strip()}


def _key_of(example: dict, truth: dict[str, str]) -> str:
    """The example's ground-truth key, by the longest matching tail of a source URI; a
    document page is looked up as `<file>#p<page>` first."""
    meta = json.loads(example["metadata"]) if example.get("metadata") else {}
    page = meta.get("page") if isinstance(meta, dict) else None
    for uri in example["source_uris"]:
        parts = uri.replace("\\", "/").split("/")
        for n in range(1, len(parts) + 1):
            tail = "/".join(parts[-n:])
            key = (truth.get(f"{tail}#p{page}") if page is not None else None) or truth.get(tail)
            if key:
                return key
    return f"group:{group_of(example)}"  # no ground truth: the asset group is the key


def baseline_sample(n: int, relevant: list[set[int]], cap: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """(gallery rows, queries) the whole-index baselines read when the gallery passes
    `cap`, both sorted: exactly `cap` rows, the queries' relevant items first (queries
    taken in a seeded order while their items fit, so every one scored can hit), then a
    seeded sample of the others. None: the gallery is within the cap; they read it all."""
    if n <= cap:
        return None
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    queries = []
    for q in rng.permutation(len(relevant)):
        if len(keep | relevant[q]) <= cap:
            keep |= relevant[q]
            queries.append(int(q))
    rows = np.array(sorted(keep), dtype=np.int64)
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), rows)
    extra = rng.choice(rest, cap - len(rows), replace=False)
    return np.sort(np.concatenate([rows, extra])), np.array(sorted(queries), dtype=np.int64)


def _query_text(pair: dict) -> str:
    return pair.get("query_text") or ""


@dataclasses.dataclass
class _Task:
    """One (query modality, target modality) retrieval task, as the driver holds it: the
    queries' ITEMs (at most max_queries), the gallery's per-item metadata and where each
    item lives (an Examples file row, or a written positive), never the gallery's ITEMs.

    The gallery is every held-out Example of the target modality and every Example that
    holds a positive (a record's image), cut to the part kinds the pairs' positives use
    (a video's frames without its audio track), plus the written positives (an LLM's
    descriptions) of the held-out pairs. Relevant: the exact
    positive, and with ground truth any gallery item of the same scene key."""

    queries: list[dict]
    q_keys: np.ndarray  # embedding cache keys of the queries
    g_keys: np.ndarray  # and of the gallery
    rows: pa.Table  # the gallery's Examples rows: file, row, parts (in gallery order)
    inline: list[dict]  # the written positives' ITEMs, after those rows
    relevant: list[set[int]]
    lexical: tuple[list[str], pa.ChunkedArray] | None  # (query, gallery) texts for BM25

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.inline)

    @classmethod
    def build(cls, prepared: dict, plan: pa.Table) -> _Task:
        """From prepare_tasks' entry and the task's gallery plan rows (plan order). The
        gallery's columns stay Arrow: only the queries' relevant items become sets."""
        inline = prepared["inline"]
        inline_ids = pa.array([e["id"] for e in inline], pa.string())
        if len(inline) and pc.any(pc.is_in(inline_ids, value_set=plan.column("id"))).as_py():
            twice = pc.filter(inline_ids, pc.is_in(inline_ids, value_set=plan.column("id")))
            raise RuntimeError(f"written positive {twice[0]} is also a gallery Example")
        ids = pa.chunked_array([*plan.column("id").chunks, inline_ids], pa.string())
        keys = pa.chunked_array([*plan.column("key").cast(pa.string()).chunks,
                                 pa.array([e["key"] for e in inline], pa.string())], pa.string())
        qs = prepared["queries"]
        at = pc.index_in(pa.array([q["positive_id"] for q in qs], pa.string()), value_set=ids)
        if at.null_count:
            raise RuntimeError(f"{at.null_count} queries' positives are not in the gallery")
        pos_keys = keys.take(at)
        same = pc.indices_nonzero(pc.is_in(keys, value_set=pc.unique(pos_keys)))
        by_key: dict[str | None, set[int]] = {}  # the gallery items that share a positive's key
        for i, k in zip(same.to_pylist(), keys.take(same).to_pylist(), strict=True):
            by_key.setdefault(k, set()).add(i)
        relevant = [by_key[k] | {p} for k, p in zip(pos_keys.to_pylist(), at.to_pylist(),
                                                    strict=True)]
        lexical = None
        if prepared["lexical"]:
            lexical = ([q["text"] for q in qs], pa.chunked_array(
                [*plan.column("text").chunks, pa.array([e["text"] for e in inline],
                                                       pa.string())], pa.string()))
        q_dig = [q["digest"] for q in qs]
        i_dig = [e["digest"] for e in inline]
        g_keys = np.concatenate([*_plan_keys(plan),
                                 cache_keys([f"q:{d}" for d in i_dig], i_dig)])
        return cls([q["item"] for q in qs], cache_keys([f"q:{d}" for d in q_dig], q_dig),
                   g_keys, plan.select(["file", "row", "parts"]), [e["item"] for e in inline],
                   relevant, lexical)


def _task_plan(parts: list[str], name: str, schema: pa.Schema) -> pa.Table:
    """One task's gallery plan rows, in plan order, read a part at a time: the driver never
    holds every task's plan at once (with each task's copy, 2 x 230 bytes a gallery item)."""
    tables = [t.filter(pc.equal(t.column("task"), name))
              for t in (storage.read_parquet([p], schema=schema) for p in parts)]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _plan_keys(plan: pa.Table, step: int = 1 << 16) -> list[np.ndarray]:
    """The plan rows' embedding cache keys, `step` rows' ids as Python strings at a time."""
    return [cache_keys(plan.column("id").slice(s, step).to_pylist(),
                       plan.column("digest").slice(s, step).to_pylist())
            for s in range(0, len(plan), step)] or [np.zeros(0, "S16")]


def run_eval(pairs_uri: str, checkpoint: str, checkpoint_root: str, output_root: str,
             ground_truth: str | None = None, seed: int = 0, max_queries: int = 2000,
             dims: tuple[int, ...] = (), baseline_cap: int = BASELINE_CAP,
             cache_root: str | None = None) -> dict:
    """`dims` adds prefix sizes to the checkpoint's Matryoshka sizes: plain truncation of
    a model trained without Matryoshka losses is evaluated the same way. `baseline_cap`
    bounds the gallery the BM25 and untrained baselines index (module docstring).
    `cache_root` holds the embedding cache (default: the output root); mine's cache for
    the same checkpoint serves eval too."""
    import ray
    from loom.pipelines.embed_cache import EmbeddingCache
    from loom.pipelines.mine import _units
    from loom.pipelines.ray import evaluate as steps
    from loom.pipelines.ray.embed import embed_plan
    from loom.pipelines.ray.mine import embed_missing
    from loom.pipelines.ray.session import ensure_ray
    from loom.pipelines.ray.sizing import actor_deadline

    check_paths(pairs=pairs_uri, output=output_root, checkpoint_root=checkpoint_root,
                cache_root=cache_root)  # multi-node: no local paths
    pairs_uri, output_root = storage.absolute(pairs_uri), storage.absolute(output_root)
    checkpoint_root = storage.absolute(checkpoint_root)
    pairs_dir, pairs_manifest = mf.resolve_input(pairs_uri)
    if "pairs" not in pairs_manifest.tables:
        raise BadInput(f"{pairs_dir} is not a pairs dataset")
    ckpt_id = resolve(checkpoint_root, checkpoint)
    ex_dir, ex_manifest = mf.resolve_input(pairs_manifest.lineage["examples"])
    truth_digest = mf.listing_digest(storage.list_files(ground_truth)) if ground_truth else ""
    cfg = {"seed": seed, "max_queries": max_queries, "ground_truth": truth_digest,
           "baseline_cap": baseline_cap}
    if dims:
        cfg["dims"] = sorted(set(dims))
    version = mf.version_id("eval", [pairs_manifest.version, ckpt_id], cfg)
    writer = mf.VersionWriter(output_root, "eval", version)
    if (done := reuse(writer, "eval", checkpoint=ckpt_id)) is not None:
        return done
    timings: dict[str, float] = {}
    handler = EncoderHandler(checkpoint_root, ckpt_id)
    prep = handler.inputs()  # both sides: the checkpoint's tokenizer, its frame size
    prep.check_corpus(examples_spec(ex_dir), f"examples {ex_dir}")
    ckpt = handler.load()
    torch.manual_seed(seed)
    untrained = dataclasses.replace(ckpt, model=initial_encoder(ckpt.encoder_config))
    heldout_fraction = pairs_manifest.config.get("heldout_fraction", 0.2)
    truth = load_ground_truth(ground_truth)
    cache = EmbeddingCache(storage.absolute(cache_root) if cache_root else output_root,
                           {"checkpoint_root": checkpoint_root, "checkpoint": ckpt_id,
                            "spec_digest": prep.spec.digest()}, prep.encoder.out_dim)
    work = storage.join(writer.dir, mf.WORK, "eval")
    files = ex_manifest.tables.get("examples", [])
    table: dict[str, dict] = {}
    rows = []
    ensure_ray()
    tmp = tempfile.mkdtemp(prefix="loom-eval-")
    try:
        with timed(timings, "eval_s"):
            # Workers read the Pairs and Examples; the driver gets queries and metadata.
            prepared = ray.get(steps.prepare_tasks.remote(
                pairs_dir, pairs_manifest, ex_dir, ex_manifest, heldout_fraction, handler,
                truth, max_queries, work))
            units = _units(files, [storage.join(ex_dir, f.path) for f in files], work) + [
                {"kind": "items", "uris": [u], "plan": ""} for u in prepared["item_parts"]]
            cache.ensure_key()
            actors, cpus, gpus = embed_plan()  # each actor fits one node; a deadline to start
            with actor_deadline("eval embedding", cpus, gpus):
                embedded = embed_missing(units, cache, handler, heldout_fraction, actors, cpus,
                                         gpus, read=steps.gallery_reader(
                                             ex_dir, ex_manifest, handler, heldout_fraction,
                                             prepared["spec"], truth))
            plan_parts = [u["plan"] for u in units if u["kind"] == "examples"]
            tasks = {name: _Task.build(t, _task_plan(plan_parts, name, steps.PLAN_SCHEMA))
                     for name, t in sorted(prepared["tasks"].items())}
            del prepared
            untrained_ref = ray.put(untrained)  # one copy for every task's baselines
            pending = {name: _baselines(task, baseline_cap, seed, untrained_ref, ex_dir,
                                        ex_manifest, handler)
                       for name, task in tasks.items()}  # on workers, beside the ranking
            vectors = _fill(tasks, cache, tmp)
            sizes = sorted({*ckpt.encoder_config.embed_dims,
                            *(d for d in dims if 0 < d < ckpt.encoder_config.out_dim)})
            for t, (name, task) in enumerate(tasks.items()):
                q_full, g_full = vectors[name]
                by_dim = {}
                for d in sizes:  # nested sizes: the first d coordinates, renormalized
                    qd = _renorm(q_full[:, :d])
                    gd = _renorm_map(g_full, d, os.path.join(tmp, f"gallery-{t}-d{d}.npy"))
                    by_dim[d] = embedding_metrics(qd, gd, task.relevant)
                entry = dict(by_dim[sizes[-1]])
                entry |= {f"random_{k}": v for k, v in
                          random_recall(task.size, task.relevant).items()}
                ref, sample = pending.pop(name)
                base = ray.get(ref)
                entry |= {f"untrained_{k}": v for k, v in base["untrained"].items()}
                if base["lexical"] is not None:
                    entry |= {f"lexical_{k}": v for k, v in base["lexical"].items()}
                entry |= {"queries": len(task.queries), "gallery": task.size}
                if sample is not None:
                    entry["baseline_sample"] = {"gallery": task.size, "cap": baseline_cap,
                                                "seed": seed, "queries": len(sample[1])}
                table[name] = entry | {"by_dim": {str(d): m for d, m in by_dim.items()}}
                baselines = {k: v for k, v in entry.items() if k.startswith(BASELINES)}
                for d, m in by_dim.items():  # one row per pair and size; baselines repeated
                    rows.append({"pair": name, "dim": d, **m, **baselines,
                                 "queries": len(task.queries), "gallery": task.size})
                del vectors[name], q_full, g_full, gd
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not table:
        raise BadInput("no held-out queries with a held-out positive to evaluate")
    files = [writer.write_part("metrics", "part-00000", metrics_table(rows))]
    counts = {f"{name}:queries": int(e["queries"]) for name, e in table.items()}
    lineage = {"pairs": pairs_dir, "checkpoint": ckpt_id, "checkpoint_root": checkpoint_root,
               "ground_truth": ground_truth, "timings": timings,
               "extra": {"eval": table, "embedding": {"embedded": embedded["embedded"],
                                                      "cache": cache.dir}}}
    manifest = writer.commit({"metrics": files}, counts, cfg, lineage)
    cleanup_work(writer.dir)
    return result("eval", manifest, writer.dir, False, checkpoint=ckpt_id, eval=table,
                  timings=timings, embedding=lineage["extra"]["embedding"])


def _fill(tasks: dict[str, _Task], cache, tmp: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every task's (queries, gallery) vectors from the cache: the distinct vectors into a
    memory-mapped file in the driver's own temp, then each gallery into its own .npy map."""
    keys = [k for t in tasks.values() for k in (t.q_keys, t.g_keys)]
    unique, where = np.unique(np.concatenate(keys), return_inverse=True) if keys else \
        (np.zeros(0, "S16"), np.zeros(0, np.int64))
    vecs = np.lib.format.open_memmap(os.path.join(tmp, "unique.npy"), "w+", np.float32,
                                     (max(len(unique), 1), cache.dim))
    if (found := cache.fill(unique, vecs)) != len(unique):
        raise RuntimeError(f"embedding cache {cache.dir} lacks {len(unique) - found} of "
                           f"{len(unique)} vectors this run embedded or found")
    out, at = {}, 0
    step = max(1, (1 << 22) // (4 * cache.dim))
    for name, t in tasks.items():
        q = vecs[where[at : at + len(t.q_keys)]]
        at += len(t.q_keys)
        rows = where[at : at + len(t.g_keys)]
        at += len(t.g_keys)
        g = np.lib.format.open_memmap(os.path.join(tmp, f"gallery-{len(out)}.npy"), "w+",
                                      np.float32, (len(rows), cache.dim))
        for s in range(0, len(rows), step):
            g[s : s + step] = vecs[rows[s : s + step]]
        out[name] = (q, g)
    return out


def _baselines(task: _Task, cap: int, seed: int, untrained, ex_dir: str,
               ex_manifest: mf.Manifest, handler: EncoderHandler):
    """(an ObjectRef of the untrained and lexical metrics, the sample or None): the task's
    capped, seeded sample is chosen here; its gallery ITEMs are read, embedded and indexed
    by a worker (pipelines.ray.evaluate.baseline_metrics), so the driver holds neither
    the sample's vectors nor BM25's index."""
    from loom.pipelines.ray.evaluate import baseline_metrics

    sample = baseline_sample(task.size, task.relevant, cap, seed)
    rows, qs = (sample if sample is not None else
                (np.arange(task.size), np.arange(len(task.queries))))
    n = len(task.rows)
    relevant = [set(np.searchsorted(rows, sorted(task.relevant[q])).tolist())
                for q in qs]  # rows is sorted and holds every scored query's items
    lexical = None
    if task.lexical is not None:
        q_texts, g_texts = task.lexical
        lexical = ([q_texts[q] for q in qs], g_texts.take(pa.array(rows, pa.int64())))
    ref = baseline_metrics.remote(
        ex_dir, ex_manifest, handler, untrained, [task.queries[q] for q in qs],
        task.rows.take(pa.array(rows[rows < n], pa.int64())),
        [task.inline[r - n] for r in rows[rows >= n]], relevant, lexical)
    return ref, sample


def heldout_rows(pairs: pa.Table) -> list[dict]:
    """The held-out pairs as rows: filtered in Arrow, so train rows never become dicts
    (inline query parts' features stay float16 arrays)."""
    return rows_of(pairs.filter(pc.equal(pairs["split"], Split.HELDOUT.value)))


def metrics_table(rows: list[dict]) -> pa.Table:
    """The rows in the fixed METRICS schema (schemas/records.py): every column is there
    whatever the first row holds (image pairs sort first and have no lexical_* baseline;
    from_pylist alone would take their keys and lose BM25). Absent keys are null."""
    return pa.Table.from_pylist(rows, schema=METRICS)


def table_from_rows(rows: list[dict]) -> dict[str, dict]:
    """The metrics table (one row per pair and size) back to run_eval's `eval` object."""
    table: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["pair"], r["dim"])):
        entry = table.setdefault(row["pair"], {"by_dim": {}})
        sizes = {k: row[k] for k in ("r@1", "r@5", "ndcg@10")}
        entry["by_dim"][str(row["dim"])] = sizes
        entry |= sizes | {k: v for k, v in row.items() if k.startswith(BASELINES)
                          and v is not None}  # the largest size ends on top
        entry |= {"queries": row["queries"], "gallery": row["gallery"]}
    return table


def format_table(table: dict[str, dict]) -> str:
    """The eval table as aligned text: one line per modality pair and Matryoshka size."""
    head = ["pair", "dim", "R@1", "R@5", "NDCG@10", "random R@1", "untrained R@1",
            "lexical R@1", "queries"]
    lines = [head]
    for name, e in table.items():
        for d, m in (e.get("by_dim") or {}).items():
            lines.append([name, d, f"{m['r@1']:.3f}", f"{m['r@5']:.3f}", f"{m['ndcg@10']:.3f}",
                          f"{e['random_r@1']:.4f}", f"{e['untrained_r@1']:.3f}",
                          f"{e['lexical_r@1']:.3f}" if "lexical_r@1" in e else "-",
                          str(int(e["queries"]))])
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def _renorm_map(x: np.ndarray, d: int, path: str) -> np.ndarray:
    """_renorm(x[:, :d]) into a memory-mapped file, a chunk of rows at a time (row by row
    the same values): the driver's memory never holds a whole gallery's vectors."""
    out = np.lib.format.open_memmap(path, "w+", np.float32, (len(x), d))
    step = max(1, (1 << 22) // (4 * max(1, x.shape[1])))
    for s in range(0, len(x), step):
        out[s : s + step] = _renorm(x[s : s + step, :d])
    return out


def _renorm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _bm25_top(queries: list[str], texts: list[str], k: int = TOP,
              chunk: int | None = None) -> np.ndarray:
    """BM25 over lowercased words (the lexical baseline where both sides are text): each
    query's top k gallery rows, scored `chunk` queries at a time (default: score_chunk
    of its float64 scores), so what is held is chunk x gallery scores (a 2,000 x 50,000
    float64 matrix and its partition were 1.6 GB of driver at 1M examples)."""
    bm25 = BM25Okapi([t.lower().split() or [""] for t in texts])
    return top_k_in_chunks(
        len(queries), lambda rows: np.stack([bm25.get_scores(q.lower().split())
                                             for q in queries[rows]]),
        k, chunk or score_chunk(len(texts), 8))
