"""Ingest reads every listed file once: the read that decodes also hashes.

Exact duplicates are found from those hashes. Files of the same listed size go to the
same work item, next to each other, so a copy is usually met in the batch of its
original: hashed, not decoded (a `copy`). Copies that land in other items (a size group
split over items, or sizes that differ on the listing, such as a symlink's) were decoded
there; `resolve` drops their rows afterwards from the parts that hold them and takes
their stats back, so the outcome tables are those of a hash-first ingest.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import pyarrow as pa
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.manifest import FileRecord
from loom.schemas.records import INGEST_FILES, INGEST_FILES_TABLE


def size_grouped_items(rows: list[dict], sizes: dict[str, int], per_item: int,
                       prefix: str = "part") -> list[dict]:
    """Inline work items of about `per_item` rows in URI order, except that files of one
    listed size (> 0) travel together: a group is kept whole in one item when it fits,
    its members in URI order, at the place of its first member."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        if sizes.get(r["uri"], 0) > 0:
            groups[sizes[r["uri"]]].append(r)
    units, done = [], set()
    for r in sorted(rows, key=lambda r: r["uri"]):
        size = sizes.get(r["uri"], 0)
        if size > 0 and len(groups[size]) > 1:
            if size not in done:
                done.add(size)
                units.append(sorted(groups[size], key=lambda g: g["uri"]))
        else:
            units.append([r])
    items: list[list[dict]] = [[]]
    for unit in units:
        while unit:
            if items[-1] and len(items[-1]) + len(unit) > per_item:
                items.append([])
            room = per_item - len(items[-1])
            items[-1].extend(unit[:room])
            unit = unit[room:]
    return [{"name": f"{prefix}-{i:05d}", "rows": rows_}
            for i, rows_ in enumerate(items) if rows_]


@dataclasses.dataclass
class Resolved:
    """Per listed (well-named) file: its id; which files are canonical and how each was
    handled; the duplicates (`{uri, duplicate_of}`) and each canonical's copies."""

    ids: dict[str, str]
    decoded: set[str]
    reused: set[str]
    duplicates: list[dict]
    dups: dict[str, list[str]]


def read_files_tables(version_dir: str, records: list[FileRecord]) -> list[dict]:
    """The stage's per-file rows, each with the work item (part name) it came from."""
    out = []
    for rec in records:
        part = rec.path.rsplit("/", 1)[-1].removesuffix(".parquet")
        rows = storage.read_parquet([storage.join(version_dir, rec.path)],
                                    schema=INGEST_FILES).to_pylist()
        out.extend(r | {"part": part} for r in rows)
    return out


def resolve(files: list[dict], writer: mf.VersionWriter, tables: dict[str, list[FileRecord]],
            stats: dict[str, int]) -> Resolved:
    """Per content id the smallest URI is canonical, the rest duplicates (empty files
    never: each is rejected); rows a duplicate's decode left in its item are dropped and
    its stats taken back; each decoded canonical's Examples name all its copies."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for f in files:
        if f["size"] > 0:
            by_id[f["id"]].append(f)
    canonical = {f["uri"] for f in files if f["size"] <= 0}
    duplicates, dups = [], {}
    for group in by_id.values():
        group.sort(key=lambda f: f["uri"])
        canonical.add(group[0]["uri"])
        if len(group) > 1:
            dups[group[0]["uri"]] = [f["uri"] for f in group[1:]]
            duplicates += [{"uri": f["uri"], "duplicate_of": f["id"]} for f in group[1:]]
    drops: dict[str, list[dict]] = defaultdict(list)  # part -> files whose rows go
    fixes: dict[str, list[dict]] = defaultdict(list)  # part -> canonicals to re-source
    for f in files:
        if f["uri"] not in canonical and f["state"] == "decoded":
            drops[f["part"]].append(f)
            for k, v in json.loads(f["stats"]).items():
                stats[k] = stats.get(k, 0) - v
        elif f["state"] == "decoded" and f["copies"] != dups.get(f["uri"], []):
            fixes[f["part"]].append(f)
    if drops or fixes:
        _rewrite(writer, tables, files, drops, fixes, dups)
    return Resolved(
        ids={f["uri"]: f["id"] for f in files if f["uri"] in canonical},
        decoded={f["uri"] for f in files if f["uri"] in canonical and f["state"] == "decoded"},
        reused={f["uri"] for f in files if f["uri"] in canonical and f["state"] == "reused"},
        duplicates=sorted(duplicates, key=lambda d: d["uri"]), dups=dups)


def _rewrite(writer: mf.VersionWriter, tables: dict[str, list[FileRecord]], files: list[dict],
             drops: dict[str, list[dict]], fixes: dict[str, list[dict]],
             dups: dict[str, list[str]]) -> None:
    """Rewrite only the parts that hold a dropped or re-sourced file's rows (their rows
    sit in file order, so a file's rows are one run of each part)."""
    spans: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    offsets: dict[tuple[str, str], int] = defaultdict(int)
    for f in files:
        for table in ("examples", "rejected"):
            key = (table, f["part"])
            spans.setdefault(key, {})[f["uri"]] = (offsets[key], offsets[key] + f[table])
            offsets[key] += f[table]
    for table in ("examples", "rejected"):
        for part in sorted(set(drops) | set(fixes)):
            dropped = [spans[(table, part)][f["uri"]] for f in drops.get(part, [])]
            refs = [(spans[(table, part)][f["uri"]], f["uri"]) for f in fixes.get(part, [])]
            if table == "rejected":
                refs = []
            if any(b > a for a, b in dropped) or any(b > a for (a, b), _ in refs):
                _rewrite_part(writer, tables, table, part, dropped, refs, dups)


def _rewrite_part(writer: mf.VersionWriter, tables: dict[str, list[FileRecord]], table: str,
                  part: str, dropped: list[tuple[int, int]],
                  refs: list[tuple[tuple[int, int], str]], dups: dict[str, list[str]]) -> None:
    path = f"{table}/{part}.parquet"
    uri = storage.join(writer.dir, path)
    data = storage.read_parquet([uri])
    if refs:
        sources = data.column("source_uris").to_pylist()
        for (a, b), canon in refs:
            for i in range(a, b):
                if sources[i] and sources[i][0] == canon:
                    sources[i] = [canon, *dups.get(canon, [])]
        idx = data.schema.get_field_index("source_uris")
        data = data.set_column(idx, data.schema.field(idx),
                               pa.array(sources, data.schema.field(idx).type))
    gone = {i for a, b in dropped for i in range(a, b)}
    if gone:
        data = data.take(pa.array([i for i in range(data.num_rows) if i not in gone],
                                  pa.int64()))
    kept = [f for f in tables.get(table, []) if f.path != path]
    if data.num_rows:
        kept.append(writer.write_part(table, part, data))
    else:
        storage.delete(uri)
    tables[table] = kept


def pop_files_records(tables: dict[str, list[FileRecord]]) -> list[FileRecord]:
    """The stage's `_work/files` parts: work data, never part of the version."""
    return tables.pop(INGEST_FILES_TABLE, [])
