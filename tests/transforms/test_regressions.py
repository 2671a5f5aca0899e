"""Replays the fuzzer's kept inputs, and proves a crash in native code is contained."""

from __future__ import annotations

import ctypes
import hashlib
import pathlib

import pyarrow as pa
import pytest
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.ingest import IngestConfig, IngestStage
from loom.transforms.isolation import IsolatedDecoder
from loom.transforms.sniff import DecodeError

REGRESSIONS = sorted((pathlib.Path(__file__).parent / "regressions").glob("*.bin"))


def segfault() -> None:
    """A crash inside C: read address 0."""
    ctypes.string_at(0)


def echo(x):
    return x


def test_a_native_crash_is_a_rejected_outcome_not_a_dead_run():
    iso = IsolatedDecoder(timeout_s=20, memory_mb=512)
    try:
        with pytest.raises(DecodeError) as e:
            iso.run(segfault)
        assert e.value.reason.value == "decode_error" and "died" in e.value.message
        assert iso.run(echo, 7) == 7  # a fresh worker carries on
        assert iso.restarts == 2  # the crash, and its one retry on a fresh worker
    finally:
        iso.close()


def test_kept_fuzz_inputs_end_as_one_outcome(tmp_path):
    # A seed set is committed (broken headers, truncations of every fuzzed format); the
    # fuzzer adds what it kills the decoder with. Never empty, so this never skips.
    assert len(REGRESSIONS) >= 10
    stage = IngestStage(IngestConfig(spec=PreprocessingSpec(image_size=32), decode_timeout_s=10,
                                     decoder_memory_mb=768))
    rows = []
    for src in REGRESSIONS:
        data = src.read_bytes()
        path = tmp_path / src.name
        path.write_bytes(data)
        rows.append({"uri": str(path), "id": hashlib.sha256(data).hexdigest()})
    try:
        out = stage.process_batch(pa.RecordBatch.from_pylist(rows, schema=stage.input_schema))
    finally:
        stage.teardown()
    stats = out["stats"].to_pylist()[0]
    assert stats["accepted_files"] + stats["rejected_files"] == len(rows)
    rejected = [r["uri"] for r in out["rejected"].to_pylist()]
    accepted = [u for e in out["examples"].to_pylist() for u in e["source_uris"]]
    for r in rows:  # an archive's outcomes are per member (`<file>#<member>`)
        outcomes = [u for u in accepted + rejected if u.split("#")[0] == r["uri"]]
        assert len(outcomes) == 1, (r["uri"], outcomes)  # one member at most in these seeds
    assert all(r["reason"] for r in out["rejected"].to_pylist())
