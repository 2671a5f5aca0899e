"""Synth: Examples -> Pairs (with their split) through the google-genai client.

The `offline` backend starts loom's local Gemini-compatible server for the run; the
response cache lives next to the output root, so a rerun or a changed prompt pays only
for what changed.
"""

from __future__ import annotations

import contextlib
from functools import partial

from pipelines.common import cleanup_work, result, reuse, timed
from pipelines.runner import Engine, StageTask, file_items, merge_results, run_stage
from schemas import manifest as mf
from schemas import storage
from synth.client import LLMConfig, check_backend
from synth.offline_server import offline_server
from synth.prompts import PromptSet
from synth.stage import SynthConfig, SynthStage


def run_synth(examples_uri: str, output_root: str, llm: LLMConfig | None = None,
              engine: Engine = Engine.BEAM, heldout_fraction: float = 0.2,
              kinds: dict[str, list[str]] | None = None, rows_per_item: int = 64) -> dict:
    llm = llm or LLMConfig()
    check_backend(llm)
    examples_uri, output_root = storage.absolute(examples_uri), storage.absolute(output_root)
    ex_dir, ex_manifest = mf.resolve_input(examples_uri)
    base = SynthConfig(llm=llm, heldout_fraction=heldout_fraction,
                       cache_uri=storage.join(output_root, "_llm_cache"),
                       **({"kinds": kinds} if kinds else {}))
    prompt_set = PromptSet.load(sorted({k for ks in base.kinds.values() for k in ks}))
    config = {
        "kinds": base.kinds,
        "heldout_fraction": heldout_fraction,
        "llm": llm.model_dump(exclude={"base_url", "timeout_s"}),
        "prompts": prompt_set.digest(),
    }
    version = mf.version_id("synth", [ex_manifest.version], config)
    writer = mf.VersionWriter(output_root, "synth", version)
    if (done := reuse(writer, "synth", llm_calls=0)) is not None:
        return done
    timings: dict[str, float] = {}
    server = offline_server() if llm.backend == "offline" and not llm.base_url else None
    with (server or contextlib.nullcontext(llm.base_url)) as base_url, timed(timings, "synth_s"):
        cfg = base.model_copy(update={"base_url": base_url})
        items = file_items(ex_manifest.tables.get("examples", []), ex_dir, rows_per_item)
        tables, stats = merge_results(
            run_stage(engine, StageTask(partial(SynthStage, cfg), writer.dir), items))
    for t in ("pairs", "rejected"):
        tables.setdefault(t, [])
    pairs = storage.read_parquet([storage.join(writer.dir, f.path) for f in tables["pairs"]],
                                 columns=["split"]) if tables["pairs"] else None
    heldout = sum(1 for s in pairs.column("split").to_pylist() if s == "heldout") if pairs else 0
    counts = {
        "examples": ex_manifest.rows("examples"),
        "pairs": sum(f.rows for f in tables["pairs"]),
        "heldout_pairs": heldout,
        "rejected": sum(f.rows for f in tables["rejected"]),
        "llm_calls": stats.get("llm_calls", 0),
        "cache_hits": stats.get("cache_hits", 0),
    }
    lineage = {
        "previous": _previous(output_root, writer.version, ex_manifest.version),
        "examples": ex_dir,
        "examples_version": ex_manifest.version,
        "prompt_set": prompt_set.digest(),
        "prompt_versions": {k: v[0] for k, v in prompt_set.prompts.items()},
        "llm_model": llm.model,
        "backend": llm.backend,
        "spec_digest": ex_manifest.lineage.get("spec_digest"),
        "timings": timings,
    }
    manifest = writer.commit(tables, counts, config, lineage)
    cleanup_work(writer.dir)
    return result("synth", manifest, writer.dir, False, llm_calls=counts["llm_calls"],
                  timings=timings)


def _previous(root: str, version: str, examples_version: str) -> str | None:
    """The newest other synth version over the same examples: what this one regenerates."""
    found = []
    for d in storage.list_dirs(root):
        m = mf.read_manifest(d)
        if (m is not None and m.stage == "synth" and m.version != version
                and m.lineage.get("examples_version") == examples_version):
            found.append((m.created_at, d))
    return max(found)[1] if found else None
