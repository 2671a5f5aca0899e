"""Ingest's near-duplicate groups as an engine exchange: the driver never holds signatures.

1. map (per Examples part): each signature goes to the partition of every LSH bucket
   it falls in (`transforms.neardup.bucket_keys`), as Arrow rows (bucket, id, signature).
2. reduce (per partition): buckets with two or more members are verified pair by pair
   (`bucket_pairs`, the same checks as the one-process `near_dup_groups`) and joined; only
   the members of components of two or more come back, as JSON {member: component}.

Every verified pair shares a bucket, and every bucket lives in one partition, so the
driver's union of what comes back is the whole graph's components: the same groups as
`near_dup_groups` over every row. The driver holds near-duplicate members only (none for
a corpus without near-copies) and the part each is in; the parts that hold one (and parts
reused from a prior version, whose groups may have changed) are then rewritten on the
engine, each task given its own part's members.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
from loom.pipelines.exchange import Exchange, KeyValues, from_ipc, run_here, to_ipc
from loom.pipelines.runner import Engine, EngineOptions, run_exchange
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.manifest import FileRecord, write_part
from loom.transforms.neardup import UnionFind, bucket_keys, bucket_pairs, parse

MAX_PARTITIONS = 64
LOCAL_MAX_PARTS = 16  # at most this many parts to rewrite: in the driver, no pipeline
_ROWS = pa.schema([("bucket", pa.binary()), ("id", pa.string()), ("sig", pa.binary()),
                   ("part", pa.int64())])


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

    @staticmethod
    def join(key: str, values: list[bytes]) -> KeyValues:
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
        if joined:  # the last step's values are JSON texts on every engine
            yield key, json.dumps({"groups": joined, "parts": {m: parts[m] for m in joined}},
                                  sort_keys=True).encode()


def _groups_and_parts(engine: Engine | EngineOptions, version_dir: str, files: list[str]
                      ) -> tuple[dict[str, str], dict[str, int]]:
    steps = NearDupSteps(max(1, min(MAX_PARTITIONS, len(files))))
    items = [{"name": f"examples-{k:05d}", "file": uri, "part": k}
             for k, uri in enumerate(files)]
    uf, parts = UnionFind(), {}
    for _, value in run_exchange(engine, Exchange(version_dir, steps.map, (steps.join,),
                                                  "near-dup"), items):
        got = json.loads(value)
        for member, group in got["groups"].items():
            uf.union(member, group)
        parts |= got["parts"]
    return uf.joined(), parts


def near_dup_groups_of(engine: Engine | EngineOptions, version_dir: str, files: list[str]
                       ) -> dict[str, str]:
    """{member: group} for every Example of a group of two or more, over the Examples
    `files`; any other Example is its own group."""
    return _groups_and_parts(engine, version_dir, files)[0]


class RegroupSteps:
    """Rewrites an Examples part whose `near_dup_group` column changed (picklable: the
    version and its parts' paths; each item brings its part's members' groups)."""

    def __init__(self, version_dir: str, paths: list[str]):
        self.version_dir, self.paths = version_dir, paths

    def map(self, item: dict) -> KeyValues:
        path = self.paths[item["part"]]
        uri = storage.join(self.version_dir, path)
        t = storage.read_parquet([uri], columns=["id", "near_dup_group"])
        groups = item["groups"]
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
    parts whose `near_dup_group` column changed, on the engine too."""
    files = tables.get("examples", [])
    paths = [storage.join(writer.dir, f.path) for f in files]
    if not paths:
        return {"near_duplicate": 0, "near_dup_groups": 0}
    groups, parts = _groups_and_parts(engine, writer.dir, paths)
    by_part: dict[int, dict[str, str]] = {}
    for member, group in groups.items():
        by_part.setdefault(parts[member], {})[member] = group
    del parts
    check = set(by_part) | {k for k, f in enumerate(files)  # prior groups may have changed
                            if f.path.startswith("examples/reused-")}
    items = [{"name": f"regroup-{k:05d}", "part": k, "groups": by_part.pop(k, {})}
             for k in sorted(check)]
    steps = RegroupSteps(writer.dir, [f.path for f in files])
    # a map and no reduce: one result a part, so no shuffle to pay for
    exchange = Exchange(writer.dir, steps.map, (), "near-dup-regroup")
    run = run_exchange if len(items) > LOCAL_MAX_PARTS else lambda _, *a: run_here(*a)
    for key, value in run(engine, exchange, items):
        files[int(key)] = FileRecord(**json.loads(value))
    sizes: dict[str, int] = {}
    for g in groups.values():
        sizes[g] = sizes.get(g, 0) + 1
    return {"near_duplicate": sum(sizes.values()) - len(sizes), "near_dup_groups": len(sizes)}
