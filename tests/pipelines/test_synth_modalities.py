"""Synth over every modality: audio, video and PDF pages reach the model natively and
come back as pairs (offline server through google-genai)."""

from __future__ import annotations

import random

from loom.pipelines.ingest import run_ingest
from loom.pipelines.synth import run_synth
from loom.schemas import manifest as mf
from tests.transforms.media import make_video, make_wav
from tests.transforms.test_pdf import make_pdf
from loom.transforms import scenes


def test_pairs_for_audio_video_and_pages(tmp_path):
    png = scenes.render_image(scenes.Scene("circle", "red", "small", "top", "left"),
                              random.Random(0))
    files = {"img/red.png": png, "txt/note.txt": b"a small red circle in the top left",
             "audio/tone.wav": make_wav(1.0), "video/clip.mp4": make_video(2.0),
             "docs/two.pdf": make_pdf(["a large blue square", "a tiny green triangle"])}
    for rel, data in files.items():
        (tmp_path / "raw" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "raw" / rel).write_bytes(data)
    ex = run_ingest(str(tmp_path / "raw"), str(tmp_path / "ex"))
    out = run_synth(ex["uri"], str(tmp_path / "pairs"))
    vdir, manifest = mf.resolve_input(out["uri"])
    pairs = mf.read_table(vdir, manifest, "pairs").to_pylist()
    kinds = {(p["positive_modality"], p["kind"]) for p in pairs}
    assert {("audio", "caption"), ("audio", "keyword"), ("video", "caption"),
            ("video", "question"), ("page", "question"), ("page", "keyword")} <= kinds
    pages = {p["positive_id"] for p in pairs if p["positive_modality"] == "page"}
    assert len(pages) == 2  # one Example per page, each sent as its own page
    page_queries = {p["query_text"] for p in pairs if p["kind"] == "keyword"
                    and p["positive_modality"] == "page"}
    assert any("blue square" in q for q in page_queries)
    assert any("green triangle" in q for q in page_queries)
    rejected = mf.read_table(vdir, manifest, "rejected").to_pylist() if out["counts"]["rejected"] else []
    assert not rejected, rejected
