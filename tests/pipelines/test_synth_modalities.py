"""Synth over every modality: audio, video and PDF pages reach the model natively and
come back as pairs (offline server through google-genai)."""

from __future__ import annotations

import random

from loom.pipelines.ingest import run_ingest
from loom.pipelines.synth import run_synth
from loom.schemas import manifest as mf
from loom.transforms import scenes
from loom.transforms.scenes_media import render_audio, render_video

from tests.transforms.media import make_video, make_wav
from tests.transforms.test_pdf import make_pdf


def test_pairs_for_audio_video_and_pages(tmp_path):
    rng = random.Random(0)
    red = scenes.Scene("circle", "red", "small", "top", "left")
    png = scenes.render_image(red, rng)
    teal = scenes.RichScene((scenes.Scene("ring", "teal", "large", "bottom", "right"),))
    files = {"img/red.png": png, "txt/note.txt": b"a small red circle in the top left",
             "audio/scene.wav": render_audio(teal, rng),
             "video/scene.mp4": render_video(teal, rng, audio=True),
             "audio/tone.wav": make_wav(1.0), "video/flat.mp4": make_video(2.0),
             "docs/two.pdf": make_pdf(["a large blue square", "a tiny green triangle"])}
    for rel, data in files.items():
        (tmp_path / "raw" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "raw" / rel).write_bytes(data)
    ex = run_ingest(str(tmp_path / "raw"), str(tmp_path / "ex"))
    out = run_synth(ex["uri"], str(tmp_path / "pairs"))
    vdir, manifest = mf.resolve_input(out["uri"])
    pairs = mf.read_table(vdir, manifest, "pairs").to_pylist()
    kinds = {(p["query_modality"], p["positive_modality"], p["kind"]) for p in pairs}
    assert {("text", "audio", "caption"), ("audio", "text", "describe"),
            ("text", "video", "caption"), ("video", "text", "describe"),
            ("text+image", "video", "compose"), ("text", "page", "question"),
            ("page", "text", "describe"), ("text", "image", "keyword"),
            ("image", "text", "describe")} <= kinds
    # read from the content: the clip and the sound name their scene
    audio_caps = [p["query_text"] for p in pairs if p["positive_modality"] == "audio"]
    assert audio_caps and all("large teal ring" in q and "bottom right" in q for q in audio_caps)
    video_caps = [p["query_text"] for p in pairs if p["positive_modality"] == "video"
                  and p["kind"] == "caption"]
    assert video_caps and all("large teal ring" in q for q in video_caps)
    pages = {p["positive_id"] for p in pairs if p["positive_modality"] == "page"}
    assert len(pages) == 2  # one Example per page, each sent as its own page
    page_queries = {p["query_text"] for p in pairs if p["kind"] == "question"
                    and p["positive_modality"] == "page"}
    assert any("blue square" in q for q in page_queries)
    assert any("green triangle" in q for q in page_queries)
    # a pure tone and a flat-colour clip carry nothing to read: rejected calls, never a
    # query made up from a hash of the bytes
    rejected = mf.read_table(vdir, manifest, "rejected").to_pylist()
    assert {r["uri"].rsplit("/", 1)[-1] for r in rejected} == {"tone.wav", "flat.mp4"}
    assert {r["reason"] for r in rejected} == {"llm_error"}
    assert not any(len(w) == 6 and all(c in "0123456789abcdef" for c in w)
                   for p in pairs for w in p["query_text"].split())
