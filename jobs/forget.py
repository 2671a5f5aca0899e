"""`loom forget ID|URI...`: take an asset down from every dataset that holds it.

For each dataset root under the workdir (examples, pairs, triples, shards, embeddings,
...), every complete version holding the asset is replaced: the newest one by a new
version (same stage and config, a new id, created now, so readers pick it) with the
asset's rows removed and the negatives naming it dropped from their lists. The new
version's lineage records the takedown (`takedown`: assets, URIs, the version replaced,
rows removed) and points at the other replaced versions instead of the old ones. Every
version replaced is named there, so `loom gc` deletes them whatever `--keep` says.

Caches go too: the LLM responses cached for the asset (their keys are recomputed from
each synth version's LLM config and prompt versions) and its rows in every embedding
cache. A FAISS index built over the embeddings is not rebuilt: the new version leaves it
out (rerun the backfill with `--faiss-index`). Checkpoints trained on the asset are listed,
not retrained. The raw file itself is the caller's to delete: a new ingest would read it
again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
from loom.jobs.ops import dataset_roots
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import TABLES, rows_of

STAGE_ORDER = ("ingest", "synth", "relabel", "mine", "shard", "backfill", "eval")
DROP_FILES = ("index.faiss", "index_ids.json")  # built over rows that are gone
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
LOOKUP_COLUMNS = ("id", "uri", "duplicate_of", "source_uris")  # what `_ids_of` reads


def _is_uri_of(value: str | None, uris: set[str]) -> bool:
    """`value` is one of the URIs, or a member/record of one (`file.tar#member`)."""
    return bool(value) and (value in uris or any(value.startswith(u + "#") for u in uris))


def _holds(row: dict, ids: set[str], uris: set[str]) -> bool:
    for key in ("id", "positive_id", "duplicate_of"):
        if row.get(key) in ids:
            return True
    for key in ("query", "positive"):
        if isinstance(row.get(key), dict) and row[key].get("id") in ids:
            return True
    if _is_uri_of(row.get("uri"), uris):
        return True
    return any(_is_uri_of(u, uris) for u in row.get("source_uris") or [])


def _scrub(row: dict, ids: set[str]) -> tuple[dict, int]:
    """The row with negatives naming the asset dropped (and how many were)."""
    negs = row.get("negatives")
    if not isinstance(negs, list):
        return row, 0
    kept = [n for n in negs if not (isinstance(n, dict) and n.get("id") in ids)]
    return (row | {"negatives": kept}), len(negs) - len(kept)


def _ids_of(roots: list[str], targets: list[str]) -> tuple[set[str], set[str]]:
    """Asset ids and source URIs named by the targets (a URI is looked up in the newest
    examples, files, rejected and duplicates tables; an id's URIs likewise)."""
    ids = {t for t in targets if _HEX64.match(t)}
    uris = {storage.absolute(t) if not t.startswith("gs://") else t
            for t in targets if t not in ids}
    for root in roots:
        for d in storage.list_dirs(root):
            m = mf.read_manifest(d)
            if m is None:
                continue
            for table in ("files", "duplicates", "examples"):
                if not m.tables.get(table):
                    continue
                cols = [c for c in LOOKUP_COLUMNS if c in TABLES[table].names]
                for row in mf.read_table(d, m, table, cols).to_pylist():
                    srcs = row.get("source_uris") or [row.get("uri")]
                    if row.get("id") in ids or row.get("duplicate_of") in ids:
                        uris |= {u for u in srcs if u}
                    if any(_is_uri_of(u, uris) for u in srcs if u):
                        ids |= {v for v in (row.get("id"), row.get("duplicate_of")) if v}
    return ids, uris


def _remap(value, mapping: dict[str, str]):
    if isinstance(value, str):
        for old, new in mapping.items():
            if value == old or value.startswith(old.rstrip("/") + "/"):
                return new + value[len(old):]
        return value
    if isinstance(value, dict):
        return {k: _remap(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_remap(v, mapping) for v in value]
    return value


def _rewrite(root: str, vdir: str, m: mf.Manifest, ids: set[str], uris: set[str],
             replaced: dict[str, str], also: list[str]) -> tuple[str, dict] | None:
    """A new version of `vdir` without the asset; None when neither it nor any of the
    older versions `also` (which it replaces too) holds it."""
    new_tables: dict[str, list] = {}
    removed: dict[str, int] = {}
    changed = False
    staged: list[tuple[str, str, list[dict] | None, dict | None]] = []
    for table, files in m.tables.items():
        for rec in files:
            uri = storage.join(vdir, rec.path)
            fs, path = storage.resolve(uri)
            t = pq.read_table(path, filesystem=fs)
            rows = rows_of(t)  # features stay float16 arrays
            keep, gone = [], 0
            for row in rows:
                if _holds(row, ids, uris):
                    gone += 1
                    continue
                row, dropped = _scrub(row, ids)
                removed[f"{table}.negatives"] = removed.get(f"{table}.negatives", 0) + dropped
                changed |= bool(dropped)
                keep.append(row)
            removed[table] = removed.get(table, 0) + gone
            changed |= bool(gone)
            meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()
                    if not k.startswith(b"ARROW")}
            staged.append((table, rec.path, keep, meta))
    if not changed and not also:
        return None
    digest = hashlib.sha256(json.dumps([m.version, sorted(ids), sorted(uris)]).encode())
    version = f"{m.stage}-{digest.hexdigest()[:16]}"
    writer = mf.VersionWriter(root, m.stage, version)
    for table, path, keep, meta in staged:
        schema = TABLES.get(table)
        data = (pa.Table.from_pylist(keep, schema=schema) if schema is not None
                else pa.Table.from_pylist(keep))
        name = path.split("/", 1)[1].removesuffix(".parquet")
        rec = writer.write_part(table, name, data, meta or None)
        new_tables.setdefault(table, []).append(rec)
    listed = {rec.path for files in m.tables.values() for rec in files}
    dropped_files = []
    for e in storage.list_files(vdir):  # sidecars (the preprocessing spec, ...)
        rel = e.uri[len(vdir.rstrip("/")) + 1:]
        if rel in listed or rel == mf.MANIFEST or rel.startswith(mf.WORK + "/") \
                or storage.is_tmp(rel.rsplit("/", 1)[-1]):
            continue
        if rel in DROP_FILES:
            dropped_files.append(rel)
            continue
        storage.write_atomic(storage.join(writer.dir, rel), storage.read_bytes(e.uri))
    counts = dict(m.counts)
    for table, files in new_tables.items():
        if table in counts:
            counts[table] = sum(f.rows for f in files)
    counts["forgotten_rows"] = sum(v for k, v in removed.items() if "." not in k)
    lineage = _remap(m.lineage, replaced) | {"takedown": {
        "assets": sorted(ids), "uris": sorted(uris), "replaces": [vdir, *also],
        "removed": {k: v for k, v in removed.items() if v}, "dropped_files": dropped_files,
        "at": dt.datetime.now(dt.timezone.utc).isoformat()}}
    writer.commit(new_tables, counts, m.config, lineage)
    return writer.dir, {"stage": m.stage, "replaces": [vdir, *also], "version": version,
                        "removed": lineage["takedown"]["removed"]}


def _purge_llm_cache(root: str, m: mf.Manifest, ids: set[str]) -> int:
    from loom.synth.client import LLMConfig
    from loom.synth.stage import response_key

    llm = m.config.get("llm")
    versions = (m.lineage.get("prompt_versions") or {}).values()
    if not llm:
        return 0
    cfg = LLMConfig.model_validate(llm)
    cache = storage.join(root, "_llm_cache")
    gone = 0
    for asset in ids:
        for pv in versions:
            k = response_key(cfg, pv, asset)
            uri = storage.join(cache, k[:2], f"{k}.json")
            if storage.exists(uri):
                storage.delete(uri)
                gone += 1
    return gone


def _purge_embedding_caches(top: str, ids: set[str]) -> int:
    gone = 0
    for e in storage.list_files(top, ".parquet"):
        if "/_embeddings/" not in e.uri:
            continue
        t = storage.read_parquet([e.uri])
        keep = [i not in ids for i in t.column("id").to_pylist()]
        if all(keep):
            continue
        gone += len(keep) - sum(keep)
        if any(keep):
            storage.write_parquet(t.filter(keep), e.uri)
        else:
            storage.delete(e.uri)
    return gone


def run_forget(targets: list[str], workdir: str, log: Callable[[str], None] = lambda s: None
               ) -> dict:
    """Take the assets (ids or source URIs) down from every dataset under `workdir`."""
    from loom.pipelines.common import BadInput

    workdir = storage.absolute(workdir)
    roots = dataset_roots(workdir)
    if not roots:
        raise BadInput(f"no datasets under {workdir}")
    ids, uris = _ids_of(roots, targets)
    if not ids and not uris:
        raise BadInput(f"none of {targets} names an asset under {workdir}")
    found = [(root, d, m) for root in roots for d in storage.list_dirs(root)
             if (m := mf.read_manifest(d)) is not None]
    gone = {u for _, _, m in found for u in (m.lineage.get("takedown") or {}).get("replaces", [])}
    found = [f for f in found if f[1] not in gone]  # taken down before: gc deletes them
    found.sort(key=lambda t: (STAGE_ORDER.index(t[2].stage) if t[2].stage in STAGE_ORDER
                              else len(STAGE_ORDER), t[2].created_at))
    replaced: dict[str, str] = {}
    written, llm_purged = [], 0
    by_root: dict[tuple[str, str], list[tuple[str, mf.Manifest]]] = {}
    for root, d, m in found:
        by_root.setdefault((root, m.stage), []).append((d, m))
    for (root, _), members in by_root.items():
        members.sort(key=lambda dm: (dm[1].created_at, dm[0]))
        older, (newest, nm) = members[:-1], members[-1]
        holders = [d for d, m in older if _rewrite_probe(d, m, ids, uris)]
        out = _rewrite(root, newest, nm, ids, uris, replaced, holders)
        if out is not None:
            new_dir, info = out
            for old in info["replaces"]:
                replaced[old] = new_dir
            written.append(info | {"uri": new_dir})
            log(f"forget: {info['stage']} {newest} -> {new_dir}")
        if nm.stage == "synth":
            llm_purged += sum(_purge_llm_cache(root, m, ids) for _, m in members)
    emb_purged = _purge_embedding_caches(workdir, ids)
    trained = _checkpoints_using(workdir, set(replaced))
    return {"stage": "forget", "assets": sorted(ids), "uris": sorted(uris),
            "versions": written, "checkpoints_trained_on_it": trained,
            "counts": {"versions_written": len(written),
                       "versions_replaced": sum(len(w["replaces"]) for w in written),
                       "rows_removed": sum(sum(v for k, v in w["removed"].items() if "." not in k)
                                           for w in written),
                       "llm_cache_entries": llm_purged, "embedding_cache_rows": emb_purged},
            "reused": False}


def _rewrite_probe(vdir: str, m: mf.Manifest, ids: set[str], uris: set[str]) -> bool:
    for table in m.tables:
        for row in rows_of(mf.read_table(vdir, m, table)) if m.tables[table] else []:
            if _holds(row, ids, uris) or _scrub(row, ids)[1]:
                return True
    return False


def _checkpoints_using(workdir: str, replaced: set[str]) -> list[str]:
    out = []
    for child in storage.list_dirs(workdir):
        for run in storage.list_dirs(child):
            lin = storage.join(run, "lineage.json")
            if storage.exists(lin):
                text = storage.read_bytes(lin).decode()
                if any(r in text for r in replaced):
                    out.append(run)
    return sorted(out)
