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
from loom.transforms import scenes
from PIL import Image

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
    """The text's longest words in its own script (any language), for keyword fallbacks."""
    words = {w for w in re.findall(r"[^\W\d_]+", text.casefold()) if not w.startswith("loom")}
    return sorted(words, key=lambda w: (-len(w), w))[:n]


# What a query calls the content it retrieves, per modality.
TARGET = {"image": "image", "text": "passage", "audio": "audio clip", "video": "video",
          "page": "document page", "interleaved": "record"}


def _target(modality: str) -> str:
    return TARGET.get(modality, "passage")


def _object_queries(kind: str, objects: list[dict[str, str]], modality: str,
                    rng: np.random.Generator) -> tuple[str, list[str]]:
    """Queries naming every object with its own attributes, so a scene with the same words
    bound differently (colors swapped, say) does not answer them."""
    phrases = [" ".join(o.get(a, "") for a in ("size", "color", "shape")).strip()
               for o in objects]
    pos = [o.get("position", "center") for o in objects]
    at = [_located(o) for o in objects]
    target = _target(modality)
    located = [f"{ph} {a}" for ph, a in zip(phrases, at, strict=True)]
    if kind == "caption":
        task = f"Given a caption, retrieve the {target} it describes."
        base = " and ".join(f"a {x}" for x in located)
        alt = "a " + " next to a ".join(located)
    elif kind == "question":
        task = f"Given a question, retrieve the {target} that answers it."
        if modality in ("image", "video"):
            base = f"which {target} shows " + " and ".join(f"a {x}" for x in located) + "?"
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


def _located(obj: dict[str, str]) -> str:
    """Where an object is, and for a video how it got there ("sliding in at the top")."""
    pos = obj.get("position", "center")
    at = "in the center" if pos == "center" else f"at the {pos}"
    event = obj.get("event")
    return f"{event} {at}" if event else at


def _queries(kind: str, attrs: dict[str, Any], modality: str, rng: np.random.Generator,
             fallback: list[str]) -> tuple[str, list[str]]:
    if "objects" in attrs:
        return _object_queries(kind, attrs["objects"], modality, rng)
    phrase = " ".join(attrs[a] for a in ("size", "color", "shape") if a in attrs)
    pos = attrs.get("position", "")
    target = _target(modality)
    if not phrase and not pos:  # nothing recognised: the content's own words, as keywords
        words = " ".join(fallback)
        return f"Given keywords, retrieve the matching {target}.", [words] if words else []
    at = _located(attrs) if pos else ""
    if kind == "caption":
        task = f"Given a caption, retrieve the {target} it describes."
        base = f"a {phrase} {'in the ' + pos if pos else ''}".strip()
        alt = f"{phrase} located {at}".strip() if pos else f"an {target} of a {phrase}"
    elif kind == "question":
        task = f"Given a question, retrieve the {target} that answers it."
        if modality in ("image", "video"):
            base = f"which {target} shows a {phrase} {at}?".replace(" ?", "?")
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
    attrs, modality, fallback = read_content(_declared_modality(prompt), images, media, doc)
    if kind == "describe":
        task, queries = describe_queries(attrs, modality, rng, fallback)
    elif kind == "compose":
        task, queries = compose_queries(attrs, rng)
    else:
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


_NOUNS = (("audio clip", "audio"), ("video clip", "video"), ("document page", "page"),
          ("record of interleaved", "interleaved"), ("an image", "image"),
          ("text passage", "text"))
_CONTENT_RE = re.compile(r"The content below is ([^\n]+)")


def _declared_modality(prompt: str) -> str | None:
    """The modality the prompt says the content is (synth states it), else None."""
    m = _CONTENT_RE.search(prompt)
    if not m:
        return None
    return next((mod for noun, mod in _NOUNS if noun in m.group(1)), None)


def read_content(modality: str | None, images: list[bytes], media: list[tuple[str, bytes]],
                 doc: str) -> tuple[dict[str, Any], str, list[str]]:
    """(scene attributes, modality, fallback words) read from the content itself: pixels,
    a waveform, a clip's frames (and audio track), a page's text layer, a record's text.
    Content it cannot read is BadInput (the call is rejected), never a made-up query."""
    mimes = [m for m, _ in media]
    if modality is None:  # an undeclared request: guess as a model would, from the parts
        modality = ("video" if any(m.startswith("video/") for m in mimes)
                    else "audio" if any(m.startswith("audio/") for m in mimes)
                    else "page" if (images and doc) or mimes else "image" if images
                    else "text")
    fallback = _longest_words(doc)
    if modality == "video":
        return read_video_scene(images, media), modality, fallback
    if modality == "audio" and any(m.startswith("audio/") for m in mimes):
        data = next(d for m, d in media if m.startswith("audio/"))
        return read_audio_scene(data), modality, fallback
    if modality == "image" and images:
        return analyze_image(images[0]), modality, fallback
    if doc.strip():  # text, a page's text layer, a record's captions
        return extract_text_attributes(doc), modality, fallback
    if images:
        return analyze_image(images[0]), modality, fallback
    raise BadInput(f"no readable content for a {modality} request")


def _objects(attrs: dict[str, Any]) -> list[dict[str, str]]:
    return list(attrs["objects"]) if "objects" in attrs else ([attrs] if "shape" in attrs else [])


def _with_position(obj: dict[str, str]) -> dict[str, str]:
    return obj | {"position": position_phrase(obj["row"], obj["col"])}


def read_audio_scene(data: bytes) -> dict[str, Any]:
    """The scene an audio clip encodes (transforms.scenes_media's code), read from the
    waveform: a pitch per cell and colour, beeps per shape, beep length per size."""
    from loom.transforms.scenes_media import decode_scene_audio, read_video

    try:
        import soundfile as sf

        samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception:  # noqa: BLE001 - not a soundfile format: try the container path
        try:
            _, samples, sr = read_video(data)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
            raise BadInput(f"unable to decode audio: {type(exc).__name__}") from exc
    if samples is None or not len(samples):
        raise BadInput("no audio samples")
    objs = [_with_position(o) for o in decode_scene_audio(samples, sr)]
    if not objs:
        raise BadInput("no sound events recognised in the audio")
    return objs[0] if len(objs) == 1 else {"objects": sorted(objs, key=_reading_order)}


def _png_frames(frames: list[np.ndarray]) -> list[bytes]:
    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def read_video_scene(images: list[bytes], media: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The clip's final scene (its last frame), each object marked with how it got there:
    an object absent from the first frame "appearing", one that changed cell "sliding in".
    Frames come from the clip itself (decoded at 1 fps) or, without it, as images."""
    frames = images
    clip = next((d for m, d in media if m.startswith("video/")), None)
    if clip is not None:
        from loom.transforms.scenes_media import read_video

        try:
            frames = _png_frames(read_video(clip)[0])
        except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
            raise BadInput(f"unable to decode video: {type(exc).__name__}") from exc
    if not frames:
        raise BadInput("a video request without frames")
    final = _objects(analyze_image(frames[-1]))
    try:
        start = {o["color"]: o for o in _objects(analyze_image(frames[0]))}
    except BadInput:  # an empty first frame: everything appears
        start = {}
    out = []
    for obj in final:
        first = start.get(obj["color"])
        if first is None:
            obj = obj | {"event": "appearing"}
        elif (first["row"], first["col"]) != (obj["row"], obj["col"]):
            obj = obj | {"event": "sliding in", "from": first["position"]}
        out.append(obj)
    return out[0] if len(out) == 1 else {"objects": out}


def _phrase(obj: dict[str, str]) -> str:
    return " ".join(obj[a] for a in ("size", "color", "shape") if a in obj)


def describe_queries(attrs: dict[str, Any], modality: str, rng: np.random.Generator,
                     fallback: list[str]) -> tuple[str, list[str]]:
    """Passages describing the content (the positives of `describe` pairs)."""
    noun = {"image": "an image", "audio": "an audio clip", "video": "a video",
            "page": "a document page", "interleaved": "a record", "text": "a passage"}
    task = f"Given {noun.get(modality, 'a document')}, retrieve the passage that describes it."
    objs = _objects(attrs)
    if not objs:
        words = " ".join(fallback)
        return task, [words] if words else []
    first = " and ".join(f"a {_phrase(o)} {_located(o)}" for o in objs)
    lead = {"video": "The clip shows ", "audio": "The sound encodes "}.get(modality, "It shows ")
    second = "; ".join(f"{o.get('color')} {o.get('shape')}: {o.get('size')}, "
                       f"{o.get('position')}" for o in objs)
    opening = ("There is ", "One sees ", "Pictured: ")[int(rng.integers(3))]
    return task, [lead + first + ".", opening + second + "."]


def compose_queries(attrs: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str]]:
    """What happens after the first frame (the text half of text+image->video queries)."""
    task = "Given a frame and what happens next, retrieve the video."
    events = []
    for o in _objects(attrs):
        where = "in the center" if o["position"] == "center" else f"at the {o['position']}"
        if o.get("event") == "appearing":
            events.append(f"a {_phrase(o)} appears {where}")
        elif o.get("event") == "sliding in":
            events.append(f"the {_phrase(o)} slides from the {o['from']} to the {o['position']}")
    if not events:
        events = [f"the {_phrase(o)} stays {_located(o)}" for o in _objects(attrs)]
    if not events:
        return task, []
    then = ("then ", "next, ", "after that ")[int(rng.integers(3))]
    return task, [" and ".join(events), then + ", then ".join(events)]
