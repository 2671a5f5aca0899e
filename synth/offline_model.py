"""The deterministic stand-in model behind the offline Gemini server.

It reads what a real model would read (the instruction text, image pixels, document
text) and answers with content-derived queries, so the pipeline downstream sees
plausible pairs without any network or key. Same prompt, content and seed: same answer.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from typing import Any

import numpy as np
from PIL import Image

from transforms import scenes

KINDS = ("caption", "keyword", "question")
_KIND_RE = re.compile(r"QUERY_KIND:\s*([a-z_]+)")
_PREFIXES = {"keyword": ("", "find ", "show me "), "caption": ("", "showing ", "depicting "),
             "question": ("", "quick question: ", "tell me, ")}


class BadInput(ValueError):
    """Content the model cannot read (the server answers 400 INVALID_ARGUMENT)."""


def b64decode(data: str) -> bytes:
    """Standard or URL-safe base64, padded or not (the SDK sends URL-safe)."""
    data = data.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4))


def position_phrase(row: str, col: str) -> str:
    return scenes.Scene("circle", "red", "small", row, col).position


def analyze_image(data: bytes) -> dict[str, str]:
    """Scene attributes (size, color, shape, row, col, position) read from the pixels."""
    try:
        img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int32)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
        raise BadInput(f"unable to decode image: {type(exc).__name__}") from exc
    h, w, _ = img.shape
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    mask = np.abs(img - bg).sum(axis=2) > 60
    # Drop isolated specks: keep pixels with at least 3 of 8 neighbours in the mask.
    padded = np.pad(mask, 1).astype(np.int32)
    neigh = sum(
        padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    )
    mask &= neigh >= 3
    if mask.sum() < 4:
        raise BadInput("no foreground object found in the image")
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    bh, bw = y1 - y0 + 1, x1 - x0 + 1
    mean = img[mask].mean(axis=0)
    color = min(scenes.COLORS, key=lambda c: float(((mean - scenes.COLORS[c]) ** 2).sum()))
    rel = max(bh, bw) / max(h, w)  # the shape's diameter is SIZES[size] of the side
    size = min(scenes.SIZES, key=lambda s: abs(scenes.SIZES[s] - rel))
    box = mask[y0 : y1 + 1, x0 : x1 + 1]
    fill = box.mean()
    if fill > 0.9:
        shape = "square"
    elif fill > 0.66:
        shape = "circle"
    else:  # triangle vs diamond: a triangle holds most of its area in its lower half
        half = bh // 2
        top, bottom = box[:half].sum(), box[bh - half :].sum()
        shape = "triangle" if bottom > 1.6 * max(top, 1) else "diamond"
    cy, cx = (y0 + y1 + 1) / 2 / h, (x0 + x1 + 1) / 2 / w
    row = scenes.ROWS[min(2, int(cy * 3))]
    col = scenes.COLS[min(2, int(cx * 3))]
    return {"size": size, "color": color, "shape": shape, "row": row, "col": col,
            "position": position_phrase(row, col)}


def extract_text_attributes(text: str) -> dict[str, str]:
    """The first size, color, shape and position words found in a passage."""
    words = re.findall(r"[a-z]+", text.lower())
    found: dict[str, str] = {}
    vocab = {"size": scenes.SIZES, "color": scenes.COLORS, "shape": scenes.SHAPES,
             "row": scenes.ROWS, "col": scenes.COLS}
    for word in words:
        for attr, names in vocab.items():
            if word in names and attr not in found:
                found[attr] = word
    if "row" in found or "col" in found:
        found["position"] = position_phrase(found.get("row", "middle"), found.get("col", "center"))
    return found


def _longest_words(text: str, n: int = 4) -> list[str]:
    words = sorted(set(re.findall(r"[a-z]+", text.lower())), key=lambda w: (-len(w), w))
    return words[:n]


def _queries(kind: str, attrs: dict[str, str], modality: str, rng: np.random.Generator,
             fallback: list[str]) -> tuple[str, list[str]]:
    phrase = " ".join(attrs[a] for a in ("size", "color", "shape") if a in attrs)
    pos = attrs.get("position", "")
    if not phrase and not pos:
        phrase = " ".join(fallback)
    target = "image" if modality == "image" else "passage"
    at = f"at the {pos}" if pos and pos != "center" else ("in the center" if pos else "")
    if kind == "caption":
        task = f"Given a caption, retrieve the {target} it describes."
        base = f"a {phrase} {'in the ' + pos if pos else ''}".strip()
        alt = f"{phrase} located {at}".strip() if pos else f"an {target} of a {phrase}"
    elif kind == "question":
        task = f"Given a question, retrieve the {target} that answers it."
        if modality == "image":
            base = f"which image shows a {phrase} {at}?".replace(" ?", "?")
        else:
            base = f"Where is the {phrase} described?"
        alt = f"is there a {phrase} {at}?".replace(" ?", "?")
    else:  # keyword (and any unknown kind)
        task = f"Given keywords, retrieve the matching {target}."
        base = f"{phrase} {pos}".strip()
        alt = f"{pos} {phrase}".strip() if pos else f"{phrase} {target}"
    prefixes = _PREFIXES.get(kind, _PREFIXES["keyword"])
    prefix = prefixes[int(rng.integers(len(prefixes)))]
    queries = [base, (prefix + alt).strip()]
    return task, [q for i, q in enumerate(queries) if q and q not in queries[:i]]


def respond(request: dict[str, Any]) -> dict[str, Any]:
    """A GenerateContentResponse (REST JSON) for a generateContent request body."""
    gen = request.get("generationConfig") or {}
    texts: list[str] = []
    images: list[bytes] = []
    for content in request.get("contents") or []:
        for part in content.get("parts") or []:
            if part.get("text") is not None:
                texts.append(part["text"])
            elif part.get("inlineData") or part.get("inline_data"):
                # proto JSON: either field-name spelling (the SDK sends mime_type)
                blob = part.get("inlineData") or part.get("inline_data")
                mime = blob.get("mimeType") or blob.get("mime_type") or ""
                if not str(mime).startswith("image/"):
                    raise BadInput(f"unsupported mime type {mime!r}")
                images.append(b64decode(blob.get("data", "")))
    prompt = next((t for t in texts if _KIND_RE.search(t)), "")
    docs = [t for t in texts if t is not prompt and t.strip()]
    match = _KIND_RE.search(prompt)
    kind = match.group(1) if match else "keyword"
    seed = int(gen.get("seed") or 0)
    digest = hashlib.sha256(json.dumps([prompt, docs, seed]).encode())
    for img in images:
        digest.update(hashlib.sha256(img).digest())
    prompt_tokens = sum(len(t.split()) for t in texts) + 258 * len(images)
    if not docs and not images:
        return {"promptFeedback": {"blockReason": "OTHER"},
                "usageMetadata": {"promptTokenCount": prompt_tokens,
                                  "totalTokenCount": prompt_tokens},
                "modelVersion": "loom-offline-1"}
    rng = np.random.default_rng(int.from_bytes(digest.digest()[:8], "big"))
    if images:
        attrs, modality, fallback = analyze_image(images[0]), "image", []
    else:
        doc = "\n".join(docs)
        attrs, modality, fallback = extract_text_attributes(doc), "text", _longest_words(doc)
    task, queries = _queries(kind, attrs, modality, rng, fallback)
    body = {"task": task, "queries": queries, "backend_note": "offline"}
    if gen.get("responseMimeType") == "application/json":
        text = json.dumps(body)
    else:
        text = "\n".join(queries)
    out_tokens = len(text.split())
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                          "totalTokenCount": prompt_tokens + out_tokens},
        "modelVersion": "loom-offline-1",
        "responseId": digest.hexdigest()[:20],
    }
