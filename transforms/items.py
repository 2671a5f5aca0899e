"""Examples and query texts as ITEMs: the self-contained inputs the encoder reads."""

from __future__ import annotations

from schemas.records import Modality
from transforms.tokenizer import TextTokenizer


def example_to_item(example: dict) -> dict:
    """Concatenates an Example's parts: all text tokens, then all frames of pixels."""
    tokens: list[int] = []
    pixels = b""
    frames = 0
    for part in example["parts"]:
        if part.get("tokens"):
            tokens.extend(part["tokens"])
        if part.get("pixels"):
            pixels += part["pixels"]
            frames += int(part.get("frames") or 1)
    return {"id": example["id"], "modality": example["modality"], "tokens": tokens,
            "pixels": pixels or None, "frames": frames}


def text_to_item(item_id: str, text: str, tokenizer: TextTokenizer, max_tokens: int) -> dict:
    return {"id": item_id, "modality": Modality.TEXT.value,
            "tokens": tokenizer.encode(text, max_tokens), "pixels": None, "frames": 0}
