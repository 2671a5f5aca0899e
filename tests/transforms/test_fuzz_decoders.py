"""Hypothesis fuzzing of every decoder through the isolated decode path (slow tier).

Valid seed files (JPEG, PNG, GIF, WAV, FLAC, MP4, PDF, text, tar, zip, a JSONL
manifest) are mutated (bit flips, byte sets biased to headers, truncation, insertion,
deletion, splices between seeds) and ingested one at a time by an IngestStage with its
persistent, memory-capped worker. Every input must end as exactly one outcome (Examples
or one Rejected row) and the run must go on. An input that killed the worker (a crash in
a C library) or hung it is kept under tests/transforms/regressions/ (when small), where
test_regressions.py replays it in the fast tier.

Bounded: LOOM_FUZZ_EXAMPLES (default 20000) and LOOM_FUZZ_SECONDS (default 240).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pathlib
import time

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.ingest import IngestConfig, IngestStage
from loom.transforms.tokenizer import train_tokenizer
from PIL import Image

from tests.transforms import hostile_archives as ha
from tests.transforms.media import make_flac, make_video, make_wav
from tests.transforms.test_pdf import make_pdf

REGRESSIONS = pathlib.Path(__file__).parent / "regressions"
KEEP_MAX_BYTES = 64 * 1024
CONTAINED = ("the decoder process died", "decoding took longer")


@functools.cache
def seeds() -> dict[str, bytes]:
    img = Image.new("RGB", (24, 16), (30, 120, 200))
    img.paste((250, 20, 20), (4, 4, 12, 10))
    out = {}
    for fmt, kw in (("JPEG", {"quality": 80}), ("PNG", {}), ("GIF", {})):
        buf = io.BytesIO()
        (img.convert("P") if fmt == "GIF" else img).save(buf, fmt, **kw)
        out[fmt.lower()] = buf.getvalue()
    out["wav"] = make_wav(0.25, sr=8000, channels=1)
    out["flac"] = make_flac(0.25, sr=8000, channels=2)
    out["mp4"] = make_video(1.0, fps=4, size=(32, 32), gop=2, audio_sr=8000)
    out["pdf"] = make_pdf(["a red circle", "page two"])
    out["txt"] = "Déjà vu: a small red circle, top left.\n".encode("cp1252")
    out["tar"] = ha.make_tar([ha._reg("s/0001.png", out["png"]),
                              ha._reg("s/0001.txt", b"a caption")])
    out["zip"] = ha.make_zip([("0001.gif", out["gif"], None), ("0001.txt", b"a caption", None)])
    out["jsonl"] = (json.dumps({"id": "r", "parts": [{"text": "hello"}, {"text": "again"}]})
                    + "\n").encode()
    return out


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    pool = seeds()
    kind = draw(st.sampled_from(sorted(pool)))
    data = bytearray(pool[kind])
    for _ in range(draw(st.integers(1, 6))):
        n = len(data)
        if n == 0:
            break
        head = st.integers(0, min(n - 1, 511))  # headers hold most of the structure
        pos = draw(st.one_of(head, st.integers(0, n - 1)))
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x01, 0xFE]))
            if draw(st.booleans()) and pos + 4 <= n:  # a big length field
                data[pos : pos + 4] = b"\xff\xff\xff\x7f"
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 256))]
        else:
            other = pool[draw(st.sampled_from(sorted(pool)))]
            start = draw(st.integers(0, len(other) - 1))
            data[pos:] = other[start : start + draw(st.integers(1, 4096))]
    return kind, bytes(data)


def _keep(kind: str, data: bytes, why: str) -> str | None:
    if len(data) > KEEP_MAX_BYTES:
        return None
    REGRESSIONS.mkdir(exist_ok=True)
    path = REGRESSIONS / f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    (path.with_suffix(".txt")).write_text(why + "\n")
    return str(path)


@pytest.mark.slow
def test_fuzz_decoders_contained(tmp_path):
    budget_s = float(os.environ.get("LOOM_FUZZ_SECONDS", "240"))
    spec = PreprocessingSpec(image_size=32, tokenizer_json=train_tokenizer(["a red circle"], 100))
    stage = IngestStage(IngestConfig(spec=spec, decode_timeout_s=10, decoder_memory_mb=768,
                                     allowed_roots=(str(tmp_path),)))
    stage.setup()
    stop_at = time.monotonic() + budget_s
    tally: dict[str, int] = {}
    found: list[dict] = []

    def one(case: tuple[str, bytes]) -> None:
        if time.monotonic() > stop_at:
            return
        kind, data = case
        path = tmp_path / f"in-{hashlib.sha256(data).hexdigest()[:16]}"
        path.write_bytes(data)
        batch = pa.RecordBatch.from_pylist(
            [{"uri": str(path), "id": hashlib.sha256(data).hexdigest()}],
            schema=IngestStage.input_schema)
        out = stage.process_batch(batch)
        stats = out["stats"].to_pylist()[0]
        file_rows = [r for r in out["rejected"].to_pylist() if r["uri"] == str(path)]
        assert stats["accepted_files"] + stats["rejected_files"] == 1
        assert (out["examples"].num_rows > 0) == (stats["accepted_files"] == 1)
        assert len(file_rows) == stats["rejected_files"]
        key = f"{kind}:" + (f"rejected.{file_rows[0]['reason']}" if file_rows else "accepted")
        tally[key] = tally.get(key, 0) + 1
        for row in file_rows:
            if any(c in (row["message"] or "") for c in CONTAINED):
                found.append({"kind": kind, "reason": row["reason"], "message": row["message"],
                              "kept": _keep(kind, data, f"{row['reason']}: {row['message']}")})
        path.unlink()

    max_examples = int(os.environ.get("LOOM_FUZZ_EXAMPLES", "20000"))
    rounds = 0
    try:  # rounds of 250, each seeded: the budget ends the run between rounds
        while time.monotonic() < stop_at and sum(tally.values()) < max_examples:
            seed(rounds)(settings(max_examples=250, deadline=None, database=None,
                                  suppress_health_check=list(HealthCheck))(
                given(mutated())(one)))()
            rounds += 1
    finally:
        restarts = stage._isolated.restarts if stage._isolated is not None else None
        stage.teardown()
    summary = {"examples": sum(tally.values()), "rounds": rounds,
               "tally": dict(sorted(tally.items())),
               "crashes_or_hangs": found, "worker_restarts": restarts}
    print("FUZZ SUMMARY " + json.dumps(summary))
    assert summary["examples"] > 0

