"""Natural pairs: (query, positive) pairs that an Example's own structure gives, no LLM.

The commonest pre-training data already comes in pairs: an image with its caption in a
record or a WebDataset sample, a video with its own audio track, a PDF page's rendering
with its text layer, a passage's title with its body. Each rule picks two disjoint sets
of an Example's parts; both directions are emitted where both make sense. The pair's
lineage says `source: natural`, its split is the Example's asset group's.
"""

from __future__ import annotations

import hashlib

from loom.schemas.records import PAIR, Modality
from loom.schemas.splits import DEFAULT_HELDOUT_FRACTION, group_of, split_for

PROMPT_VERSION = "natural.v1"
RULES = ("record", "av_track", "page_text", "title_body")
MEDIA = (Modality.IMAGE.value, Modality.AUDIO.value, Modality.VIDEO.value, Modality.PAGE.value)
_NOUN = {"text": "a caption", "image": "an image", "audio": "an audio clip",
         "video": "a video", "page": "a document page"}
_TARGET = {"text": "the text", "image": "the image", "audio": "the audio",
           "video": "the video", "page": "the document page"}
MAX_TITLE_WORDS = 12
_EMPTY = dict.fromkeys(PAIR.names)  # every column; what a rule does not set is null


def _task(rule: str, query: str, positive: str) -> str:
    if rule == "av_track":
        return ("Given a video without sound, retrieve its audio track." if query == "video"
                else "Given an audio clip, retrieve the video it belongs to.")
    if rule == "page_text":
        return ("Given a rendered document page, retrieve its text." if query == "page"
                else "Given a passage, retrieve the document page it is printed on.")
    if rule == "title_body":
        return "Given a title, retrieve the passage it heads."
    return f"Given {_NOUN[query]}, retrieve {_TARGET[positive]} that goes with it."


def _pair(example: dict, rule: str, q: list[int], p: list[int], heldout: float) -> dict:
    """One pair between two disjoint part sets of `example` (text queries inline)."""
    parts = example["parts"]
    if set(q) & set(p):
        raise ValueError("the two sides of a pair never share a part")
    q_kinds = [parts[i]["kind"] for i in q]
    p_kind = parts[p[0]]["kind"]
    group = group_of(example)
    key = f"{example['id']}|{rule}|{q}|{p}"
    row = _EMPTY | {"pair_id": "n" + hashlib.sha256(key.encode()).hexdigest()[:23],
           "task": _task(rule, q_kinds[0], p_kind), "kind": f"natural:{rule}",
           "query_modality": q_kinds[0], "positive_id": example["id"], "positive_parts": p,
           "positive_modality": p_kind, "split": split_for(group, heldout).value,
           "prompt_version": PROMPT_VERSION, "model": "none", "backend": "natural",
           "source": "natural", "group": group}
    if q_kinds == ["text"]:
        row["query_text"] = parts[q[0]]["text"] or ""
    else:
        row |= {"query_text": "", "query_ref": {"example_id": example["id"], "parts": q}}
    return row


def _title_body(text: str) -> tuple[str, str] | None:
    head, _, body = text.strip().partition("\n")
    if body.strip() and 0 < len(head.split()) <= MAX_TITLE_WORDS and not head.endswith("."):
        return head.strip(), body.strip()
    return None


def natural_pairs(example: dict, rules: tuple[str, ...] = RULES,
                  heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> list[dict]:
    """Every pair the rules find in one Example (PAIR rows without usage columns)."""
    parts = example["parts"]
    kinds = [p["kind"] for p in parts]
    texts = [i for i, k in enumerate(kinds) if k == "text" and parts[i].get("text")]
    out: list[dict] = []

    def both(rule: str, a: int, b: int) -> None:
        out.append(_pair(example, rule, [a], [b], heldout_fraction))
        out.append(_pair(example, rule, [b], [a], heldout_fraction))

    modality = example["modality"]
    if "record" in rules and modality == Modality.INTERLEAVED.value and texts:
        for i, k in enumerate(kinds):  # the record's first text with each media part
            if k in MEDIA:
                both("record", texts[0], i)
    if "av_track" in rules and modality == Modality.VIDEO.value:
        video = [i for i, k in enumerate(kinds) if k == "video"]
        audio = [i for i, k in enumerate(kinds) if k == "audio"]
        if video and audio:
            both("av_track", video[0], audio[0])
    if "page_text" in rules and modality == Modality.PAGE.value and texts:
        render = [i for i, k in enumerate(kinds) if k == "page" and parts[i].get("pixels")]
        if render:
            both("page_text", render[0], texts[0])
    if "title_body" in rules and modality == Modality.TEXT.value and texts:
        split = _title_body(parts[texts[0]]["text"])
        if split:
            out.append(_title_pair(example, split, heldout_fraction))
    return out


def _title_pair(example: dict, split: tuple[str, str], heldout_fraction: float) -> dict:
    """A title -> the body it heads, both inline: one text part holds both, and the two
    sides of a pair never share a part."""
    group = group_of(example)
    key = f"{example['id']}|title_body"
    body_id = "t:" + hashlib.sha256(f"{example['id']}|body".encode()).hexdigest()[:32]
    return _EMPTY | {"pair_id": "n" + hashlib.sha256(key.encode()).hexdigest()[:23],
            "task": _task("title_body", "text", "text"), "kind": "natural:title_body",
            "query_text": split[0], "query_modality": "text", "positive_id": body_id,
            "positive_text": split[1], "positive_modality": "text", "split": split_for(group, heldout_fraction).value,
            "prompt_version": PROMPT_VERSION, "model": "none", "backend": "natural",
            "source": "natural", "group": group}
