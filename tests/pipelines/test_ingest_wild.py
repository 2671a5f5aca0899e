"""Issue 18 end to end, on Beam and on Ray: a folder of real-world formats, a file name
that is not UTF-8, near-duplicate copies. Every file gets exactly one outcome, both
engines give the same rows, and near-duplicates share a group."""

from __future__ import annotations

import gzip
import io
import os
from collections import Counter

import numpy as np
import pytest
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf
from loom.schemas.spec import PreprocessingSpec
from PIL import Image, ImageDraw

from tests.transforms import wild

SPEC = PreprocessingSpec(image_size=64)
CAPTION = ("A wooden boat rests on the shore of a quiet lake while two herons stand in the "
           "shallow water near the reeds at sunrise.")


def _scene(seed: int) -> Image.Image:
    r = np.random.default_rng(seed)
    img = Image.fromarray((r.random((15, 20, 3)) * 255).astype(np.uint8)).resize(
        (320, 240), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y, s = (int(v) for v in r.integers(0, 240, 3))
        draw.ellipse([x, y, x + s // 3, y + s // 3], fill=tuple(int(v) for v in r.integers(0, 255, 3)))
    return img


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("wild")
    lake = _scene(1)
    files = {
        "clip.ts": wild.mpegts(), "clip.flv": wild.flv(), "sound.mkv": wild.audio_only("matroska"),
        "pcm64.wav": wild.wav_pcm64(),
        "ru.txt": "Съешь же ещё этих мягких французских булок, да выпей чаю.".encode("koi8_r"),
        "notes.txt.gz": gzip.compress(CAPTION.encode()),
        "img/lake.png": _enc(lake, "PNG"),
        "img/lake-small.jpg": _enc(lake.resize((160, 120)), "JPEG", quality=70),  # near-dup
        "img/lake-copy.png": _enc(lake, "PNG"),  # exact duplicate
        "img/other.png": _enc(_scene(2), "PNG"),
        "txt/caption.txt": CAPTION.encode(),
        "txt/caption-edit.txt": CAPTION.replace("two herons", "three herons").encode(),
        "txt/unrelated.txt": b"Quarterly revenue tables for the northern region, by month.",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    with open(os.path.join(os.fsencode(root), b"caf\xe9-latin1.txt"), "wb") as f:
        f.write(b"a file whose name is Latin-1")
    return str(root)


def _rows(out_dir: str, table: str) -> list[dict]:
    vdir, manifest = mf.resolve_input(out_dir)
    return mf.read_table(vdir, manifest, table).to_pylist()


def _check(folder: str, d: str, counts: dict) -> None:
    assert counts["listed"] == 14 == counts["accepted"] + counts["duplicate"] + counts["rejected"]
    assert (counts["duplicate"], counts["rejected"]) == (1, 1)
    # groups: the lake photo and its smaller JPEG; the caption, its edit and its gzip'd
    # copy; the one clip muxed as MPEG-TS and as FLV
    assert (counts["near_duplicate"], counts["near_dup_groups"]) == (1 + 2 + 1, 3)
    (bad,) = _rows(d, "rejected")
    assert bad["reason"] == "bad_name" and bad["uri"].endswith("caf\\xe9-latin1.txt")
    examples = {x["source_uris"][0].removeprefix(folder + "/"): x for x in _rows(d, "examples")}
    modality = {k: v["modality"] for k, v in examples.items()}
    assert modality == {"clip.ts": "video", "clip.flv": "video", "sound.mkv": "audio",
                        "pcm64.wav": "audio", "ru.txt": "text", "notes.txt.gz": "text",
                        "img/lake-copy.png": "image", "img/lake-small.jpg": "image",
                        "img/other.png": "image", "txt/caption.txt": "text",
                        "txt/caption-edit.txt": "text", "txt/unrelated.txt": "text"}
    group = {k: v["near_dup_group"] for k, v in examples.items()}
    assert group["img/lake-copy.png"] == group["img/lake-small.jpg"]
    assert group["txt/caption.txt"] == group["txt/caption-edit.txt"] == group["notes.txt.gz"]
    assert group["clip.ts"] == group["clip.flv"]
    assert len({group["img/other.png"], group["img/lake-copy.png"], group["ru.txt"],
                group["txt/unrelated.txt"], group["txt/caption.txt"]}) == 5
    assert sorted(Counter(group.values()).values()) == [1] * 5 + [2, 2, 3]
    for v in examples.values():  # a group is named by its smallest member id
        assert v["near_dup_group"] == min(x["id"] for x in examples.values()
                                          if x["near_dup_group"] == v["near_dup_group"])
    files = {f["uri"]: f["outcome"] for f in _rows(d, "files")}
    assert len(files) == 13 and Counter(files.values()) == {"accepted": 12, "rejected": 1}


def test_wild_folder_one_outcome_each_on_beam(folder, tmp_path):
    out = run_ingest(folder, str(tmp_path / "beam"), SPEC, Engine.BEAM, files_per_item=4)
    _check(folder, str(tmp_path / "beam"), out["counts"])


@pytest.mark.slow
def test_wild_folder_beam_and_ray_agree(folder, tmp_path, ray_session):
    outs = {e: run_ingest(folder, str(tmp_path / e.value), SPEC, e, files_per_item=4)
            for e in (Engine.BEAM, Engine.RAY)}
    assert outs[Engine.BEAM]["counts"] == outs[Engine.RAY]["counts"]
    for e in (Engine.BEAM, Engine.RAY):
        _check(folder, str(tmp_path / e.value), outs[e]["counts"])
    b_rows = sorted(_rows(str(tmp_path / "beam"), "examples"), key=lambda r: r["id"])
    r_rows = sorted(_rows(str(tmp_path / "ray"), "examples"), key=lambda r: r["id"])
    assert b_rows == r_rows
