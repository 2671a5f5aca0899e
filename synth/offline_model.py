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

from loom.transforms import scenes

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


def _foreground(img: np.ndarray) -> np.ndarray:
    """Pixels far from the border's median colour, isolated specks dropped."""
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
    return mask & (neigh >= 3)


_PALETTE_NAMES = sorted(scenes.RICH_COLORS)
_PALETTE = np.array([scenes.RICH_COLORS[c] for c in _PALETTE_NAMES], dtype=np.int32)
_MIN_OBJECT_PX = 30  # a small ring or triangle covers ~115 px of a 96 px image


def _color_parts(img: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """One mask per palette colour that many foreground pixels sit close to (a rich scene
    never repeats a colour); blended edge pixels near no palette colour count for none."""
    dist = ((img[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(axis=3)
    nearest, best = dist.argmin(axis=2), dist.min(axis=2)
    close = mask & (best <= 45**2)
    parts = [close & (nearest == i) for i in range(len(_PALETTE))]
    kept: list[tuple[np.ndarray, tuple[int, int, int, int]]] = []
    for part in sorted((p for p in parts if p.sum() >= _MIN_OBJECT_PX), key=lambda p: -p.sum()):
        box = _box(part)
        # Objects never touch and are >= 7 px across: a thin part, or one touching another's
        # box, is the fringe a lossy codec leaves around an edge.
        thick = min(box[1] - box[0], box[3] - box[2]) >= 4
        if thick and not any(_overlap(box, other) for _, other in kept):
            kept.append((part, box))
    return [part for part, _ in kept]


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two boxes touch or overlap (one pixel of margin)."""
    return a[0] <= b[1] + 1 and b[0] <= a[1] + 1 and a[2] <= b[3] + 1 and b[2] <= a[3] + 1


def _shape(box: np.ndarray) -> str:
    bh, bw = box.shape
    cy, cx = bh // 2, bw // 2
    if not box[max(0, cy - 1) : cy + 2, max(0, cx - 1) : cx + 2].any():
        return "ring"
    if bw >= 1.5 * bh:
        return "bar"
    fill = box.mean()
    if fill > 0.9:
        return "square"
    if fill > 0.66:
        return "circle"
    # triangle vs diamond: a triangle holds most of its area in its lower half
    half = bh // 2
    top, bottom = box[:half].sum(), box[bh - half :].sum()
    return "triangle" if bottom > 1.6 * max(top, 1) else "diamond"


def _read_object(img: np.ndarray, mask: np.ndarray) -> dict[str, str]:
    h, w, _ = img.shape
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    bh, bw = y1 - y0 + 1, x1 - x0 + 1
    mean = img[mask].mean(axis=0)
    color = min(scenes.RICH_COLORS,
                key=lambda c: float(((mean - scenes.RICH_COLORS[c]) ** 2).sum()))
    rel = max(bh, bw) / max(h, w)  # the shape's diameter is SIZES[size] of the side
    size = min(scenes.SIZES, key=lambda s: abs(scenes.SIZES[s] - rel))
    shape = _shape(mask[y0 : y1 + 1, x0 : x1 + 1])
    cy, cx = (y0 + y1 + 1) / 2 / h, (x0 + x1 + 1) / 2 / w
    row = scenes.ROWS[min(2, int(cy * 3))]
    col = scenes.COLS[min(2, int(cx * 3))]
    return {"size": size, "color": color, "shape": shape, "row": row, "col": col,
            "position": position_phrase(row, col)}


def _reading_order(obj: dict[str, str]) -> tuple[int, int]:
    return (scenes.ROWS.index(obj.get("row", "middle")),
            scenes.COLS.index(obj.get("col", "center")))


def analyze_image(data: bytes) -> dict[str, Any]:
    """Scene attributes (size, color, shape, row, col, position) read from the pixels; for
    two objects of different colours, {"objects": [...]} in reading order of their cells."""
    try:
        img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int32)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
        raise BadInput(f"unable to decode image: {type(exc).__name__}") from exc
    mask = _foreground(img)
    if mask.sum() < 4:
        raise BadInput("no foreground object found in the image")
    parts = _color_parts(img, mask)
    if len(parts) < 2:
        return _read_object(img, mask)
    return {"objects": sorted((_read_object(img, p) for p in parts), key=_reading_order)}


_VOCAB = {"size": scenes.SIZES, "color": scenes.RICH_COLORS, "shape": scenes.RICH_SHAPES,
          "row": scenes.ROWS, "col": scenes.COLS}
# Where one object's phrase ends and the next begins in a passage or a query.
_CLAUSE_RE = re.compile(r"[.;:]|\band\b|\bnext to\b|\bwhile\b")


def _first_attributes(text: str) -> dict[str, str]:
    words = re.findall(r"[a-z]+", text.lower())
    found: dict[str, str] = {}
    for word in words:
        for attr, names in _VOCAB.items():
            if word in names and attr not in found:
                found[attr] = word
    if "row" in found or "col" in found:
        found["position"] = position_phrase(found.get("row", "middle"), found.get("col", "center"))
    return found


def extract_text_attributes(text: str) -> dict[str, Any]:
    """The first size, color, shape and position words found in a passage; where two
    clauses each name a shape, {"objects": [...]} with each clause's own attributes."""
    clauses = [_first_attributes(c) for c in _CLAUSE_RE.split(text.lower())]
    objects = [c for c in clauses if "shape" in c]
    if len(objects) >= 2:
        return {"objects": sorted(objects, key=_reading_order)}
    return _first_attributes(text)


def _longest_words(text: str, n: int = 4) -> list[str]:
    words = sorted(set(re.findall(r"[a-z]+", text.lower())), key=lambda w: (-len(w), w))
    return words[:n]


def _object_queries(kind: str, objects: list[dict[str, str]], modality: str,
                    rng: np.random.Generator) -> tuple[str, list[str]]:
    """Queries naming every object with its own attributes, so a scene with the same words
    bound differently (colors swapped, say) does not answer them."""
    phrases = [" ".join(o.get(a, "") for a in ("size", "color", "shape")).strip()
               for o in objects]
    pos = [o.get("position", "center") for o in objects]
    at = [f"at the {p}" if p != "center" else "in the center" for p in pos]
    target = "image" if modality == "image" else "passage"
    located = [f"{ph} {a}" for ph, a in zip(phrases, at, strict=True)]
    if kind == "caption":
        task = f"Given a caption, retrieve the {target} it describes."
        base = " and ".join(f"a {x}" for x in located)
        alt = "a " + " next to a ".join(located)
    elif kind == "question":
        task = f"Given a question, retrieve the {target} that answers it."
        if modality == "image":
            base = "which image shows " + " and ".join(f"a {x}" for x in located) + "?"
        else:
            base = "Where are " + " and ".join(f"the {x}" for x in located) + " described?"
        alt = "is there a " + " next to a ".join(located) + "?"
    else:  # keyword (and any unknown kind)
        task = f"Given keywords, retrieve the matching {target}."
        base = " and ".join(f"{ph} {p}" for ph, p in zip(phrases, pos, strict=True))
        alt = " and ".join(f"{p} {ph}" for ph, p in zip(phrases, pos, strict=True))
    prefixes = _PREFIXES.get(kind, _PREFIXES["keyword"])
    prefix = prefixes[int(rng.integers(len(prefixes)))]
    queries = [base, (prefix + alt).strip()]
    return task, [q for i, q in enumerate(queries) if q and q not in queries[:i]]


def _queries(kind: str, attrs: dict[str, Any], modality: str, rng: np.random.Generator,
             fallback: list[str]) -> tuple[str, list[str]]:
    if "objects" in attrs:
        return _object_queries(kind, attrs["objects"], modality, rng)
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


def _attr_words(attrs: dict[str, Any]) -> set[str]:
    """Attribute words; for several objects also one token per object binding them."""
    if "objects" in attrs:
        words = set().union(*(_attr_words(o) for o in attrs["objects"]))
        return words | {"+".join(o.get(a, "") for a in ("size", "color", "shape", "row", "col"))
                        for o in attrs["objects"]}
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
