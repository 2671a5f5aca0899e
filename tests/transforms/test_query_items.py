"""Queries of any modality become ITEMs with their task instruction first; positives can
be a subset of an Example's parts or inline text."""

from __future__ import annotations

import numpy as np
import pytest
from loom.schemas.records import empty_part
from loom.transforms.items import positive_item, query_item
from loom.transforms.tokenizer import TextTokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.from_json(train_tokenizer(
        ["given a frame retrieve the video red circle slides left audio clip passage "
         "describes it"] * 20, vocab_size=200))


def _video_example() -> dict:
    video = empty_part("video") | {"pixels": np.full((3, 8, 8, 3), 9, np.uint8).tobytes(),
                                   "height": 8, "width": 8, "frames": 3}
    audio = empty_part("audio") | {"features": [0.5] * 128, "feature_bins": 64, "frames": 2}
    return {"id": "v1", "modality": "video", "parts": [video, audio]}


def test_instruction_goes_first_and_is_marked(tok):
    pair = {"pair_id": "p", "task": "retrieve the video", "query_text": "red circle",
            "query_modality": "text"}
    item = query_item(pair, {}, tok, 64)
    head = tok.encode("retrieve the video |", 64)
    assert item["tokens"] == head + tok.encode("red circle", 64)
    assert item["instruction_tokens"] == len(head) > 0  # the encoder pools what follows
    plain = query_item(pair | {"task": None}, {}, tok, 64)
    assert plain["tokens"] == tok.encode("red circle", 64) and plain["instruction_tokens"] == 0
    # an instruction longer than the budget: every token is instruction, none is lost
    short = query_item(pair, {}, tok, 2)
    assert short["tokens"] == head[:2] and short["instruction_tokens"] == 2


def test_text_plus_image_query_and_frames_only_positive(tok):
    frame = empty_part("image") | {"pixels": np.zeros((1, 8, 8, 3), np.uint8).tobytes(),
                                   "height": 8, "width": 8, "frames": 1}
    ex = _video_example()
    pair = {"pair_id": "p", "task": "given a frame retrieve the video", "query_text": "slides left",
            "query_modality": "text+image", "query_parts": [frame], "positive_id": "v1",
            "positive_parts": [0]}
    q = query_item(pair, {"v1": ex}, tok, 64)
    assert q["modality"] == "text+image" and q["frames"] == 1 and q["tokens"] and q["pixels"]
    pos = positive_item(pair, {"v1": ex}, tok, 64)
    assert pos["frames"] == 3 and pos["features"] is None  # the clip without its audio track
    assert positive_item(pair | {"positive_parts": None}, {"v1": ex}, tok, 64)["features"].size


def test_example_as_query_and_written_positive(tok):
    ex = _video_example()
    pair = {"pair_id": "p", "task": "audio clip", "query_text": "", "query_modality": "audio",
            "query_ref": {"example_id": "v1", "parts": [1]}, "positive_id": "t:x",
            "positive_text": "passage describes it"}
    q = query_item(pair, {"v1": ex}, tok, 64)
    assert q["features"].size and not q["pixels"] and q["tokens"] == tok.encode("audio clip |", 64)
    assert q["instruction_tokens"] == len(q["tokens"])  # all instruction: the clip is pooled
    assert positive_item(pair, {}, tok, 64)["tokens"] == tok.encode("passage describes it", 64)
    assert query_item(pair, {}, tok, 64) is None  # its Example is missing: the caller counts it
