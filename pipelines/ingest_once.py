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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.manifest import FileRecord
from loom.schemas.records import DUPLICATE, INGEST_FILES, INGEST_FILES_TABLE


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
    """Per listed (well-named) file kept as Arrow columns, not per-file Python objects:
    the canonical files (`uri`, `id`, `state`, sorted by URI), the duplicates (DUPLICATE
    rows, sorted by URI) and each canonical's copies (only canonicals that have some)."""

    canonical: pa.Table
    duplicates: pa.Table
    dups: dict[str, list[str]]

    @property
    def decoded(self) -> pa.Array:
        """The canonical files this run decoded, in URI order."""
        return self._uris("decoded")

    @property
    def reused(self) -> set[str]:
        """The canonical files whose rows a prior version holds."""
        return set(self._uris("reused").to_pylist())

    def _uris(self, state: str) -> pa.Array:
        t = self.canonical
        return t.column("uri").filter(pc.equal(t.column("state"), state)).combine_chunks()


def read_files_tables(version_dir: str, records: list[FileRecord]) -> pa.Table:
    """The stage's per-file rows as one table, with the work item (part name) each came
    from in a `part` column; parts in record order, rows in file order within a part."""
    parts = []
    for rec in records:
        part = rec.path.rsplit("/", 1)[-1].removesuffix(".parquet")
        t = storage.read_parquet([storage.join(version_dir, rec.path)], schema=INGEST_FILES)
        parts.append(t.append_column("part", pa.array([part] * t.num_rows, pa.string())))
    if not parts:
        return INGEST_FILES.append(pa.field("part", pa.string())).empty_table()
    return pa.concat_tables(parts).combine_chunks()


def resolve(files: pa.Table, writer: mf.VersionWriter, tables: dict[str, list[FileRecord]],
            stats: dict[str, int]) -> Resolved:
    """Per content id the smallest URI is canonical, the rest duplicates (empty files
    never: each is rejected); rows a duplicate's decode left in its item are dropped and
    its stats taken back; each decoded canonical's Examples name all its copies."""
    n = files.num_rows
    sized = pc.greater(files.column("size"), 0).to_numpy(zero_copy_only=False)
    keyed = pa.table({"id": files.column("id"), "uri": files.column("uri"),
                      "row": pa.array(np.arange(n, dtype=np.int64))}).filter(pa.array(sized))
    keyed = keyed.take(pc.sort_indices(keyed, [("id", "ascending"), ("uri", "ascending")]))
    ids = keyed.column("id").combine_chunks()
    first = np.ones(keyed.num_rows, dtype=bool)  # the first (smallest URI) of each id
    if keyed.num_rows > 1:
        first[1:] = pc.not_equal(ids.slice(1), ids.slice(0, keyed.num_rows - 1)).to_numpy(
            zero_copy_only=False)
    canonical = ~sized
    canonical[keyed.column("row").to_numpy()[first]] = True
    copies = keyed.filter(pa.array(~first))
    copies = copies.take(pc.sort_indices(copies, [("uri", "ascending")]))
    duplicates = pa.Table.from_arrays(
        [copies.column("uri").combine_chunks(), copies.column("id").combine_chunks()],
        schema=DUPLICATE)
    dups: dict[str, list[str]] = {}
    if copies.num_rows:  # each canonical's copies, in URI order
        run_start = np.flatnonzero(first)
        owner = run_start[np.searchsorted(run_start, np.flatnonzero(~first), side="right") - 1]
        uris = keyed.column("uri").combine_chunks()
        for o, c in zip(uris.take(pa.array(owner)).to_pylist(),
                        uris.filter(pa.array(~first)).to_pylist(), strict=True):
            dups.setdefault(o, []).append(c)
        for v in dups.values():
            v.sort()
    decoded = pc.equal(files.column("state"), "decoded").to_numpy(zero_copy_only=False)
    drop = ~canonical & decoded
    # a decoded canonical whose item named other copies than it has (most name none)
    named = pc.greater(pc.list_value_length(files.column("copies")), 0).to_numpy(
        zero_copy_only=False)
    has_dups = pc.is_in(files.column("uri"), value_set=pa.array(list(dups), pa.string())
                        ).to_numpy(zero_copy_only=False)
    maybe_fix = canonical & decoded & (named | has_dups)
    drops: dict[str, list[dict]] = defaultdict(list)  # part -> files whose rows go
    fixes: dict[str, list[dict]] = defaultdict(list)  # part -> canonicals to re-source
    for f in files.filter(pa.array(drop)).to_pylist():
        drops[f["part"]].append(f)
        for k, v in json.loads(f["stats"]).items():
            stats[k] = stats.get(k, 0) - v
    for f in files.filter(pa.array(maybe_fix)).to_pylist():
        if f["copies"] != dups.get(f["uri"], []):
            fixes[f["part"]].append(f)
    if drops or fixes:
        touched = pa.array(sorted(set(drops) | set(fixes)), pa.string())
        _rewrite(writer, tables, files.filter(pc.is_in(files.column("part"), value_set=touched)
                                              ).to_pylist(), drops, fixes, dups)
    kept = files.select(["uri", "id", "state"]).filter(pa.array(canonical))
    kept = kept.take(pc.sort_indices(kept, [("uri", "ascending")])).combine_chunks()
    return Resolved(canonical=kept, duplicates=duplicates, dups=dups)


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
