"""Versioned prompt files (synth/prompts/<kind>.v<N>.txt), one per query kind.

A prompt file is never edited once used: a change is a new version, so the cache key
and every Pair row name exactly the prompt that produced them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
_NAME = re.compile(r"^([a-z_]+)\.v(\d+)\.txt$")


def available() -> dict[str, list[int]]:
    """kind -> sorted versions present on disk."""
    out: dict[str, list[int]] = {}
    for path in PROMPT_DIR.glob("*.txt"):
        m = _NAME.match(path.name)
        if m:
            out.setdefault(m.group(1), []).append(int(m.group(2)))
    return {k: sorted(v) for k, v in sorted(out.items())}


@dataclasses.dataclass(frozen=True)
class PromptSet:
    prompts: dict[str, tuple[str, str]]  # kind -> (version "caption.v1", text)

    @classmethod
    def load(cls, kinds: list[str], versions: dict[str, int] | None = None) -> "PromptSet":
        """The newest version of each kind, unless `versions` pins one."""
        have = available()
        prompts = {}
        for kind in kinds:
            if kind not in have:
                raise KeyError(f"no prompt for query kind {kind!r} (have {sorted(have)})")
            n = (versions or {}).get(kind, have[kind][-1])
            version = f"{kind}.v{n}"
            prompts[kind] = (version, (PROMPT_DIR / f"{version}.txt").read_text(encoding="utf-8"))
        return cls(prompts)

    def version(self, kind: str) -> str:
        return self.prompts[kind][0]

    def text(self, kind: str) -> str:
        return self.prompts[kind][1]

    def digest(self) -> str:
        blob = json.dumps(sorted((k, v, t) for k, (v, t) in self.prompts.items()))
        return hashlib.sha256(blob.encode()).hexdigest()
