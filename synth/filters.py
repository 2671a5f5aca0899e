"""Quality filters for synthetic queries, with counts of what each one removed.

- length: characters and words within bounds;
- language: the query must be in the document's language, as py3langid (its model ships
  inside the wheel: no download) identifies them: the document's language must rank
  among the query's `language_top` likeliest (short queries are ambiguous between close
  languages, never between scripts). Without document text (an image, a clip), the
  expected language is `language` (the prompts ask for English there). `language=None`
  turns it off; `script` keeps the older script-share check, off by default;
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
from pydantic import Field

SCRIPTS = ("latin", "cyrillic", "greek", "arabic", "hebrew", "cjk", "hangul", "devanagari")
_CJK = ("CJK", "HIRAGANA", "KATAKANA")


class FilterConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    min_chars: int = 3
    max_chars: int = 512
    min_words: int = 1
    max_words: int = 64
    # "auto": the document's own language (else `fallback_language`); an ISO 639-1 code
    # fixes it; None: no language check
    language: str | None = "auto"
    fallback_language: str = "en"
    language_top: int = Field(5, ge=1)
    min_doc_chars: int = 20  # shorter document text is too little to identify
    script: str | None = None  # optional script-share check (latin, cyrillic, ...)
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


def identify(text: str) -> str:
    """The ISO 639-1 code py3langid finds likeliest."""
    import py3langid

    return py3langid.classify(text)[0]


def expected_language(doc_text: str, cfg: FilterConfig) -> str | None:
    if cfg.language is None:
        return None
    if cfg.language != "auto":
        return cfg.language
    letters = sum(c.isalpha() for c in doc_text or "")
    return identify(doc_text) if letters >= cfg.min_doc_chars else cfg.fallback_language


def language_ok(q: str, cfg: FilterConfig, expected: str | None = None) -> bool:
    """In the expected language (see the module docstring), and in the script if set."""
    if cfg.script is not None and script_share(q, cfg.script) < cfg.min_script_share:
        return False
    if expected is None:
        return True
    import py3langid

    return expected in {lang for lang, _ in py3langid.rank(q)[: cfg.language_top]}


def row_filters(queries: list[str], cfg: FilterConfig,
                doc_text: str = "") -> tuple[set[str], Counter]:
    """The queries that pass the per-row filters, and how many each filter removed.
    `doc_text` is the document's own text, whose language the queries must share."""
    removed: Counter = Counter()
    kept = set()
    expected = expected_language(doc_text, cfg) if queries else None
    for q in queries:
        if not length_ok(q, cfg):
            removed["length"] += 1
        elif not language_ok(q, cfg, expected):
            removed["language"] += 1
        else:
            kept.add(q)
    return kept, removed


def normalize(q: str) -> str:
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", q).casefold()))


def duplicate_key(row: dict) -> str:
    """What two Pairs must share to be duplicates: (query modality, positive modality, the
    normalized written text: its query, or for an Example-as-query pair its written positive)."""
    text = row.get("positive_text") or row["query_text"]
    return f"{row.get('query_modality') or ''}\0{row.get('positive_modality') or ''}\0" \
           f"{normalize(text)}"


def duplicate_ids(rows: list[dict]) -> set[str]:
    """pair_ids to drop: every Pair whose `duplicate_key` an earlier pair_id already has."""
    seen: set[str] = set()
    drop = set()
    for r in sorted(rows, key=lambda r: r["pair_id"]):
        n = duplicate_key(r)
        if n in seen:
            drop.add(r["pair_id"])
        seen.add(n)
    return drop
