"""Every table in schemas.records.TABLES survives a Parquet round trip, read by loom and
by tools that know nothing of loom (pyarrow.parquet, DuckDB, Polars)."""

from __future__ import annotations

import json

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loom.schemas import storage
from loom.schemas.manifest import write_part
from loom.schemas.records import (
    EXAMPLE,
    TABLES,
    TRAINING_ROW,
    TRIPLE,
    Modality,
    empty_part,
    to_table,
)


def _value(t: pa.DataType, i: int, depth: int = 0):
    """A deterministic, exactly representable value of Arrow type `t`."""
    if pa.types.is_struct(t):
        return {t.field(k).name: _value(t.field(k).type, i + k, depth + 1)
                for k in range(t.num_fields)}
    if pa.types.is_list(t):
        # Lengths 0..2 (an empty list in every third row), nested values vary.
        return [_value(t.value_type, i + j, depth + 1) for j in range(i % 3)]
    if pa.types.is_string(t):
        return f"s{i}-ü-{depth}"
    if pa.types.is_binary(t):
        return bytes([i % 256, 0, 255, (i * 7) % 256])
    if pa.types.is_int32(t) or pa.types.is_int64(t):
        return i * 3 - 1
    if pa.types.is_float32(t) or pa.types.is_float16(t) or pa.types.is_float64(t):
        return i * 0.25 - 0.5  # exact in float32 and float16
    if pa.types.is_boolean(t):
        return i % 2 == 0
    raise NotImplementedError(t)


def _rows(schema: pa.Schema, n: int = 7) -> list[dict]:
    """n rows; nullable top-level fields are null in every fourth row."""
    rows = []
    for i in range(n):
        row = {}
        for f in schema:
            row[f.name] = None if (f.nullable and i % 4 == 3) else _value(f.type, i)
        rows.append(row)
    return rows


def _hand_rows(name: str) -> list[dict] | None:
    """Realistic rows for the nested tables (parts, negatives, items)."""
    if name == "examples":
        text = empty_part(Modality.TEXT.value) | {"text": "a caption", "tokens": [101, 7, 102]}
        image = empty_part(Modality.IMAGE.value) | {
            "pixels": bytes(range(12)), "height": 2, "width": 2, "frames": 1,
            "source_uri": "gs://raw/a.jpg", "mime": "image/jpeg"}
        audio = empty_part(Modality.AUDIO.value) | {
            "features": [0.5, -1.0, 2.25, 0.0], "feature_bins": 2, "frames": 2}
        return [
            {"id": "a" * 64, "modality": "interleaved", "parts": [text, image, audio],
             "source_uris": ["gs://raw/a.jpg", "gs://raw/a.txt"], "mime": None,
             "size_bytes": 1234, "metadata": json.dumps({"k": 1})},
            {"id": "b" * 64, "modality": "text", "parts": [text], "source_uris": [],
             "mime": "text/plain", "size_bytes": None, "metadata": None},
        ]
    if name == "triples":
        negs = [{"id": f"n{r}", "score": 0.5 - r * 0.25, "modality": "image", "rank": r}
                for r in range(3)]
        return [
            {"pair_id": "p1", "kind": "caption", "query_text": "q", "query_modality": "text",
             "positive_id": "x", "positive_modality": "image", "positive_score": 0.75,
             "negatives": negs, "checkpoint": "ck-1", "mining_config": "{}"},
            {"pair_id": "p2", "kind": None, "query_text": "q2", "query_modality": "text",
             "positive_id": "y", "positive_modality": "text", "positive_score": None,
             "negatives": [], "checkpoint": "ck-1", "mining_config": None},
        ]
    if name == "shards":
        def item(i, modality="text", pixels=None):
            return {"id": f"i{i}", "modality": modality, "tokens": [i, i + 1],
                    "pixels": pixels, "frames": 1 if pixels else None}
        return [
            {"pair_id": "p1", "kind": "caption", "query": item(1),
             "positive": item(2, "image", b"\x00\x01\x02"),
             "negatives": [item(3), item(4, "image", b"\xff")]},
            {"pair_id": "p2", "kind": None, "query": item(5), "positive": item(6),
             "negatives": []},  # pft: no negatives
        ]
    return None


CASES = [(name, "generated") for name in TABLES] + [
    (name, "hand") for name in TABLES if _hand_rows(name) is not None
]


def _fill(value, t: pa.DataType):
    """`value` with every key its Arrow type declares, missing ones as None (at any depth),
    worked out from the schema alone, not by the code under test."""
    if value is None:
        return None
    if pa.types.is_struct(t):
        return {t.field(k).name: _fill(value.get(t.field(k).name), t.field(k).type)
                for k in range(t.num_fields)}
    if pa.types.is_list(t):
        return [_fill(v, t.value_type) for v in value]
    return value


def _expected(rows: list[dict], schema: pa.Schema) -> list[dict]:
    # Missing keys (at any depth) become null.
    return [{f.name: _fill(r.get(f.name), f.type) for f in schema} for r in rows]


@pytest.mark.parametrize("name,kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_round_trip(tmp_path, name, kind):
    schema = TABLES[name]
    rows = _hand_rows(name) if kind == "hand" else _rows(schema)
    table = to_table(rows, schema)
    assert table.schema.equals(schema)
    expected = _expected(rows, schema)

    rec = write_part(str(tmp_path), name, "part-00000", table)
    assert rec.rows == len(rows)
    path = tmp_path / rec.path
    assert path.is_file()

    # loom's reader
    back = storage.read_parquet([str(path)])
    assert back.schema.equals(schema), (back.schema, schema)
    assert back.to_pylist() == expected

    # pyarrow.parquet, directly
    direct = pq.read_table(path)
    assert direct.schema.equals(schema)
    assert direct.equals(table)

    # DuckDB: knows nothing of loom
    con = duckdb.connect()
    try:
        cur = con.execute("SELECT * FROM read_parquet(?)", [str(path)])
        cols = [d[0] for d in cur.description]
        via_duck = [dict(zip(cols, r, strict=False)) for r in cur.fetchall()]
    finally:
        con.close()
    assert cols == schema.names
    assert via_duck == expected

    # Polars: knows nothing of loom
    via_polars = pl.read_parquet(path).to_dicts()
    assert via_polars == expected


def test_every_table_has_a_case():
    assert {n for n, _ in CASES} == set(TABLES)
    assert {"examples", "triples", "shards"} <= {n for n, k in CASES if k == "hand"}


def test_nested_examples_keep_part_order_and_nulls(tmp_path):
    rows = _hand_rows("examples")
    rec = write_part(str(tmp_path), "examples", "p", to_table(rows, EXAMPLE))
    back = storage.read_parquet([str(tmp_path / rec.path)]).to_pylist()
    assert [p["kind"] for p in back[0]["parts"]] == ["text", "image", "audio"]
    assert back[0]["parts"][0]["pixels"] is None
    assert back[0]["parts"][1]["pixels"] == bytes(range(12))
    assert back[0]["parts"][2]["features"] == [0.5, -1.0, 2.25, 0.0]


def test_empty_part_has_every_field():
    part = empty_part("text")
    assert set(part) == set(EXAMPLE.field("parts").type.value_type.names)
    assert part["kind"] == "text" and all(v is None for k, v in part.items() if k != "kind")


@pytest.mark.parametrize(
    "schema,row",
    [
        (EXAMPLE, {"id": 123, "modality": "text", "parts": [], "source_uris": []}),
        (EXAMPLE, {"id": "x", "modality": "text", "parts": "not a list", "source_uris": []}),
        (EXAMPLE, {"id": "x", "modality": "text", "parts": [], "source_uris": [],
                   "size_bytes": "big"}),
        (TRIPLE, {"pair_id": "p", "query_text": "q", "query_modality": "text",
                  "positive_id": "x", "positive_modality": "text", "checkpoint": "c",
                  "negatives": [{"id": "n", "rank": "first"}]}),
        (TRAINING_ROW, {"pair_id": "p", "query": {"tokens": ["a"]}, "positive": {},
                        "negatives": []}),
    ],
    ids=["id-int", "parts-str", "size-str", "negative-rank-str", "item-tokens-str"],
)
def test_to_table_rejects_wrong_types(schema, row):
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        to_table([row], schema)


def test_null_in_required_field_is_rejected_at_write(tmp_path):
    # to_table itself lets a null into a non-nullable column (pyarrow does not check
    # nullability on construction); the Parquet write refuses it, so no such file exists.
    row = {"id": None, "modality": "text", "parts": [], "source_uris": []}
    table = to_table([row], EXAMPLE)
    with pytest.raises(pa.ArrowInvalid, match="non-nullable"):
        write_part(str(tmp_path), "examples", "part-00000", table)
    assert not (tmp_path / "examples" / "part-00000.parquet").exists()
