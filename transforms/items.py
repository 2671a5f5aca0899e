"""Examples and query texts as ITEMs: the self-contained inputs the encoder reads."""

from __future__ import annotations

import numpy as np
from loom.schemas.records import Modality, nonempty
from loom.transforms.pixels import encode_frames, part_frames
from loom.transforms.tokenizer import TextTokenizer


def example_to_item(example: dict, parts: list[int] | None = None) -> dict:
    """Concatenates an Example's parts (or the subset `parts`, by index): text tokens,
    frames of pixels, audio feature rows.

    Parts of one kind keep their order; the encoder adds modality embeddings, so the
    interleaving order across kinds is not needed at this model size. One part with pixels
    passes its stored bytes through; several (an interleaved record) are decoded, stacked
    and stored again in the first one's format.
    """
    chosen = example["parts"] if parts is None else [example["parts"][i] for i in parts
                                                      if 0 <= i < len(example["parts"])]
    return parts_to_item(example["id"], example["modality"], chosen)


def parts_to_item(item_id: str, modality: str, parts: list[dict]) -> dict:
    """ITEM of a list of PART dicts (text parts must carry tokens)."""
    tokens: list[int] = []
    texts: list[str] = []
    visual: list[dict] = []
    features: list[np.ndarray] = []  # float16 rows, joined once at the end
    bins = None
    for part in parts:
        if part.get("tokens"):
            tokens.extend(part["tokens"])
        if part.get("text"):
            texts.append(part["text"])
        if part.get("pixels"):
            visual.append(part)
        if nonempty(part.get("features")) and (bins is None or part.get("feature_bins") == bins):
            features.append(np.asarray(part["features"], dtype=np.float16))
            bins = part.get("feature_bins")
    pixels, pixel_format, frames = None, None, 0
    if len(visual) == 1:
        pixels, pixel_format = visual[0]["pixels"], visual[0].get("pixel_format")
        frames = int(visual[0].get("frames") or 1)
    elif visual:
        stacked = np.concatenate([part_frames(p) for p in visual])
        pixels, pixel_format = encode_frames(stacked, visual[0].get("pixel_format") or "raw")
        frames = len(stacked)
    return {"id": item_id, "modality": modality, "tokens": tokens,
            "pixels": pixels, "pixel_format": pixel_format, "frames": frames,
            "features": np.concatenate(features) if features else None, "feature_bins": bins,
            "text": "\n".join(texts) or None, "instruction": None}


def text_to_item(item_id: str, text: str, tokenizer: TextTokenizer, max_tokens: int) -> dict:
    return {"id": item_id, "modality": Modality.TEXT.value,
            "tokens": tokenizer.encode(text, max_tokens), "pixels": None, "pixel_format": None,
            "frames": 0, "features": None, "feature_bins": None, "text": text,
            "instruction": None}


def query_item(pair: dict, examples: dict[str, dict], tokenizer: TextTokenizer,
               max_tokens: int) -> dict | None:
    """The query side of a Pair or Triple as one ITEM: its task instruction first (as the
    paper's "task: ... | query: ..."), so one query can ask for different targets, then
    its text tokens, the parts of `query_ref` (a subset of a corpus Example) and inline
    `query_parts`. None when the referenced Example is not in `examples`."""
    parts: list[dict] = []
    ref = pair.get("query_ref")
    if ref:
        ex = examples.get(ref["example_id"])
        if ex is None:
            return None
        idx = ref.get("parts")
        parts += ex["parts"] if idx is None else [ex["parts"][i] for i in idx
                                                  if 0 <= i < len(ex["parts"])]
    parts += list(pair.get("query_parts") or [])
    task = (pair.get("task") or "").strip()
    instruction = tokenizer.encode(f"{task} |", max_tokens) if task else []
    text = (pair.get("query_text") or "").strip()
    head = instruction + (tokenizer.encode(text, max_tokens) if text else [])
    parts = [p | {"tokens": tokenizer.encode(p["text"], max_tokens)}
             if p.get("text") and not p.get("tokens") else p for p in parts]
    item = parts_to_item(f"q:{pair['pair_id']}", pair.get("query_modality") or "text", parts)
    item["tokens"] = (head + item["tokens"])[:max_tokens]
    # the instruction steers attention but is not pooled: pooled, its tokens (the same for
    # every query of a task) would outweigh a short query's own
    item["instruction_tokens"] = min(len(instruction), len(item["tokens"]))
    item["text"] = "\n".join(t for t in (text, item["text"]) if t) or None
    item["instruction"] = f"{task} |" if task else None
    return item


def retokenize_item(item: dict, tokenizer: TextTokenizer, max_tokens: int) -> dict:
    """The ITEM with its text tokenized by `tokenizer` (a trunk's, not ingest's): the
    instruction, then the text, as query_item lays them out. Items without text keep
    theirs (none)."""
    instruction = tokenizer.encode(item["instruction"], max_tokens) if item.get(
        "instruction") else []
    text = tokenizer.encode(item["text"], max_tokens) if item.get("text") else []
    tokens = (instruction + text)[:max_tokens]
    return item | {"tokens": tokens, "instruction_tokens": min(len(instruction), len(tokens))}


def positive_item(pair: dict, examples: dict[str, dict], tokenizer: TextTokenizer,
                  max_tokens: int) -> dict | None:
    """The positive side: inline text, else the positive Example (or its `positive_parts`).
    None when that Example is not in `examples`."""
    if pair.get("positive_text"):
        return text_to_item(pair["positive_id"], pair["positive_text"], tokenizer, max_tokens)
    ex = examples.get(pair["positive_id"])
    if ex is None:
        return None
    return example_to_item(ex, pair.get("positive_parts"))
