"""Examples and query texts as ITEMs: the self-contained inputs the encoder reads."""

from __future__ import annotations

from schemas.records import Modality
from transforms.tokenizer import TextTokenizer


def example_to_item(example: dict) -> dict:
    """Concatenates an Example's parts: text tokens, frames of pixels, audio feature rows.

    Parts of one kind keep their order; the encoder adds modality embeddings, so the
    interleaving order across kinds is not needed at this model size.
    """
    tokens: list[int] = []
    pixels = b""
    frames = 0
    features: list[float] = []
    bins = None
    for part in example["parts"]:
        if part.get("tokens"):
            tokens.extend(part["tokens"])
        if part.get("pixels"):
            pixels += part["pixels"]
            frames += int(part.get("frames") or 1)
        if part.get("features") and (bins is None or part.get("feature_bins") == bins):
            features.extend(part["features"])
            bins = part.get("feature_bins")
    return {"id": example["id"], "modality": example["modality"], "tokens": tokens,
            "pixels": pixels or None, "frames": frames,
            "features": features or None, "feature_bins": bins}


def text_to_item(item_id: str, text: str, tokenizer: TextTokenizer, max_tokens: int) -> dict:
    return {"id": item_id, "modality": Modality.TEXT.value,
            "tokens": tokenizer.encode(text, max_tokens), "pixels": None, "frames": 0,
            "features": None, "feature_bins": None}
