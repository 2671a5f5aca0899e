"""Examples and query texts as ITEMs: the self-contained inputs the encoder reads."""

from __future__ import annotations

import numpy as np

from loom.schemas.records import Modality
from loom.transforms.pixels import encode_frames, part_frames
from loom.transforms.tokenizer import TextTokenizer


def example_to_item(example: dict) -> dict:
    """Concatenates an Example's parts: text tokens, frames of pixels, audio feature rows.

    Parts of one kind keep their order; the encoder adds modality embeddings, so the
    interleaving order across kinds is not needed at this model size. One part with pixels
    passes its stored bytes through; several (an interleaved record) are decoded, stacked
    and stored again in the first one's format.
    """
    tokens: list[int] = []
    visual: list[dict] = []
    features: list[float] = []
    bins = None
    for part in example["parts"]:
        if part.get("tokens"):
            tokens.extend(part["tokens"])
        if part.get("pixels"):
            visual.append(part)
        if part.get("features") and (bins is None or part.get("feature_bins") == bins):
            features.extend(part["features"])
            bins = part.get("feature_bins")
    pixels, pixel_format, frames = None, None, 0
    if len(visual) == 1:
        pixels, pixel_format = visual[0]["pixels"], visual[0].get("pixel_format")
        frames = int(visual[0].get("frames") or 1)
    elif visual:
        stacked = np.concatenate([part_frames(p) for p in visual])
        pixels, pixel_format = encode_frames(stacked, visual[0].get("pixel_format") or "raw")
        frames = len(stacked)
    return {"id": example["id"], "modality": example["modality"], "tokens": tokens,
            "pixels": pixels, "pixel_format": pixel_format, "frames": frames,
            "features": features or None, "feature_bins": bins}


def text_to_item(item_id: str, text: str, tokenizer: TextTokenizer, max_tokens: int) -> dict:
    return {"id": item_id, "modality": Modality.TEXT.value,
            "tokens": tokenizer.encode(text, max_tokens), "pixels": None, "pixel_format": None,
            "frames": 0,
            "features": None, "feature_bins": None}
