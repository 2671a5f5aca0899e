"""Quality filters for synthetic queries, with counts of what each one removed.

- length: characters and words within bounds;
- language: a light script check (the share of letters in the expected script), no
  model download; `script=None` turns it off;
- duplicate: one Pair per (positive modality, normalized query text) across the whole
  run (a query that names two positives of one modality is a false negative for one of
  them; galleries are per modality); the smallest pair_id stays;
- round trip (pipelines.synth, needs a checkpoint): the query must retrieve its own
  positive in the top k of the run's positives.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pydantic

SCRIPTS = ("latin", "cyrillic", "greek", "arabic", "hebrew", "cjk", "hangul", "devanagari")
_CJK = ("CJK", "HIRAGANA", "KATAKANA")


class FilterConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    min_chars: int = 3
    max_chars: int = 512
    min_words: int = 1
    max_words: int = 64
    script: str | None = "latin"  # expected script of queries; None: no language check
    min_script_share: float = 0.8
    dedupe: bool = True
    roundtrip_k: int = pydantic.Field(10, ge=1)  # used when a checkpoint is given

    @pydantic.field_validator("script")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in SCRIPTS:
            raise ValueError(f"unknown script {v!r} (have {SCRIPTS})")
        return v


def script_of(ch: str) -> str | None:
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    if name.startswith(_CJK):
        return "cjk"
    first = name.split(" ", 1)[0].lower()
    return first if first in SCRIPTS else "other"


def script_share(text: str, script: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(script_of(c) == script for c in letters) / len(letters)


def length_ok(q: str, cfg: FilterConfig) -> bool:
    words = len(q.split())
    return cfg.min_chars <= len(q) <= cfg.max_chars and cfg.min_words <= words <= cfg.max_words


def language_ok(q: str, cfg: FilterConfig) -> bool:
    return cfg.script is None or script_share(q, cfg.script) >= cfg.min_script_share


def row_filters(queries: list[str], cfg: FilterConfig) -> tuple[set[str], Counter]:
    """The queries that pass the per-row filters, and how many each filter removed."""
    removed: Counter = Counter()
    kept = set()
    for q in queries:
        if not length_ok(q, cfg):
            removed["length"] += 1
        elif not language_ok(q, cfg):
            removed["language"] += 1
        else:
            kept.add(q)
    return kept, removed


def normalize(q: str) -> str:
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", q).casefold()))


def duplicate_ids(rows: list[dict]) -> set[str]:
    """pair_ids to drop: every Pair whose normalized query an earlier pair_id already has
    for a positive of the same modality."""
    seen: set[tuple] = set()
    drop = set()
    for r in sorted(rows, key=lambda r: r["pair_id"]):
        n = (r.get("positive_modality"), normalize(r["query_text"]))
        if n in seen:
            drop.add(r["pair_id"])
        seen.add(n)
    return drop
