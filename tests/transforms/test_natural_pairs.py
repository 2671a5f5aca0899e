"""Natural pairs from an Example's structure: disjoint sides, both directions, one split."""

from __future__ import annotations

import numpy as np
from loom.schemas.records import empty_part
from loom.schemas.splits import split_for
from loom.transforms.natural_pairs import natural_pairs


def _px(kind: str, frames: int = 1) -> dict:
    return empty_part(kind) | {"pixels": np.zeros((frames, 8, 8, 3), np.uint8).tobytes(),
                               "height": 8, "width": 8, "frames": frames}


def _audio() -> dict:
    return empty_part("audio") | {"features": [0.0] * 64, "feature_bins": 64, "frames": 1}


def _text(t: str) -> dict:
    return empty_part("text") | {"text": t, "tokens": [5, 6]}


def _ex(eid: str, modality: str, parts: list[dict]) -> dict:
    return {"id": eid, "modality": modality, "parts": parts, "source_uris": [f"mem://{eid}"],
            "metadata": "{}"}


def _sides(rows: list[dict]) -> set[tuple]:
    return {(r["query_modality"], r["positive_modality"], r["kind"]) for r in rows}


def test_record_caption_with_each_media_part_both_ways():
    rec = _ex("r1", "interleaved", [_text("a red circle"), _px("image"), _audio()])
    rows = natural_pairs(rec)
    assert _sides(rows) == {("text", "image", "natural:record"), ("image", "text", "natural:record"),
                            ("text", "audio", "natural:record"), ("audio", "text", "natural:record")}
    for r in rows:
        q = set((r["query_ref"] or {}).get("parts") or []) or {0}  # a text query is part 0
        assert not q & set(r["positive_parts"])  # the two sides never share a part
        assert r["source"] == "natural" and r["split"] == split_for("r1").value
        assert r["task"] and r["positive_id"] == "r1"
    text_q = next(r for r in rows if r["query_modality"] == "text")
    assert text_q["query_text"] == "a red circle" and text_q["query_ref"] is None


def test_video_and_its_own_audio_track():
    with_track = natural_pairs(_ex("v1", "video", [_px("video", 4), _audio()]))
    assert _sides(with_track) == {("video", "audio", "natural:av_track"),
                                  ("audio", "video", "natural:av_track")}
    v2a = next(r for r in with_track if r["query_modality"] == "video")
    assert v2a["query_ref"] == {"example_id": "v1", "parts": [0]} and v2a["positive_parts"] == [1]
    assert natural_pairs(_ex("v2", "video", [_px("video", 4)])) == []  # no track, no pair


def test_page_render_and_text_layer_and_title_body():
    page = natural_pairs(_ex("p1", "page", [_px("page"), _text("Quarterly revenue by region")]))
    assert _sides(page) == {("page", "text", "natural:page_text"),
                            ("text", "page", "natural:page_text")}
    doc = _ex("t1", "text", [_text("Harbour lights\nThe harbour was lit all night long.")])
    (title,) = natural_pairs(doc)
    assert title["query_text"] == "Harbour lights"
    assert title["positive_text"] == "The harbour was lit all night long."
    assert title["positive_id"].startswith("t:")  # inline: title and body share one part
    assert natural_pairs(_ex("t2", "text", [_text("No title here. Just a passage.")])) == []


def test_group_decides_the_split():
    rec = _ex("r9", "interleaved", [_text("cap"), _px("image")]) | {"near_dup_group": "g-1"}
    assert {r["split"] for r in natural_pairs(rec)} == {split_for("g-1").value}
    assert {r["group"] for r in natural_pairs(rec)} == {"g-1"}
