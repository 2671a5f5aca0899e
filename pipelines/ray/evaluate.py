"""Eval's Ray steps: the driver gets per-item metadata and vectors, never Example rows.

1. `prepare_tasks` (one task): the held-out Pairs grouped into tasks, the metadata of the
   held-out Examples they cite (modality, part kinds, relevance key), each task's queries
   (at most `max_queries`) and written positives as ITEMs, written as item parts for the
   cache, and each task's gallery rule (target modality, positive ids, part kinds) as
   `tasks.parquet` for the reading tasks.
2. `embed_missing` (pipelines.ray.mine, one Ray Data job): reading tasks turn Examples
   files (held-out rows only) into every task's gallery ITEMs, write the gallery plan (task,
   id, digest, relevance key, lexical text, file and row) per file group, and drop what
   the embedding cache holds; the actor pool embeds the rest into cache parts (the cache
   mine uses for the same checkpoint).
3. The driver reads the plan's small columns and fills the vectors from the cache into
   memory-mapped .npy files in its own local temp (nodes share no disk).
4. `baseline_metrics` (a task per retrieval task): the untrained and lexical baselines on
   the task's capped sample, its gallery ITEMs read from their files a chunk at a time,
   so neither the sample's vectors nor BM25's index are in the driver.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import ray
from loom.models.handler import EncoderHandler
from loom.pipelines.embed_cache import item_digest
from loom.pipelines.ray.embed import ROWS_PER_CALL
from loom.pipelines.ray.mine import _items_table
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import Split, pair_name, rows_of
from loom.schemas.splits import GROUP_COLUMNS, example_split
from loom.transforms.items import example_to_item, positive_item, query_item

PLAN_SCHEMA = pa.schema([("task", pa.string()), ("id", pa.string()), ("digest", pa.string()),
                         ("key", pa.string()), ("text", pa.string()), ("file", pa.int64()),
                         ("row", pa.int64()), ("parts", pa.list_(pa.int64()))])
TASK_SCHEMA = pa.schema([("name", pa.string()), ("target", pa.string()),
                         ("kinds", pa.list_(pa.string())), ("lexical", pa.bool_()),
                         ("positives", pa.list_(pa.string()))])


def heldout_rows_of(ex_dir: str, manifest: mf.Manifest, f: mf.FileRecord,
                    heldout_fraction: float, ids: set[str] | None = None
                    ) -> tuple[np.ndarray, list[dict]]:
    """(row numbers, rows) of one Examples file's held-out Examples (those in `ids` when
    given): the split is decided on the id and group columns alone (in Arrow), so
    train rows never become dicts."""
    keys = mf.read_file(ex_dir, manifest, "examples", f, ["id", *GROUP_COLUMNS]).to_pylist()
    rows = np.array([i for i, k in enumerate(keys)
                     if (ids is None or k["id"] in ids)
                     and example_split(k, heldout_fraction) == Split.HELDOUT], dtype=np.int64)
    if not len(rows):
        return rows, []
    return rows, rows_of(mf.read_file(ex_dir, manifest, "examples", f).take(rows))  # features: float16


def _kinds_of(pairs: list[dict], meta: dict[str, dict]) -> list[str] | None:
    """evaluate._positive_kinds from the Examples' part kinds (sorted; None: whole)."""
    for p in pairs:
        ex = meta.get(p["positive_id"])
        if p.get("positive_parts") is not None and ex is not None:
            return sorted({ex["kinds"][i] for i in p["positive_parts"]
                           if 0 <= i < len(ex["kinds"])})
    return None


def _cut(kinds_list: list[str], kinds: list[str] | None) -> list[int] | None:
    return None if kinds is None else [i for i, k in enumerate(kinds_list) if k in kinds]


@ray.remote
def prepare_tasks(pairs_dir: str, pairs_manifest: mf.Manifest, ex_dir: str,
                  ex_manifest: mf.Manifest, heldout_fraction: float, handler: EncoderHandler,
                  truth: dict[str, str], max_queries: int, work: str) -> dict:
    """Step 1 (module docstring). Returns per task: its queries (positive id, query text,
    digest, ITEM) and written positives (id, relevance key, text, digest, ITEM)."""
    from loom.pipelines.evaluate import _key_of, _query_text, heldout_rows

    prep = handler.inputs()
    tokenizer, max_tokens = prep.tokenizer, prep.spec.max_text_tokens
    pairs = heldout_rows(mf.read_table(pairs_dir, pairs_manifest, "pairs"))
    groups: dict[str, list[dict]] = {}
    for p in pairs:  # natural pairs (loom pairs) are their own tasks: `image->text:natural`
        name = pair_name(p["query_modality"], p["positive_modality"])
        groups.setdefault(name + (":natural" if p.get("source") == "natural" else ""),
                          []).append(p)
    cited = {p["positive_id"] for p in pairs} | {
        (p.get("query_ref") or {}).get("example_id", "") for p in pairs}
    meta: dict[str, dict] = {}  # the cited held-out Examples: modality, part kinds, key
    files = ex_manifest.tables.get("examples", [])
    for f in files:
        for e in heldout_rows_of(ex_dir, ex_manifest, f, heldout_fraction, cited)[1]:
            meta[e["id"]] = {"modality": e["modality"], "kinds": [p["kind"] for p in e["parts"]],
                             "key": _key_of(e, truth)}
    plans: dict[str, dict] = {}
    for name in sorted(groups):
        group = groups[name]
        target = group[0]["positive_modality"]
        kinds = _kinds_of(group, meta)
        in_gallery = {i for i in {p["positive_id"] for p in group}
                      if i in meta and _cut(meta[i]["kinds"], kinds) != []}
        qs, inline = [], []
        for p in sorted(group, key=lambda p: p["pair_id"]):  # as _Task.build
            if len(qs) >= max_queries:
                break
            ref = (p.get("query_ref") or {}).get("example_id", "")
            if p.get("positive_text") and p["positive_id"] not in in_gallery:
                in_gallery.add(p["positive_id"])
                source = meta.get(ref)
                inline.append({"id": p["positive_id"], "text": p["positive_text"],
                               "key": source["key"] if source
                               else f"group:{p.get('group') or p['positive_id']}",
                               "item": positive_item(p, {}, tokenizer, max_tokens)})
            if p["positive_id"] not in in_gallery or (p.get("query_ref") and ref not in meta):
                continue
            qs.append(p)
        if qs:
            plans[name] = {"target": target, "kinds": kinds, "pairs": qs, "inline": inline,
                           "positives": sorted({p["positive_id"] for p in group}),
                           "lexical": target == "text" and qs[0]["query_modality"] == "text"}
    del pairs, groups
    refs = {p["query_ref"]["example_id"] for t in plans.values() for p in t["pairs"]
            if p.get("query_ref")}
    by_id = {}  # the Examples the kept queries cite, as the checkpoint reads them
    for f in files if refs else []:
        for e in heldout_rows_of(ex_dir, ex_manifest, f, heldout_fraction, refs)[1]:
            by_id[e["id"]] = prep.retokenized(e)
    unique: dict[str, dict] = {}
    out = {}
    for name, t in plans.items():
        queries = []
        for p in t["pairs"]:
            item = query_item(p, by_id, tokenizer, max_tokens)
            d = item_digest(item)
            unique.setdefault(d, item | {"id": f"q:{d}"})
            queries.append({"positive_id": p["positive_id"], "text": _query_text(p),
                            "query_modality": p["query_modality"], "digest": d, "item": item})
        for e in t["inline"]:
            e["digest"] = d = item_digest(e["item"])
            unique.setdefault(d, e["item"] | {"id": f"q:{d}"})
        out[name] = {"queries": queries, "inline": t["inline"], "lexical": t["lexical"]}
    spec_uri = storage.join(work, "tasks.parquet")
    storage.write_parquet(pa.table({
        "name": list(plans), "target": [t["target"] for t in plans.values()],
        "kinds": [t["kinds"] for t in plans.values()],
        "lexical": [t["lexical"] for t in plans.values()],
        "positives": [t["positives"] for t in plans.values()]}, schema=TASK_SCHEMA), spec_uri)
    entries = list(unique.items())
    parts = []
    for start in range(0, len(entries), ROWS_PER_CALL):
        chunk = entries[start : start + ROWS_PER_CALL]
        uri = storage.join(work, "queries", f"items-{start // ROWS_PER_CALL:05d}.parquet")
        storage.write_parquet(_items_table([it for _, it in chunk], [d for d, _ in chunk],
                                           [1] * len(chunk)), uri)
        parts.append(uri)
    return {"tasks": out, "spec": spec_uri, "item_parts": parts}


def gallery_unit_items(unit: dict, ex_dir: str, ex_manifest: mf.Manifest,
                       handler: EncoderHandler, heldout_fraction: float, spec_uri: str,
                       truth: list) -> pa.Table:
    """Reading task of step 2: one group of Examples files -> every task's gallery ITEMs
    of their held-out rows (cut to the task's part kinds), with the plan part written."""
    from loom.pipelines.evaluate import _key_of

    prep = handler.inputs()
    spec = storage.read_parquet([spec_uri]).to_pylist()
    for t in spec:
        t["positives"] = set(t["positives"])
    files = ex_manifest.tables.get("examples", [])
    at = {storage.join(ex_dir, f.path): i for i, f in enumerate(files)}
    plan = {name: [] for name in PLAN_SCHEMA.names}
    items, digests, seen = [], [], set()
    truth = ray.get(truth[0])  # in a list: fetched here, not pickled with the function
    for uri in unit["uris"]:
        rows, examples = heldout_rows_of(ex_dir, ex_manifest, files[at[uri]], heldout_fraction)
        for row, raw in zip(rows.tolist(), examples, strict=True):
            e = prep.retokenized(raw)
            key = text = None
            for t in spec:
                if e["modality"] != t["target"] and e["id"] not in t["positives"]:
                    continue
                idx = _cut([p["kind"] for p in e["parts"]], t["kinds"])
                if idx == []:
                    continue
                item = example_to_item(e, idx)
                d = item_digest(item)
                if key is None:
                    key = _key_of(e, truth)
                    text = " ".join(p.get("text") or "" for p in e["parts"])
                for col, v in zip(PLAN_SCHEMA.names, (t["name"], e["id"], d, key,
                                                      text if t["lexical"] else None,
                                                      at[uri], row, idx), strict=True):
                    plan[col].append(v)
                if (e["id"], d) not in seen:
                    seen.add((e["id"], d))
                    items.append(item)
                    digests.append(d)
    storage.write_parquet(pa.table(plan, schema=PLAN_SCHEMA), unit["plan"])
    return _items_table(items, digests, [1] * len(items))


def gallery_reader(ex_dir: str, ex_manifest: mf.Manifest, handler: EncoderHandler,
                   heldout_fraction: float, spec_uri: str, truth: dict[str, str]):
    """`embed_missing`'s reader for eval's Examples units (the truth in the object store)."""
    return functools.partial(gallery_unit_items, ex_dir=ex_dir, ex_manifest=ex_manifest,
                             handler=handler, heldout_fraction=heldout_fraction,
                             spec_uri=spec_uri, truth=[ray.put(truth)])


def read_gallery_items(ex_dir: str, ex_manifest: mf.Manifest, handler: EncoderHandler,
                       locations: list[tuple[int, int, list[int] | None]]) -> list[dict]:
    """The gallery ITEMs at (file, row, parts) locations, in order, read from the files."""
    prep = handler.inputs()
    files = ex_manifest.tables.get("examples", [])
    by_file: dict[int, list[int]] = {}
    for f, row, _ in locations:
        by_file.setdefault(f, []).append(row)
    rows: dict[tuple[int, int], dict] = {}
    for f, want in by_file.items():
        want = sorted(set(want))
        table = mf.read_file(ex_dir, ex_manifest, "examples", files[f]).take(np.array(want, np.int64))
        for r, e in zip(want, rows_of(table), strict=True):
            rows[(f, r)] = prep.retokenized(e)
    return [example_to_item(rows[(f, r)], idx) for f, r, idx in locations]



@ray.remote
def baseline_metrics(ex_dir: str, ex_manifest: mf.Manifest, handler: EncoderHandler,
                     untrained, queries: list[dict], rows: pa.Table, inline: list[dict],
                     relevant: list[set[int]],
                     lexical: tuple[list[str], pa.ChunkedArray] | None) -> dict:
    """Step 4: one task's untrained and lexical baselines over its sample (evaluate's
    `_baselines`): the gallery is the Examples rows at `rows` (file, row, parts), then the
    `inline` written positives; ITEMs read UNTRAINED_CHUNK model batches at a time."""
    from loom.pipelines.evaluate import (
        UNTRAINED_CHUNK,
        _bm25_top,
        embedding_metrics,
        metrics_from_top,
    )

    step = UNTRAINED_CHUNK * handler.batch_size  # whole batches: the same as one call
    gallery = []
    for s in range(0, len(rows), step):
        locs = rows.slice(s, step).to_pylist()
        gallery.append(handler.embed(read_gallery_items(
            ex_dir, ex_manifest, handler, [(x["file"], x["row"], x["parts"]) for x in locs]),
            untrained))
    if inline:
        gallery.append(handler.embed(inline, untrained))
    vectors = (np.concatenate(gallery) if gallery
               else np.zeros((0, handler.dim or 1), np.float32))
    out = {"untrained": embedding_metrics(handler.embed(queries, untrained), vectors, relevant),
           "lexical": None}
    if lexical is not None:
        out["lexical"] = metrics_from_top(_bm25_top(lexical[0], lexical[1].to_pylist()),
                                          relevant)
    return out
