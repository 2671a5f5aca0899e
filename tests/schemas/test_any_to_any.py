"""Pairs any-to-any (schema version 2): a version-1 dataset reads through the converter,
a newer one is refused, splits follow asset groups."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loom.schemas import manifest as mf
from loom.schemas.records import (
    PAIR,
    PAIRS_SCHEMA_VERSION,
    TRIPLE,
    conform,
    pair_name,
    query_modality,
)
from loom.schemas.splits import example_split, group_of, split_for

V1_PAIR = pa.schema([f for f in PAIR if f.name not in
                     ("query_parts", "query_ref", "positive_parts", "positive_text", "source",
                      "group")])


def _v1_rows(n: int) -> list[dict]:
    return [{"pair_id": f"p{i}", "task": "Given keywords, retrieve the image.", "kind": "keyword",
             "query_text": f"red circle {i}", "query_modality": "text", "positive_id": f"e{i}",
             "positive_modality": "image", "split": "train", "prompt_version": "keyword.v1",
             "model": "m", "backend": "offline"} for i in range(n)]


def test_version_1_pairs_read_as_version_2(tmp_path):
    """A dataset written before any-to-any (no query_parts, ...) reads with the new
    columns null: a text query and a whole positive, what version 1 meant."""
    old = pa.Table.from_pylist(_v1_rows(3), schema=V1_PAIR)
    w = mf.VersionWriter(str(tmp_path), "synth", "synth-old")
    (tmp_path / "synth-old" / "pairs").mkdir(parents=True)
    pq.write_table(old, tmp_path / "synth-old" / "pairs" / "part-0.parquet")  # old columns
    manifest = w.commit({"pairs": [mf.FileRecord("pairs/part-0.parquet", 3, "-")]},
                        {"pairs": 3}, {}, {})
    table = mf.read_table(w.dir, manifest, "pairs")
    assert table.schema.equals(PAIR)
    rows = table.to_pylist()
    assert [r["query_text"] for r in rows] == ["red circle 0", "red circle 1", "red circle 2"]
    assert all(r["query_parts"] is None and r["query_ref"] is None and r["positive_text"] is None
               for r in rows)


def test_unknown_columns_and_missing_required_are_clear_errors():
    newer = pa.Table.from_pylist(_v1_rows(1)).append_column("query_audio_v9", pa.array([1]))
    with pytest.raises(ValueError, match="newer version"):
        conform(newer, PAIR)
    broken = pa.Table.from_pylist(_v1_rows(1)).drop_columns(["positive_id"])
    with pytest.raises(ValueError, match="positive_id"):
        conform(broken, PAIR)
    assert PAIRS_SCHEMA_VERSION == 2
    assert set(PAIR.names) - set(TRIPLE.names) <= {"split", "prompt_version", "model", "backend",
                                                    "generation_config", "seed", "input_tokens",
                                                    "output_tokens"}


def test_mixed_query_names():
    assert query_modality(["image", "text"]) == "text+image"
    assert query_modality(["video", "audio"]) == "audio+video"
    assert pair_name(query_modality(["image", "text"]), "video") == "text+image->video"


def test_split_follows_the_asset_group():
    """Near-duplicates (one group) always share a split, whatever their own ids say."""
    ids = [f"asset-{i}" for i in range(200)]
    own = {split_for(i) for i in ids}
    assert own == {split_for("g")} | own  # both splits occur among the ids
    members = [{"id": i, "near_dup_group": "group-7"} for i in ids]
    assert {example_split(m) for m in members} == {split_for("group-7")}
    assert group_of({"id": "x"}) == "x"
