"""Shard pass 1: Pairs/Triples joined with their Examples' content, as an engine exchange.

No worker holds the corpus: each pair item sends the ids it references (query_ref,
positive, negatives) to the partitions that own them (a hash of the id), each Examples
file sends its rows to the same partitions, and a partition hands every item just the
Examples it asked for. The item then builds its TrainingRows with
`transforms.packing.training_rows` and writes one joined part, named after the item as
the per-item stage wrote it, so the joined files (and `target_mb`'s size estimate) are
what they were.
"""

from __future__ import annotations

import functools
import hashlib
import json

import pyarrow as pa
from loom.pipelines.exchange import Exchange, KeyValues, from_ipc, to_ipc
from loom.pipelines.work import load_item
from loom.schemas import storage
from loom.schemas.manifest import write_part
from loom.schemas.records import EXAMPLE, Split, rows_of
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from loom.transforms.packing import training_rows
from loom.transforms.tokenizer import TextTokenizer

EXAMPLES_PER_PARTITION = 1024  # what one join worker holds at once, about
REFERENCE_COLUMNS = ("positive_id", "query_ref", "negatives", "split")  # what `referenced` reads


def partitions(n_examples: int) -> int:
    return max(1, -(-n_examples // EXAMPLES_PER_PARTITION))


def _partition(ids: list[str], n: int) -> list[int]:
    return [int(hashlib.md5(i.encode()).hexdigest()[:8], 16) % n for i in ids]


def referenced(rec: dict) -> set[str]:
    """The Example ids a Pair or Triple row needs: its query_ref, positive and negatives."""
    ids = {rec["positive_id"]}
    if ref := rec.get("query_ref"):
        ids.add(ref["example_id"])
    ids.update(n["id"] for n in rec.get("negatives") or [])
    return ids


@functools.cache
def _spec(examples_dir: str) -> tuple[PreprocessingSpec, TextTokenizer]:
    spec = PreprocessingSpec.model_validate_json(
        storage.read_bytes(storage.join(examples_dir, SPEC_FILE)))
    return spec, TextTokenizer.from_json(spec.tokenizer_json)


def _examples_file(uri: str) -> pa.Table:
    """One Examples part in today's columns (those an older file lacks, null), as
    `manifest.read_table` reads it."""
    data = storage.read_parquet([uri])
    for field in EXAMPLE:
        if field.name not in data.column_names:
            data = data.append_column(field.with_nullable(True),
                                      pa.nulls(data.num_rows, field.type))
    return data


class _Tag:
    """First byte of a value: what it is (a pair item, its references, Example rows)."""

    ITEM, REFS, ROWS = b"I", b"R", b"X"


class JoinSteps:
    """The join's map and reduces (picklable; the tokenizer loads on the worker)."""

    def __init__(self, work: str, examples_dir: str, input_schema: pa.Schema, split: Split,
                 n_partitions: int):
        self.work, self.examples_dir, self.split = work, examples_dir, split
        self.input_schema, self.n = input_schema, n_partitions

    def map(self, item: dict) -> KeyValues:
        if "examples" in item:
            data = _examples_file(item["examples"])
            ids = data.column("id").to_pylist()
            by_part: dict[int, list[int]] = {}
            for row, p in enumerate(_partition(ids, self.n)):
                by_part.setdefault(p, []).append(row)
            for p, rows in sorted(by_part.items()):
                yield f"e:{p:06d}", _Tag.ROWS + to_ipc(data.take(rows))
            return
        batch = load_item(item, self.input_schema)
        yield f"i:{item['name']}", _Tag.ITEM + json.dumps(item).encode()
        names = batch.schema.names
        ids: set[str] = set()
        wanted = [c for c in REFERENCE_COLUMNS if c in names]  # not the inline query parts
        for rec in batch.select(wanted).to_pylist():
            if "split" not in names or rec["split"] == self.split.value:
                ids |= referenced(rec)
        by_part_ids: dict[int, list[str]] = {}
        for i, p in zip(sorted(ids), _partition(sorted(ids), self.n), strict=True):
            by_part_ids.setdefault(p, []).append(i)
        for p, part_ids in sorted(by_part_ids.items()):
            refs = {"item": item["name"], "ids": part_ids}
            yield f"e:{p:06d}", _Tag.REFS + json.dumps(refs).encode()

    def route(self, key: str, values: list[bytes]) -> KeyValues:
        """A partition: the Examples each item asked for, sent to that item."""
        if key.startswith("i:"):
            yield key[2:], values[0]
            return
        rows = [from_ipc(v[1:]) for v in values if v[:1] == _Tag.ROWS]
        if not rows:
            return
        examples = pa.concat_tables(rows)
        where = {i: r for r, i in enumerate(examples.column("id").to_pylist())}
        for v in values:
            if v[:1] == _Tag.REFS:
                refs = json.loads(v[1:])
                take = [where[i] for i in refs["ids"] if i in where]
                if take:
                    yield refs["item"], _Tag.ROWS + to_ipc(examples.take(take))

    def build(self, name: str, values: list[bytes]) -> KeyValues:
        """One item: its rows with the content joined in, written as one joined part."""
        item = next(json.loads(v[1:]) for v in values if v[:1] == _Tag.ITEM)
        examples = {}
        for v in values:
            if v[:1] == _Tag.ROWS:
                examples.update((r["id"], r) for r in rows_of(from_ipc(v[1:])))  # float16
        spec, tokenizer = _spec(self.examples_dir)
        rows, missing = training_rows(load_item(item, self.input_schema), examples, tokenizer,
                                      spec.max_text_tokens, self.split)
        rec = write_part(self.work, "_rows", name, rows).to_json() if rows.num_rows else None
        yield name, json.dumps({"file": rec, "missing": len(missing)}).encode()


def join_exchange(version_dir: str, examples_dir: str, input_schema: pa.Schema, split: Split,
                  n_examples: int) -> Exchange:
    """Items: the pair items (`file_items`) and one `{"examples": uri}` per Examples file."""
    steps = JoinSteps(storage.join(version_dir, "_work"), examples_dir, input_schema, split,
                      partitions(n_examples))
    return Exchange(version_dir, steps.map, (steps.route, steps.build), "shard-join")
