"""Fuzz: mutated media never crash ingest, and every file ends as exactly one row."""

from __future__ import annotations

import hashlib
import io
import random

import pyarrow as pa
import pytest
from loom.schemas.records import Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.ingest import IngestConfig, IngestStage
from loom.transforms.scenes import describe, random_scene, render_image
from loom.transforms.tokenizer import train_tokenizer
from PIL import Image


def _seeds(rng: random.Random) -> list[bytes]:
    scene = random_scene(rng)
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(render_image(scene, rng))).save(jpeg, "JPEG")
    gif = io.BytesIO()
    Image.open(io.BytesIO(render_image(scene, rng))).convert("P").save(gif, "GIF")
    return [render_image(scene, rng), jpeg.getvalue(), gif.getvalue(),
            describe(scene, rng).encode(), "café naïve résumé".encode("cp1252")]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.choice(["truncate", "flip", "insert", "zero", "splice"])
    if op == "truncate":
        return bytes(b[: rng.randrange(0, max(1, len(b)))])
    if op == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == "insert":
        i = rng.randrange(len(b))
        b[i:i] = rng.randbytes(rng.randint(1, 64))
    elif op == "zero":
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 256)] = bytes(min(256, len(b) - i))
    else:
        i = rng.randrange(len(b))
        b = b[:i] + bytearray(rng.randbytes(rng.randint(0, 512)))
    return bytes(b)


@pytest.mark.slow
def test_mutated_files_never_crash_ingest(tmp_path):
    rng = random.Random(1234)
    spec = PreprocessingSpec(tokenizer_json=train_tokenizer(["a red circle"], 200))
    stage = IngestStage(IngestConfig(spec=spec))
    stage.setup()
    rows = []
    seeds = _seeds(rng)
    for i in range(600):
        data = _mutate(rng.choice(seeds), rng)
        path = tmp_path / f"f{i:04d}"
        path.write_bytes(data)
        rows.append({"uri": str(path), "id": hashlib.sha256(data).hexdigest()})
    out = {"examples": 0, "rejected": 0}
    reasons: dict[str, int] = {}
    for start in range(0, len(rows), 50):
        batch = pa.RecordBatch.from_pylist(rows[start : start + 50], schema=stage.input_schema)
        res = stage.process_batch(batch)
        out["examples"] += res["examples"].num_rows
        out["rejected"] += res["rejected"].num_rows
        for r in res["rejected"].column("reason").to_pylist():
            reasons[r] = reasons.get(r, 0) + 1
    assert out["examples"] + out["rejected"] == len(rows)
    assert out["examples"] > 0 and out["rejected"] > 0
    assert set(reasons) <= {r.value for r in Reason}
