"""Ingest of every modality at once, on Beam: one outcome per file, rows per page/record."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf
from PIL import Image

from tests.transforms.media import make_mp3_or_m4a, make_video, make_wav
from tests.transforms.test_pdf import make_pdf


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(png, "PNG")
    files = {
        "img/red.png": png.getvalue(),
        "txt/note.txt": b"a small red circle in the top left",
        "audio/tone.wav": make_wav(1.5),
        "audio/tone.aac": make_mp3_or_m4a(1.0)[0],  # really M4A: content sniffing decides
        "video/clip.mp4": make_video(3.0),
        "docs/three.pdf": make_pdf(["page one", "page two", "page three"]),
        "docs/locked.pdf": make_pdf(["secret"], encrypt=True),
        "bad/empty.txt": b"",
        "bad/cut.mp4": make_video(2.0)[:1500],
        "bad/garbage.txt": bytes(range(256)) * 8,
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    records = [
        {"id": "r0", "parts": [{"text": "a caption"}, {"image": "../img/red.png"}]},
        {"id": "r1", "parts": [{"text": "missing"}, {"image": "../img/nope.png"}]},
        {"id": "r2", "parts": [{"image": "/etc/passwd"}]},
        {"id": "r3", "parts": [{"text": "listen"}, {"audio": "../audio/tone.wav"}]},
    ]
    (root / "manifests").mkdir()
    (root / "manifests" / "set.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n{not json\n")
    table = pa.table({"parts": [json.dumps(records[0]["parts"])], "id": ["p0"]})
    pq.write_table(table, root / "manifests" / "set.parquet")
    return str(root)


def test_every_modality_one_outcome_per_file(bucket, tmp_path):
    out = run_ingest(bucket, str(tmp_path / "out"), engine=Engine.BEAM)
    c = out["counts"]
    assert c["listed"] == 12
    assert c["listed"] == c["accepted"] + c["duplicate"] + c["rejected"]
    vdir, manifest = mf.resolve_input(str(tmp_path / "out"))
    examples = mf.read_table(vdir, manifest, "examples").to_pylist()
    rejected = {r["uri"].split(bucket)[-1]: r for r in
                mf.read_table(vdir, manifest, "rejected").to_pylist()}
    by_mod: dict[str, int] = {}
    for e in examples:
        by_mod[e["modality"]] = by_mod.get(e["modality"], 0) + 1
    # 1 image, 1 text, 2 audio, 1 video, 3 pages, 2 interleaved (jsonl r0, r3) + 1 (parquet)
    assert by_mod == {"image": 1, "text": 1, "audio": 2, "video": 1, "page": 3, "interleaved": 3}
    by_reason: dict[str, int] = {}  # the counts per modality and reason are the tables'
    for r in rejected.values():
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    assert {k: v for k, v in c.items() if k.startswith(("examples.", "rejected."))} == {
        **{f"examples.{m}": n for m, n in by_mod.items()},
        **{f"rejected.{r}": n for r, n in by_reason.items()}}
    assert c["examples"] == len(examples) == 11
    video = next(e for e in examples if e["modality"] == "video")
    assert [p["kind"] for p in video["parts"]] == ["video", "audio"]
    assert video["parts"][0]["frames"] == 3
    pages = sorted(json.loads(e["metadata"])["page"] for e in examples if e["modality"] == "page")
    assert pages == [0, 1, 2]
    assert rejected["/docs/locked.pdf"]["reason"] == "encrypted"
    assert rejected["/bad/empty.txt"]["reason"] == "empty"
    assert rejected["/bad/cut.mp4"]["reason"] in {"truncated", "decode_error"}
    assert rejected["/bad/garbage.txt"]["reason"] in {"bad_encoding", "unsupported_format"}
    record_reasons = {k.rsplit("#", 1)[-1]: r["reason"] for k, r in rejected.items() if "#" in k}
    assert record_reasons == {"1": "missing_reference", "2": "forbidden_reference",
                              "4": "bad_record"}
    assert c["rejected_records"] == 3
    assert len(rejected) == c["rejected"] + c["rejected_records"]
