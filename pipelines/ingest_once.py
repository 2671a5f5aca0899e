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
from loom.pipelines import ingest_listing
from loom.pipelines.exchange import (
    Exchange,
    KeyValues,
    buckets_of,
    from_ipc,
    run_here,
    to_ipc,
)
from loom.pipelines.runner import Engine, EngineOptions, run_exchange
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.manifest import FileRecord
from loom.schemas.records import DUPLICATE, FILES, INGEST_FILES, INGEST_FILES_TABLE
from loom.transforms.ingest import STORAGE_ERROR


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


FILES_PER_BUCKET = 50_000  # the resolve exchange's buckets: about this many files each
MAX_BUCKETS = 64
LOCAL_MAX_FILES = 4096  # at most this many files: the same steps in the driver (bounded)
_ROUTED = pa.schema([  # one listed file on its way to its content id's bucket
    ("uri", pa.string()), ("id", pa.string()), ("size", pa.int64()), ("state", pa.string()),
    ("copies", pa.list_(pa.string())), ("stats", pa.string()), ("part", pa.int64()),
    ("ex_start", pa.int64()), ("examples", pa.int64()), ("rej_start", pa.int64()),
    ("rejected", pa.int64())])
_EDITS = pa.schema([  # what a part loses (drop) or re-sources (fix), as spans of its rows
    ("kind", pa.string()), ("ex_start", pa.int64()), ("examples", pa.int64()),
    ("rej_start", pa.int64()), ("rejected", pa.int64()), ("uri", pa.string()),
    ("copies", pa.list_(pa.string()))])


@dataclasses.dataclass
class Resolved:
    """What the driver keeps of the resolution: counters and the parts written, no rows.
    `reused` (canonicals a prior version holds) and `reused_dups` (their copies) are
    empty on a first ingest: they are what `_copy_reused` copies from that version."""

    files: list[FileRecord]
    duplicates: list[FileRecord]
    decoded: int
    reused: set[str]
    reused_dups: dict[str, list[str]]
    storage_errors: int
    storage_example: str | None


def _starts(counts: pa.ChunkedArray) -> pa.Array:
    c = counts.to_numpy()
    return pa.array(np.cumsum(c) - c, pa.int64())


class ResolveSteps:
    """Exact duplicates over every listed file, on the engine (issue 16: the driver holds
    no per-file rows). Three steps over the stage's `_work/files` parts:

    1. map, per part: its files' rows, with where each file's rows sit in the part's
       Examples and Rejected (spans: rows are in file order), to the bucket of its id;
    2. per bucket: every copy of a content lies in its id's bucket, so the smallest URI
       is known there (canonical; empty files always are: each is rejected). The bucket
       writes its DUPLICATE rows and its FILES rows (URI order), sends each part the spans
       it loses (a decoded duplicate) or re-sources (a canonical whose item named other
       copies than it has), and a summary (stats to take back, counters);
    3. per part with edits: its Examples and Rejected rewritten under their own names
       (deleted if emptied); the summaries pass through.
    """

    def __init__(self, version_dir: str, paths: list[str], buckets: int,
                 prior_files: tuple[str, ...], bad_names: frozenset[str]):
        self.version_dir, self.paths, self.buckets = version_dir, paths, buckets
        self.prior_files, self.bad_names = prior_files, bad_names

    def _name(self, k: int) -> str:
        return self.paths[k].rsplit("/", 1)[-1].removesuffix(".parquet")

    def map(self, item: dict) -> KeyValues:
        k = item["part"]
        t = storage.read_parquet([storage.join(self.version_dir, self.paths[k])],
                                 schema=INGEST_FILES)
        if not t.num_rows:
            return
        rows = pa.table({
            **{c: t.column(c) for c in ("uri", "id", "size", "state", "copies", "stats")},
            "part": pa.array(np.full(t.num_rows, k, np.int64)),
            "ex_start": _starts(t.column("examples")), "examples": t.column("examples"),
            "rej_start": _starts(t.column("rejected")), "rejected": t.column("rejected")},
            schema=_ROUTED)
        b = buckets_of(t.column("id").to_pylist(), self.buckets)
        for n in np.unique(b):
            yield f"b{n:04d}", to_ipc(rows.filter(pa.array(b == n)))

    def resolve(self, key: str, values: list[bytes]) -> KeyValues:
        rows = pa.concat_tables([from_ipc(v) for v in values]).combine_chunks()
        rows = rows.take(pc.sort_indices(rows, [("id", "ascending"), ("uri", "ascending")]))
        n = rows.num_rows
        ids = rows.column("id").combine_chunks()
        sized = pc.greater(rows.column("size"), 0).to_numpy(zero_copy_only=False)
        same = np.zeros(n, dtype=bool)  # the same id as the row before (sorted by id, uri)
        if n > 1:
            same[1:] = pc.equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        first = sized & ~(same & np.concatenate([[False], sized[:-1]]))
        copy = sized & ~first
        canonical = ~copy
        # each copy's canonical: the last first-of-its-id row at or before it
        first_at = np.flatnonzero(first)
        owner = first_at[np.searchsorted(first_at, np.flatnonzero(copy), side="right") - 1]
        uris = rows.column("uri").to_pylist()
        dups: dict[str, list[str]] = {}
        for o, c in zip(owner.tolist(), np.flatnonzero(copy).tolist(), strict=True):
            dups.setdefault(uris[o], []).append(uris[c])  # URIs ascend within an id
        summary: dict = {"stats": {}, "decoded": 0, "reused": [], "reused_dups": {},
                         "storage_errors": 0, "storage_example": None,
                         "files": None, "duplicates": None}
        if copy.any():
            dup_rows = rows.filter(pa.array(copy)).sort_by("uri")
            summary["duplicates"] = mf.write_part(
                self.version_dir, "duplicates", f"part-{key[1:]}", pa.Table.from_arrays(
                    [dup_rows.column("uri"), dup_rows.column("id")], schema=DUPLICATE)
            ).to_json()
        state = rows.column("state").to_pylist()
        stats_json = rows.column("stats").to_pylist()
        copies = rows.column("copies").to_pylist()
        edits: dict[int, list[dict]] = defaultdict(list)
        col = {c: rows.column(c).to_pylist()
               for c in ("part", "ex_start", "examples", "rej_start", "rejected")}
        parsed: dict[str, dict] = {}
        rejected = np.zeros(n, dtype=bool)
        for i in range(n):
            if state[i] != "decoded":
                continue
            st = parsed.get(stats_json[i]) or parsed.setdefault(stats_json[i],
                                                                 json.loads(stats_json[i]))
            span = {c: col[c][i] for c in ("ex_start", "examples", "rej_start", "rejected")}
            if copy[i]:  # decoded in another item than its canonical's: rows go
                edits[col["part"][i]].append({"kind": "drop", **span})
                for s, v in st.items():
                    summary["stats"][s] = summary["stats"].get(s, 0) - v
                continue
            rejected[i] = bool(st.get("rejected_files"))
            if copies[i] != dups.get(uris[i], []):
                edits[col["part"][i]].append({"kind": "fix", **span, "uri": uris[i],
                                              "copies": dups.get(uris[i], [])})
        for i in np.flatnonzero(canonical).tolist():
            if state[i] == "reused":
                summary["reused"].append(uris[i])
                if uris[i] in dups:
                    summary["reused_dups"][uris[i]] = dups[uris[i]]
        keep = canonical & pc.is_in(rows.column("state"), value_set=pa.array(
            ["decoded", "reused"])).to_numpy(zero_copy_only=False)
        summary["decoded"] = int((canonical & (np.array(state) == "decoded")).sum()) if n else 0
        errors = pc.starts_with(ids, STORAGE_ERROR).to_numpy(zero_copy_only=False)
        if errors.any():
            summary["storage_errors"] = int(errors.sum())
            summary["storage_example"] = uris[int(np.flatnonzero(errors)[0])]
        if self.bad_names:  # a bad name's escaped URI wins over a listed file of that name
            keep &= ~pc.is_in(rows.column("uri"), value_set=pa.array(
                sorted(self.bad_names), pa.string())).to_numpy(zero_copy_only=False)
        if keep.any():
            summary["files"] = self._files_part(key, rows, keep, rejected).to_json()
        for part, e in sorted(edits.items()):
            yield f"p{part:06d}", to_ipc(pa.Table.from_pylist(e, schema=_EDITS))
        yield f"s{key[1:]}", json.dumps(summary, sort_keys=True).encode()

    def _files_part(self, key: str, rows: pa.Table, keep: np.ndarray, rejected: np.ndarray
                    ) -> FileRecord:
        """FILES for the bucket's canonicals, in URI order: a decoded one is rejected iff
        its stage rejected the file, a reused one keeps its prior outcome."""
        t = rows.filter(pa.array(keep))
        outcome = pa.array(np.where(rejected[keep], "rejected", "accepted"), pa.string())
        reused = pc.equal(t.column("state"), "reused").combine_chunks()
        if self.prior_files and pc.any(reused).as_py():
            was = ingest_listing.prior_values(
                (storage.read_parquet([f], columns=["uri", "outcome"])
                 for f in self.prior_files),
                t.column("uri").filter(reused).combine_chunks(), "outcome")
            outcome = pc.replace_with_mask(outcome, reused, was)
        files = pa.Table.from_arrays([t.column("uri"), t.column("id"), outcome],
                                     schema=FILES).sort_by("uri")
        return mf.write_part(self.version_dir, "files", f"part-{key[1:]}", files)

    def rewrite(self, key: str, values: list[bytes]) -> KeyValues:
        if key.startswith("s"):  # a bucket's summary: on to the driver
            yield key, values[0]
            return
        k = int(key[1:])
        edits = pa.concat_tables([from_ipc(v) for v in values]).to_pylist()
        out = {}
        for table, start, count in (("examples", "ex_start", "examples"),
                                    ("rejected", "rej_start", "rejected")):
            gone = [(e[start], e[start] + e[count]) for e in edits
                    if e["kind"] == "drop" and e[count]]
            fixes = [((e[start], e[start] + e[count]), e["uri"], e["copies"]) for e in edits
                     if e["kind"] == "fix" and e[count] and table == "examples"]
            if gone or fixes:
                out[table] = self._rewrite_part(table, self._name(k), gone, fixes)
        yield key, json.dumps(out).encode()

    def _rewrite_part(self, table: str, part: str, gone: list[tuple[int, int]],
                      fixes: list[tuple[tuple[int, int], str, list[str]]]) -> dict | None:
        """The part without the rows of `gone`, its `fixes` canonicals' Examples naming
        their copies: its new record (None: deleted, emptied)."""
        uri = storage.join(self.version_dir, f"{table}/{part}.parquet")
        data = storage.read_parquet([uri])
        if fixes:
            sources = data.column("source_uris").to_pylist()
            for (a, b), canon, dups in fixes:
                for i in range(a, b):
                    if sources[i] and sources[i][0] == canon:
                        sources[i] = [canon, *dups]
            idx = data.schema.get_field_index("source_uris")
            data = data.set_column(idx, data.schema.field(idx),
                                   pa.array(sources, data.schema.field(idx).type))
        if gone:
            keep = np.ones(data.num_rows, dtype=bool)
            for a, b in gone:
                keep[a:b] = False
            data = data.filter(pa.array(keep))
        if not data.num_rows:
            storage.delete(uri)
            return None
        return mf.write_part(self.version_dir, table, part, data).to_json()


def resolve(engine: Engine | EngineOptions, writer: mf.VersionWriter,
            tables: dict[str, list[FileRecord]], stats: dict[str, int],
            prior_files: list[str], bad_names: set[str]) -> Resolved:
    """Per content id the smallest URI is canonical, the rest duplicates (empty files
    never: each is rejected); rows a duplicate's decode left in its item are dropped and
    its stats taken back; each decoded canonical's Examples name all its copies. On the
    engine (`ResolveSteps`): the driver gets the parts written and counters back."""
    records = pop_files_records(tables)
    listed = sum(r.rows for r in records)
    buckets = max(1, min(MAX_BUCKETS, -(-listed // FILES_PER_BUCKET)))
    steps = ResolveSteps(writer.dir, [r.path for r in records], buckets, tuple(prior_files),
                         frozenset(bad_names))
    items = [{"name": f"files-{k:05d}", "part": k} for k in range(len(records))]
    got = Resolved([], [], 0, set(), {}, 0, None)
    where = {t: {f.path: n for n, f in enumerate(tables.get(t, []))}
             for t in ("examples", "rejected")}
    gone: set[tuple[str, int]] = set()
    exchange = Exchange(writer.dir, steps.map, (steps.resolve, steps.rewrite), "ingest-resolve")
    run = run_exchange if listed > LOCAL_MAX_FILES else lambda _, *a: run_here(*a)
    for key, value in run(engine, exchange, items):
        out = json.loads(value)
        if key.startswith("p"):  # a part's new records (None: deleted)
            name = steps._name(int(key[1:]))
            for table, rec in out.items():
                n = where[table][f"{table}/{name}.parquet"]
                if rec is None:
                    gone.add((table, n))
                else:
                    tables[table][n] = FileRecord(**rec)
            continue
        for s, v in out["stats"].items():
            stats[s] = stats.get(s, 0) + v
        got.decoded += out["decoded"]
        got.reused.update(out["reused"])
        got.reused_dups |= out["reused_dups"]
        got.storage_errors += out["storage_errors"]
        if got.storage_example is None:
            got.storage_example = out["storage_example"]
        for table, rec in (("files", out["files"]), ("duplicates", out["duplicates"])):
            if rec is not None:
                getattr(got, table).append(FileRecord(**rec))
    for table in ("examples", "rejected"):
        tables[table] = [f for n, f in enumerate(tables.get(table, []))
                         if (table, n) not in gone]
    return got


def pop_files_records(tables: dict[str, list[FileRecord]]) -> list[FileRecord]:
    """The stage's `_work/files` parts: work data, never part of the version."""
    return tables.pop(INGEST_FILES_TABLE, [])
