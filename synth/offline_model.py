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


REPAIR_MARKER = "did not match the JSON schema"
# Deterministic triggers (in a document's text) for the answers a real model sometimes gives.
TRIGGER_BLOCK_PROMPT = "LOOM_BLOCK_PROMPT"  # promptFeedback.blockReason SAFETY
TRIGGER_FINISH = "LOOM_FINISH_"  # + SAFETY / RECITATION / PROHIBITED_CONTENT
TRIGGER_EMPTY = "LOOM_EMPTY_CANDIDATES"  # a 200 with no candidates
TRIGGER_BAD_SCHEMA = "LOOM_BAD_SCHEMA"  # valid JSON, wrong shape (also after a repair)
TRIGGER_BAD_SCHEMA_ONCE = "LOOM_BAD_SCHEMA_ONCE"  # wrong shape until asked to repair
_FINISH_RE = re.compile(r"LOOM_FINISH_([A-Z_]+)")


def _usage(prompt_tokens: int, out_tokens: int = 0) -> dict[str, int]:
    return {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
            "totalTokenCount": prompt_tokens + out_tokens}


def count_tokens(texts: list[str], media: int) -> int:
    """The offline model's token count: words, plus 258 per media part (Gemini's image rate)."""
    return sum(len(t.split()) for t in texts) + 258 * media


_CANDIDATE_RE = re.compile(r"^Candidate (\d+):")
_QUERY_RE = re.compile(r"^Query:\s*(.*)$", re.S)


def _attr_words(attrs: dict[str, str]) -> set[str]:
    return {attrs[a] for a in ("size", "color", "shape", "row", "col") if a in attrs}


def relabel(request: dict[str, Any]) -> dict[str, Any]:
    """FRet-style relabel: the candidate sharing most attribute words with the query is
    the best (ties: the lowest number); the rest, most overlapping first, are negatives."""
    query = ""
    cands: dict[int, set[str]] = {}
    current = None
    all_texts = []
    media = 0
    for content in request.get("contents") or []:
        if content.get("role") == "model":
            continue
        for part in content.get("parts") or []:
            text = part.get("text")
            blob = part.get("inlineData") or part.get("inline_data")
            if text is not None:
                all_texts.append(text)
                if (m := _CANDIDATE_RE.match(text.strip())):
                    current = int(m.group(1))
                    cands.setdefault(current, set())
                    rest = text.strip()[m.end():]
                    if rest.strip():
                        cands[current] |= _attr_words(extract_text_attributes(rest))
                elif (m := _QUERY_RE.match(text.strip())):
                    query = m.group(1)
                elif current is not None:
                    cands[current] |= _attr_words(extract_text_attributes(text))
            elif blob and current is not None:
                media += 1
                mime = str(blob.get("mimeType") or blob.get("mime_type") or "")
                if mime.startswith("image/"):
                    try:
                        cands[current] |= _attr_words(analyze_image(b64decode(blob.get("data", ""))))
                    except BadInput:
                        pass
    q = _attr_words(extract_text_attributes(query))
    order = sorted(cands, key=lambda i: (-len(q & cands[i]), i))
    best = order[0] if order else 1
    body = {"best": best, "hard_negatives": [i for i in order if i != best]}
    text = json.dumps(body)
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": _usage(count_tokens(all_texts, media), len(text.split())),
            "modelVersion": "loom-offline-1",
            "responseId": hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:20]}


def respond(request: dict[str, Any]) -> dict[str, Any]:
    """A GenerateContentResponse (REST JSON) for a generateContent request body."""
    first = next((p.get("text") for c in request.get("contents") or []
                  for p in c.get("parts") or [] if p.get("text")), "") or ""
    if "QUERY_KIND: relabel" in first:
        return relabel(request)
    gen = request.get("generationConfig") or {}
    texts: list[str] = []
    all_texts: list[str] = []
    images: list[bytes] = []
    media: list[tuple[str, bytes]] = []
    repairing = False
    for content in request.get("contents") or []:
        model_turn = content.get("role") == "model"
        for part in content.get("parts") or []:
            if part.get("text") is not None:
                all_texts.append(part["text"])
                if model_turn:
                    continue
                if REPAIR_MARKER in part["text"]:
                    repairing = True
                    continue
                texts.append(part["text"])
            elif part.get("inlineData") or part.get("inline_data"):
                # proto JSON: either field-name spelling (the SDK sends mime_type)
                blob = part.get("inlineData") or part.get("inline_data")
                mime = str(blob.get("mimeType") or blob.get("mime_type") or "")
                data = b64decode(blob.get("data", ""))
                if mime.startswith("image/"):
                    images.append(data)
                elif mime.split("/")[0] in ("audio", "video") or mime == "application/pdf":
                    media.append((mime, data))
                else:
                    raise BadInput(f"unsupported mime type {mime!r}")
    prompt = next((t for t in texts if _KIND_RE.search(t)), "")
    docs = [t for t in texts if t is not prompt and t.strip()]
    match = _KIND_RE.search(prompt)
    kind = match.group(1) if match else "keyword"
    seed = int(gen.get("seed") or 0)
    digest = hashlib.sha256(json.dumps([prompt, docs, seed] + ([True] if repairing else [])).encode())
    for img in images:
        digest.update(hashlib.sha256(img).digest())
    for mime, data in media:
        digest.update(mime.encode() + hashlib.sha256(data).digest())
    prompt_tokens = count_tokens(all_texts, len(images) + len(media))
    doc = "\n".join(docs)
    if (not docs and not images and not media) or TRIGGER_BLOCK_PROMPT in doc:
        reason = "SAFETY" if docs else "OTHER"
        return {"promptFeedback": {"blockReason": reason}, "usageMetadata": _usage(prompt_tokens),
                "modelVersion": "loom-offline-1"}
    if TRIGGER_EMPTY in doc:
        return {"candidates": [], "usageMetadata": _usage(prompt_tokens),
                "modelVersion": "loom-offline-1"}
    if (finish := _FINISH_RE.search(doc)) and finish.group(1) != "":
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": "{\"task\": "}]},
                                "finishReason": finish.group(1), "index": 0}],
                "usageMetadata": _usage(prompt_tokens, 2), "modelVersion": "loom-offline-1"}
    rng = np.random.default_rng(int.from_bytes(digest.digest()[:8], "big"))
    if images and docs:  # a document page: its text layer names what the picture shows
        attrs, modality, fallback = extract_text_attributes(doc), "text", _longest_words(doc)
    elif images:
        attrs, modality, fallback = analyze_image(images[0]), "image", []
    elif media and not docs:
        mime = media[0][0]
        word = {"audio": "audio clip", "video": "video clip"}.get(mime.split("/")[0], "document page")
        attrs, modality = {}, mime.split("/")[0]
        fallback = [word, hashlib.sha256(media[0][1]).hexdigest()[:6]]
    else:
        attrs, modality, fallback = extract_text_attributes(doc), "text", _longest_words(doc)
    task, queries = _queries(kind, attrs, modality, rng, fallback)
    body = {"task": task, "queries": queries, "backend_note": "offline"}
    if TRIGGER_BAD_SCHEMA_ONCE in doc:
        if not repairing:
            body = {"task": task, "query": queries[0]}
    elif TRIGGER_BAD_SCHEMA in doc:
        body = {"task": task, "query": queries[0]}
    if gen.get("responseMimeType") == "application/json":
        text = json.dumps(body)
    else:
        text = "\n".join(queries)
    out_tokens = len(text.split())
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": _usage(prompt_tokens, out_tokens),
        "modelVersion": "loom-offline-1",
        "responseId": digest.hexdigest()[:20],
    }
