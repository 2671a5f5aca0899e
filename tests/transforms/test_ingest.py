from __future__ import annotations

import hashlib
import io

import loom.transforms.ingest as ingest
import numpy as np
import pyarrow as pa
import pytest
from loom.schemas.records import EXAMPLE, REJECTED
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.ingest import IngestConfig, IngestStage, hash_file, pick_canonical
from loom.transforms.pixels import part_frames
from loom.transforms.tokenizer import train_tokenizer
from PIL import Image

from tests.transforms.helpers import encode, png_bomb

TEXT = "A small red circle sits in the top left of the frame."


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def stage():
    spec = PreprocessingSpec(image_size=32, tokenizer_json=train_tokenizer([TEXT] * 5, 100))
    return IngestStage(IngestConfig(spec=spec, max_file_bytes=200_000))


def run(stage, rows):
    batch = pa.RecordBatch.from_pylist(rows, schema=IngestStage.input_schema)
    out = stage.process_batch(batch)
    assert out["examples"].schema == EXAMPLE and out["rejected"].schema == REJECTED
    assert out["examples"].num_rows + out["rejected"].num_rows == len(rows)
    return out["examples"].to_pylist(), {r["uri"]: r for r in out["rejected"].to_pylist()}


def test_good_and_hostile_files(tmp_path, stage):
    png = encode(Image.new("RGB", (50, 40), (200, 10, 10)))
    jpeg = encode(Image.new("RGB", (50, 40), (10, 10, 200)), "JPEG")
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    big = encode(Image.fromarray(np.random.default_rng(2).integers(
        0, 255, (300, 300, 3), dtype=np.uint8)))
    trunc = encode(Image.fromarray(noise))
    files = {
        "a.png": png, "b.jpg": jpeg, "c.txt": TEXT.encode(),
        "d.txt": "Déjà vu — “façade”".encode("cp1252"),
        "mislabeled.txt": png,
        "empty.png": b"", "trunc.png": trunc[: len(trunc) // 2],
        "garbage.bin": b"\x00\x01" + np.random.default_rng(3).bytes(1000),
        "doc.pdf": b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n", "song.wav": b"RIFF\x24\0\0\0WAVEfmt " + bytes(30),
        "bomb.png": png_bomb(), "big.png": big, "blank.txt": b" \n\t ",
    }
    rows = [{"uri": write(tmp_path, n, d), "id": hashlib.sha256(d).hexdigest()}
            for n, d in files.items()]
    rows.append({"uri": str(tmp_path / "missing.png"), "id": "0" * 64})
    changed = write(tmp_path, "changed.txt", b"new content")
    rows.append({"uri": changed, "id": hashlib.sha256(b"old content").hexdigest()})
    examples, rejected = run(stage, rows)

    by_name = {e["source_uris"][0].rsplit("/", 1)[1]: e for e in examples}
    assert sorted(by_name) == ["a.png", "b.jpg", "c.txt", "d.txt", "mislabeled.txt"]
    assert by_name["mislabeled.txt"]["modality"] == "image"
    assert by_name["mislabeled.txt"]["mime"] == "image/png"
    for e in examples:
        assert e["id"] == hashlib.sha256(files[e["source_uris"][0].rsplit("/", 1)[1]]).hexdigest()
        assert e["metadata"] == "{}" and len(e["parts"]) == 1
        part = e["parts"][0]
        assert part["source_uri"] == e["source_uris"][0] and part["kind"] == e["modality"]
        if e["modality"] == "image":
            assert part_frames(part).shape == (1, 32, 32, 3) and part["text"] is None
    assert by_name["d.txt"]["parts"][0]["text"] == "Déjà vu — “façade”"
    text_part = by_name["c.txt"]["parts"][0]
    assert text_part["text"] == TEXT and text_part["tokens"] and 1 not in text_part["tokens"]

    reasons = {u.rsplit("/", 1)[1]: r["reason"] for u, r in rejected.items()}
    assert reasons == {
        "empty.png": "empty", "trunc.png": "truncated", "garbage.bin": "unsupported_format",
        "doc.pdf": "truncated", "song.wav": "decode_error",  # a cut PDF, a corrupt WAV header
        "bomb.png": "decompression_bomb", "big.png": "too_large", "blank.txt": "empty",
        "missing.png": "unreadable", "changed.txt": "decode_error",
    }
    assert all(r["stage"] == "ingest" and r["message"] for r in rejected.values())
    assert "changed during ingest" in rejected[changed]["message"]


def test_unexpected_exception_becomes_rejected(tmp_path, stage, monkeypatch):
    stage = IngestStage(stage.config.model_copy(update={"isolate": False}))  # patch in-process
    def boom(data, spec):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(ingest, "decode_image", boom)  # manifest and archive parts
    monkeypatch.setattr(ingest, "decode_image_frames", boom)  # a plain image file
    data = encode(Image.new("RGB", (8, 8)))
    examples, rejected = run(stage, [{"uri": write(tmp_path, "x.png", data),
                                      "id": hashlib.sha256(data).hexdigest()}])
    (r,) = rejected.values()
    assert not examples and r["reason"] == "decode_error" and "RuntimeError: kaboom" in r["message"]


def test_hash_file_and_pick_canonical(tmp_path):
    a = write(tmp_path, "b.png", b"same")
    b = write(tmp_path, "a.png", b"same")
    c = write(tmp_path, "c.txt", b"other")
    e1, e2 = write(tmp_path, "e1.txt", b""), write(tmp_path, "e2.txt", b"")
    hashes = [hash_file(u) for u in (a, b, c, e1, e2)]
    assert hashes[0] == {"uri": a, "size": 4, "id": hashlib.sha256(b"same").hexdigest()}
    canonical, duplicates = pick_canonical(hashes)
    assert [h["uri"] for h in canonical] == sorted([b, c, e1, e2])
    assert duplicates == [{"uri": a, "duplicate_of": hashlib.sha256(b"same").hexdigest()}]


def _video_row(tmp_path):
    from tests.transforms.media import make_video

    data = make_video(20.0, fps=25, size=(320, 240))
    return {"uri": write(tmp_path, "slow.mp4", data), "id": hashlib.sha256(data).hexdigest()}


def test_decode_timeout_rejects_only_that_file(tmp_path, stage):
    """A decode past its time limit is killed; the worker is replaced, the next file works."""
    slow = IngestStage(stage.config.model_copy(update={"decode_timeout_s": 0.05,
                                                       "max_file_bytes": 50 << 20}))
    data = encode(Image.new("RGB", (8, 8)))
    ok_row = {"uri": write(tmp_path, "ok.png", data), "id": hashlib.sha256(data).hexdigest()}
    examples, rejected = run(slow, [_video_row(tmp_path)])  # setup() started the worker
    assert [r["reason"] for r in rejected.values()] == ["decode_timeout"]
    assert slow._isolated.restarts == 1
    slow.teardown()
    relaxed = IngestStage(stage.config.model_copy(update={"max_file_bytes": 50 << 20}))
    examples, rejected = run(relaxed, [_video_row(tmp_path), ok_row])
    assert len(examples) == 2 and not rejected
    relaxed.teardown()


def test_memory_bound_rejects_instead_of_crashing(tmp_path, stage):
    """A legal but huge image (16k x 16k, allowed by the bomb guard) exceeds the decoder's
    256 MiB budget: that file is rejected with a reason, and the stage keeps going."""
    big = Image.new("L", (16000, 16000), 7)
    buf = io.BytesIO()
    big.save(buf, "PNG")
    del big
    data = buf.getvalue()
    spec = stage.config.spec.model_copy(update={"max_image_pixels": 10**9})
    tight = IngestStage(stage.config.model_copy(update={
        "decoder_memory_mb": 256, "max_file_bytes": 50 << 20, "spec": spec}))
    ok = encode(Image.new("RGB", (8, 8)))
    rows = [{"uri": write(tmp_path, "huge.png", data), "id": hashlib.sha256(data).hexdigest()},
            {"uri": write(tmp_path, "ok.png", ok), "id": hashlib.sha256(ok).hexdigest()}]
    examples, rejected = run(tight, rows)
    tight.teardown()
    assert [e["source_uris"][0] for e in examples] == [rows[1]["uri"]]
    assert rejected[rows[0]["uri"]]["reason"] in {"too_large", "decode_error"}
