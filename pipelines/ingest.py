"""Ingest: a raw prefix -> Examples + Rejected (+ duplicates) and the preprocessing spec.

Passes: (1) hash and sniff every listed file on the engine; (2) exact dedup by content
hash in the driver (ids and URIs only); (3) train the tokenizer on a bounded sample of
the text; (4) decode every canonical file on the engine. listed = accepted + duplicate +
rejected is checked before the manifest is written.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import pyarrow as pa

from pipelines.common import BadInput, cleanup_work, result, reuse, timed
from pipelines.runner import Engine, StageTask, merge_results, row_items, run_stage
from schemas import manifest as mf
from schemas import storage
from schemas.records import DUPLICATE, Modality
from schemas.spec import SPEC_FILE, PreprocessingSpec
from transforms.ingest import IngestConfig, IngestStage, hash_file, pick_canonical
from transforms.sniff import sniff
from transforms.stage import BaseStage
from transforms.text import decode_text
from transforms.tokenizer import train_tokenizer

HASHES = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("id", pa.string()),
                    ("modality", pa.string())])
TOKENIZER_SAMPLE_FILES = 5000
TOKENIZER_SAMPLE_BYTES = 64 * 1024 * 1024


class HashStage(BaseStage):
    """Content hash + sniffed modality per file (ids are sha256 of the bytes)."""

    name: ClassVar[str] = "hash"
    input_schema: ClassVar[pa.Schema] = pa.schema([("uri", pa.string())])
    output_schemas: ClassVar[dict] = {"_hashes": HASHES}

    def process_batch(self, batch: pa.RecordBatch) -> dict[str, pa.Table]:
        rows = []
        for uri in batch.column("uri").to_pylist():
            try:
                h = hash_file(uri)
                head = storage.read_bytes(uri, limit=4096) if h["size"] else b""
                modality, _ = sniff(head, uri)
                h["modality"] = modality.value if modality else None
            except Exception:  # unreadable: the decode pass rejects it with its reason
                h = {"uri": uri, "size": -1, "id": f"unreadable:{uri}", "modality": None}
            rows.append(h)
        return {"_hashes": pa.Table.from_pylist(rows, schema=HASHES)}


def run_ingest(input_uri: str, output_root: str, spec: PreprocessingSpec | None = None,
               engine: Engine = Engine.BEAM, files_per_item: int = 64) -> dict:
    spec = spec or PreprocessingSpec()
    input_uri, output_root = storage.absolute(input_uri), storage.absolute(output_root)
    listing = storage.list_files(input_uri)
    if not listing:
        raise BadInput(f"no files under {input_uri}")
    digest = mf.listing_digest(listing)
    config = {"spec": spec.without_tokenizer().model_dump(), "max_file_bytes": 256 << 20}
    version = mf.version_id("ingest", [digest], config)
    writer = mf.VersionWriter(output_root, "ingest", version)
    if (done := reuse(writer, "ingest")) is not None:
        return done
    timings: dict[str, float] = {}

    with timed(timings, "hash_s"):
        uris = [{"uri": e.uri} for e in listing]
        res = run_stage(engine, StageTask(HashStage, storage.join(writer.dir, "_work")),
                        row_items(uris, files_per_item * 4, "hash"))
        tables, _ = merge_results(res)
        hashes = storage.read_parquet(
            [storage.join(writer.dir, "_work", f.path) for f in tables.get("_hashes", [])]
        ).to_pylist()
    canonical, duplicates = pick_canonical(hashes)

    with timed(timings, "tokenizer_s"):
        spec = spec.model_copy(update={"tokenizer_json": _train_tokenizer(canonical, spec)})
    storage.write_atomic(storage.join(writer.dir, SPEC_FILE), spec.model_dump_json().encode())

    with timed(timings, "decode_s"):
        config_ = IngestConfig(spec=spec, allowed_roots=(input_uri,))
        task = StageTask(partial(IngestStage, config_), writer.dir)
        rows = [{"uri": h["uri"], "id": h["id"]} for h in sorted(canonical, key=lambda h: h["uri"])]
        tables, stats = merge_results(run_stage(engine, task, row_items(rows, files_per_item)))
    if duplicates:
        dup = pa.Table.from_pylist(sorted(duplicates, key=lambda d: d["uri"]), schema=DUPLICATE)
        tables["duplicates"] = [writer.write_part("duplicates", "part-00000", dup)]
    for t in ("examples", "rejected", "duplicates"):
        tables.setdefault(t, [])

    counts = {  # file outcomes, then rows (a PDF or a manifest gives several Examples)
        "listed": len(listing),
        "accepted": stats.get("accepted_files", 0),
        "duplicate": sum(f.rows for f in tables["duplicates"]),
        "rejected": stats.get("rejected_files", 0),
        "examples": sum(f.rows for f in tables["examples"]),
        "rejected_records": stats.get("rejected_records", 0),
    }
    if counts["accepted"] + counts["duplicate"] + counts["rejected"] != counts["listed"]:
        raise RuntimeError(f"ingest lost or invented files: {counts}")
    rejected_rows = sum(f.rows for f in tables["rejected"])
    if rejected_rows != counts["rejected"] + counts["rejected_records"]:
        raise RuntimeError(f"rejected rows {rejected_rows} do not match outcomes {counts}")
    lineage = {
        "input": input_uri,
        "raw_listing": digest,
        "engine": engine.value,
        "spec_digest": spec.digest(),
        "timings": timings,
    }
    manifest = writer.commit(tables, counts, config, lineage)
    cleanup_work(writer.dir)
    return result("ingest", manifest, writer.dir, False, timings=timings)


def _train_tokenizer(canonical: list[dict], spec: PreprocessingSpec) -> str:
    """A bounded sample of the corpus's text trains the tokenizer; nothing is downloaded."""
    texts: list[str] = []
    budget = TOKENIZER_SAMPLE_BYTES
    for h in canonical:
        if h.get("modality") != Modality.TEXT.value or h["size"] <= 0 or h["size"] > budget:
            continue
        try:
            texts.append(decode_text(storage.read_bytes(h["uri"]), spec))
        except Exception:
            continue
        budget -= h["size"]
        if len(texts) >= TOKENIZER_SAMPLE_FILES:
            break
    # Always-present words so a corpus without text still gets a usable tokenizer.
    texts.append("a an the of in on at and is it this that image picture text document")
    return train_tokenizer(texts, spec.vocab_size)
