"""How many LLM calls synth makes over an examples version: one per (example, query kind of
its modality), from synth's default kinds. Tests derive expected counts from it instead of
a literal that goes stale when a modality gains a kind."""

from __future__ import annotations

from loom.schemas import manifest as mf
from loom.synth.stage import DEFAULT_KINDS


def modalities(examples_uri: str) -> list[str]:
    vdir, manifest = mf.resolve_input(examples_uri)
    table = mf.read_table(vdir, manifest, "examples", columns=["modality"])
    return table.column("modality").to_pylist()


def calls_needed(examples_uri: str) -> int:
    return sum(len(DEFAULT_KINDS.get(m, [])) for m in modalities(examples_uri))
