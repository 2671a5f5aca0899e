from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pyarrow as pa
import pytest
from loom.jobs.corpus import generate_corpus
from loom.jobs.demo import DemoConfig, make_corpus
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.spec import PreprocessingSpec
from loom.synth import offline_model
from loom.transforms.ingest import IngestConfig, IngestStage, hash_file, pick_canonical
from loom.transforms.scenes import COLORS, COLS, ROWS, RichScene, Scene
from PIL import Image


def files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_deterministic(tmp_path):
    a = generate_corpus(str(tmp_path / "a"), 6, 5, seed=3)
    b = generate_corpus(str(tmp_path / "b"), 6, 5, seed=3)
    assert a == b == {"images": 6, "texts": 5, "bad": 5, "files": 16}
    assert files(tmp_path / "a") == files(tmp_path / "b")
    generate_corpus(str(tmp_path / "c"), 6, 5, seed=4)
    assert files(tmp_path / "a") != files(tmp_path / "c")


def test_ground_truth_matches_content(tmp_path):
    generate_corpus(str(tmp_path), 12, 8, seed=1)
    truth = [json.loads(x) for x in (tmp_path / "ground_truth.jsonl").read_text().splitlines()]
    media = files(tmp_path / "media")
    assert sorted(r["file"] for r in truth) == sorted(media)  # labels live outside media/
    for r in truth:
        data = media[r["file"]]
        if r["key"] is None:
            continue
        scene = Scene(**r["scene"])
        assert scene.key == r["key"]
        if r["file"].startswith("texts/doc-0"):
            words = data.decode()
            assert all(w in words for w in (scene.size, scene.color, scene.shape))
            continue
        px = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)
        near = np.abs(px - np.array(COLORS[scene.color])).max(axis=2) <= 20
        ys, xs = np.nonzero(near)
        assert len(ys) > 20, r
        side = px.shape[0]
        assert int(ys.mean() * 3 // side) == ROWS.index(scene.row), r
        assert int(xs.mean() * 3 // side) == COLS.index(scene.col), r


def test_ingest_over_corpus(tmp_path):
    generate_corpus(str(tmp_path), 4, 3, seed=0)
    hashes = [hash_file(e.uri) for e in storage.list_files(str(tmp_path / "media"))]
    canonical, duplicates = pick_canonical(hashes)
    assert len(duplicates) == 1 and len(canonical) == len(hashes) - 1
    stage = IngestStage(IngestConfig(spec=PreprocessingSpec()))
    out = stage.process_batch(pa.RecordBatch.from_pylist(
        [{"uri": h["uri"], "id": h["id"]} for h in canonical], schema=IngestStage.input_schema))
    assert out["examples"].num_rows == 4 + 3 + 1  # the mislabeled PNG is a good image
    assert sorted(out["rejected"].column("reason").to_pylist()) == [
        "empty", "truncated", "unsupported_format"]


def test_rich_world_deterministic(tmp_path):
    a = generate_corpus(str(tmp_path / "a"), 30, 20, seed=3, world="rich")
    b = generate_corpus(str(tmp_path / "b"), 30, 20, seed=3, world="rich")
    assert a == b == {"images": 30, "texts": 20, "bad": 5, "files": 55}
    assert files(tmp_path / "a") == files(tmp_path / "b")
    generate_corpus(str(tmp_path / "s"), 30, 20, seed=3)
    assert files(tmp_path / "a") != files(tmp_path / "s")
    simple = (tmp_path / "s" / "ground_truth.jsonl").read_text()
    assert "family" not in simple and "rich:" not in simple  # the simple world is as before


def test_rich_world_families(tmp_path):
    generate_corpus(str(tmp_path), 120, 80, seed=1, world="rich")
    truth = [json.loads(x) for x in (tmp_path / "ground_truth.jsonl").read_text().splitlines()]
    media = files(tmp_path / "media")
    assert sorted(r["file"] for r in truth) == sorted(media)
    rows = [r for r in truth if r["key"] and "note" not in r]
    assert len(rows) == 200 and all(r["family"] for r in rows)
    for kind in ("images", "texts"):
        fams: dict[str, list[RichScene]] = {}
        for r in rows:
            if r["file"].startswith(kind):
                assert r["family"].startswith(kind)
                scene = RichScene.from_dict(r["scene"])
                assert scene.key == r["key"]
                fams.setdefault(r["family"], []).append(scene)
        sizes = [len(f) for f in fams.values()]
        assert max(sizes) <= 5 and sum(s >= 3 for s in sizes) >= len(sizes) - 1  # the last may be cut
        two = sum(len(s.objects) == 2 for f in fams.values() for s in f)
        assert 0.3 < two / sum(sizes) < 0.7
    for r in rows:  # each file shows or names its scene
        data, scene = media[r["file"]], RichScene.from_dict(r["scene"])
        if r["file"].startswith("texts/"):
            got = offline_model.extract_text_attributes(data.decode())
        else:
            got = offline_model.analyze_image(data)
        objs = got.get("objects", [got])
        assert [(o["size"], o["color"], o["shape"]) for o in objs] == [
            (o.size, o.color, o.shape) for o in scene.objects], r


def test_demo_corpus_version_keeps_simple_ids(tmp_path):
    simple = make_corpus(str(tmp_path), 4, 3, 0)
    rich = make_corpus(str(tmp_path), 4, 3, 0, world="rich")
    assert simple["version"] == mf.version_id("corpus", [], {"images": 4, "texts": 3, "seed": 0})
    assert rich["version"] != simple["version"] and not rich["reused"]
    assert DemoConfig(world="rich").world == "rich"


def test_unknown_world_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown world 'fancy'"):
        generate_corpus(str(tmp_path / "c"), 2, 2, world="fancy")
    assert not (tmp_path / "c").exists()


def test_multimodal_world_writes_every_medium_with_ground_truth(tmp_path):
    """Videos (every other with an audio track), audio, two-page PDFs and JSONL records,
    labelled per file, per page (`#p<n>`) and per record (`#<index>`), outside media/."""
    import json as _json

    from loom.jobs.corpus import generate_corpus

    counts = generate_corpus(str(tmp_path), 8, 4, seed=1, world="multimodal")
    assert {k: counts[k] for k in ("videos", "audio", "pages", "records")} == \
        {"videos": 4, "audio": 4, "pages": 4, "records": 4}
    media = tmp_path / "media"
    assert len(list(media.glob("videos/*.mp4"))) == 4 and len(list(media.glob("pages/*.pdf"))) == 2
    truth = {r["file"]: r for r in map(_json.loads, (tmp_path / "ground_truth.jsonl")
                                       .read_text().splitlines())}
    assert {f"{p.relative_to(media)}#p{i}" for p in media.glob("pages/*.pdf")
            for i in range(2)} <= set(truth)
    records = (media / "records" / "records.jsonl").read_text().splitlines()
    for i, line in enumerate(records):
        rec = _json.loads(line)
        assert [next(iter(p)) for p in rec["parts"]] == ["text", "image", "audio"]
        key = truth[f"records/records.jsonl#{i}"]["key"]
        assert truth[f"records/{rec['parts'][1]['image']}"]["key"] == key  # one scene
    assert not any("key" in p.name or "scene" in p.name for p in media.rglob("*"))
    again = tmp_path / "again"
    generate_corpus(str(again), 8, 4, seed=1, world="multimodal")
    assert all((media / p.relative_to(again / "media")).read_bytes() == p.read_bytes()
               for p in (again / "media").rglob("*") if p.is_file())  # same seed, same bytes


def test_multimodal_world_media_count_and_audio_share(tmp_path):
    """`media` sets how many of each medium, `video_audio` which share of the videos carry
    an audio track (read back from the MP4s' streams, not from the generator)."""
    import av
    from loom.jobs.corpus import generate_corpus

    def audio_tracks(out):
        n = 0
        for p in sorted((out / "media" / "videos").glob("*.mp4")):
            with av.open(str(p)) as c:
                n += bool(c.streams.audio)
        return n

    counts = generate_corpus(str(tmp_path / "all"), 2, 2, seed=3, world="multimodal",
                             media=6, video_audio=1.0)
    assert {k: counts[k] for k in ("videos", "audio", "pages", "records")} == \
        {"videos": 6, "audio": 6, "pages": 6, "records": 6}
    assert audio_tracks(tmp_path / "all") == 6
    generate_corpus(str(tmp_path / "none"), 2, 2, seed=3, world="multimodal", media=4,
                    video_audio=0.0)
    assert audio_tracks(tmp_path / "none") == 0
    generate_corpus(str(tmp_path / "half"), 8, 2, seed=3, world="multimodal")
    assert audio_tracks(tmp_path / "half") == 2  # the default: every other one of 4
    with pytest.raises(ValueError, match="video_audio"):
        generate_corpus(str(tmp_path / "bad"), 2, 2, world="multimodal", video_audio=1.5)
