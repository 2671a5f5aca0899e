"""What every engine adapter runs: a stage over work items, writing Parquet parts.

A work item is a small JSON-able dict: a deterministic part name plus where its input
rows are (inline rows, or a slice of Parquet files). The task reads the rows, runs the
stage's `process_batch`, writes one part per output table under a deterministic name
(so a retried or replayed item overwrites, never duplicates), and returns the file
records. Engines only decide where and how many tasks run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from loom.schemas import storage
from loom.schemas.manifest import FileRecord, write_part
from loom.transforms.stage import Resources, Stage


@dataclasses.dataclass(frozen=True)
class StageTask:
    """Picklable: how to build the stage on a worker, and where to write."""

    factory: Callable[[], Stage]  # a Stage class or functools.partial of one: picklable
    version_dir: str

    @property
    def resources(self) -> Resources:
        """The stage's declared needs: `resources_for(*factory args)` when the stage
        defines it (the need follows its config), else its class's `resources` (the
        defaults when it declares none)."""
        cls = getattr(self.factory, "func", self.factory)
        declare = getattr(cls, "resources_for", None)
        if declare is None:
            return getattr(cls, "resources", None) or Resources()
        return declare(*getattr(self.factory, "args", ()),
                       **(getattr(self.factory, "keywords", None) or {}))

    def open(self) -> Stage:
        stage = self.factory()
        stage.setup()
        return stage

    def run(self, stage: Stage, item: dict) -> dict:
        batch = load_item(item, stage.input_schema)
        outputs = stage.process_batch(batch)
        stats = outputs.pop("stats", None)
        files = []
        for table, data in sorted(outputs.items()):
            if data.num_rows:
                rec = write_part(self.version_dir, table, item["name"], data)
                files.append({"table": table} | dataclasses.asdict(rec))
        stat_row = stats.to_pylist()[0] if stats is not None and stats.num_rows else {}
        return {"name": item["name"], "files": files, "stats": stat_row}


def load_item(item: dict, schema: pa.Schema) -> pa.RecordBatch:
    if "rows" in item:
        table = pa.Table.from_pylist(item["rows"], schema=schema)
    else:
        table = _read_slice(item["file"], item["offset"], item["length"])
    return _single_batch(table)


def _read_slice(uri: str, offset: int, length: int) -> pa.Table:
    """Rows [offset, offset + length) of a Parquet file, reading only the row groups
    that hold them."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        groups, start, first = [], 0, None
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if start + n > offset and start < offset + length:
                groups.append(g)
                first = start if first is None else first
            start += n
        if not groups:
            return pf.schema_arrow.empty_table()
        return pf.read_row_groups(groups).slice(offset - first, length)


def _single_batch(table: pa.Table) -> pa.RecordBatch:
    table = table.combine_chunks()
    batches = table.to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return batches[0]


def row_items(rows: list[dict], per_item: int, prefix: str = "part") -> list[dict]:
    """Inline rows in fixed-size items, named by position (the row order is deterministic)."""
    return [
        {"name": f"{prefix}-{i // per_item:05d}", "rows": rows[i : i + per_item]}
        for i in range(0, len(rows), per_item)
    ]


def file_items(files: list[FileRecord | dict], version_dir: str, per_item: int,
               prefix: str = "part") -> list[dict]:
    """Slices of a version's Parquet parts, each named after its file and offset."""
    items = []
    for n, rec in enumerate(files):
        rec = rec if isinstance(rec, dict) else dataclasses.asdict(rec)
        for off in range(0, rec["rows"], per_item):
            items.append({
                "name": f"{prefix}-{n:05d}-{off // per_item:05d}",
                "file": storage.join(version_dir, rec["path"]),
                "offset": off,
                "length": min(per_item, rec["rows"] - off),
            })
    return items


def merge_results(results: list[dict]) -> tuple[dict[str, list[FileRecord]], dict[str, int]]:
    tables: dict[str, list[FileRecord]] = {}
    stats: dict[str, int] = {}
    for res in sorted(results, key=lambda r: r["name"]):
        for f in res["files"]:
            tables.setdefault(f["table"], []).append(
                FileRecord(path=f["path"], rows=f["rows"], sha256=f["sha256"]))
        for k, v in res["stats"].items():
            stats[k] = stats.get(k, 0) + int(v)
    return tables, stats


def dumps(item: dict) -> str:
    return json.dumps(item, sort_keys=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        raise TypeError("work items carry references, not bytes")
    return str(obj)
