"""Ingest's near-duplicate groups as an engine exchange: the driver never holds signatures.

1. map (per Examples part): each signature goes to the partition of every LSH bucket
   it falls in (`transforms.neardup.bucket_keys`), as Arrow rows (bucket, id, signature).
2. reduce (per partition): buckets with two or more members are verified pair by pair
   (`bucket_pairs`, the same checks as the one-process `near_dup_groups`) and joined; the
   members of components of two or more go on as (member, root, part) edges to the
   partition of their member;
3. reduce (per partition): each edge once (a pair sharing several bands was joined in
   several partitions), back as JSON.

Every verified pair shares a bucket, and every bucket lives in one partition, so the
components over what comes back are the whole graph's: the same groups as
`near_dup_groups` over every row. The driver holds near-duplicate edges only (none for a
corpus without near-copies), as Arrow; the parts that hold a member (and parts reused
from a prior version, whose groups may have changed) are then rewritten on the engine,
the members' groups read by the workers from one Parquet file.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from loom.pipelines.exchange import Exchange, KeyValues, from_ipc, run_here, to_ipc
from loom.pipelines.runner import Engine, EngineOptions, run_exchange
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.manifest import FileRecord, write_part
from loom.transforms.neardup import UnionFind, bucket_keys, bucket_pairs, parse
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MAX_PARTITIONS = 64
LOCAL_MAX_PARTS = 16  # at most this many parts to rewrite: in the driver, no pipeline
_ROWS = pa.schema([("bucket", pa.binary()), ("id", pa.string()), ("sig", pa.binary()),
                   ("part", pa.int64())])


_EDGES = pa.schema([("member", pa.string()), ("root", pa.string()), ("part", pa.int64())])


def _unique_rows(t: pa.Table) -> pa.Table:
    return t.group_by(t.column_names, use_threads=False).aggregate([])


class NearDupSteps:
    def __init__(self, partitions: int):
        self.partitions = partitions

    def _partition(self, key: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big") \
            % self.partitions

    def map(self, item: dict) -> KeyValues:
        t = storage.read_parquet([item["file"]], columns=["id", "near_dup_sig"])
        out: dict[int, tuple[list, list, list]] = {}
        for ex_id, sig in zip(t.column("id").to_pylist(), t.column("near_dup_sig").to_pylist(),
                              strict=True):
            if (parsed := parse(sig)) is None:
                continue
            for key in bucket_keys(*parsed):
                b, i, s = out.setdefault(self._partition(key), ([], [], []))
                b.append(key)
                i.append(ex_id)
                s.append(sig)
        for p, cols in sorted(out.items()):
            part = pa.array([item.get("part", -1)] * len(cols[0]), pa.int64())
            yield f"p{p:04d}", to_ipc(pa.table([*cols, part], schema=_ROWS))

    def join(self, key: str, values: list[bytes]) -> KeyValues:
        rows = pa.concat_tables([from_ipc(v) for v in values])
        shared = rows.group_by("bucket", use_threads=False).aggregate([("id", "count")])
        shared = shared.filter(pc.greater(shared.column("id_count"), 1)).column("bucket")
        rows = rows.filter(pc.is_in(rows.column("bucket"), value_set=shared))
        if not rows.num_rows:
            return
        rows = rows.sort_by([("bucket", "ascending"), ("id", "ascending")])
        sigs = {i: parse(s) for i, s in zip(rows.column("id").to_pylist(),
                                             rows.column("sig").to_pylist(), strict=True)}
        parts = dict(zip(rows.column("id").to_pylist(), rows.column("part").to_pylist(),
                         strict=True))
        uf = UnionFind()
        buckets, ids = rows.column("bucket").to_pylist(), rows.column("id").to_pylist()
        start = 0
        for end in range(1, len(ids) + 1):
            if end == len(ids) or buckets[end] != buckets[start]:
                members = ids[start:end]
                for a, b in bucket_pairs(sigs[members[0]][0], members, sigs):
                    uf.union(a, b)
                start = end
        joined = uf.joined()
        if not joined:
            return
        # a pair sharing several bands is joined in several partitions: its edges go on
        # to the partition of their member, where repeats are dropped (`dedupe`)
        edges = pa.table([pa.array(list(joined), pa.string()),
                          pa.array(list(joined.values()), pa.string()),
                          pa.array([parts[m] for m in joined], pa.int64())], schema=_EDGES)
        to = np.array([self._partition(m.encode()) for m in joined], np.int64)
        for p in np.unique(to):
            yield f"e{p:04d}", to_ipc(edges.filter(pa.array(to == p)))

    @staticmethod
    def dedupe(key: str, values: list[bytes]) -> KeyValues:
        """One partition's (member, root, part) edges, each once (the last step's values
        are JSON texts on every engine)."""
        edges = _unique_rows(pa.concat_tables([from_ipc(v) for v in values]))
        yield key, json.dumps({c: edges.column(c).to_pylist() for c in _EDGES.names}
                              ).encode()


_GROUPS = pa.schema([("part", pa.int64()), ("id", pa.string()), ("group", pa.string())])


def _components(engine: Engine | EngineOptions, version_dir: str, files: list[str]
                ) -> tuple[pa.Table, int, int]:
    """Every Example of a group of two or more as (part, id, group) rows, sorted by part
    and id, with the number of such Examples and of groups. The joins' (member, root,
    part) edges come back once each (`dedupe`) and are kept as Arrow, not a Python object
    per member; the components are scipy's over them; a group is named by its smallest
    member."""
    steps = NearDupSteps(max(1, min(MAX_PARTITIONS, len(files))))
    items = [{"name": f"examples-{k:05d}", "file": uri, "part": k}
             for k, uri in enumerate(files)]
    edges = []
    for _, value in run_exchange(engine, Exchange(
            version_dir, steps.map, (steps.join, steps.dedupe), "near-dup"), items):
        got = json.loads(value)
        edges.append(pa.table([pa.array(got[c], _EDGES.field(c).type) for c in _EDGES.names],
                              schema=_EDGES))
        del got
    if not edges:
        return _GROUPS.empty_table(), 0, 0
    edges_t = pa.concat_tables(edges).combine_chunks()
    del edges
    ids = pa.chunked_array([edges_t.column("member"), edges_t.column("root")]
                           ).combine_chunks().dictionary_encode()
    names, at = ids.dictionary, ids.indices.to_numpy()
    n = edges_t.num_rows
    graph = coo_matrix((np.ones(n, np.int8), (at[:n], at[n:])), shape=(len(names),) * 2)
    count, label = connected_components(graph, directed=False)
    by_rank = pc.sort_indices(names).to_numpy()
    rank = np.empty(len(names), np.int64)  # each name's place in sorted order
    rank[by_rank] = np.arange(len(names))
    first = np.full(count, len(names))  # per component: the smallest member's rank
    np.minimum.at(first, label, rank)
    part = np.empty(len(names), np.int64)  # every member is a key of some join's result
    part[at[:n]] = edges_t.column("part").to_numpy()
    table = pa.table([pa.array(part), names, names.take(pa.array(by_rank[first[label]]))],
                     schema=_GROUPS)
    table = table.sort_by([("part", "ascending"), ("id", "ascending")])
    return table, len(names), count


def near_dup_groups_of(engine: Engine | EngineOptions, version_dir: str, files: list[str]
                       ) -> dict[str, str]:
    """{member: group} for every Example of a group of two or more, over the Examples
    `files`; any other Example is its own group."""
    t = _components(engine, version_dir, files)[0]
    return dict(zip(t.column("id").to_pylist(), t.column("group").to_pylist(), strict=True))


_LOADED: dict[str, tuple[np.ndarray, pa.Table]] = {}  # a worker's groups file, read once


class RegroupSteps:
    """Rewrites an Examples part whose `near_dup_group` column changed (picklable: the
    version, its parts' paths and the groups file, which each worker reads once)."""

    def __init__(self, version_dir: str, paths: list[str], groups_uri: str):
        self.version_dir, self.paths, self.groups_uri = version_dir, paths, groups_uri

    def _groups(self, part: int) -> dict[str, str]:
        if self.groups_uri not in _LOADED:
            _LOADED.clear()
            t = storage.read_parquet([self.groups_uri], schema=_GROUPS)
            _LOADED[self.groups_uri] = (t.column("part").to_numpy(), t)
        parts, t = _LOADED[self.groups_uri]
        lo, hi = np.searchsorted(parts, part), np.searchsorted(parts, part, side="right")
        rows = t.slice(lo, hi - lo)
        return dict(zip(rows.column("id").to_pylist(), rows.column("group").to_pylist(),
                        strict=True))

    def map(self, item: dict) -> KeyValues:
        path = self.paths[item["part"]]
        uri = storage.join(self.version_dir, path)
        t = storage.read_parquet([uri], columns=["id", "near_dup_group"])
        groups = self._groups(item["part"])
        new = [groups.get(i, i) for i in t.column("id").to_pylist()]
        if new == t.column("near_dup_group").to_pylist():
            return  # as written (every Example its own group, or reused unchanged)
        part = storage.read_parquet([uri])
        col = part.schema.get_field_index("near_dup_group")
        part = part.set_column(col, part.schema.field(col), pa.array(new, pa.string()))
        name = path.split("/", 1)[1].removesuffix(".parquet")
        record = write_part(self.version_dir, "examples", name, part)
        yield f"{item['part']:06d}", json.dumps(record.to_json()).encode()


def group_near_dups(engine: Engine | EngineOptions, writer: mf.VersionWriter, tables: dict
                    ) -> dict[str, int]:
    """Join near-duplicate Examples across all parts on the engine, then rewrite just the
    parts whose `near_dup_group` column changed, on the engine too: the members' groups
    go to the workers as one Parquet file under the version's `_work`."""
    files = tables.get("examples", [])
    paths = [storage.join(writer.dir, f.path) for f in files]
    if not paths:
        return {"near_duplicate": 0, "near_dup_groups": 0}
    groups, members, count = _components(engine, writer.dir, paths)
    groups = groups.filter(pc.not_equal(groups.column("id"), groups.column("group")))
    groups_uri = storage.join(writer.dir, mf.WORK, "near-dup-groups.parquet")
    storage.write_parquet(groups, groups_uri)
    check = set(np.unique(groups.column("part").to_numpy()).tolist()) | {
        k for k, f in enumerate(files)  # a reused part's prior groups may have changed
        if f.path.startswith("examples/reused-")}
    del groups
    items = [{"name": f"regroup-{k:05d}", "part": k} for k in sorted(check)]
    steps = RegroupSteps(writer.dir, [f.path for f in files], groups_uri)
    # a map and no reduce: one result a part, so no shuffle to pay for
    exchange = Exchange(writer.dir, steps.map, (), "near-dup-regroup")
    run = run_exchange if len(items) > LOCAL_MAX_PARTS else lambda _, *a: run_here(*a)
    for key, value in run(engine, exchange, items):
        files[int(key)] = FileRecord(**json.loads(value))
    _LOADED.clear()  # run here: the driver read the file
    return {"near_duplicate": members - count, "near_dup_groups": count}
