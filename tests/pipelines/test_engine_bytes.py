"""Beam and Ray give byte-identical rows for the same bad inputs: the hostile archives,
garbage headers and truncated/flipped copies of every fuzz seed (rejection messages carry
no per-process detail such as an object address)."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf

from tests.pipelines.hostile_inputs import write_hostile_inputs

KEYS = {"examples": "id", "rejected": "uri", "duplicates": "uri", "files": "uri"}


def _sorted_rows(version_dir: str, manifest: mf.Manifest, table: str) -> pa.Table:
    data = mf.read_table(version_dir, manifest, table)
    return data.sort_by([(KEYS[table], "ascending")] + [
        (c, "ascending") for c in data.column_names if c in ("reason", "message")])


@pytest.mark.slow
def test_beam_and_ray_rows_are_byte_identical_on_hostile_inputs(tmp_path, ray_session):
    media = str(write_hostile_inputs(tmp_path / "media"))
    beam = run_ingest(media, str(tmp_path / "beam"), engine=Engine.BEAM, files_per_item=8)
    ray = run_ingest(media, str(tmp_path / "ray"), engine=Engine.RAY, files_per_item=8)
    assert beam["counts"] == ray["counts"]
    assert beam["counts"]["rejected"] >= 30  # the bad inputs were bad
    b_dir, b_m = mf.resolve_input(beam["uri"])
    r_dir, r_m = mf.resolve_input(ray["uri"])
    for table in KEYS:
        if table not in b_m.tables:
            assert table not in r_m.tables
            continue
        b, r = _sorted_rows(b_dir, b_m, table), _sorted_rows(r_dir, r_m, table)
        sink_b, sink_r = pa.BufferOutputStream(), pa.BufferOutputStream()
        for data, sink in ((b, sink_b), (r, sink_r)):
            with pa.ipc.new_stream(sink, data.schema) as w:
                w.write_table(data.combine_chunks())
        if sink_b.getvalue() != sink_r.getvalue():  # say which rows differ
            diff = [(x, y) for x, y in zip(b.to_pylist(), r.to_pylist(), strict=False) if x != y]
            pytest.fail(f"{table}: Beam and Ray rows differ: {diff[:3]}")
    messages = _sorted_rows(b_dir, b_m, "rejected").column("message").to_pylist()
    assert not [m for m in messages if re.search(r"0x[0-9a-f]{6,}", m or "")]


def test_messages_name_no_object_address():
    from loom.transforms.sniff import DecodeError, stable_message

    raw = "cannot identify image file <_io.BytesIO object at 0x7f364d858770>"
    assert stable_message(raw) == "cannot identify image file <_io.BytesIO>"
    assert DecodeError("decode_error", raw).message == stable_message(raw)
