"""The synth stage: Examples in, (query, positive) Pairs out, written by an LLM.

Each example gets one call per query kind of its modality; every query of an answer is
one Pair. Answers are cached by (backend, model, prompt version, generation config,
seed, example id), so a re-run makes no calls. A failed call is a Rejected row.

Calls go through synth.calls.CallLoop, the loop relabel uses too (cache, limits,
retries, refusals, counts).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pydantic
from google.genai import types
from loom.schemas import storage
from loom.schemas.records import (
    EXAMPLE,
    LLM_STAT_NAMES,
    PAIR,
    PART,
    REJECTED,
    Modality,
    Reason,
    Split,
    nonempty,
    query_modality,
    rows_of,
    stats_schema,
    to_table,
)
from loom.schemas.splits import DEFAULT_HELDOUT_FRACTION, group_of, split_for
from loom.synth import client as llm_client
from loom.synth import filters as qfilters
from loom.synth.budget import call_estimate
from loom.synth.cache import key as cache_key
from loom.synth.calls import Call, CallLoop, Unsendable, rejection
from loom.synth.filters import FilterConfig
from loom.synth.limits import RateLimits
from loom.synth.prompts import PromptSet
from loom.synth.refs import Media, as_part
from loom.transforms.pixels import encode_frames, part_frames
from loom.transforms.stage import BaseStage, Resources
from PIL import Image

STAT_NAMES = (*LLM_STAT_NAMES, "filtered_length", "filtered_language")
# and the held-out pairs written: the driver's count, less what the run-wide filters drop
STATS = stats_schema((*STAT_NAMES, "heldout_pairs"))
STAGE = "synth"


DEFAULT_KINDS: dict[str, list[str]] = {
    "image": ["caption", "keyword", "describe"], "text": ["keyword", "question"],
    "audio": ["caption", "describe"], "video": ["caption", "describe", "compose"],
    "page": ["question", "describe"], "interleaved": ["question", "describe"]}


class SynthConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    # modality -> query kinds (prompt names). Kinds whose prompt declares `example->text`
    # make the Example the query (image->text, audio->text, ...); `compose` makes
    # text+image->video queries.
    kinds: dict[str, list[str]] = pydantic.Field(default_factory=lambda: dict(DEFAULT_KINDS))
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
    llm: llm_client.LLMConfig = pydantic.Field(default_factory=llm_client.LLMConfig)
    cache_uri: str
    # overrides llm.base_url; the offline backend with neither starts a server in-process
    base_url: str | None = None
    limits: RateLimits = pydantic.Field(default_factory=RateLimits)
    filters: FilterConfig = pydantic.Field(default_factory=FilterConfig)
    # vertex: where a part over the inline limit whose source is not on gs:// is copied
    staging_uri: str | None = None


def response_key(llm: llm_client.LLMConfig, prompt_version: str, example_id: str) -> str:
    """The cache key of one answer; the budget estimate uses the same key."""
    return cache_key(llm.model, prompt_version, llm.generation_config(), llm.seed, example_id,
                     llm.backend)


def pair_id(example_id: str, kind: str, prompt_version: str, index: int) -> str:
    return hashlib.sha256(f"{example_id}|{kind}|{prompt_version}|{index}".encode()).hexdigest()[:24]


def _image_bytes(example: dict) -> Media:
    """The original file bytes, else the decoded pixels re-encoded as PNG."""
    uris = example.get("source_uris") or []
    if uris:
        try:
            data = storage.read_bytes(uris[0])
            if data:
                mime = example.get("mime") or "image/png"
                return Media(data, mime if mime.startswith("image/") else "image/png", uris[0])
        except Exception:  # noqa: BLE001 - fall back to the decoded pixels
            pass
    part = next((p for p in example.get("parts") or [] if p.get("pixels")), None)
    if part is None or not part.get("height") or not part.get("width"):
        raise Unsendable(Reason.UNREADABLE, "source unreadable and no decoded pixels to send")
    try:
        frames = part_frames(part)
    except (OSError, ValueError) as e:
        raise Unsendable(Reason.UNREADABLE, f"decoded pixels unreadable: {e}") from None
    if not len(frames):
        raise Unsendable(Reason.UNREADABLE, "decoded pixels shorter than height*width*3")
    buf = io.BytesIO()
    Image.fromarray(frames[0], "RGB").save(buf, format="PNG")
    return Media(buf.getvalue(), "image/png")


_NATIVE = {Modality.AUDIO.value: "audio/", Modality.VIDEO.value: "video/",
           Modality.PAGE.value: "application/pdf"}


def _source_bytes(example: dict, prefix: str) -> Media | None:
    """The original file, sent natively, when its mime type is one Gemini reads (inline
    or by reference: synth.refs decides per request)."""
    mime = example.get("mime") or ""
    uris = example.get("source_uris") or []
    if not uris or not mime.startswith(prefix):
        return None
    try:
        data = storage.read_bytes(uris[0])
    except Exception:  # noqa: BLE001 - fall back to the decoded parts
        return None
    return Media(data, mime, uris[0]) if data else None


def _frames_png(part: dict) -> list[bytes]:
    """Decoded video frames as PNG images, at most 8 evenly spaced."""
    if not (part.get("height") and part.get("width") and part.get("pixels")):
        return []
    try:
        frames = part_frames(part)
    except (OSError, ValueError):
        return []
    out = []
    n = len(frames)
    for i in sorted({int(x) for x in np.linspace(0, n - 1, min(n, 8))}) if n else []:
        buf = io.BytesIO()
        Image.fromarray(frames[i], "RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def content_parts(example: dict) -> list[types.Part]:
    """`media_parts` with every part inline (a caller that sends through CallLoop gets
    the per-request size rule there anyway)."""
    return [as_part(p) for p in media_parts(example)]


def media_parts(example: dict) -> list[types.Part | Media]:
    """The Example in its own modality: images, audio and video as the original file's
    bytes (else decoded video frames as PNG); a PDF page as its rendered image plus its
    text layer (else the PDF); text as text. Source files stay `Media` (with their URI) so
    that synth.refs can send one by reference when it does not fit inline."""
    modality = example["modality"]
    if modality == Modality.IMAGE.value:
        return [_image_bytes(example)]
    text = "\n".join(p["text"] for p in example.get("parts") or [] if p.get("text"))
    if modality in _NATIVE:
        parts: list[types.Part | Media] = []
        if modality == Modality.PAGE.value:
            # one page of a document: its rendered image and text layer, not the whole PDF
            for p in example.get("parts") or []:
                parts += [types.Part.from_bytes(data=f, mime_type="image/png")
                          for f in _frames_png(p)[:1]]
            if parts and text.strip():
                parts.append(types.Part.from_text(text=text))
            if parts:
                return parts
        src = _source_bytes(example, _NATIVE[modality])
        if src is not None:
            return [src]
        if modality == Modality.VIDEO.value:
            for p in example.get("parts") or []:
                parts += [types.Part.from_bytes(data=f, mime_type="image/png")
                          for f in _frames_png(p)]
        if text.strip():
            parts.append(types.Part.from_text(text=text))
        if not parts:
            raise Unsendable(Reason.UNREADABLE, f"{modality}: source unreadable, nothing decoded to send")
        return parts
    if modality == Modality.INTERLEAVED.value:
        return _record_parts(example)
    if not text.strip():
        raise Unsendable(Reason.EMPTY, "example has no text to send")
    return [types.Part.from_text(text=text)]


def _record_parts(example: dict) -> list[types.Part | Media]:
    """An interleaved record in its order: text as text, pictures as PNG, audio as the
    referenced file's bytes (when readable)."""
    parts: list[types.Part | Media] = []
    for p in example.get("parts") or []:
        if p.get("text"):
            parts.append(types.Part.from_text(text=p["text"]))
        elif p.get("pixels"):
            parts += [types.Part.from_bytes(data=f, mime_type="image/png")
                      for f in _frames_png(p)[:1]]
        elif nonempty(p.get("features")) and p.get("source_uri"):
            src = _source_bytes({"mime": p.get("mime") or "audio/wav",
                                 "source_uris": [p["source_uri"]]}, "audio/")
            if src is not None:
                parts.append(src)
    if not parts:
        raise Unsendable(Reason.EMPTY, "record has no part to send")
    return parts


def _doc_text(example: dict) -> str:
    return "\n".join(p["text"] for p in example.get("parts") or [] if p.get("text"))


def pair_sides(shape: str, example: dict, text: str) -> dict:
    """The query and positive columns of one answer's text, by the prompt's pair shape."""
    eid, modality = example["id"], example["modality"]
    if shape == "example->text":  # the Example is the query; the LLM wrote the positive
        return {"query_text": "", "query_ref": {"example_id": eid, "parts": None},
                "query_modality": modality,
                "positive_id": "t:" + hashlib.sha256(f"{eid}|{text}".encode()).hexdigest()[:32],
                "positive_text": text, "positive_modality": Modality.TEXT.value}
    if shape == "text+frame->video":  # text + the first frame -> the clip's frames only
        idx = next(i for i, p in enumerate(example["parts"])
                   if p.get("kind") == Modality.VIDEO.value)
        return {"query_text": text, "query_parts": [first_frame(example["parts"][idx])],
                "query_modality": query_modality(["text", "image"]), "positive_id": eid,
                "positive_parts": [idx], "positive_modality": modality}
    return {"query_text": text, "query_modality": Modality.TEXT.value, "positive_id": eid,
            "positive_modality": modality}


def first_frame(part: dict) -> dict:
    """A video part's first frame as an image PART (same pixel format)."""
    frames = part_frames(part)
    pixels, fmt = encode_frames(frames[:1], part.get("pixel_format") or "raw")
    return {name: None for name in PART.names} | {
        "kind": Modality.IMAGE.value, "pixels": pixels, "pixel_format": fmt,
        "height": part.get("height"), "width": part.get("width"), "frames": 1,
        "source_uri": part.get("source_uri"), "mime": None}


class SynthStage(BaseStage):
    name: ClassVar[str] = STAGE
    resources: ClassVar[Resources] = Resources(num_cpus=0.25)  # waits on the LLM
    input_schema: ClassVar[pa.Schema] = EXAMPLE
    output_schemas: ClassVar[dict[str, pa.Schema]] = {"pairs": PAIR, "rejected": REJECTED}

    def __init__(self, config: SynthConfig):
        self.config = config
        self.prompts = PromptSet.load(sorted({k for ks in config.kinds.values() for k in ks}))
        self.calls = CallLoop(config.llm, config.cache_uri, config.limits, config.base_url,
                              config.staging_uri)
        for modality, kinds in config.kinds.items():
            for kind in kinds:  # a compose kind needs a clip; refuse a bad spec up front
                if self.prompts.shape(kind, modality) == "text+frame->video" and \
                        modality != Modality.VIDEO.value:
                    raise ValueError(f"query kind {kind!r} makes text+image->video pairs: "
                                     f"it applies to video, not {modality}")

    def __getstate__(self) -> dict:  # picklable before and after setup
        return {"config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])

    def setup(self) -> None:
        self.calls.setup()

    def teardown(self) -> None:
        self.calls.teardown()

    @staticmethod
    def _rejected(uri: str, reason: Reason, message: str, record_id: str) -> dict:
        return {"uri": uri, "stage": STAGE, "reason": reason.value, "message": message[:2000],
                "record_id": record_id}

    def call(self, ex: dict, kind: str, parts: Callable[[], list]) -> Call:
        """One (example, kind) call: online here, or a Batch API line (synth.batch)."""
        llm = self.config.llm
        text = self.prompts.text(kind, ex["modality"])
        est = call_estimate(ex, text, llm.max_output_tokens, with_repair=False)
        key = response_key(llm, self.prompts.version(kind, ex["modality"]), ex["id"])
        return Call(key, text, parts, tokens=est.tokens)

    def process_batch(self, batch: pa.RecordBatch) -> dict[str, pa.Table]:
        cfg = self.config
        tasks = [(ex, kind) for ex in rows_of(batch)  # features stay float16 arrays
                 for kind in cfg.kinds.get(ex["modality"], [])]
        parts_of = {ex["id"]: functools.cache(functools.partial(media_parts, ex))
                    for ex, _ in tasks}  # built once per example, only on a cache miss
        answers, llm_stats = self.calls.run([self.call(ex, kind, parts_of[ex["id"]])
                                             for ex, kind in tasks])
        stats = dict.fromkeys(STAT_NAMES, 0) | llm_stats
        pairs, rejected = [], []
        gen = json.dumps(cfg.llm.generation_config(), sort_keys=True)
        for (ex, kind), answer in zip(tasks, answers, strict=True):
            eid = ex["id"]
            uri = (ex.get("source_uris") or [""])[0] or eid
            if (bad := rejection(answer)) is not None:
                rejected.append(self._rejected(uri, bad[0], bad[1], eid))
                continue
            version = self.prompts.version(kind, ex["modality"])
            queries = list(dict.fromkeys(q.strip() for q in answer.get("queries", []) if q.strip()))
            kept, removed = qfilters.row_filters(queries, cfg.filters, _doc_text(ex))
            for name, n in removed.items():
                stats[f"filtered_{name}"] += n
            usage = answer.get("usage") or {}
            group = group_of(ex)
            common = {"task": answer.get("task"), "kind": kind,
                      "split": split_for(group, cfg.heldout_fraction).value,
                      "prompt_version": version, "model": cfg.llm.model,
                      "backend": cfg.llm.backend, "generation_config": gen,
                      "seed": cfg.llm.seed, "input_tokens": usage.get("input_tokens"),
                      "output_tokens": usage.get("output_tokens"), "source": "synthetic",
                      "group": group}
            shape = self.prompts.shape(kind, ex["modality"])
            pairs += [common | {"pair_id": pair_id(eid, kind, version, j)}
                      | pair_sides(shape, ex, q)
                      for j, q in enumerate(queries) if q in kept]
        stats["heldout_pairs"] = sum(p["split"] == Split.HELDOUT.value for p in pairs)
        return {"pairs": to_table(pairs, PAIR), "rejected": to_table(rejected, REJECTED),
                "stats": to_table([stats], STATS)}
