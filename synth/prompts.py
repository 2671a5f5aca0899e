"""Versioned prompt files, one per query kind, optionally one per (kind, modality).

`synth/prompts/<kind>.v<N>.txt` is a kind's prompt for every modality;
`<kind>.<modality>.v<N>.txt` overrides it for one modality (what to listen for in audio,
what happens over time in a video). A prompt file is never edited once used: a change is
a new version, so the cache key and every Pair row name exactly the prompt that produced
them.

The first lines declare the kind and the shape of the pairs its answers make:
`QUERY_KIND: <kind>` and `PAIR: <shape>`, one of SHAPES (default `text->example`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
_NAME = re.compile(r"^([a-z_]+)(?:\.([a-z]+))?\.v(\d+)\.txt$")
_SHAPE = re.compile(r"^PAIR:\s*(\S+)\s*$", re.M)
# text->example: the LLM writes text queries for the Example (caption, keyword, question);
# example->text: the Example is the query, the LLM writes positives that describe it;
# text+frame->video: the LLM writes what happens after a clip's first frame; the query is
# that text plus the first frame, the positive the clip's frames (not its audio track).
SHAPES = ("text->example", "example->text", "text+frame->video")
MODALITY_NOUN = {"text": "a text passage", "image": "an image", "audio": "an audio clip",
                 "video": "a video clip", "page": "a document page (its rendering and text)",
                 "interleaved": "a record of interleaved text, images and audio"}


def available() -> dict[tuple[str, str | None], list[int]]:
    """(kind, modality or None) -> sorted versions present on disk."""
    out: dict[tuple[str, str | None], list[int]] = {}
    for path in PROMPT_DIR.glob("*.txt"):
        m = _NAME.match(path.name)
        if m:
            out.setdefault((m.group(1), m.group(2)), []).append(int(m.group(3)))
    return {k: sorted(v) for k, v in sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))}


def _name(kind: str, modality: str | None, n: int) -> str:
    return f"{kind}.{modality}.v{n}" if modality else f"{kind}.v{n}"


@dataclasses.dataclass(frozen=True)
class PromptSet:
    # (kind, modality or None) -> (version "caption.v2" / "caption.audio.v1", text)
    prompts: dict[tuple[str, str | None], tuple[str, str]]

    @classmethod
    def load(cls, kinds: list[str], versions: dict[str, int] | None = None) -> PromptSet:
        """The newest version of each kind (and of its per-modality files), unless
        `versions` pins one (`{"caption": 1}` or `{"caption.audio": 1}`)."""
        have = available()
        prompts = {}
        for kind in kinds:
            if (kind, None) not in have:
                raise KeyError(f"no prompt for query kind {kind!r} "
                               f"(have {sorted({k for k, _ in have})})")
            for (k, modality), ns in have.items():
                if k != kind:
                    continue
                pin = (versions or {}).get(f"{kind}.{modality}" if modality else kind)
                version = _name(kind, modality, pin or ns[-1])
                text = (PROMPT_DIR / f"{version}.txt").read_text(encoding="utf-8")
                prompts[(kind, modality)] = (version, text)
        return cls(prompts)

    def _entry(self, kind: str, modality: str | None) -> tuple[str, str]:
        return self.prompts.get((kind, modality)) or self.prompts[(kind, None)]

    def version(self, kind: str, modality: str | None = None) -> str:
        return self._entry(kind, modality)[0]

    def text(self, kind: str, modality: str | None = None) -> str:
        """The prompt; with a modality, it also says what the content is (an audio clip,
        a video clip, ...): a real model should not have to guess from the bytes' type."""
        text = self._entry(kind, modality)[1]
        if modality in MODALITY_NOUN:
            text = text.rstrip("\n") + f"\nThe content below is {MODALITY_NOUN[modality]}.\n"
        return text

    def shape(self, kind: str, modality: str | None = None) -> str:
        m = _SHAPE.search(self._entry(kind, modality)[1])
        shape = m.group(1) if m else SHAPES[0]
        if shape not in SHAPES:
            raise ValueError(f"prompt {self.version(kind, modality)} declares unknown PAIR "
                             f"shape {shape!r} (have {SHAPES})")
        return shape

    def digest(self) -> str:
        blob = json.dumps(sorted((k, m or "", v, t) for (k, m), (v, t) in self.prompts.items()))
        return hashlib.sha256(blob.encode()).hexdigest()
