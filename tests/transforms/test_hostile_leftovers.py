"""Issue 18, the remaining ways one file can hurt a run: a fifo, device or socket named by
a manifest, a file over the size cap (never hashed), compressed text."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import socket
import zlib

import loom.transforms.ingest as ingest
import pyarrow as pa
import pytest
import zstandard
from loom.schemas import storage
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.archives import ArchiveLimits
from loom.transforms.ingest import IngestConfig, IngestStage, hash_file, too_large_id
from PIL import Image

SPEC = PreprocessingSpec(image_size=32)
TEXT = "A short caption about a red circle in the top left corner of the frame."


def _run(stage: IngestStage, tmp_path, files: dict[str, bytes]) -> tuple[dict, dict]:
    rows = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        rows.append({"uri": str(tmp_path / name), "id": hashlib.sha256(data).hexdigest()})
    out = stage.process_batch(pa.RecordBatch.from_pylist(rows, schema=IngestStage.input_schema))
    examples = {e["source_uris"][0].rsplit("/", 1)[1]: e for e in out["examples"].to_pylist()}
    rejected = {r["uri"].rsplit("/", 1)[1]: r for r in out["rejected"].to_pylist()}
    return examples, rejected


@pytest.fixture
def special(tmp_path):
    """A fifo and a unix socket beside a good image, each referenced from a record."""
    os.mkfifo(tmp_path / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.png"))
    png = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(png, "PNG")
    (tmp_path / "ok.png").write_bytes(png.getvalue())
    yield tmp_path
    sock.close()


def test_referenced_fifo_socket_device_refused_before_open(special):
    """Isolated, with a short timeout: were the fifo opened, the record would end as
    decode_timeout (after 20 s), not forbidden_reference."""
    lines = [{"id": k, "parts": [{"text": "see"}, {"image": f"{k}.png"}]}
             for k in ("pipe", "sock", "ok")]
    lines.append({"id": "dev", "parts": [{"image": "/dev/zero"}]})
    manifest = "\n".join(json.dumps(x) for x in lines).encode()
    stage = IngestStage(IngestConfig(spec=SPEC, decode_timeout_s=20,
                                     allowed_roots=(str(special), "/dev")))
    try:
        examples, rejected = _run(stage, special, {"set.jsonl": manifest})
    finally:
        stage.teardown()
    reasons = {r["record_id"]: (r["reason"], r["message"]) for r in rejected.values()
               if r["record_id"] in ("pipe", "sock", "dev")}
    assert {k: v[0] for k, v in reasons.items()} == dict.fromkeys(
        ("pipe", "sock", "dev"), "forbidden_reference")
    assert "fifo" in reasons["pipe"][1] and "socket" in reasons["sock"][1]
    assert "device" in reasons["dev"][1]
    assert len(examples) == 1  # the good record


def test_over_the_cap_is_rejected_from_its_size_unread(tmp_path, monkeypatch):
    """A 4 GiB sparse file: neither hashed nor read, rejected too_large from its size."""
    big = tmp_path / "huge.bin"
    with open(big, "wb") as f:
        f.truncate(4 << 30)
    reads = []
    real = storage.iter_chunks
    monkeypatch.setattr(storage, "iter_chunks", lambda u, *a: reads.append(u) or real(u, *a))
    h = hash_file(str(big), with_modality=True, max_bytes=1 << 20)
    assert h == {"uri": str(big), "size": 4 << 30, "id": too_large_id(str(big)),
                 "modality": None}
    assert reads == []
    monkeypatch.setattr(storage, "read_bytes", lambda *a, **k: pytest.fail("file was read"))
    stage = IngestStage(IngestConfig(spec=SPEC, isolate=False, max_file_bytes=1 << 20))
    out = stage.process_batch(pa.RecordBatch.from_pylist(
        [{"uri": str(big), "id": h["id"]}], schema=IngestStage.input_schema))
    (row,) = out["rejected"].to_pylist()
    assert row["reason"] == "too_large" and str(4 << 30) in row["message"]


def test_under_the_cap_is_still_hashed(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"small")
    h = hash_file(str(tmp_path / "a.txt"), max_bytes=100)
    assert h["id"] == hashlib.sha256(b"small").hexdigest()


def _zst(b: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(b)


@pytest.mark.parametrize("pack", [gzip.compress, bz2.compress, lzma.compress, _zst])
def test_compressed_text_is_inflated(tmp_path, pack):
    stage = IngestStage(IngestConfig(spec=SPEC, isolate=False))
    examples, rejected = _run(stage, tmp_path, {"notes.txt": pack(TEXT.encode())})
    assert not rejected
    ex = examples["notes.txt"]
    assert ex["modality"] == "text" and ex["parts"][0]["text"] == TEXT
    assert json.loads(ex["metadata"])["compression"].startswith("application/")


def test_compressed_non_text_and_broken_streams(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (20, 20)).save(png, "PNG")
    whole = gzip.compress(TEXT.encode() * 50)
    stage = IngestStage(IngestConfig(spec=SPEC, isolate=False))
    examples, rejected = _run(stage, tmp_path, {
        "image.gz": gzip.compress(png.getvalue()), "cut.txt": whole[: len(whole) // 2],
        "nothing.gz": gzip.compress(b""), "bad.gz": b"\x1f\x8b\x08\x00" + bytes(40)})
    assert not examples
    assert {k: r["reason"] for k, r in rejected.items()} == {
        "image.gz": "unsupported_format", "cut.txt": "truncated", "nothing.gz": "empty",
        "bad.gz": "decode_error"}


def test_a_text_bomb_inflates_only_what_the_cap_needs(tmp_path):
    """64 MiB of text in a 64 KiB gzip: only the bytes the text cap can use are inflated."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"all work and no play " * 50_000
    body = b"".join(comp.compress(chunk) for _ in range(64)) + comp.flush()
    spec = PreprocessingSpec(max_text_chars=200)
    stage = IngestStage(IngestConfig(spec=spec, isolate=False, archive=ArchiveLimits()))
    examples, rejected = _run(stage, tmp_path, {"bomb.txt": body})
    assert not rejected and len(examples["bomb.txt"]["parts"][0]["text"]) <= 200
    assert ingest.text_bytes_needed(spec) < 1 << 20
